"""Mean walker latency of the placement policies on JSORC's eight loadtest apps.

    python experiments/policy_table.py [--clients 1] [--duration 1800] [--seeds 1 2 3]
                                       [--memory-mb 4096] [--workers 2] [--out runs/policy_table]

Every (app, policy, seed) is one simulation of experiments/scenarios/jsorc_loadtest.toml; the
seeds are paired (the same seed gives every policy the same arrivals and service times).
Prints the mean over seeds of each app's mean walker latency (ms) and how much lower
model_based is than evaluation (the mean of the paired per-seed differences, relative to
evaluation). "OOM" marks a policy under which no walker run succeeded (the runtime kept
running out of memory). With --hindsight it adds the best static placement found by
simulating every feasible one (jsorc_sim.hindsight, same seeds): no placement policy can do
better than that on a stationary workload, so it bounds any policy's possible gain.
Below it, the latency-and-cost table every experiment prints (jsorc_sim.latency_cost): per
app and policy, mean ± 95 % CI over seeds of mean and p95 walker latency, replica
core-seconds, node GB·s, placement changes and out-of-memory events (best static: its
latency only). Writes the cells as CSV beside.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from jsorc_sim import latency_cost
from jsorc_sim.experiment import summarise
from jsorc_sim.hindsight import best_static
from jsorc_sim.scenario import Scenario, load
from jsorc_sim.simulate import simulate

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "scenarios" / "jsorc_loadtest.toml"
POLICIES = ("all_local", "all_remote", "evaluation", "predictive", "model_based")
# A cell's column for each metric of the latency-and-cost table.
COLUMNS = {"mean_ms": "average_latency", "p95_ms": "95th_latency",
           "replica_core_s": "replica_core_s", "node_memory_gb_s": "node_memory_gb_s",
           "placement_changes": "placement_changes", "oom_events": "oom_events"}


def cell(args: tuple[Scenario, str, str, int]) -> dict[str, object]:
    scenario, app, policy, seed = args
    result = simulate(scenario, policy, app=app, seed=seed)
    stats = result.report()["walker_run"]["all"]
    cost = result.cost()
    return {"app": app, "policy": policy, "seed": seed,
            "mean_ms": stats["average_latency"], "p95_ms": stats["95th_latency"],
            "p99_ms": stats["99th_latency"],
            "throughput": stats["throughput"], "oom_events": cost["oom_events"],
            "failed_requests": cost["failed_requests"],
            "placement_changes": cost["placement_changes"],
            "replica_gb_s": cost["replica_memory_gb_s"],
            "replica_core_s": cost["replica_core_s"],
            "node_memory_gb_s": cost["node_memory_gb_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--memory-mb", type=float, default=4096.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--apps", nargs="+", help="default: all eight")
    parser.add_argument("--hindsight", action="store_true",
                        help="add the best static placement (simulates every feasible one)")
    parser.add_argument("--out", default="runs/policy_table")
    args = parser.parse_args(argv)

    base = load(SCENARIO)
    scenario = dataclasses.replace(
        base, duration_s=args.duration,
        node=dataclasses.replace(base.node, memory_mb=args.memory_mb),
        workload=dataclasses.replace(base.workload, clients=args.clients))
    apps = args.apps or list(base.apps)
    cells = [(scenario, app, policy, seed) for app in apps for policy in POLICIES
             for seed in args.seeds]
    print(f"{len(cells)} simulations ({len(apps)} apps x {len(POLICIES)} policies x "
          f"{len(args.seeds)} seeds), {args.workers} workers ...", file=sys.stderr)
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(cell, cells, chunksize=2))
    frame = pd.DataFrame(rows)
    if args.hindsight:
        best = [{"app": app, "policy": "best_static", "seed": seed,
                 "mean_ms": best_static(scenario, app=app, seed=seed,
                                        workers=args.workers).best_latency_ms}
                for app in apps for seed in args.seeds]
        frame = pd.concat([frame, pd.DataFrame(best)], ignore_index=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / f"cells_{args.clients}clients.csv", index=False)

    print(f"\nMean walker latency (ms), JSORC loadtest, node {args.memory_mb:g} MB, "
          f"{args.clients} closed-loop client(s), {args.duration:g} simulated s, "
          f"seeds {' '.join(map(str, args.seeds))}")
    print(table(frame, apps).to_string())
    order = [*POLICIES, "best_static"]
    print("\n" + latency_cost.format_table(latency_cost_frame(frame, "jsorc_loadtest"),
                                           args.seeds, order))
    return 0


def latency_cost_frame(frame: pd.DataFrame, scenario: str) -> pd.DataFrame:
    """The cells (one row per app, policy and seed) as jsorc_sim.latency_cost's table: the
    long form an experiment's results have, summarised over seeds as an experiment's are."""
    present = [c for c in COLUMNS if c in frame.columns]
    long = frame.melt(id_vars=["app", "policy", "seed"], value_vars=present,
                      var_name="metric", value_name="value")
    long["metric"] = long["metric"].map(COLUMNS)
    long.insert(0, "scenario", scenario)
    long["value"] = long["value"].astype(float)
    return latency_cost.frame(summarise(long[["scenario", "app", "policy", "seed", "metric",
                                              "value"]]))


def table(frame: pd.DataFrame, apps: list[str]) -> pd.DataFrame:
    rows = {}
    for app in apps:
        mine = frame[frame["app"] == app]
        row: dict[str, str] = {}
        for policy in POLICIES:
            values = mine.loc[mine["policy"] == policy, "mean_ms"]
            row[policy] = "OOM" if values.isna().any() else f"{values.mean():.1f}"
        hindsight = mine.loc[mine["policy"] == "best_static", "mean_ms"]
        if len(hindsight):
            row["best static"] = f"{hindsight.mean():.1f}"
        row["model_based vs evaluation"] = paired(mine)
        rows[app] = row
    return pd.DataFrame(rows).T


def paired(mine: pd.DataFrame) -> str:
    """How much lower model_based's latency is than evaluation's, paired by seed."""
    ours = mine[mine["policy"] == "model_based"].set_index("seed")["mean_ms"]
    theirs = mine[mine["policy"] == "evaluation"].set_index("seed")["mean_ms"]
    if theirs.isna().any():
        return "evaluation fails (OOM)"
    if ours.isna().any():
        return "model_based fails"
    lower = ((theirs - ours) / theirs).to_numpy(dtype=float)
    seeds = ", ".join(f"{100 * x:+.1f}" for x in lower)
    return f"{100 * np.mean(lower):+.1f} % lower (seeds {seeds})"


if __name__ == "__main__":
    raise SystemExit(main())
