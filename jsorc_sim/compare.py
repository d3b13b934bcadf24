"""The fair comparison (issue #14): tuned baselines, latency against cost, a clairvoyant bound.

`jsorc-sim compare FILE.toml [--out DIR] [--workers N] [--quick]` runs, from one file
(experiments/comparison.toml is the project's):

1. **Tuning**: every policy that has a `space` -- model_based and each baseline -- is tuned
   with `jsorc-sim tune` on the same train cells, objective and budget (the file's `[tune]`);
   the tune file written for each is kept (`DIR/tune/LABEL.toml`, runnable alone) beside its
   outputs, and the tuned values go in `DIR/tuned.json`. Baselines are every JSORC placement
   policy and `all_remote` composed with every autoscaler (`[baselines]`).
2. **Workloads**: one experiment per `[[workload]]` (`DIR/experiments/LABEL.toml`, runnable
   alone with `jsorc-sim experiment`; its outputs in `DIR/LABEL/`), every policy with its
   tuned values.
3. **The clairvoyant bound** (jsorc_sim.clairvoyant): per workload cell and `[bound] seeds`,
   the best static placement and the best piecewise-static schedule chosen with hindsight.
4. **Tables and plots** (jsorc_sim.compare_report): per workload cell, every policy's mean
   and p95 walker latency beside replica core-seconds, node GB·s, placement changes and
   out-of-memory events, its objective and its regret against the bound, and whether it is on
   the Pareto front; a Pareto plot per workload; the issue's targets with PASS / FALL SHORT.

Every stage is resumable: a tune whose file is unchanged, an experiment cell or a bound cell
already computed is not run again (delete its folder to force it). `--quick` shrinks every
stage (budgets, seeds, durations) for the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from jsorc_sim import outputs
from jsorc_sim.compare_file import (
    CompareError,
    Comparison,
    LearnedSpec,
    PolicySpec,
    WorkloadSpec,
    load_comparison,
    shrink,
)
from jsorc_sim.scenario import ScenarioError
from jsorc_sim.tune_space import nest

if TYPE_CHECKING:
    from jsorc_sim.compare_report import Report
    from jsorc_sim.experiment import ExperimentResult

__all__ = ["LATENCY_COST", "CompareError", "Comparison", "LearnedSpec", "PolicySpec", "Tuned",
           "WorkloadSpec", "load_comparison", "preflight", "run_comparison", "shrink"]

LATENCY_COST = ("average_latency", "95th_latency", "replica_core_s", "node_memory_gb_s",
                "placement_changes", "oom_events")
KIND = "comparison"  # what the output folder's manifest says wrote its files


# ----------------------------------------------------------------------------- tuning

def tune_file(c: Comparison, policy: PolicySpec) -> dict[str, Any]:
    """The `jsorc-sim tune` file for one policy: the shared cells and budget, its space."""
    tune = dict(c.tune)
    spec: dict[str, Any] = {"name": f"{c.name}_{policy.label}", "policy": policy.name,
                            "objective": c.objective,
                            **{k: v for k, v in tune.items() if k not in ("train", "test")},
                            "space": dict(policy.space), "fixed": dict(policy.params),
                            "train": tune["train"], "test": tune["test"]}
    if c.traces_dir:
        spec["traces_dir"] = str(c.traces_dir)
    return spec


@dataclass(frozen=True)
class Tuned:
    """One policy's tuned values (nested, ready for `make`) and what tuning found."""

    label: str
    params: Mapping[str, Any]
    default_params: Mapping[str, Any]
    train_default: float | None
    train_tuned: float | None
    test_default: float | None
    test_tuned: float | None


def tune_all(c: Comparison, out: Path, workers: int, progress: bool) -> dict[str, Tuned]:
    """Tune every policy with a space (skipping a tune whose file and outputs are there)."""
    from jsorc_sim.tune import load_tune, run_tune

    found: dict[str, Tuned] = {}
    tuned = [p for p in c.policies if p.tuned]
    for i, policy in enumerate(tuned, 1):
        folder = out / "tune" / policy.label
        file = out / "tune" / f"{policy.label}.toml"
        text = tomli_w.dumps(tune_file(c, policy))
        summary_path = folder / "tune.json"
        # Done only if the tune that wrote tune.json ran this very file (it records its text):
        # a changed space, budget or cell set tunes again, an interrupted tune too.
        if not (summary_path.is_file() and _recorded(summary_path) == text):
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(text)
            _say(progress, f"tune {i}/{len(tuned)}: {policy.label}")
            started = time.perf_counter()
            run_tune(load_tune(file, traces_dir=c.traces_dir), folder, workers=workers,
                     progress=progress)
            _say(progress, f"  {policy.label} tuned in {time.perf_counter() - started:.0f} s")
        summary = json.loads(summary_path.read_text())
        found[policy.label] = Tuned(
            policy.label, nest({**policy.params, **summary["best"]["params"]}),
            nest({**policy.params, **summary["default"]["params"]}),
            _objective(summary["default"], "train"), _objective(summary["best"], "train"),
            _objective(summary["default"], "test"), _objective(summary["best"], "test"))
    return found


def _recorded(summary: Path) -> str | None:
    try:
        text = json.loads(summary.read_text()).get("tune_file")
    except (OSError, ValueError):
        return None
    return text if isinstance(text, str) else None


def _objective(trial: Mapping[str, Any], which: str) -> float | None:
    value = trial.get(which, {}).get("objective")
    return None if value is None else float(value)


# ----------------------------------------------------------------------------- learned

def train_learned(c: Comparison, out: Path, progress: bool) -> tuple[Path | None, str]:
    """Train the learned policy unless its folder holds the same training; (folder, note)."""
    spec = c.learned
    if spec is None:
        return None, ""
    try:
        from jsorc_sim import rl  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:  # pragma: no cover - the module imports without the extra
        return None, f"{spec.label}: not run ({exc})"
    folder = out / spec.label
    wanted = {"scenario": spec.scenario, "apps": list(spec.apps), "set": dict(spec.set),
              "timesteps": spec.timesteps, "seed": spec.seed, "objective": c.objective}
    stamp = folder / "comparison_training.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted and \
            (folder / "model.zip").is_file():
        return folder, ""
    _say(progress, f"training {spec.label} ({spec.timesteps} timesteps)")
    # In a fresh process: torch's thread pool does not survive the forks that the workload
    # stages make (their workers would hang), so this process never imports it.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            pool.submit(rl.train_ppo, spec.scenario, apps=list(spec.apps) or None,
                        overrides=dict(spec.set), timesteps=spec.timesteps, seed=spec.seed,
                        objective=c.objective, out=folder).result()
        except ImportError as exc:
            return None, f"{spec.label}: not run: {exc}"
    stamp.write_text(json.dumps(wanted, indent=2) + "\n")
    return folder, ""


# ----------------------------------------------------------------------------- workloads

def experiment_file(c: Comparison, w: WorkloadSpec, tuned: Mapping[str, Tuned],
                    learned: Path | None) -> dict[str, Any]:
    """The experiment file of one workload: every policy that runs on it, tuned."""
    scenario: dict[str, Any] = {"file": w.scenario, "label": w.label}
    if w.apps:
        scenario["apps"] = list(w.apps)
    if w.set:
        scenario["set"] = dict(w.set)
    if w.grid:
        scenario["grid"] = {k: list(v) for k, v in w.grid.items()}
    policies = []
    for p in c.policies:
        if p.workloads and w.label not in p.workloads:
            continue
        params = dict(tuned[p.label].params) if p.label in tuned else nest(p.params)
        policies.append({"name": p.name, "label": p.label, "params": params})
    if learned is not None and c.learned is not None and (
            not c.learned.workloads or w.label in c.learned.workloads):
        policies.append({"name": c.learned.policy, "label": c.learned.label,
                         "params": {"model": str(learned)}})
    exp: dict[str, Any] = {"name": f"{c.name}_{w.label}", "seeds": list(w.seeds or c.seeds),
                           "metrics": list(LATENCY_COST), "plots": ["summary"],
                           "traces_dir": str(c.traces_dir),
                           "scenario": [scenario], "policy": policies}
    if w.duration_s is not None:
        exp["duration_s"] = w.duration_s
    return exp


def run_workloads(c: Comparison, tuned: Mapping[str, Tuned], learned: Path | None, out: Path,
                  workers: int, progress: bool, notes: list[str] | None = None
                  ) -> dict[str, ExperimentResult]:
    """One experiment per workload; failed cells, policy errors and the runs' warnings of each
    go into `notes` (the report prints them)."""
    from jsorc_sim.experiment import load_experiment, run_experiment

    results: dict[str, ExperimentResult] = {}
    for i, w in enumerate(c.workloads, 1):
        folder = out / w.label
        file = out / "experiments" / f"{w.label}.toml"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(tomli_w.dumps(experiment_file(c, w, tuned, learned)))
        exp = load_experiment(file, traces_dir=c.traces_dir)
        _say(progress, f"workload {i}/{len(c.workloads)}: {w.label}")
        started = time.perf_counter()
        results[w.label] = run_experiment(exp, folder, workers=workers, progress=progress)
        done = results[w.label]
        _say(progress, f"  {w.label}: {done.ran} cells run in "
                       f"{time.perf_counter() - started:.0f} s, {done.skipped} already done")
        if notes is not None:
            if done.failed:
                notes.append(f"{w.label}: {done.failed} cells failed (see {folder}/cells; "
                             "jsorc-sim experiment --retry-failed runs them again)")
            notes += [f"{w.label}: {e}" for e in done.policy_errors]
            notes += [f"{w.label}: {e}" for e in done.warnings]
    return results


# ----------------------------------------------------------------------------- bound

def bound_cells(c: Comparison, w: WorkloadSpec) -> list[dict[str, Any]]:
    """The (app, grid point, seed) cells of a workload the bound is computed for."""
    import itertools

    keys = list(w.grid)
    points = [dict(zip(keys, values, strict=True))
              for values in itertools.product(*(w.grid[k] for k in keys))] or [{}]
    seeds = [s for s in c.bound["seeds"] if s in (w.seeds or c.seeds)] or \
        list(w.seeds or c.seeds)[:1]
    return [{"app": app, "grid": point, "seed": seed}
            for app in (w.apps or ("all",)) for point in points for seed in seeds]


def _expand(value: Any, traces: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{traces}", str(traces))
    if isinstance(value, Mapping):
        return {k: _expand(v, traces) for k, v in value.items()}
    return value


def run_bounds(c: Comparison, out: Path, workers: int, progress: bool,
               notes: list[str], budget_s: float | None = None) -> list[dict[str, Any]]:
    """The clairvoyant bound and best static of every workload cell (cached per cell); a
    cell whose bound cannot be computed is added to `notes`. Cells go cheapest first (fewer
    clients before more, then the file's order), and with `budget_s` no new bound starts
    after that many seconds of this stage: the cells left are named in `notes` and computed
    by the next run (the stage is resumable)."""
    from jsorc_sim import clairvoyant  # type: ignore[attr-defined,unused-ignore]

    jobs = []
    for order, w in enumerate(c.workloads):
        if not w.bound or not c.bound.get("enabled", True):
            continue
        for cell in bound_cells(c, w):
            load = sum(float(v) for k, v in cell["grid"].items() if k.endswith("clients")
                       and isinstance(v, int | float))
            jobs.append((load, order, w, cell))
    jobs.sort(key=lambda job: (job[0], job[1]))
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    left: list[str] = []
    for j, (_load, _order, w, cell) in enumerate(jobs, 1):
        overrides = {**_expand(dict(w.set), c.traces_dir), **cell["grid"]}
        job = {"scenario": w.scenario, "scenario_sha256": hashlib.sha256(
                   Path(w.scenario).read_bytes()).hexdigest(),
               "app": cell["app"], "seed": cell["seed"],
               "overrides": overrides, "duration_s": w.duration_s,
               "objective": c.objective, **{k: c.bound[k] for k in
                                            ("stretches", "ladder", "max_candidates",
                                             "shortlist")}}
        key = hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()
                             ).hexdigest()[:16]
        path = out / w.label / "bound" / f"{key}.json"
        failed = path.with_suffix(".failed")
        where = f"{w.label} {cell['app']} {_point_text(cell['grid'])} seed {cell['seed']}"
        if failed.is_file():  # recorded, not retried: delete the file to try again
            notes.append(failed.read_text().strip())
            continue
        if not path.is_file():
            if budget_s is not None and time.monotonic() - started > budget_s:
                left.append(where)
                continue
            _say(progress, f"bound {j}/{len(jobs)}: {where}")
            try:
                found = clairvoyant.piecewise_static(
                    w.scenario, seed=cell["seed"],
                    app=None if cell["app"] == "all" else cell["app"],
                    overrides=overrides, duration_s=w.duration_s,
                    stretches=int(c.bound["stretches"]), objective=c.objective,
                    ladder=tuple(c.bound["ladder"]),
                    max_candidates=int(c.bound["max_candidates"]),
                    shortlist=int(c.bound["shortlist"]), workers=workers)
            except clairvoyant.BoundError as exc:
                # No bound for this cell: said in the report, the other cells go on.
                text = f"bound not computed for {where}: {exc}"
                path.parent.mkdir(parents=True, exist_ok=True)
                failed.write_text(text + "\n")
                notes.append(text)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            record = {"job": job, "schedule": list(found.schedule),
                      "metrics": dict(found.metrics), "static": _jsonable(found.static),
                      "method": found.method}
            path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        record = json.loads(path.read_text())
        base = {"workload": w.label, "app": cell["app"], "seed": cell["seed"],
                **{k: v for k, v in cell["grid"].items()}}
        rows.append({**base, "policy": "clairvoyant", **record["metrics"],
                     "schedule": json.dumps(record["schedule"])})
        static = record["static"]
        rows.append({**base, "policy": "best static", **static.get("metrics", {}),
                     "schedule": json.dumps(static.get("placements", {}))})
    if left:
        notes.append(f"bound not computed yet for {len(left)} of {len(jobs)} cells (the "
                     f"--bound-budget of {budget_s:g} s was spent; run the same command "
                     f"again to compute them): {'; '.join(left)}")
    return rows


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _point_text(point: Mapping[str, Any]) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items())


# ----------------------------------------------------------------------------- command

def run_comparison(c: Comparison, out: Path, *, workers: int = 2, progress: bool = True,
                   svg: bool = False, bound_budget_s: float | None = None) -> Report:
    """Every stage, in order, after `preflight`; returns the report."""
    from jsorc_sim import compare_report

    outputs.check(out, compare_report.file_names(c), KIND)
    preflight(c, out)
    started = time.perf_counter()
    tuned = tune_all(c, out, workers, progress)
    learned, note = train_learned(c, out, progress)
    notes = [note] if note else []
    results = run_workloads(c, tuned, learned, out, workers, progress, notes)
    bounds = run_bounds(c, out, workers, progress, notes, bound_budget_s)
    report = compare_report.build(c, tuned, results, bounds, out, notes=notes, svg=svg)
    report.wall_s = time.perf_counter() - started
    return report


def preflight(c: Comparison, out: Path) -> None:
    """Build every tune and every experiment the file implies (defaults for tuned values) and
    check them, so a bad policy name, parameter, app or scenario field is refused before
    anything simulates, not hours in: one CompareError listing every problem."""
    from jsorc_sim.experiment import ExperimentError, load_experiment
    from jsorc_sim.tune import TuneError, tune_spec

    problems: list[str] = []
    for policy in c.policies:
        if policy.tuned:
            try:
                tune_spec(tune_file(c, policy), base_dir=c.path.parent,
                          traces_dir=c.traces_dir)
            except (TuneError, ScenarioError) as exc:
                problems.append(f"tuning {policy.label!r}: {exc}")
    folder = out / "experiments"
    for w in c.workloads:
        file = folder / f"{w.label}.toml"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            file.write_text(tomli_w.dumps(experiment_file(c, w, {}, None)))
            load_experiment(file, traces_dir=c.traces_dir)
        except (ExperimentError, ScenarioError) as exc:
            problems.append(f"workload {w.label!r}: {exc}")
    if problems:
        raise CompareError(str(c.path), problems)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "compare", help="the fair comparison: tune every policy, run every workload, the "
        "clairvoyant bound, latency-and-cost tables, Pareto plots and the targets",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("file", help="comparison TOML file (experiments/comparison.toml)")
    p.add_argument("--out", metavar="DIR", help="where everything goes (default runs/NAME)")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument("--traces", metavar="DIR", help="what {traces} expands to")
    p.add_argument("--quick", action="store_true",
                   help="tiny budgets, one seed, short runs: a first look (and the tests)")
    p.add_argument("--svg", action="store_true", help="SVG plots beside the PNGs")
    p.add_argument("--bound-budget", type=float, metavar="S",
                   help="start no new clairvoyant bound after S seconds of that stage (cheapest "
                   "cells first); the report names the cells left, a rerun computes them")
    p.add_argument("--no-progress", action="store_true", help="nothing on stderr while it runs")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise CompareError("--workers", [f"must be at least 1, got {args.workers}"])
    c = load_comparison(args.file, args.traces, quick=args.quick)
    out = Path(args.out) if args.out else Path("runs") / c.name
    if args.bound_budget is not None and not args.bound_budget >= 0:
        raise CompareError("--bound-budget", [f"must be a number of seconds >= 0, got "
                                              f"{args.bound_budget}"])
    report = run_comparison(c, out, workers=args.workers, progress=not args.no_progress,
                            svg=args.svg, bound_budget_s=args.bound_budget)
    print(report.text)
    return 0


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"compare: {text}", file=sys.stderr, flush=True)
