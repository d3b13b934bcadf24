"""Experiments: many runs of scenarios x policies x seeds, in parallel, resumable.

The file format and the outputs are described in docs/experiments.md (and the README). This
module loads and checks an experiment file (`load_experiment`), expands it into cells
(`cells`), runs the cells through any `concurrent.futures.Executor` -- local processes, or a
Dask cluster's executor -- writing each finished cell atomically (`run_experiment`), and
turns the cells into tidy results, statistics and plots.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from jsorc_sim import latency_cost, outputs
from jsorc_sim.results import COST_METRICS, RUN_KIND, WALKER_METRICS, version
from jsorc_sim.scenario import Scenario, ScenarioError, from_dict, load, read_toml, set_path
from policies import PolicyError, absolute_ref, make

if TYPE_CHECKING:
    # pandas and scipy cost ~1 s to import; `jsorc-sim run` builds this module's parser
    # and never a frame, so they are imported where the results are computed.
    import pandas as pd

METRICS = (*WALKER_METRICS, *COST_METRICS)
PLOTS = ("summary", "speedup", "timeline", "cost")
TEST = "paired two-sided t-test on the per-seed differences (same seeds, same arrivals)"


class ExperimentError(ValueError):
    """An experiment that cannot run; lists every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"{source}: {problems[0]}")
        else:
            super().__init__(f"{source}: {len(problems)} problems:\n  " + "\n  ".join(problems))


class ExperimentInterrupted(RuntimeError):
    """The run stopped early (Ctrl-C, a worker died); finished cells are kept."""


@dataclass(frozen=True)
class PolicyEntry:
    name: str
    label: str
    params: Mapping[str, Any] = field(default_factory=dict)
    only: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ScenarioEntry:
    file: Path
    label: str
    apps: tuple[str, ...] = ()
    set: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    name: str
    path: Path
    text: str
    seeds: tuple[int, ...]
    scenarios: tuple[ScenarioEntry, ...]
    policies: tuple[PolicyEntry, ...]
    metrics: tuple[str, ...] = ("average_latency", "throughput", "99th_latency")
    duration_s: float | None = None
    baseline: str = ""
    save_tables: bool = False
    plots: tuple[str, ...] = ("summary",)
    traces_dir: Path = Path("../shared/traces")


@dataclass(frozen=True)
class Cell:
    """One simulation: a scenario variant, an app (or all), a policy and a seed."""

    key: str
    scenario: str
    app: str
    grid: tuple[tuple[str, Any], ...]
    policy: str
    policy_name: str
    params: Mapping[str, Any]
    seed: int
    trace: str
    table: Mapping[str, Any]  # the resolved scenario table
    base_dir: str

    def describe(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "app": self.app, "grid": dict(self.grid),
                "policy": self.policy, "policy_name": self.policy_name,
                "params": dict(self.params), "seed": self.seed, "trace": self.trace}


# ----------------------------------------------------------------------------- loading

_TOP = {"name", "seeds", "duration_s", "baseline", "metrics", "save_tables", "plots",
        "traces_dir", "scenario", "policy"}


def load_experiment(path: str | Path, traces_dir: str | Path | None = None) -> Experiment:
    """Read and check an experiment file; `traces_dir` (or $JSORC_TRACES) overrides the
    file's. Every problem is found in one pass and raised in one ExperimentError: the file's
    own (fields, metrics, plots, policies, labels, baseline) together with its scenarios'
    (files, apps, overrides, grid values, traces), which need the cells expanded (`cells`)."""
    path = Path(path)
    text, raw = read_toml(path, ExperimentError)
    problems: list[str] = []
    for key in sorted(set(raw) - _TOP):
        problems.append(f"unknown field {key!r} (known: {', '.join(sorted(_TOP))})")
    here = path.parent
    seeds = raw.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        problems.append(f"seeds must be a list of whole numbers >= 0, got {seeds!r}")
        seeds = [0]
    metrics = raw.get("metrics", list(Experiment.metrics))
    for metric in metrics if isinstance(metrics, list) else [metrics]:
        if metric not in METRICS:
            problems.append(f"metrics: unknown metric {metric!r} (metrics: {', '.join(METRICS)})")
    # Without `plots`: the summary, and latency against cost once there is a choice to make.
    entries = raw.get("policy")
    plots = raw.get("plots", ["summary", "cost"] if isinstance(entries, list)
                    and len(entries) >= 2 else ["summary"])
    for plot in plots if isinstance(plots, list) else [plots]:
        if plot not in PLOTS:
            problems.append(f"plots: unknown plot {plot!r} (plots: {', '.join(PLOTS)})")
    duration = raw.get("duration_s")
    if duration is not None and (isinstance(duration, bool)
                                 or not isinstance(duration, int | float) or duration <= 0):
        problems.append(f"duration_s must be a positive number, got {duration!r}")
        duration = None
    scenarios = [_scenario_entry(entry, i, here, problems)
                 for i, entry in enumerate(_tables(raw, "scenario", problems))]
    policies = [_policy_entry(entry, i, here, problems)
                for i, entry in enumerate(_tables(raw, "policy", problems))]
    labels = [p.label for p in policies]
    for label in sorted({x for x in labels if labels.count(x) > 1}):
        problems.append(f"policy label {label!r} is used twice: give each a unique label")
    baseline = raw.get("baseline", "")
    if baseline and baseline not in labels:
        problems.append(f"baseline {baseline!r} is not a policy label ({', '.join(labels)})")
    if "traces_dir" in raw and not isinstance(raw["traces_dir"], str):
        problems.append(f"traces_dir must be a path, got {raw['traces_dir']!r}")
    chosen = traces_dir or os.environ.get("JSORC_TRACES") or raw.get("traces_dir") \
        or "../shared/traces"
    exp = Experiment(
        name=str(raw.get("name", path.stem)), path=path, text=text, seeds=tuple(seeds),
        scenarios=tuple(s for s in scenarios if s is not None), policies=tuple(policies),
        metrics=tuple(metrics) if isinstance(metrics, list) else (str(metrics),),
        duration_s=float(duration) if duration is not None else None, baseline=baseline,
        save_tables=bool(raw.get("save_tables", False)),
        plots=tuple(plots) if isinstance(plots, list) else (str(plots),),
        traces_dir=Path(str(chosen)).expanduser().resolve())
    # The scenarios are expanded even when the file has problems of its own, so that one
    # pass names them all (a scenario entry without a file is left out: it is named above).
    # Expanding builds no policy, so a bad policy entry cannot hide a scenario problem.
    _expand(exp, problems)
    if problems:
        raise ExperimentError(str(path), list(dict.fromkeys(problems)))
    return exp


def _tables(raw: Mapping[str, Any], key: str, problems: list[str]) -> list[Mapping[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        problems.append(f"[[{key}]] must be an array of tables, got {value!r}")
        return []
    if not value:
        problems.append(f"an experiment needs at least one [[{key}]]")
    return value


def _scenario_entry(entry: Mapping[str, Any], i: int, here: Path,
                    problems: list[str]) -> ScenarioEntry | None:
    """The entry, or None when it names no file (a problem says so)."""
    where = f"scenario[{i}]"
    for key in sorted(set(entry) - {"file", "label", "apps", "set", "grid"}):
        problems.append(f"{where}: unknown field {key!r} (known: apps, file, grid, label, set)")
    file = entry.get("file")
    if not isinstance(file, str):
        problems.append(f"{where}: file = \"path/to/scenario.toml\" is required")
        file = None
    apps = entry.get("apps", [])
    if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
        problems.append(f"{where}.apps must be a list of app names, got {apps!r}")
        apps = []
    fixed = entry.get("set", {})
    grid = entry.get("grid", {})
    if not isinstance(fixed, Mapping):
        problems.append(f"{where}.set must be a table of field paths, got {fixed!r}")
        fixed = {}
    if not isinstance(grid, Mapping) or not all(isinstance(v, list) and v
                                                for v in grid.values()):
        problems.append(f"{where}.grid must map field paths to non-empty lists, got {grid!r}")
        grid = {}
    if file is None:
        return None
    return ScenarioEntry(here / file, str(entry.get("label", "")), tuple(apps), dict(fixed),
                         {k: tuple(v) for k, v in grid.items()})


def _policy_entry(entry: Mapping[str, Any], i: int, here: Path,
                  problems: list[str]) -> PolicyEntry:
    where = f"policy[{i}]"
    for key in sorted(set(entry) - {"name", "label", "params", "only"}):
        problems.append(f"{where}: unknown field {key!r} (known: label, name, only, params)")
    name = entry.get("name")
    if not isinstance(name, str):
        problems.append(f"{where}: name = \"policy\" is required")
        name = "none"
    params = entry.get("params", {})
    if not isinstance(params, Mapping):
        problems.append(f"{where}.params must be a table, got {params!r}")
        params = {}
    label = str(entry.get("label", name))
    try:
        # A policy file's path is from the experiment file's folder, like its scenarios'; made
        # absolute here because the cells carry it to worker processes.
        name = absolute_ref(name, here)
        make(name, params)
    except PolicyError as exc:
        problems.append(f"{where}: {exc}")
    only = entry.get("only", {})
    if not isinstance(only, Mapping) or not all(isinstance(v, list) for v in only.values()):
        problems.append(f"{where}.only must map grid fields to lists, got {only!r}")
        only = {}
    return PolicyEntry(name, label, dict(params), {k: tuple(v) for k, v in only.items()})


# ----------------------------------------------------------------------------- cells


def cells(exp: Experiment) -> list[Cell]:
    """Every cell of the experiment, each checked; raises ExperimentError listing problems."""
    problems: list[str] = []
    out = _expand(exp, problems)
    if problems:
        raise ExperimentError(str(exp.path), list(dict.fromkeys(problems)))
    return out


def _expand(exp: Experiment, problems: list[str]) -> list[Cell]:
    """The cells of every scenario variant, appending each scenario problem to `problems`."""
    out: list[Cell] = []
    traces_seen: dict[tuple[str, str], Any] = {}
    for entry in exp.scenarios:
        try:
            base = load(entry.file)
        except ScenarioError as exc:
            problems.append(str(exc))
            continue
        label = entry.label or base.name
        for app in entry.apps:
            if app not in base.apps:
                problems.append(f"scenario {label}: unknown app {app!r} (apps: "
                                f"{', '.join(base.apps)})")
        fields = list(entry.grid)
        for field_name in [*entry.set, *fields]:
            if field_name in ("seed", "name") or field_name.startswith("policy"):
                problems.append(f"scenario {label}: {field_name!r} is set by the experiment, "
                                "not by overrides")
        for values in itertools.product(*entry.grid.values()):
            point = tuple(zip(fields, values, strict=True))
            table = base.to_dict()
            for path, value in [*entry.set.items(), *point]:
                _set_path(table, path, value, exp.traces_dir, problems, label)
            if exp.duration_s is not None:
                table["duration_s"] = exp.duration_s
            where = f"scenario {label}" + (f" {dict(point)}" if point else "")
            try:
                variant = from_dict(table, source=where, base_dir=base.base_dir)
            except ScenarioError as exc:
                problems.append(str(exc))
                continue
            problems.extend(f"{where}: {p}" for p in _trace_problems(variant, traces_seen))
            trace = Path(variant.workload.trace).name if variant.workload.kind == "trace" else ""
            for policy in exp.policies:
                if any(dict(point).get(k, _MISSING) not in v for k, v in policy.only.items()):
                    continue
                for app in entry.apps or ("",):
                    for seed in exp.seeds:
                        out.append(_cell(label, app, point, policy, seed, trace, table,
                                         base.base_dir))
    return out


_MISSING = object()


def _trace_problems(scenario: Scenario, seen: dict[tuple[str, str], Any]) -> list[str]:
    """Read a trace workload's file once (malformed lines, map entries naming no stream)."""
    from jsorc_sim.workload import unmatched_streams
    from jsorc_traces import TraceError, read_trace

    workload = scenario.workload
    if workload.kind != "trace":
        return []
    key = (str(scenario.resolve(workload.trace)), workload.trace_format)
    if key not in seen:
        try:
            # The whole file is checked and every stream named whatever the window, so a
            # 1 s window spares expanding a day of per-minute counts just to check the map.
            seen[key] = read_trace(key[0], workload.trace_format, spread=workload.spread,
                                   llm_size=workload.llm_size, max_s=1.0)
        except (TraceError, ValueError) as exc:
            seen[key] = str(exc)
    arrivals = seen[key]
    if isinstance(arrivals, str):
        return [arrivals]
    return unmatched_streams(workload.map, arrivals)


def _cell(label: str, app: str, point: tuple[tuple[str, Any], ...], policy: PolicyEntry,
          seed: int, trace: str, table: Mapping[str, Any], base_dir: str) -> Cell:
    identity = {"table": table, "base_dir": str(Path(base_dir).resolve()), "app": app,
                "policy": policy.name, "params": dict(policy.params), "seed": seed}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    return Cell(digest.hexdigest()[:16], label, app, point, policy.label, policy.name,
                dict(policy.params), seed, trace, table, base_dir)


def _set_path(table: dict[str, Any], path: str, value: Any, traces: Path,
              problems: list[str], label: str) -> None:
    if isinstance(value, str):
        value = value.replace("{traces}", str(traces))
    problem = set_path(table, path, value)
    if problem:
        problems.append(f"scenario {label}: {problem}")


# ----------------------------------------------------------------------------- running


def run_cell(cell: Cell, tables_dir: str | None = None) -> dict[str, Any]:
    """Simulate one cell (in a worker); never raises: a failure is returned as a record."""
    from jsorc_sim.simulate import simulate

    started = time.perf_counter()
    try:
        table = {**cell.table}
        if isinstance(table.get("workload"), Mapping) and "{traces}" in str(
                table["workload"].get("trace", "")):
            raise ScenarioError(cell.scenario, ["{traces} was not expanded"])
        scenario = from_dict(table, source=cell.scenario, base_dir=cell.base_dir)
        result = simulate(scenario, cell.policy_name, params=cell.params, seed=cell.seed,
                          app=cell.app or None)
        if tables_dir:
            result.save(tables_dir)
        failed = [e for e in result.recorder.events if e["kind"] == "policy_error"]
        return {"status": "ok" if result.status == "ok" else "error",
                "error": "" if result.status == "ok" else result.status,
                "report": result.report(), "wall_s": time.perf_counter() - started,
                # The first failed decision, for the experiment's list of policy errors.
                "first_policy_error": f"t={failed[0]['ts']:g} s: {failed[0]['detail']}"
                if failed else ""}
    except Exception as exc:  # a cell's failure is data: recorded, the others go on
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=6), "report": None,
                "wall_s": time.perf_counter() - started}


@dataclass
class ExperimentResult:
    out: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    ran: int
    skipped: int
    failed: int
    warnings: tuple[str, ...] = ()  # the runs' own (warm-up longer than a trace), per variant
    policy_errors: tuple[str, ...] = ()  # per policy: failed decisions and the first error
    # latency_cost.csv: latency beside cost per scenario, app, grid point and policy.
    latency_cost: pd.DataFrame | None = None


def run_experiment(exp: Experiment, out: str | Path | None = None, *, workers: int | None = None,
                   scheduler: str | None = None, overwrite: bool = False,
                   retry_failed: bool = False, svg: bool = False,
                   progress: bool | None = None) -> ExperimentResult:
    """Run every cell not yet finished in `out`, then write results, statistics and plots."""
    import pandas as pd

    all_cells = cells(exp)
    out = Path(out) if out is not None else Path("runs") / exp.name
    _claim(out, exp, overwrite)
    cell_dir = out / "cells"
    cell_dir.mkdir(parents=True, exist_ok=True)
    todo = [c for c in all_cells if _needs_run(cell_dir / f"{c.key}.json", retry_failed)]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    executor, close = _executor(workers, scheduler)
    show = sys.stderr.isatty() if progress is None else progress
    try:
        _run_cells(todo, executor, cell_dir, exp.save_tables, show)
    finally:
        close()
    results = collect(all_cells, cell_dir)
    summary = summarise(results)
    paired = pair(results, exp.baseline) if exp.baseline else pd.DataFrame()
    _write_parquet(out / "results.parquet", results)
    _write_text(out / "summary.csv", summary.to_csv(index=False))
    # Collected whatever `metrics` the file lists: every cell's report keeps the cost keys.
    beside = latency_cost.frame(summary)
    _write_text(out / "latency_cost.csv", beside.to_csv(index=False))
    if exp.baseline:
        _write_text(out / "paired.csv", paired.to_csv(index=False))
    _plots(exp, all_cells, summary, paired, out, svg)
    failed = int((results.drop_duplicates("cell")["status"] != "ok").sum()) if len(results) \
        else 0
    manifest = _manifest(exp, started, total=len(all_cells), ran=len(todo),
                         failed=failed, workers=workers, scheduler=scheduler)
    found = run_warnings(all_cells, cell_dir)
    manifest["warnings"] = list(found)
    errors = policy_errors(exp, all_cells, cell_dir)
    manifest["policy_errors"] = list(errors)
    _write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return ExperimentResult(out, results, summary, paired, len(todo),
                            len(all_cells) - len(todo), failed, found, errors, beside)


def run_warnings(all_cells: Sequence[Cell], cell_dir: Path) -> tuple[str, ...]:
    """The warnings the cells' reports carry (jsorc_sim.results.warmup_warning), one per
    scenario variant and app: the same warm-up under every policy and seed says one thing."""
    found: dict[str, tuple[str, int]] = {}
    for cell in all_cells:
        path = cell_dir / f"{cell.key}.json"
        if not path.exists():
            continue
        report = json.loads(path.read_text()).get("report") or {}
        for warning in report.get("warnings", []):
            where = " ".join(p for p in (cell.scenario, cell.app, _grid_text(cell.grid)) if p)
            first, count = found.get(where, (warning, 0))
            found[where] = (first, count + 1)
    return tuple(f"scenario {where}: {warning} ({count} cell{'s' * (count != 1)})"
                 for where, (warning, count) in found.items())


def policy_errors(exp: Experiment, all_cells: Sequence[Cell], cell_dir: Path
                  ) -> tuple[str, ...]:
    """Per policy whose decisions failed in any cell: how many failed, in how many cells, and
    the first error of its first such cell (the message names the file and line)."""
    found: dict[str, tuple[str, int, int]] = {}  # label: (first, decisions failed, cells)
    for cell in all_cells:
        path = cell_dir / f"{cell.key}.json"
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        count = int(((record.get("report") or {}).get("cost") or {}).get("policy_errors", 0))
        if not count:
            continue
        where = " ".join(p for p in (cell.scenario, cell.app, _grid_text(cell.grid),
                                     f"seed {cell.seed}") if p)
        first = f"{where}, {record.get('first_policy_error') or 'no message kept'}"
        known, total, cells_failed = found.get(cell.policy, (first, 0, 0))
        found[cell.policy] = (known, total + count, cells_failed + 1)
    order = [p.label for p in exp.policies if p.label in found]
    return tuple(f"policy {label}: {found[label][1]} failed decisions in {found[label][2]} "
                 f"cell{'s' * (found[label][2] != 1)}; first: {found[label][0]}"
                 for label in order)


def _grid_text(grid: tuple[tuple[str, Any], ...]) -> str:
    return " ".join(f"{k}={v}" for k, v in grid)


def _claim(out: Path, exp: Experiment, overwrite: bool) -> None:
    manifest = out / "manifest.json"
    if out.exists() and not out.is_dir():
        raise ExperimentError(str(out), ["is a file, not a folder: choose another --out"])
    theirs = _experiment_in(out)
    if theirs is not None and theirs != exp.name:
        if not overwrite:
            raise ExperimentError(str(out), [
                f"holds the results of experiment {theirs!r}, not {exp.name!r}: choose "
                "another --out or pass --overwrite to replace them"])
        _clear(out)
    elif theirs is None and out.exists() and any(out.iterdir()) and not (out / "cells").is_dir():
        # Even with --overwrite: jsorc deletes and overwrites only files it wrote.
        raise ExperimentError(str(out), ["is not empty and holds no experiment: choose "
                                         "another --out (jsorc never deletes or overwrites "
                                         "files it did not write)"])
    out.mkdir(parents=True, exist_ok=True)
    # Claim the folder at once, so that a second experiment cannot start writing into it.
    if not manifest.exists():
        _write_text(manifest, json.dumps({"name": exp.name, "status": "running"}) + "\n")


def _experiment_in(out: Path) -> str | None:
    """The name in `out`'s experiment manifest; None when there is none (or it is not one)."""
    try:
        doc = json.loads((out / "manifest.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    name = doc.get("name") if isinstance(doc, dict) and "written_by" not in doc else None
    return str(name) if name is not None else None


#: What an experiment writes at the top of its folder (besides cells/): `--overwrite`
#: deletes these and nothing else.
_OUTPUTS = ("manifest.json", "results.parquet", "summary.csv", "latency_cost.csv",
            "paired.csv", "summary.*", "speedup.*", "timeline_*.*", "cost.*")


def _clear(out: Path) -> None:
    """Delete another experiment's outputs from `out`, leaving every other file there."""
    for pattern in _OUTPUTS:
        for path in out.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink()
    cells = out / "cells"
    if cells.is_dir():
        for path in cells.iterdir():
            if path.is_dir() and not path.is_symlink():
                outputs.remove(path, RUN_KIND)  # a cell's tables: the files jsorc wrote
            elif path.suffix == ".json" and path.is_file():
                path.unlink()
        if not any(cells.iterdir()):
            cells.rmdir()


def _needs_run(path: Path, retry_failed: bool) -> bool:
    if not path.exists():
        return True
    return retry_failed and json.loads(path.read_text()).get("status") != "ok"


def _executor(workers: int | None, scheduler: str | None) -> tuple[Executor, Callable[[], None]]:
    if scheduler:
        from dask.distributed import Client

        client = Client(scheduler, timeout="20s")  # type: ignore[no-untyped-call]
        dask_executor = client.get_executor()  # type: ignore[no-untyped-call]
        return dask_executor, client.close
    # Forked workers inherit this process's threads' locks: once torch (a learned policy,
    # checked here by building it) has started its thread pool, a forked worker that uses it
    # hangs. Then the workers start from a clean server process instead (slower to start).
    context = multiprocessing.get_context("forkserver") if "torch" in sys.modules else None
    pool = ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=context)
    return pool, lambda: pool.shutdown(wait=True, cancel_futures=True)


def _run_cells(todo: Sequence[Cell], executor: Executor, cell_dir: Path, save_tables: bool,
               show: bool) -> None:
    futures: dict[Future[dict[str, Any]], Cell] = {}
    for cell in todo:
        tables = str(cell_dir / cell.key) if save_tables else None
        futures[executor.submit(run_cell, cell, tables)] = cell
    bar = tqdm(total=len(todo), unit="cell", file=sys.stderr, disable=not show,
               desc="cells", smoothing=0.1)
    done = 0
    try:
        for future in as_completed(futures):
            cell = futures[future]
            record = {"cell": cell.describe(), "key": cell.key, **future.result()}
            _write_text(cell_dir / f"{cell.key}.json", json.dumps(record, indent=1,
                                                                  default=_json_default))
            done += 1
            bar.update(1)
    except KeyboardInterrupt:
        for future in futures:
            future.cancel()
        raise ExperimentInterrupted(
            f"interrupted: {done} of {len(todo)} cells finished and kept; run the same "
            "command again to resume") from None
    except BrokenProcessPool:
        raise ExperimentInterrupted(
            f"a worker process died: {done} of {len(todo)} cells finished and kept; run "
            "the same command again to resume") from None
    finally:
        bar.close()


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


# ----------------------------------------------------------------------------- results


def collect(all_cells: Sequence[Cell], cell_dir: Path) -> pd.DataFrame:
    """The tidy results: one row per finished cell and metric."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    grid_fields = list(dict.fromkeys(k for c in all_cells for k, _ in c.grid))
    for cell in all_cells:
        path = cell_dir / f"{cell.key}.json"
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        base = {"cell": cell.key, "scenario": cell.scenario, "app": cell.app or "all",
                "policy": cell.policy, "policy_name": cell.policy_name,
                "params": json.dumps(dict(cell.params), sort_keys=True), "seed": cell.seed,
                "trace": cell.trace, **{f: dict(cell.grid).get(f) for f in grid_fields},
                "status": record["status"], "error": record.get("error", "")}
        report = record.get("report") or {}
        walker = (report.get("walker_run") or {}).get("all", {})
        cost = report.get("cost") or {}
        for metric in METRICS:
            value = walker.get(metric) if metric in WALKER_METRICS else cost.get(metric)
            rows.append({**base, "metric": metric,
                         "value": float(value) if value is not None else math.nan})
    columns = ["cell", "scenario", "app", "policy", "policy_name", "params", "seed", "trace",
               *grid_fields, "status", "error", "metric", "value"]
    return pd.DataFrame(rows, columns=columns)


def _groups(results: pd.DataFrame) -> list[str]:
    fixed = {"cell", "policy_name", "params", "seed", "trace", "status", "error", "value"}
    return [c for c in results.columns if c not in fixed]


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95 % confidence interval (Student t) across seeds."""
    import pandas as pd

    keys = _groups(results)
    if results.empty:
        return pd.DataFrame(columns=[*keys, "n", "mean", "std", "ci95_low", "ci95_high"])
    rows = []
    for group, frame in results.groupby(keys, dropna=False, sort=False):
        values = frame["value"].to_numpy(dtype=float)
        values = values[~np.isnan(values)]
        mean, std, low, high = _mean_ci(values)
        rows.append({**dict(zip(keys, group, strict=True)), "n": len(values), "mean": mean,
                     "std": std, "ci95_low": low, "ci95_high": high})
    return pd.DataFrame(rows)


def _mean_ci(values: np.ndarray) -> tuple[float, float, float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    from scipy import stats

    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def pair(results: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per policy, the per-seed differences from `baseline` on the same cells."""
    import pandas as pd
    from scipy import stats

    keys = [k for k in _groups(results) if k != "policy"]
    base = results[results["policy"] == baseline]
    rows = []
    for policy in results["policy"].unique():
        if policy == baseline:
            continue
        mine = results[results["policy"] == policy]
        merged = mine.merge(base, on=[*keys, "seed"], suffixes=("", "_base"))
        for group, frame in merged.groupby(keys, dropna=False, sort=False):
            a = frame["value"].to_numpy(dtype=float)
            b = frame["value_base"].to_numpy(dtype=float)
            ok = ~(np.isnan(a) | np.isnan(b))
            diff = a[ok] - b[ok]
            mean, _std, low, high = _mean_ci(diff)
            p_value = math.nan
            if len(diff) >= 2 and np.std(diff) > 1e-9 * max(1.0, abs(float(diff.mean()))):
                with warnings.catch_warnings():
                    # Near-identical differences (deterministic cells) only lose precision.
                    warnings.simplefilter("ignore", RuntimeWarning)
                    p_value = float(stats.ttest_rel(a[ok], b[ok]).pvalue)
            rows.append({**dict(zip(keys, group, strict=True)), "policy": policy,
                         "baseline": baseline, "n": len(diff), "mean_diff": mean,
                         "ci95_low": low, "ci95_high": high, "p_value": p_value,
                         "test": TEST})
    return pd.DataFrame(rows)


def headline(exp: Experiment, summary: pd.DataFrame, paired: pd.DataFrame) -> str:
    """The summary table a person reads: the first metric, mean ± CI half-width per policy."""
    metric = exp.metrics[0]
    rows = summary[summary["metric"] == metric]
    if rows.empty:
        return f"no results for {metric}"
    stat = {"policy", "metric", "n", "mean", "std", "ci95_low", "ci95_high"}
    index = [c for c in rows.columns if c not in stat]
    errors = _policy_error_counts(summary, index)

    def failed(row: pd.Series, policy: str) -> int:
        return errors.get((*(str(row[c]) for c in index), policy), 0)

    def shown(row: pd.Series) -> str:
        # A value whose policy failed is not the policy's value: say so beside it.
        n_failed = failed(row, row["policy"])
        if math.isnan(row["mean"]):
            return f"policy error ({n_failed})" if n_failed else "no data"
        if math.isnan(row["ci95_high"]):
            value = f"{row['mean']:.1f}"
        else:
            value = f"{row['mean']:.1f} ± {row['ci95_high'] - row['mean']:.1f}"
        return f"{value}, policy error ({n_failed})" if n_failed else value

    table = rows.assign(shown=rows.apply(shown, axis=1)).pivot_table(
        index=index, columns="policy", values="shown", aggfunc="first", sort=False)
    table = table[[p.label for p in exp.policies if p.label in table.columns]]
    text = f"{metric} ({_over_seeds(exp.seeds)})\n{table.to_string()}"
    if not paired.empty:
        mine = paired[paired["metric"] == metric]
        if not mine.empty:
            def paired_shown(r: pd.Series) -> str:
                n_failed = failed(r, r["policy"]) or failed(r, exp.baseline)
                if math.isnan(r["mean_diff"]):
                    return f"policy error ({n_failed})" if n_failed else "no data"
                diff = paired_text(r["mean_diff"], r["p_value"], r["n"])
                return f"{diff}, policy error ({n_failed})" if n_failed else diff

            wide = mine.assign(shown=mine.apply(paired_shown, axis=1)).pivot_table(
                index=index, columns="policy", values="shown", aggfunc="first", sort=False)
            text += (f"\n\nminus {exp.baseline}, paired by seed ({TEST}):\n"
                     f"{wide.to_string()}")
    return text


def _policy_error_counts(summary: pd.DataFrame, index: list[str]
                         ) -> dict[tuple[str, ...], int]:
    """Failed decisions over the seeds of each group (index values as text, then policy), from
    the summary's policy_errors rows (mean × n); the groups with none are left out."""
    rows = summary[summary["metric"] == "policy_errors"]
    counts: dict[tuple[str, ...], int] = {}
    for _, row in rows.iterrows():
        total = 0.0 if math.isnan(row["mean"]) else float(row["mean"]) * int(row["n"])
        if round(total) > 0:
            counts[(*(str(row[c]) for c in index), str(row["policy"]))] = round(total)
    return counts


def _over_seeds(seeds: Sequence[int]) -> str:
    if len(seeds) == 1:  # a mean of one value has no spread, hence no interval
        return f"one seed (no CI): seed {seeds[0]}"
    return f"mean ± 95 % CI half-width over seeds {', '.join(map(str, seeds))}"


def paired_text(mean_diff: float, p_value: float, n: int) -> str:
    """A paired difference as the summary shows it. Pure. The t-test has no p-value when the
    differences do not vary (deterministic cells, or one seed): the text says why instead
    of "p=nan", and "same" when there is no difference at all."""
    if math.isnan(p_value):
        if mean_diff == 0:
            return "same"
        return f"{mean_diff:+.1f} ({'one seed' if n < 2 else 'on every seed'})"
    return f"{mean_diff:+.1f} (p={p_value:.2g})"


def _plots(exp: Experiment, all_cells: Sequence[Cell], summary: pd.DataFrame,
           paired: pd.DataFrame, out: Path, svg: bool) -> None:
    if not exp.plots:
        return
    from jsorc_sim import plots  # matplotlib only when plots are asked for

    # One colour per policy label, the file's order, in every figure of the experiment.
    colours = plots.policy_colours([p.label for p in exp.policies])
    latency = next((m for m in exp.metrics if m.endswith("_latency")), "average_latency")
    several = summary["policy"].nunique() >= 2 if not summary.empty else False
    suffixes = (".png", ".svg") if svg else (".png",)
    for suffix in suffixes:
        if "summary" in exp.plots and not summary.empty:
            plots.summary_plot(summary, exp.metrics[0], out / f"summary{suffix}",
                               colours=colours)
        if "speedup" in exp.plots and exp.baseline and not summary.empty:
            plots.speedup_plot(summary, exp.baseline, out / f"speedup{suffix}",
                               colours=colours, paired=paired if not paired.empty else None)
        if "cost" in exp.plots and several:
            plots.cost_plot(summary, out / f"cost{suffix}", latency=latency, colours=colours)
        if "timeline" in exp.plots and exp.save_tables:
            for name, runs in _timeline_groups(all_cells, out / "cells").items():
                plots.timeline_plot(runs, out / f"timeline_{name}{suffix}", colours=colours)


def _timeline_groups(all_cells: Sequence[Cell], cell_dir: Path) -> dict[str, dict[str, Path]]:
    """For each scenario variant and app, its first seed's run under every policy."""
    first_seed = min((c.seed for c in all_cells), default=0)
    groups: dict[str, dict[str, Path]] = {}
    for cell in all_cells:
        if cell.seed != first_seed or not (cell_dir / cell.key / "requests.parquet").exists():
            continue
        parts = [cell.scenario, cell.app, *(f"{k.split('.')[-1]}{v}" for k, v in cell.grid)]
        name = "_".join(p for p in parts if p).replace("/", "_")
        groups.setdefault(name, {})[cell.policy] = cell_dir / cell.key
    return groups


# ----------------------------------------------------------------------------- files


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _manifest(exp: Experiment, started: str, **counts: Any) -> dict[str, Any]:
    libraries = {}
    for name in ("simpy", "numpy", "scipy", "pandas", "pyarrow", "matplotlib", "distributed"):
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "name": exp.name, "status": "done", "file": str(exp.path.resolve()),
        "text": exp.text, "jsorc_version": version(), "git_commit": _git_commit(exp.path),
        "python": platform.python_version(), "platform": platform.platform(),
        "libraries": libraries, "seeds": list(exp.seeds), "traces_dir": str(exp.traces_dir),
        "started": started, "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "cells": counts,
    }


def _git_commit(path: Path) -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path.resolve().parent,
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


# ----------------------------------------------------------------------------- CLI


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "experiment", help="run every cell of an experiment file (resumable)",
        description="Run scenarios x policies x seeds in parallel; see docs/experiments.md.")
    parser.add_argument("file", help="experiment TOML file")
    parser.add_argument("--workers", type=int, help="worker processes (default: core count)")
    parser.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://HOST:8786")
    parser.add_argument("--out", help="output folder (default: runs/<name>); a folder that "
                        "holds other files and no experiment is refused before any cell runs")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace another experiment's results in --out (only the files "
                        "an experiment writes are deleted)")
    parser.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    parser.add_argument("--svg", action="store_true", help="SVG plots beside the PNGs")
    parser.add_argument("--traces", help="folder of the real traces ({traces} in paths)")
    parser.set_defaults(handler=_cli)


def _cli(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise ExperimentError("--workers", [f"must be >= 1, got {args.workers}"])
    exp = load_experiment(args.file, args.traces)
    try:
        done = run_experiment(exp, args.out, workers=args.workers, scheduler=args.scheduler,
                              overwrite=args.overwrite, retry_failed=args.retry_failed,
                              svg=args.svg)
    except ExperimentInterrupted as exc:
        print(f"jsorc-sim: {exc}", file=sys.stderr)
        return 130
    print(f"experiment {exp.name}: {done.ran} cells run, {done.skipped} already done"
          + (f", {done.failed} failed (see cells/*.json)" if done.failed else ""))
    print(headline(exp, done.summary, done.paired))
    if done.latency_cost is not None:
        print("\n" + latency_cost.format_table(done.latency_cost, exp.seeds,
                                               [p.label for p in exp.policies]))
    if done.policy_errors:  # also in manifest.json
        print("\npolicy errors (those decisions kept the last placement):\n"
              + "\n".join(f"  {line}" for line in done.policy_errors))
    for warning in done.warnings:  # also in manifest.json
        print(f"jsorc-sim: warning: {warning}", file=sys.stderr)
    written = sorted(p.name for p in done.out.iterdir() if p.is_file())
    print(f"\nwrote {done.out}/: {', '.join(written)}")
    return 1 if done.failed else 0

