"""`jsorc-sim validate`: run the live system, calibrate on some runs, predict the others.

    jsorc-sim validate [--out DIR] [--short] [--duration S] [--set dotted.path=value]...
                       [--reuse-runs]

The plan (`make validate`; about 26 live runs of 20-30 s, some 15 minutes on 2 cores):

- 4 of JSORC's loadtest apps (restaurant_chatbot, sentence_pairing, discussion_analysis,
  flow_analysis) under all_local, all_remote and a mixed static placement (the app's largest
  model remote, the others local), each with 1 and 4 closed-loop clients;
- two runs under dynamic policies on restaurant_chatbot with 4 clients, starting from
  all_remote: `evaluation` (4 s trial phases) and `model_based`, every 2 s, so actions move
  while traffic flows;
- the ranking set: the five policies on that one workload (all_local, all_remote, mixed,
  evaluation, model_based), ordered by mean latency live and simulated.

Training set: per app, its 1-client runs under all_local and all_remote (each action's
local and remote service time) and its 4-client all_local run (how local calls stretch
when they share the two cores: without it calibration sees no contention, and the 4-client
predictions came out 2-3x too fast). `jsorc-sim calibrate` takes folders of one action set,
so each app is calibrated on its own runs. Held out, and predicted from the app's
calibrated scenario with `--set`-style overrides (clients, placement, policy, duration)
read from each run's run.json: the mixed placements (never seen together), the 4-client
runs with remote actions (remote under contention never seen) and the dynamic-policy runs
(a policy never seen). `--short` (the test in `make test`): one app,
train on all_local and all_remote with 1 client, predict mixed with 2 clients, 8 s each.

Compared (jsorc_sim.validate_compare): per run mean, p50 and p95 walker latency and
throughput, live as the runtime measured each walker run (requests.parquet `server_ms`, the
figure JSORC's benchmark reports; calibration turns the client's HTTP hop into think time),
with MAPE and Pearson r per metric over the held-out runs; placement changes (target and control
interval); the ranking (Kendall tau, batch-means 95 % intervals). Written to --out:
`live/NAME/` (each loadtest folder), `calibrated/APP.toml`, `validate.json`, `validate.png`
(simulated against measured, identity line). Exit 0 when validation ran (the targets are
reported, not enforced), 1 when the live system failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from jsorc_sim import validate_compare as vc
from jsorc_sim.validate_live import LiveError, LiveRun, placement_of, run_live

SEEDS = (1, 2, 3)  # simulated replications per run, averaged
TARGET_MAPE = 10.0  # %, the target on mean and p95 latency and throughput
PLACEMENTS = ("all_local", "all_remote", "mixed")
DYNAMIC = {"evaluation": {"eval_phase_s": 4.0}, "model_based": {}}
RANKED_APP, RANKED_CLIENTS = "restaurant_chatbot", 4
FULL_APPS = ("restaurant_chatbot", "sentence_pairing", "discussion_analysis", "flow_analysis")
# (clients, placement) of each app's training runs; see the module's docstring for why.
TRAIN = {(1, "all_local"), (1, "all_remote"), (4, "all_local")}


class ValidateError(ValueError):
    """Bad input to validate (an --out folder in the way, a bad --set): exit code 2."""


class Calibrated(Protocol):
    def write(self, path: str | Path) -> Any: ...


Calibrator = Callable[[Sequence[Path]], Calibrated]


def plan(short: bool = False, duration_s: float | None = None) -> tuple[LiveRun, ...]:
    """The live runs, in the order they run (training runs first)."""
    if short:
        d = duration_s or 8.0
        app = RANKED_APP
        return (*(LiveRun(f"{app}-{p}-c1", app, 1, d, placement_of(app, p), p, train=True)
                  for p in ("all_local", "all_remote")),
                LiveRun(f"{app}-mixed-c2", app, 2, d, placement_of(app, "mixed"), "mixed"))
    d = duration_s or 20.0
    runs = [LiveRun(f"{app}-{p}-c{c}", app, c, d, placement_of(app, p), p,
                    train=(c, p) in TRAIN)
            for c in (1, 4) for app in FULL_APPS for p in PLACEMENTS]
    runs.sort(key=lambda r: not r.train)
    for policy, params in DYNAMIC.items():
        runs.append(LiveRun(f"{RANKED_APP}-{policy}-c{RANKED_CLIENTS}", RANKED_APP,
                            RANKED_CLIENTS, max(d, 30.0), placement_of(RANKED_APP, "all_remote"),
                            policy, policy=policy, params=params))
    return tuple(runs)


@dataclass(frozen=True)
class Compared:
    """One run, live against simulated."""

    run: LiveRun
    live: vc.Metrics
    sim: vc.Metrics
    live_mean: vc.Interval
    sim_mean: vc.Interval
    changes: vc.ChangeMatch | None


@dataclass(frozen=True)
class Validation:
    runs: tuple[Compared, ...]
    errors: Mapping[str, vc.MetricError]  # held-out runs
    train_errors: Mapping[str, vc.MetricError]
    ranking: vc.Ranking | None
    out: Path

    @property
    def held_out(self) -> tuple[Compared, ...]:
        return tuple(c for c in self.runs if not c.run.train)


def validate(out: Path, runs: Sequence[LiveRun], *, overrides: Mapping[str, Any] | None = None,
             reuse: bool = False, calibrator: Calibrator | None = None,
             log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
             ) -> Validation:
    """Run the live plan into `out/live/`, calibrate each app on its training runs, simulate
    every run from its app's calibration, and compare."""
    if calibrator is None:
        from jsorc_sim.calibrate import calibrate

        calibrator = calibrate
    folders = {run.name: out / "live" / run.name for run in runs}
    in_the_way = [str(f) for f in folders.values() if f.exists() and not reuse]
    if in_the_way:
        raise ValidateError(f"--out {out}: {in_the_way[0]} exists (another --out, or "
                            "--reuse-runs to compare those runs again)")
    for i, run in enumerate(runs, 1):
        folder = folders[run.name]
        if (folder / "run.json").is_file():
            log(f"[{i}/{len(runs)}] {run.name}: reusing {folder}")
            continue
        started = time.monotonic()
        run_live(run, folder)
        log(f"[{i}/{len(runs)}] {run.name}: {run.clients} client(s), {run.duration_s:g} s, "
            f"live in {time.monotonic() - started:.0f} s")
    scenarios: dict[str, Path] = {}
    for app in dict.fromkeys(r.app for r in runs):
        train = [folders[r.name] for r in runs if r.app == app and r.train]
        if not train:
            raise ValidateError(f"app {app}: no training run in the plan")
        scenarios[app] = out / "calibrated" / f"{app}.toml"
        calibrator(train).write(scenarios[app])
    compared = tuple(_compare(run, folders[run.name], scenarios[run.app], overrides or {})
                     for run in runs)
    pairs = [(c.run.name, c.live, c.sim) for c in compared]
    held = [p for p, c in zip(pairs, compared, strict=True) if not c.run.train]
    trained = [p for p, c in zip(pairs, compared, strict=True) if c.run.train]
    return Validation(compared, vc.metric_errors(held), vc.metric_errors(trained),
                      _ranking(compared), out)


def sim_overrides(record: Mapping[str, Any], run: LiveRun) -> dict[str, Any]:
    """The run as overrides of its app's calibrated scenario, from its run.json."""
    placements = record.get("placements_at_start") or record.get("placements") or {}
    table: dict[str, Any] = {
        "duration_s": float(record["duration_s"]), "warmup_s": 0.0,
        "workload.kind": "closed", "workload.clients": int(record["clients"]),
        "placement": {a: str(p) for a, p in placements.items() if a in run.actions},
    }
    policy = record.get("policy")
    if isinstance(policy, Mapping) and policy.get("name"):
        table["policy"] = {"name": str(policy["name"]), "params": dict(policy.get("params") or {}),
                           "interval_s": float(policy.get("interval_s") or run.interval_s)}
    else:
        table["policy"] = {"name": "none"}
    return table


def _compare(run: LiveRun, folder: Path, scenario: Path,
             overrides: Mapping[str, Any]) -> Compared:
    import pandas as pd  # not at the top: every `jsorc-sim` command builds our parser

    from jsorc_sim.simulate import simulate

    record = json.loads((folder / "run.json").read_text())
    table = {**sim_overrides(record, run), **overrides}
    results = [simulate(scenario, overrides=table, app=run.app, seed=seed) for seed in SEEDS]
    sims = [vc.Metrics.from_report(r.report()["walker_run"].get(run.app, {})) for r in results]
    sim_latency = pd.concat([r.requests[r.requests["ok"]] for r in results])
    live, live_latency = _live_view(folder, float(record["duration_s"]))
    changes = None
    if run.policy is not None:
        live_changes = vc.changes(record.get("decisions") or ())
        decisions = results[0].decisions
        # The policy's own moves: not the scenario's initial placement, nor cold starts.
        decisions = decisions[~decisions["source"].isin(("scenario", "runtime"))]
        sim_changes = vc.changes({str(k): v for k, v in row.items()} for row in
                                 decisions.assign(t=decisions["ts"]).to_dict("records"))
        changes = vc.match_changes(live_changes, sim_changes, run.interval_s)
    return Compared(run, live, vc.Metrics.mean_of(sims), vc.batch_means(live_latency),
                    vc.batch_means(sim_latency.sort_values("ts")["latency_ms"].tolist()),
                    changes)


def _live_view(folder: Path, duration_s: float) -> tuple[vc.Metrics, list[float]]:
    """A live run's walker latency as the runtime measured it (`server_ms`, what JSORC's
    benchmark reports and the simulator's requests measure: the client's HTTP hop is the
    calibrated think time), of its successful walker runs in time order, and their number
    per second of the run. Folders without `server_ms` fall back on the client's view."""
    import pandas as pd

    requests = pd.read_parquet(folder / "requests.parquet")
    ok = requests[requests["ok"]].sort_values("ts")
    column = "server_ms" if "server_ms" in ok.columns else "latency_ms"
    latency = ok[column].to_numpy(float)
    latency = latency[np.isfinite(latency)]
    if latency.size == 0:
        return vc.Metrics(math.nan, math.nan, math.nan, 0.0), []
    return vc.Metrics(float(latency.mean()), float(np.percentile(latency, 50)),
                      float(np.percentile(latency, 95)), latency.size / duration_s), \
        latency.tolist()


def _ranking(compared: Sequence[Compared]) -> vc.Ranking | None:
    ranked = [c for c in compared if c.run.app == RANKED_APP and c.run.clients == RANKED_CLIENTS]
    if len(ranked) < 4:
        return None
    return vc.rank(f"{RANKED_APP}, {RANKED_CLIENTS} clients", [c.run.label for c in ranked],
                   [c.live_mean for c in ranked], [c.sim_mean for c in ranked])


# ----------------------------------------------------------------------------- report


def header(runs: Sequence[LiveRun]) -> str:
    train = [r.name for r in runs if r.train]
    held = [r.name for r in runs if not r.train]
    return (f"jsorc-sim validate: {len(runs)} live runs, simulated {len(SEEDS)} seeds each "
            f"from the calibration of the run's app\n  training (calibrated on): "
            f"{', '.join(train)}\n  held out (predicted): {', '.join(held)}")


def format_report(v: Validation) -> str:
    lines = [header([c.run for c in v.runs]), ""]
    head = ("run", "set", *(f"{vc.LABELS[m]} live/sim (err %)" for m in vc.METRICS))
    rows = [head]
    for c in v.runs:
        rows.append((c.run.name, "train" if c.run.train else "held-out",
                     *(f"{_f(c.live.get(m))} / {_f(c.sim.get(m))} "
                       f"({_signed(vc.signed_error(c.sim.get(m), c.live.get(m)))})"
                       for m in vc.METRICS)))
    lines += _table(rows)
    lines += ["", f"Over the {len(v.held_out)} held-out runs (training runs in brackets; "
              f"target MAPE <= {TARGET_MAPE:g} % on mean, p95 and throughput):"]
    rows = [("metric", "MAPE %", "Pearson r", "largest error", "")]
    for m in vc.METRICS:
        e, t = v.errors[m], v.train_errors[m]
        rows.append((vc.LABELS[m], f"{_f(e.mape, 1)} [{_f(t.mape, 1)}]",
                     f"{_f(e.pearson_r, 3)} [{_f(t.pearson_r, 3)}]",
                     f"{_signed(e.worst_error)} {e.worst_run}",
                     "" if m == "p50_ms" else
                     ("met" if e.mape <= TARGET_MAPE else "missed")))
    lines += _table(rows)
    dynamic = [c for c in v.runs if c.changes is not None]
    if dynamic:
        lines += ["", "Placement changes (live decision log vs simulated decisions; matched: "
                  "same target, same control interval or one off):"]
        for c in dynamic:
            assert c.changes is not None
            match = c.changes
            lines.append(f"  {c.run.name}: {match.matched} of {match.total} matched "
                         f"(interval {match.interval_s:g} s)")
            lines.append("    live: " + _changes(match.live))
            lines.append("    sim:  " + _changes(match.sim))
    if v.ranking is not None:
        r = v.ranking
        lines += ["", f"Policy ranking by mean latency, {r.workload} (95 % batch-means "
                  "intervals):"]
        for label, live, sim in zip(r.labels, r.live, r.sim, strict=True):
            lines.append(f"  {label:12s} live {_ci(live)}   sim {_ci(sim)}")
        lines.append(f"  live order: {' < '.join(r.order('live'))}")
        lines.append(f"  sim order:  {' < '.join(r.order('sim'))}")
        swaps = ", ".join(f"{a}/{b} ({'intervals overlap' if ok else 'NOT explained'})"
                          for a, b, ok in r.swaps) or "none"
        lines.append(f"  Kendall tau {_f(r.tau, 3)}; swapped pairs: {swaps}")
    lines += ["", f"wrote {v.out}/validate.json, {v.out}/validate.png"]
    return "\n".join(lines)


def _changes(changes: Sequence[vc.Change]) -> str:
    return ", ".join(f"{c.t:.1f}s {c.action}->{c.placement}" for c in changes) or "none"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) if j < 2 else c.rjust(w)
                     for j, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
           for row in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def _f(value: float, digits: int = 2) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:+.1f}"


def _ci(i: vc.Interval) -> str:
    return f"{_f(i.mean)} [{_f(i.low)}, {_f(i.high)}] ms"


def to_json(v: Validation) -> dict[str, Any]:
    def plain(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: plain(y) for k, y in x.items()}
        if isinstance(x, list | tuple):
            return [plain(y) for y in x]
        return x

    document: dict[str, Any] = plain({
        "runs": [{"name": c.run.name, "train": c.run.train, "app": c.run.app,
                  "clients": c.run.clients, "label": c.run.label,
                  "duration_s": c.run.duration_s, "live": asdict(c.live), "sim": asdict(c.sim),
                  "error_pct": {m: vc.signed_error(c.sim.get(m), c.live.get(m))
                                for m in vc.METRICS},
                  "live_mean_ci": asdict(c.live_mean), "sim_mean_ci": asdict(c.sim_mean),
                  "changes": None if c.changes is None else {
                      **asdict(c.changes), "total": c.changes.total}}
                 for c in v.runs],
        "held_out": {m: asdict(e) for m, e in v.errors.items()},
        "train": {m: asdict(e) for m, e in v.train_errors.items()},
        "ranking": None if v.ranking is None else {
            **asdict(v.ranking), "live_order": v.ranking.order("live"),
            "sim_order": v.ranking.order("sim"), "explained": v.ranking.explained},
        "target_mape_pct": TARGET_MAPE, "seeds": list(SEEDS),
    })
    return document


def plot(v: Validation, path: Path) -> None:
    """Simulated against measured, one panel per metric, with the identity line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(vc.METRICS), figsize=(4.2 * len(vc.METRICS), 4.2))
    for ax, metric in zip(axes, vc.METRICS, strict=True):
        for train, marker, name in ((True, "o", "training"), (False, "s", "held out")):
            pts = [(c.live.get(metric), c.sim.get(metric)) for c in v.runs
                   if c.run.train is train]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.scatter(x, y, marker=marker, label=name,
                           facecolors="none" if train else None,
                           edgecolors="C0" if train else None, c=None if train else "C1")
        values = [c.live.get(metric) for c in v.runs] + [c.sim.get(metric) for c in v.runs]
        finite = [x for x in values if math.isfinite(x)]
        if finite:
            top = max(finite) * 1.1
            ax.plot([0, top], [0, top], "k--", lw=1, label="identity")
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
        e = v.errors[metric]
        ax.set_title(f"{vc.LABELS[metric]}: MAPE {_f(e.mape, 1)} %, r {_f(e.pearson_r, 2)}")
        ax.set_xlabel("measured (live)")
        ax.set_ylabel("simulated")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI


def add_parser(sub: Any) -> None:
    p = sub.add_parser("validate", help="run live workloads, calibrate, predict held-out runs",
                       description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/validate", metavar="DIR",
                   help="where the live runs, calibrated scenarios, validate.json and "
                   "validate.png go (default %(default)s)")
    p.add_argument("--short", action="store_true",
                   help="a tiny plan: one app, 3 runs of 8 s (the test in make test)")
    p.add_argument("--duration", type=float, help="seconds of each static live run")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   dest="overrides", help="override a field of every calibrated scenario "
                   "before simulating (as jsorc-sim run --set); repeatable")
    p.add_argument("--reuse-runs", action="store_true",
                   help="compare the live runs already in --out instead of refusing them")
    p.set_defaults(handler=_cli)


def _cli(args: argparse.Namespace) -> int:
    from jsorc_sim.cli import parse_overrides

    if args.duration is not None and not (args.duration > 0 and math.isfinite(args.duration)):
        raise ValidateError(f"--duration must be a positive number of seconds, got "
                            f"{args.duration}")
    overrides = parse_overrides(args.overrides)
    runs = plan(args.short, args.duration)
    out = Path(args.out)
    print(header(runs), file=sys.stderr)
    try:
        result = validate(out, runs, overrides=overrides, reuse=args.reuse_runs)
    except LiveError as exc:
        print(f"jsorc-sim: live run failed: {exc}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "validate.json").write_text(json.dumps(to_json(result), indent=2) + "\n")
    plot(result, out / "validate.png")
    print(format_report(result))
    return 0
