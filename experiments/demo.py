"""The main job of `make demo`: JSORC's loadtest of one app, simulated under three policies.

    python experiments/demo.py [--app flow_analysis] [--duration 600] [--seed 1] [--out runs/demo]

flow_analysis calls text_seg (1.7 GB), tfm_ner (1.0 GB) and use_enc (4.0 GB) on a 4 GB node:
`all_local` cannot fit and keeps running the runtime out of memory, `all_remote` pays the
network on every call, and a mixed static placement (use_enc remote, the rest local) does
better than both. Prints a comparison table and writes demo.png and each run's tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed
import matplotlib.pyplot as plt
import pandas as pd

from jsorc_sim.results import Result
from jsorc_sim.simulate import simulate

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "scenarios" / "jsorc_loadtest.toml"
POLICIES = {
    "all_local": ("all_local", {}),
    "all_remote": ("all_remote", {}),
    "mixed (static)": ("static", {"placements": {"use_enc": "remote"}, "default": "local"}),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="flow_analysis")
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="runs/demo")
    args = parser.parse_args(argv)
    out = Path(args.out)

    results = {}
    for label, (policy, params) in POLICIES.items():
        print(f"simulating {args.app} under {label} ...", file=sys.stderr)
        result = simulate(SCENARIO, policy, params=params, seed=args.seed,
                          duration_s=args.duration, app=args.app)
        result.save(out / policy)
        results[label] = result

    table = comparison(results, args.app)
    print(f"\nJSORC loadtest, simulated: app {args.app}, {args.duration:g} s, seed {args.seed}, "
          f"node {results['all_local'].scenario.node.memory_mb:g} MB")
    print(table.to_string(float_format=lambda v: f"{v:,.1f}"))
    plot(results, args.app, out / "demo.png")
    print(f"\nwrote {out / 'demo.png'} and each run's tables under {out}/")
    return 0


def comparison(results: dict[str, Result], app: str) -> pd.DataFrame:
    rows = {}
    for label, result in results.items():
        stats = result.report()["walker_run"][app]
        cost = result.cost()
        rows[label] = {
            "throughput/s": stats["throughput"],
            "mean ms": stats["average_latency"],
            "p95 ms": stats["95th_latency"],
            "p99 ms": stats["99th_latency"],
            "failed req": cost["failed_requests"],
            "OOM": cost["oom_events"],
            "node GB·s": cost["node_memory_gb_s"],
            "replica GB·s": cost["replica_memory_gb_s"],
        }
    return pd.DataFrame(rows).T


def plot(results: dict[str, Result], app: str, path: Path) -> None:
    fig, (ax_lat, ax_bar) = plt.subplots(1, 2, figsize=(12, 4.5),
                                         gridspec_kw={"width_ratios": [2.2, 1]})
    for label, result in results.items():
        req = result.requests
        ok = req[req["ok"]]
        if len(ok):
            binned = ok.groupby((ok["ts"] // 10) * 10)["latency_ms"].mean()
            (line,) = ax_lat.plot(binned.index, binned.to_numpy(), label=label)
        else:
            (line,) = ax_lat.plot([], [], label=label)
        ooms = result.events[result.events["kind"] == "out_of_memory"]["ts"].to_numpy()
        for i, ts in enumerate(ooms):
            ax_lat.axvline(ts, color=line.get_color(), linestyle=":", alpha=0.6,
                           label=f"{label}: out of memory ({len(ooms)})" if i == 0 else None)
    warmup = next(iter(results.values())).scenario.warmup_s
    ax_lat.axvspan(0, warmup, color="0.9", label="warm-up (not in the report)")
    ax_lat.set_yscale("log")
    ax_lat.set_xlabel("simulated time (s)")
    ax_lat.set_ylabel("walker latency, 10 s mean (ms, log)")
    ax_lat.set_title(f"{app}: latency over time")
    ax_lat.legend(fontsize=8)
    labels = list(results)
    throughput = [results[k].report()["walker_run"][app]["throughput"] or 0 for k in labels]
    bars = ax_bar.bar(labels, throughput, color=[f"C{i}" for i in range(len(labels))])
    ax_bar.bar_label(bars, fmt="%.2f")
    ax_bar.set_ylabel("walker runs per second")
    ax_bar.set_title("throughput (after warm-up)")
    ax_bar.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
