"""Policy tuning: search a policy's parameters on training cells, then check the best on
held-out cells and report train against test.

    jsorc-sim tune FILE.toml [--workers N] [--scheduler tcp://HOST:8786] [--out DIR]
                   [--traces DIR] [--json] [--no-progress]

A tune file (TOML; paths relative to it):

    name = "tune_model_based"        # default: the file name
    policy = "model_based"           # name, module:Class or path/to/file.py:Class
    objective = "95th_latency + 0.05 * replica_core_s"   # lower is better
    method = "random+nelder-mead"    # random | nelder-mead | random+nelder-mead
    samples = 16                     # random candidates (duplicates are simulated once)
    iterations = 20                  # new candidates the optimizer may simulate, at most
    seed = 0                         # of the random search
    duration_s = 600                 # optional: every cell's simulated seconds
    traces_dir = "../../shared/traces"   # optional: "{traces}" in a path; --traces and
                                         # $JSORC_TRACES override it
    [space]                          # parameter -> what to search
    replica_price_ms = [0.0, 20.0]   # [low, high] of a number parameter (integers for an int)
    horizon_s = { low = 60, high = 3600, log = true }    # log-uniform, and for the optimizer
    cold_start_guard = [true, false]  # a list of choices (or { choices = [...] }): random only
    "scaler_params.target" = [0.3, 1.0]   # a dotted key: a nested policy's parameter
                                     # (compose's scaler, guarded's params; tune_space)
    [fixed]                          # parameters held; the rest keep the policy's defaults
    [train]
    scenario = "scenarios/jsorc_loadtest.toml"
    apps = ["sentence_pairing"]      # one cell per app and seed; omit: the whole workload
    seeds = [1, 2]                   # default [0]
    set = { "workload.clients" = 8 } # dotted overrides of the scenario, checked by its loader;
                                     # workload.trace and service.file relative to this file
    [test]                           # held out: other seeds, apps, traces; same keys as [train]

The objective is an expression over a run's report metrics (`walker_run.all` and `cost`
keys, `METRICS`): names, numbers, `+ - * /` and parentheses, read with `ast`, never
evaluated as Python. A candidate's objective on a set is the mean over the set's cells; a
cell with no successful walker run after warm-up, a missing metric, a division by zero, a
stopped run or an exception scores +inf, and the trials table says which cell and why.

From Python: `run_tune(load_tune(FILE), out)`, or `tune_config(table, base_dir=, out=)` for
a tune file's table in memory; the result's `tuned_params` (nested, for `policies.make`)
and `objectives` (default and tuned on train and test) are what a comparison needs.

Search: `samples` seeded random candidates (uniform, log-uniform, integers, choices), all
their cells at once through a `concurrent.futures.Executor`; then scipy's Nelder-Mead from
the best of them (or, alone, from the defaults clipped into the space) over the number
parameters scaled to [0, 1], integers rounded inside the objective, choices held; each step's
cells in parallel. Every candidate is simulated once (a cache by parameters). The best
(lowest train objective, earliest on ties) and the defaults are then run on [test].
The same file and seed give the same trials, whatever the number of workers.

Outputs in --out (default runs/<name>), each written to a temporary name and renamed:
`trials.parquet` (one row per candidate and set), `cells.parquet` (one row per simulation),
`trajectory.png` (train objective against trial, best so far as a step line) and
`default_vs_tuned.png` (defaults against tuned per set and app, with 95 % CIs), each drawn
from the CSV beside it (`trajectory.csv`, `default_vs_tuned.csv`; jsorc_sim.tune_plots),
`tune.json` (best and default parameters, their train and test objectives, method, seed,
durations), and `manifest.json` (what jsorc wrote there: a file of those names that it did
not write is refused before any simulation, and other files are left alone). Progress on
stderr shows the trial count and the best train objective so far. Bad input raises
TuneError (a ScenarioError) listing every problem. docs/tuning.md is the guide.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import itertools
import json
import math
import os
import re
import sys
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np
from tqdm import tqdm

from jsorc_sim import outputs
from jsorc_sim import scenario as scenario_mod
from jsorc_sim.results import version
from jsorc_sim.scenario import Scenario, ScenarioError
from jsorc_sim.simulate import simulate
from jsorc_sim.tune_space import Dimension, nest, policy_space
from jsorc_sim.tune_space import show as _show
from policies import PolicyError, absolute_ref

if TYPE_CHECKING:
    # pandas and scipy are imported where a frame is built or the optimizer runs, so that
    # building this module's parser (every `jsorc-sim` command does) stays cheap.
    import pandas as pd

WALKER_METRICS = ("throughput", "average_latency", "50th_latency", "90th_latency",
                  "95th_latency", "99th_latency")
COST_METRICS = ("node_memory_gb_s", "replica_memory_gb_s", "replica_core_s",
                "peak_node_memory_mb", "placement_changes", "cold_starts", "failed_requests",
                "failed_calls", "oom_events", "policy_errors", "arrivals", "unfinished_requests")
METRICS = WALKER_METRICS + COST_METRICS
METHODS = ("random", "nelder-mead", "random+nelder-mead")
SETS = ("train", "test")
# Scenario fields holding a path: in a tune file's `set` they are relative to the tune file.
PATH_FIELDS = (re.compile(r"workload\.trace"), re.compile(r"actions\.[^.]+\.service\.file"))
# The optimizer sees this instead of +inf (scipy's simplex arithmetic wants finite values).
FAILED_PENALTY = 1e300
STEP = 0.25  # the optimizer's first simplex: this far along each scaled axis
XATOL = 0.01  # ... and it stops when the simplex is within 1 % of each range (and flat)
_PCT = "__m_"  # "95th_latency" is no Python name: it is read as __m_95th_latency

P = ParamSpec("P")
T = TypeVar("T")


class TuneError(ScenarioError):
    """A tune file (or option) that cannot be run; the message lists every problem."""


# ----------------------------------------------------------------------------- objective


class _Undefined(ArithmeticError):
    pass


@dataclass(frozen=True, eq=False)
class Objective:
    """A checked objective expression. Pure: `objective(metrics)` reads only `metrics`."""

    text: str
    tree: ast.expr
    names: tuple[str, ...]  # the metrics it uses, in order of appearance

    def __call__(self, metrics: Mapping[str, float | None]) -> float:
        """The value, or +inf when a metric it uses is missing or it divides by zero."""
        if any(_missing(metrics.get(name)) for name in self.names):
            return math.inf
        try:
            result = _evaluate(self.tree, metrics)
        except _Undefined:
            return math.inf
        return math.inf if math.isnan(result) else result


def parse_objective(text: str) -> Objective:
    """Check `text` and return it as an Objective; TuneError names what is refused."""
    objective, problems = _parse_objective(text)
    if objective is None:
        raise TuneError("", problems)
    return objective


def _parse_objective(text: Any) -> tuple[Objective | None, list[str]]:
    head = f"objective = {text!r}"
    if not isinstance(text, str) or not text.strip():
        return None, [f"{head}: must be an expression over metrics, like "
                      "\"95th_latency + 0.05 * replica_core_s\""]
    source = re.sub(r"(?<![\w.])(\d+(?:st|nd|rd|th)_\w+)", _PCT + r"\1", text.strip())
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError as exc:
        return None, [f"{head}: not an expression ({exc.msg})"]
    problems: list[str] = []
    names: list[str] = []
    for node in ast.walk(tree):
        refused = _refused(node, source)
        if refused:
            problems.append(f"{head}: {refused!r} is not allowed (only metric names, numbers, "
                            "+ - * / and parentheses)")
        elif isinstance(node, ast.Name):
            name = node.id.removeprefix(_PCT)
            if name not in METRICS:
                close = difflib.get_close_matches(name, METRICS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                problems.append(f"{head}: unknown metric {name!r} ({hint}metrics: "
                                f"{', '.join(METRICS)})")
            elif name not in names:
                names.append(name)
    if not problems and not names:
        problems.append(f"{head}: uses no metric")
    if problems:
        return None, list(dict.fromkeys(problems))
    return Objective(text.strip(), tree, tuple(names)), []


def _missing(value: float | None) -> bool:
    return value is None or not math.isfinite(float(value))


_SYMBOLS = {ast.Pow: "**", ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@",
            ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<",
            ast.RShift: ">>", ast.Not: "not", ast.Invert: "~"}
_ALLOWED = (ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.Add, ast.Sub, ast.Mult, ast.Div,
            ast.UAdd, ast.USub)


def _refused(node: ast.AST, source: str) -> str | None:
    """The token or sub-expression `node` stands for, if the objective may not use it."""
    if type(node) in _SYMBOLS:
        return _SYMBOLS[type(node)]
    if isinstance(node, ast.Constant):
        number = isinstance(node.value, int | float) and not isinstance(node.value, bool)
        return None if number else repr(node.value)
    if isinstance(node, _ALLOWED):
        return None
    segment = ast.get_source_segment(source, node) or type(node).__name__
    return segment.replace(_PCT, "")


def _evaluate(node: ast.expr, metrics: Mapping[str, float | None]) -> float:
    if isinstance(node, ast.Constant):
        return float(typing.cast(float, node.value))
    if isinstance(node, ast.Name):
        return float(typing.cast(float, metrics[node.id.removeprefix(_PCT)]))
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, metrics)
        return -value if isinstance(node.op, ast.USub) else value
    assert isinstance(node, ast.BinOp)
    left, right = _evaluate(node.left, metrics), _evaluate(node.right, metrics)
    if isinstance(node.op, ast.Add):
        return left + right
    if isinstance(node.op, ast.Sub):
        return left - right
    if isinstance(node.op, ast.Mult):
        return left * right
    if right == 0:
        raise _Undefined
    return left / right


# ----------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class Cell:
    """One simulation setting of a set: a scenario (restricted to `app`) and a seed."""

    scenario: Scenario
    app: str | None
    seed: int

    @property
    def label(self) -> str:
        return f"{self.app or 'all apps'} seed {self.seed}"


@dataclass(frozen=True)
class TuneSet:
    """[train] or [test]: a scenario with overrides, its apps and seeds."""

    name: str
    scenario: str  # the file, as resolved
    overrides: Mapping[str, Any]
    apps: tuple[str | None, ...]
    seeds: tuple[int, ...]
    cells: tuple[Cell, ...]

    def describe(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "set": dict(self.overrides),
                "apps": [a for a in self.apps if a], "seeds": list(self.seeds),
                "cells": [c.label for c in self.cells]}


@dataclass(frozen=True)
class TuneSpec:
    """A checked tune file (`load_tune`)."""

    name: str
    path: str
    text: str
    policy: str
    objective: Objective
    method: str
    samples: int
    iterations: int
    seed: int
    duration_s: float | None
    space: tuple[Dimension, ...]
    fixed: Mapping[str, Any]
    defaults: Mapping[str, Any]  # the policy's default of every searched parameter
    train: TuneSet
    test: TuneSet
    warnings: tuple[str, ...] = ()

    def params(self, searched: Mapping[str, Any]) -> dict[str, Any]:
        """A candidate's parameters, flat (dotted names for nested ones, as the tables show
        them): searched values plus [fixed]. `policy_params` nests them for the policy."""
        return {**{d.name: searched[d.name] for d in self.space}, **self.fixed}

    @staticmethod
    def policy_params(params: Mapping[str, Any]) -> dict[str, Any]:
        """Flat candidate parameters as the policy is built from them (`make(policy, ...)`):
        `scaler_params.target = 0.5` becomes `scaler_params = {target = 0.5}`."""
        return nest(params)

    @property
    def default_params(self) -> dict[str, Any]:
        return self.params(self.defaults)


_TOP_KEYS = ("name", "policy", "objective", "method", "samples", "iterations", "seed",
             "duration_s", "traces_dir", "space", "fixed", "train", "test")
_SET_KEYS = ("scenario", "apps", "seeds", "set")


def load_tune(path: str | Path, *, traces_dir: str | Path | None = None) -> TuneSpec:
    """Read and check a tune file: every problem (file, policy, parameters, space, objective,
    scenarios, overrides, apps, seeds) is listed in one TuneError before anything runs.
    `traces_dir` (else $JSORC_TRACES, else the file's `traces_dir`) expands "{traces}"."""
    path = Path(path)
    text, raw = scenario_mod.read_toml(path, TuneError)
    return _check(raw, text, str(path), path.parent, path.stem, traces_dir)


def tune_spec(config: Mapping[str, Any], *, base_dir: str | Path,
              traces_dir: str | Path | None = None) -> TuneSpec:
    """`load_tune` for a tune file's table already in memory (the keys of a file, as
    `tomllib` reads them): its paths are relative to `base_dir`; `name` defaults to
    "tune"."""
    if not isinstance(config, Mapping):
        raise TuneError("tune config", [f"must be a table of the tune file's keys, got "
                                        f"{config!r}"])
    import tomli_w

    try:
        text = tomli_w.dumps(dict(config))
    except (TypeError, ValueError):  # tomli_w refuses a value TOML cannot hold
        text = json.dumps(config, default=str)
    return _check(config, text, "tune config", Path(base_dir), "tune", traces_dir)


def tune_config(config: Mapping[str, Any], *, base_dir: str | Path, out: str | Path | None,
                workers: int | None = 2, progress: bool = True) -> TuneResult:
    """Tune from a tune file's table in memory, without a file: `tune_spec` then `run_tune`
    (`out`: where the outputs go, None for none). The result's `tuned_params` (nested, for
    `policies.make(policy, ...)`) and `objectives` (default and tuned, train and test) are
    what a comparison needs."""
    spec = tune_spec(config, base_dir=base_dir)
    return run_tune(spec, out, workers=workers, progress=progress)


def _check(raw: Mapping[str, Any], text: str, path: str, base: Path, stem: str,
           traces_dir: str | Path | None) -> TuneSpec:
    problems: list[str] = []
    for key in raw:
        if key not in _TOP_KEYS:
            problems.append(f"unknown field {key!r} (known: {', '.join(_TOP_KEYS)})")
    name = _string(raw, "name", stem, problems)
    method = _string(raw, "method", "random+nelder-mead", problems)
    if method not in METHODS:
        problems.append(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    searches = method.split("+")
    samples = _whole(raw, "samples", 16, 1 if "random" in searches else 0, problems)
    iterations = _whole(raw, "iterations", 20, 1 if "nelder-mead" in searches else 0, problems)
    seed = _whole(raw, "seed", 0, 0, problems)
    duration_s = _duration(raw.get("duration_s"), problems)
    objective, objective_problems = _parse_objective(raw.get("objective"))
    problems.extend(objective_problems)
    policy = _string(raw, "policy", "", problems)
    try:  # a policy file's path is from the tune file's folder; absolute for the workers
        policy = absolute_ref(policy, base)
    except PolicyError as exc:
        problems.append(f"policy: {exc}")
    space, fixed, defaults = policy_space(policy, raw.get("space"), raw.get("fixed", {}),
                                           problems)
    if "nelder-mead" in searches and space and all(d.kind == "choice" for d in space):
        problems.append(f"method {method!r}: the optimizer needs a number range in [space] "
                        "(choices are searched at random only); use method = \"random\"")
    traces = _traces_dir(traces_dir, raw.get("traces_dir"), base, problems)
    sets = {which: _load_set(which, raw.get(which), base, traces, duration_s, problems)
            for which in SETS}
    if problems:
        raise TuneError(path, problems)
    assert objective is not None and sets["train"] is not None and sets["test"] is not None
    return TuneSpec(name=name, path=path, text=text, policy=policy, objective=objective,
                    method=method, samples=samples if "random" in searches else 0,
                    iterations=iterations if "nelder-mead" in searches else 0, seed=seed,
                    duration_s=duration_s, space=space, fixed=fixed, defaults=defaults,
                    train=sets["train"], test=sets["test"],
                    warnings=_held_out(sets["train"], sets["test"]))


def _string(raw: Mapping[str, Any], key: str, default: str, problems: list[str]) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        problems.append(f"{key} must be a non-empty string, got {value!r}" if key in raw
                        else f"missing required field {key!r}")
        return default
    return value


def _whole(raw: Mapping[str, Any], key: str, default: int, minimum: int,
           problems: list[str]) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.append(f"{key} must be a whole number >= {minimum}, got {value!r}")
        return default
    return value


def _duration(value: Any, problems: list[str]) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        problems.append(f"duration_s must be a positive number of seconds, got {value!r}")
        return None
    return float(value)


def _traces_dir(given: str | Path | None, in_file: Any, base: Path,
                problems: list[str]) -> Path | None:
    if given is not None:
        return Path(given)
    if os.environ.get("JSORC_TRACES"):
        return Path(os.environ["JSORC_TRACES"])
    if in_file is None:
        return None
    if not isinstance(in_file, str):
        problems.append(f"traces_dir must be a path, got {in_file!r}")
        return None
    return base / in_file


def _path(text: str, base: Path, traces: Path | None, where: str, problems: list[str]) -> str:
    if "{traces}" in text:
        if traces is None:
            problems.append(f"{where} = {text!r} uses {{traces}}: give traces_dir, --traces "
                            "or $JSORC_TRACES")
            return text
        text = text.replace("{traces}", str(traces))
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else base / path)


def _load_set(which: str, raw: Any, base: Path, traces: Path | None,
              duration_s: float | None, problems: list[str]) -> TuneSet | None:
    if not isinstance(raw, Mapping):
        problems.append(f"[{which}] must be a table with scenario, apps, seeds, set; got "
                        f"{raw!r}" if raw is not None else f"missing required table [{which}]")
        return None
    for key in raw:
        if key not in _SET_KEYS:
            problems.append(f"[{which}] unknown field {key!r} (known: {', '.join(_SET_KEYS)})")
    seeds = _seeds(which, raw.get("seeds", [0]), problems)
    file = raw.get("scenario")
    if not isinstance(file, str) or not file:
        problems.append(f"{which}.scenario must be a scenario file, got {file!r}")
        return None
    file = _path(file, base, traces, f"{which}.scenario", problems)
    try:
        scenario = scenario_mod.load(file)
    except ScenarioError as exc:
        problems.extend(f"{which}.scenario: {exc.source}: {p}" for p in exc.problems)
        return None
    overrides = raw.get("set", {})
    changed = _override(which, scenario, overrides, base, traces, duration_s, problems)
    if changed is None:
        return None
    apps = _apps(which, raw.get("apps"), changed, problems)
    if seeds is None or apps is None:
        return None
    cells = tuple(Cell(changed if app is None else changed.for_app(app), app, seed)
                  for app, seed in itertools.product(apps, seeds))
    return TuneSet(which, file, dict(overrides), apps, seeds, cells)


def _seeds(which: str, seeds: Any, problems: list[str]) -> tuple[int, ...] | None:
    if (not isinstance(seeds, list) or not seeds or len(set(map(repr, seeds))) < len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                       for s in seeds)):
        problems.append(f"{which}.seeds must be a list of distinct whole numbers >= 0, got "
                        f"{seeds!r}")
        return None
    return tuple(seeds)


def _apps(which: str, apps: Any, scenario: Scenario,
          problems: list[str]) -> tuple[str | None, ...] | None:
    if apps is None:
        return (None,)
    if (not isinstance(apps, list) or not apps or not all(isinstance(a, str) for a in apps)
            or len(set(apps)) < len(apps)):
        problems.append(f"{which}.apps must be a list of distinct app names, got {apps!r}")
        return None
    unknown = [a for a in apps if a not in scenario.apps]
    for app in unknown:
        problems.append(f"{which}.apps: unknown app {app!r} in scenario {scenario.name!r} "
                        f"(apps: {', '.join(scenario.apps)})")
    return None if unknown else tuple(apps)


def _override(which: str, scenario: Scenario, overrides: Any, base: Path,
              traces: Path | None, duration_s: float | None,
              problems: list[str]) -> Scenario | None:
    """The scenario with dotted overrides applied to its table, checked by its loader."""
    if not isinstance(overrides, Mapping):
        problems.append(f"{which}.set must be a table of \"dotted.path\" = value, got "
                        f"{overrides!r}")
        return None
    accepted: dict[str, Any] = {}
    before = len(problems)
    for key, value in overrides.items():
        where = f'{which}.set."{key}"'
        if key in ("seed", "policy", "policy.name", "policy.params") or key.startswith(
                "policy.params."):
            by = "seeds" if key == "seed" else "policy, [space] and [fixed]"
            problems.append(f"{where}: set by the tune file ({by}), not by an override")
            continue
        if key == "duration_s" and duration_s is not None:
            problems.append(f"{where}: duration_s is also set at the top of the tune file")
            continue
        if isinstance(value, str) and any(p.fullmatch(key) for p in PATH_FIELDS):
            known = len(problems)
            value = _path(value, base, traces, where, problems)
            if len(problems) > known:
                continue
        accepted[key] = value
    # The accepted overrides are checked even after a problem above: every problem at once.
    try:
        scenario = scenario_mod.override(
            scenario, accepted, source=f"{which}: scenario {scenario.name!r} with its set",
            label=lambda key: f'{which}.set."{key}"')
    except ScenarioError as exc:
        problems.append(str(exc))
        return None
    if len(problems) > before:
        return None
    if duration_s is not None and duration_s <= scenario.warmup_s:
        problems.append(f"duration_s = {duration_s:g} must exceed {which}'s warmup_s = "
                        f"{scenario.warmup_s:g}")
        return None
    return scenario


def _held_out(train: TuneSet, test: TuneSet) -> tuple[str, ...]:
    seen = [(c.scenario, c.seed) for c in train.cells]  # scenarios hold dicts: no hashing
    return tuple(f"test cell {c.label} is also a train cell: it is not held out"
                 for c in test.cells if (c.scenario, c.seed) in seen)


# ----------------------------------------------------------------------------- running cells


@dataclass(frozen=True)
class CellTask:
    """What a worker needs to simulate one cell (picklable, for processes and Dask)."""

    scenario: Scenario
    seed: int
    duration_s: float | None
    policy: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class CellOutcome:
    metrics: Mapping[str, float | None]
    status: str  # "ok", the policy failure that stopped the run, or "error: ..."
    wall_s: float


def run_cell(task: CellTask) -> CellOutcome:
    """Simulate one cell; an exception is caught and returned, so one bad candidate costs a
    +inf, not the tuning run. (Top level, so process pools and Dask can call it.)"""
    started = time.perf_counter()
    try:
        result = simulate(task.scenario, task.policy, params=task.params, seed=task.seed,
                          duration_s=task.duration_s)
        report = result.report()
    except Exception as exc:  # recorded in the trials table, scored +inf
        return CellOutcome({}, f"error: {type(exc).__name__}: {exc}",
                           time.perf_counter() - started)
    return CellOutcome(report_metrics(report), result.status, time.perf_counter() - started)


def report_metrics(report: Mapping[str, Any]) -> dict[str, float | None]:
    """The metrics an objective reads (`METRICS`) from a `report()`: `walker_run.all` and
    `cost`. Pure."""
    return {**report["walker_run"]["all"], **report["cost"]}


def score_cell(objective: Objective, outcome: CellOutcome) -> tuple[float, str]:
    """A cell's objective and, when it is +inf, why. Pure."""
    metrics = outcome.metrics
    if outcome.status != "ok":
        return math.inf, outcome.status
    if metrics.get("average_latency") is None:
        oom = metrics.get("oom_events") or 0
        return math.inf, "no walker completed after warm-up" + (
            f" ({oom} out-of-memory events)" if oom else "")
    missing = [n for n in objective.names if _missing(metrics.get(n))]
    if missing:
        return math.inf, f"no value for {', '.join(missing)}"
    value = objective(metrics)
    return value, "" if math.isfinite(value) else "the objective is undefined (division by 0)"


@dataclass(frozen=True)
class CellScore:
    cell: Cell
    objective: float
    failure: str
    outcome: CellOutcome


@dataclass(frozen=True)
class SetScore:
    """A candidate on a set: the mean of its cells' objectives (+inf if any is +inf)."""

    objective: float
    cells: tuple[CellScore, ...]

    @property
    def failed(self) -> int:
        return sum(1 for c in self.cells if c.failure)

    @property
    def failure(self) -> str:
        return "; ".join(f"{c.cell.label}: {c.failure}" for c in self.cells if c.failure)

    def means(self) -> dict[str, float]:
        """Each metric's mean over the cells that have it (NaN when none has)."""
        out = {}
        for key in METRICS:
            values = [float(v) for c in self.cells
                      if (v := c.outcome.metrics.get(key)) is not None]
            out[key] = float(np.mean(values)) if values else math.nan
        return out


@dataclass
class Trial:
    """One distinct candidate and its scores per set."""

    trial: int
    phase: str  # the first phase that asked for it: default | random | optimizer
    params: dict[str, Any]
    sets: dict[str, SetScore] = field(default_factory=dict)

    def objective(self, which: str) -> float:
        return self.sets[which].objective


class _InProcess(Executor):
    """An Executor that runs each call at once in this process (--workers 1)."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


@contextmanager
def open_executor(workers: int | None = None, scheduler: str | None = None
                  ) -> Iterator[Executor]:
    """A process pool of `workers` (default: the machine's cores; 1 runs in this process), or
    the workers of the Dask cluster at `scheduler` ("tcp://HOST:8786")."""
    if scheduler:
        if workers is not None:
            raise TuneError("", [f"--workers {workers} and --scheduler {scheduler!r}: the "
                                 "cluster's workers run the cells; give one of them"])
        with _dask_executor(scheduler) as executor:
            yield executor
        return
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise TuneError("", [f"--workers must be >= 1, got {workers}"])
    if workers == 1:
        yield _InProcess()
        return
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


@contextmanager
def _dask_executor(address: str) -> Iterator[Executor]:
    try:
        from distributed import Client
    except ImportError:
        raise TuneError("", ["--scheduler needs dask.distributed: pip install "
                             "'jsorc[dask]'"]) from None
    try:
        client = Client(address, timeout="10s")  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError, ValueError) as exc:
        raise TuneError("", [f"--scheduler {address!r}: cannot connect ({exc})"]) from None
    try:
        yield client.get_executor()  # type: ignore[no-untyped-call]
    finally:
        client.close()  # type: ignore[no-untyped-call]


class _Progress:
    """Tune progress on stderr: simulations done and, after each scored step, the trial count
    and the best train objective so far; a tqdm bar on a terminal, else a line per step (a
    log or CI shows how the search goes, not only that it goes)."""

    def __init__(self, name: str, total: int, show: bool) -> None:
        terminal = sys.stderr.isatty()
        self.name, self.lines, self.done = name, show and not terminal, 0
        self.bar = tqdm(total=total, unit="sim", desc=name, file=sys.stderr,
                        disable=not (show and terminal))

    def simulated(self) -> None:
        self.done += 1
        self.bar.update(1)

    def scored(self, evaluator: _Evaluator, which: str) -> None:
        text = progress_text(evaluator.trials.values(), evaluator.searched, which)
        self.bar.set_postfix_str(text)
        if self.lines:
            print(f"{self.name}: {self.done} simulations, {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.total = self.bar.n  # the optimizer may stop before its budget
        self.bar.close()


def progress_text(trials: Iterable[Trial], searched: Iterable[int], which: str) -> str:
    """"N trials, best V (trial T)" over the candidates the search asked for, scored on
    [train] so far; on [test], the defaults' and the tuned objectives. Pure."""
    scored = [t for t in trials if which in t.sets]
    if which == "test":
        shown = ", ".join(f"{t.phase if t.phase == 'default' else 'tuned'} "
                          f"{_show(t.objective('test'))}" for t in scored)
        return f"test: {shown}"
    asked = set(searched)
    candidates = [t for t in scored if t.phase != "default" or t.trial in asked]
    if not candidates:
        return f"{len(scored)} trial{'s' * (len(scored) != 1)}, no searched candidate yet"
    best = min(candidates, key=lambda t: (t.objective("train"), t.trial))
    return (f"{len(candidates)} trial{'s' * (len(candidates) != 1)}, best "
            f"{_show(best.objective('train'))} (trial {best.trial})")


class _Evaluator:
    """Scores candidates on sets through an executor; every candidate once per set."""

    def __init__(self, spec: TuneSpec, executor: Executor, bar: _Progress) -> None:
        self.spec, self.executor, self.bar = spec, executor, bar
        self.trials: dict[str, Trial] = {}
        self.searched: list[int] = []  # trials the random phase or the optimizer asked for
        self.simulations = 0

    def trial(self, params: dict[str, Any], phase: str) -> Trial:
        """The candidate with these parameters, new (of `phase`) or already known."""
        key = _key(params)
        if key not in self.trials:
            self.trials[key] = Trial(len(self.trials), phase, params)
        return self.trials[key]

    def scored(self, params: dict[str, Any], which: str) -> bool:
        known = self.trials.get(_key(params))
        return known is not None and which in known.sets

    def score(self, trials: Sequence[Trial], which: str) -> None:
        """Simulate every cell of the trials not yet scored on `which`, all at once."""
        spec, tset = self.spec, self.spec.train if which == "train" else self.spec.test
        todo = list({t.trial: t for t in trials if which not in t.sets}.values())
        futures = [self.executor.submit(run_cell, CellTask(
            cell.scenario, cell.seed, spec.duration_s, spec.policy,
            spec.policy_params(t.params))) for t in todo for cell in tset.cells]
        for _ in as_completed(futures):
            self.bar.simulated()
        self.simulations += len(futures)
        outcomes = iter(f.result() for f in futures)  # in submission order: deterministic
        for t in todo:
            scores = []
            for cell in tset.cells:
                outcome = next(outcomes)
                scores.append(CellScore(cell, *score_cell(spec.objective, outcome), outcome))
            values = [s.objective for s in scores]
            mean = math.inf if any(math.isinf(v) for v in values) else float(np.mean(values))
            t.sets[which] = SetScore(mean, tuple(scores))
        if todo:
            self.bar.scored(self, which)


# ----------------------------------------------------------------------------- the search


def run_tune(spec: TuneSpec, out: str | Path | None = None, *, workers: int | None = None,
             scheduler: str | None = None, executor: Executor | None = None,
             progress: bool = False) -> TuneResult:
    """Search `spec`'s space on [train], score the best and the defaults on [test], and
    (with `out`) write TUNE_FILES there. `progress` shows on stderr the simulations done,
    the trial count and the best train objective so far. `executor`, if
    given, runs the cells (else `workers` processes or the Dask `scheduler`). An `out` that
    holds files of those names which jsorc did not write raises OutputError before any run."""
    if out is not None:
        outputs.check(out, TUNE_FILES, TUNE_KIND, legacy=_legacy_tune)
    total = (len(spec.train.cells) * (1 + spec.samples + spec.iterations)
             + 2 * len(spec.test.cells))
    bar = _Progress(spec.name, total, progress)
    walls: dict[str, float] = {}
    try:
        with _given(executor) if executor else open_executor(workers, scheduler) as pool:
            evaluator = _Evaluator(spec, pool, bar)
            message, calls = _search(spec, evaluator, walls)
            started = time.perf_counter()
            best = _best(evaluator)
            default = evaluator.trial(spec.default_params, "default")
            evaluator.score([default, best], "test")
            walls["test"] = time.perf_counter() - started
    finally:
        bar.close()
    result = TuneResult(spec, evaluator, best, default, message, calls, walls)
    if out is not None:
        result.save(out)
    return result


@contextmanager
def _given(executor: Executor) -> Iterator[Executor]:
    yield executor  # the caller's: not ours to shut down


def _search(spec: TuneSpec, evaluator: _Evaluator, walls: dict[str, float]
            ) -> tuple[str, int]:
    """The random phase, then the optimizer; returns the optimizer's message and calls."""
    started = time.perf_counter()
    default = evaluator.trial(spec.default_params, "default")
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed))
    drawn = [spec.params({d.name: d.sample(rng) for d in spec.space})
             for _ in range(spec.samples)]
    randoms = [evaluator.trial(p, "random") for p in drawn]
    evaluator.score([default, *randoms], "train")
    walls["train_random"] = time.perf_counter() - started
    evaluator.searched.extend(t.trial for t in randoms)
    if not spec.iterations:
        return "", 0
    started = time.perf_counter()
    if randoms:
        start = min(randoms, key=lambda t: (t.objective("train"), t.trial)).params
    else:
        start = spec.params({d.name: _clip(d, spec.defaults[d.name]) for d in spec.space})
    message, calls = _nelder_mead(spec, evaluator, start)
    walls["optimizer"] = time.perf_counter() - started
    return message, calls


def _clip(dim: Dimension, value: Any) -> Any:
    """`value` moved into the dimension: the nearest bound, or the first choice."""
    if dim.kind == "choice":
        return value if any(value == c for c in dim.choices) else dim.choices[0]
    return dim.from_unit(dim.to_unit(value))


class _BudgetSpent(Exception):
    pass


def _nelder_mead(spec: TuneSpec, evaluator: _Evaluator, start: dict[str, Any]
                 ) -> tuple[str, int]:
    """scipy's Nelder-Mead over the number parameters scaled to [0, 1] (choices held at
    `start`), at most `spec.iterations` new candidates simulated."""
    dims = [d for d in spec.space if d.kind != "choice"]
    x0 = np.array([d.to_unit(start[d.name]) for d in dims])
    simplex = [x0] + [x0 + np.eye(len(dims))[i] * (STEP if x0[i] + STEP <= 1 else -STEP)
                      for i in range(len(dims))]
    new = calls = 0

    def objective(x: np.ndarray[Any, Any]) -> float:
        nonlocal new, calls
        calls += 1
        params = {**start, **{d.name: d.from_unit(u) for d, u in zip(dims, x, strict=True)}}
        if not evaluator.scored(params, "train"):
            if new >= spec.iterations:
                raise _BudgetSpent
            new += 1
        trial = evaluator.trial(params, "optimizer")
        evaluator.score([trial], "train")
        evaluator.searched.append(trial.trial)
        return min(trial.objective("train"), FAILED_PENALTY)

    from scipy import optimize

    try:
        found = optimize.minimize(objective, x0, method="Nelder-Mead",
                                  bounds=[(0.0, 1.0)] * len(dims),
                                  options={"initial_simplex": np.array(simplex),
                                           "maxfev": 10 * spec.iterations + 10,
                                           "xatol": XATOL, "fatol": 1e-6})
        message = str(found.message)
    except _BudgetSpent:
        message = f"stopped after {spec.iterations} new candidates (iterations)"
    return message, calls


def _best(evaluator: _Evaluator) -> Trial:
    """The searched candidate with the lowest train objective (the earliest on ties)."""
    searched = set(evaluator.searched)
    trials = [t for t in evaluator.trials.values() if t.trial in searched]
    return min(trials, key=lambda t: (t.objective("train"), t.trial))


# ----------------------------------------------------------------------------- results


@dataclass(eq=False)
class TuneResult:
    """What a tuning run found: `trials`, `cells` (DataFrames), `summary` (tune.json)."""

    spec: TuneSpec
    evaluator: _Evaluator
    best: Trial
    default: Trial
    optimizer_message: str
    optimizer_calls: int
    walls: dict[str, float]

    @property
    def tuned_params(self) -> dict[str, Any]:
        """The best candidate's parameters, nested as the policy takes them:
        `policies.make(result.spec.policy, result.tuned_params)` builds the tuned policy."""
        return self.spec.policy_params(self.best.params)

    @property
    def default_params(self) -> dict[str, Any]:
        """The defaults candidate's parameters (searched ones at their defaults, [fixed]
        held), nested like `tuned_params`."""
        return self.spec.policy_params(self.default.params)

    @property
    def objectives(self) -> dict[str, dict[str, float]]:
        """`{"train": {"default": ..., "tuned": ...}, "test": {...}}`: each the mean over the
        set's cells (+inf when a cell failed)."""
        return {which: {"default": self.default.objective(which),
                        "tuned": self.best.objective(which)} for which in SETS}

    @property
    def trials(self) -> pd.DataFrame:
        """One row per candidate and set it was scored on (see trials.parquet)."""
        import pandas as pd

        numbers = [d.name for d in self.spec.space if d.kind != "choice"]
        rows = []
        for t in sorted(self.evaluator.trials.values(), key=lambda t: t.trial):
            for which, score in t.sets.items():
                row: dict[str, Any] = {"trial": t.trial, "phase": t.phase, "set": which,
                                       "best": t is self.best,
                                       "params": json.dumps(t.params, sort_keys=True)}
                row.update({f"param.{n}": t.params[n] for n in numbers})
                row.update({"objective": score.objective, "cells": len(score.cells),
                            "failed_cells": score.failed, "failure": score.failure})
                row.update(score.means())
                rows.append(row)
        return pd.DataFrame(rows)

    @property
    def cells(self) -> pd.DataFrame:
        """One row per simulation: trial, set, scenario, app, seed, objective, failure,
        status, every metric, wall_s."""
        import pandas as pd

        rows = []
        for t in sorted(self.evaluator.trials.values(), key=lambda t: t.trial):
            for which, score in t.sets.items():
                for c in score.cells:
                    row: dict[str, Any] = {
                        "trial": t.trial, "phase": t.phase, "set": which,
                        "scenario": c.cell.scenario.name, "app": c.cell.app or "",
                        "seed": c.cell.seed, "objective": c.objective, "failure": c.failure,
                        "status": c.outcome.status}
                    row.update({k: _float(c.outcome.metrics.get(k)) for k in METRICS})
                    row["wall_s"] = c.outcome.wall_s
                    rows.append(row)
        return pd.DataFrame(rows)

    @property
    def summary(self) -> dict[str, Any]:
        """tune.json: null objectives are +inf (a cell failed; see trials.parquet)."""
        spec = self.spec
        phases = [t.phase for t in self.evaluator.trials.values()]
        return {
            "name": spec.name, "file": spec.path, "policy": spec.policy,
            "objective": spec.objective.text, "method": spec.method, "seed": spec.seed,
            "samples": spec.samples, "iterations": spec.iterations,
            "duration_s": spec.duration_s,
            "space": {d.name: d.describe() for d in spec.space}, "fixed": dict(spec.fixed),
            "train": spec.train.describe(), "test": spec.test.describe(),
            "best": self._describe(self.best), "default": self._describe(self.default),
            "candidates": {p: phases.count(p) for p in ("default", "random", "optimizer")},
            "simulations": self.evaluator.simulations,
            "optimizer": {"message": self.optimizer_message, "calls": self.optimizer_calls},
            "wall_s": {**{k: round(v, 3) for k, v in self.walls.items()},
                       "total": round(sum(self.walls.values()), 3)},
            "warnings": list(self.warnings), "jsorc": version(), "tune_file": spec.text,
        }

    @property
    def warnings(self) -> list[str]:
        out = list(self.spec.warnings)
        if math.isinf(self.best.objective("train")):
            out.append("every searched candidate failed on train (objective +inf)")
        for d in self.spec.space:
            value = self.best.params[d.name]
            if d.kind != "choice" and value in (d.low, d.high):
                side = "lower" if value == d.low else "upper"
                out.append(f"tuned {d.name} = {_show(value)} is at the {side} bound of the "
                           "space: the best may lie beyond it")
        return out

    def _describe(self, trial: Trial) -> dict[str, Any]:
        out: dict[str, Any] = {"trial": trial.trial, "phase": trial.phase,
                               "params": trial.params,
                               "policy_params": self.spec.policy_params(trial.params)}
        for which, score in trial.sets.items():
            out[which] = {"objective": _finite(score.objective), "failed_cells": score.failed,
                          "failure": score.failure,
                          "metrics": {k: _finite(v) for k, v in score.means().items()}}
        return out

    def save(self, out: str | Path) -> Path:
        """Write trials.parquet, cells.parquet and tune.json (last) to `out`, each to a
        temporary name first and then renamed, so no file is ever half written; recorded in
        manifest.json. Files jsorc did not write are never overwritten (OutputError)."""
        from jsorc_sim import tune_plots as tp  # matplotlib only when outputs are written

        text = json.dumps(self.summary, indent=2, default=str) + "\n"
        trajectory, comparison = tp.trajectory_frame(self), tp.comparison_frame(self)
        title = f"{self.spec.name}: {self.spec.policy}, {self.spec.objective.text}"
        return outputs.write(out, {
            "trials.parquet": lambda p: self.trials.to_parquet(p, index=False),
            "cells.parquet": lambda p: self.cells.to_parquet(p, index=False),
            "trajectory.csv": lambda p: tp.write_csv(trajectory, p),
            "trajectory.png": lambda p: tp.trajectory_plot(trajectory, p, title=title),
            "default_vs_tuned.csv": lambda p: tp.write_csv(comparison, p),
            "default_vs_tuned.png": lambda p: tp.comparison_plot(comparison, p, title=title),
            "tune.json": lambda p: p.write_text(text)}, TUNE_KIND, legacy=_legacy_tune)

    def format(self) -> str:
        """The train-against-test table a person reads."""
        spec, best, default = self.spec, self.best, self.default
        lines = [f"tune {spec.name}: policy {spec.policy}, objective {spec.objective.text} "
                 "(lower is better)",
                 f"train: {_set_line(spec.train)}", f"test:  {_set_line(spec.test)}",
                 f"{spec.method}, seed {spec.seed}: {self._counts()}, "
                 f"{sum(self.walls.values()):.1f} s", ""]
        rows: list[tuple[str, ...]] = [
            ("", "train default", "train tuned", "test default", "test tuned")]
        pairs = [(default, "train"), (best, "train"), (default, "test"), (best, "test")]
        rows.append(("objective", *(_objective(t.sets[w]) for t, w in pairs)))
        for name in spec.objective.names:
            rows.append((f"  {name}", *(_show(t.sets[w].means()[name]) for t, w in pairs)))
        rows.append(("tuned vs default", "", _change(default, best, "train"), "",
                     _change(default, best, "test")))
        lines += _table(rows, header=True)
        lines.append("")
        params: list[tuple[str, ...]] = [("parameter", "default", "tuned", "space")]
        params += [(d.name, _show(spec.defaults[d.name]), _show(best.params[d.name]), str(d))
                   for d in spec.space]
        lines += _table(params, header=True)
        failed = [f"  {t.phase} on {w}: {t.sets[w].failure}" for t, w in pairs
                  if t.sets[w].failed]
        if failed:
            lines += ["", "inf: a cell failed --", *dict.fromkeys(failed)]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def _counts(self) -> str:
        phases = [t.phase for t in self.evaluator.trials.values()]
        return (f"{phases.count('random')} random and {phases.count('optimizer')} optimizer "
                f"candidates, {self.evaluator.simulations} simulations")


def _key(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


TUNE_FILES = ("trials.parquet", "cells.parquet", "trajectory.csv", "trajectory.png",
              "default_vs_tuned.csv", "default_vs_tuned.png", "tune.json")
TUNE_KIND = "jsorc-sim tune"


def _legacy_tune(folder: Path) -> bool:
    # A tune saved before manifests existed: its tune.json is the summary jsorc writes.
    try:
        doc = json.loads((folder / "tune.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and {"best", "default", "method", "objective"} <= set(doc)


def _set_line(tset: TuneSet) -> str:
    apps = ", ".join(a for a in tset.apps if a) or "all apps"
    seeds = ", ".join(map(str, tset.seeds))
    sets = "".join(f", {k} = {v}" for k, v in tset.overrides.items())
    return (f"{Path(tset.scenario).name}{sets}; {apps} x seeds {seeds} "
            f"({len(tset.cells)} cells)")


def _table(rows: list[tuple[str, ...]], header: bool = False) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                       for j, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _objective(score: SetScore) -> str:
    text = _show(score.objective)
    return f"{text} ({score.failed} failed)" if score.failed else text


def _change(default: Trial, best: Trial, which: str) -> str:
    before, after = default.objective(which), best.objective(which)
    if not (math.isfinite(before) and math.isfinite(after)) or before == 0:
        return "-"
    return f"{(after - before) / abs(before) * 100:+.1f} %"


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `jsorc-sim tune` on the CLI's subparsers."""
    tune = subparsers.add_parser(
        "tune", help="search a policy's parameters on train cells, check them on test cells",
        description="Search a policy's parameters on the [train] cells of a tune file, then "
        "score the best and the defaults on its held-out [test] cells.")
    tune.add_argument("file", help="tune TOML file")
    tune.add_argument("--workers", type=int, metavar="N",
                      help="processes (default: the machine's cores; 1: this process)")
    tune.add_argument("--scheduler", metavar="ADDR",
                      help="run the cells on a Dask cluster: tcp://HOST:8786")
    tune.add_argument("--out", metavar="DIR", help="write the trials, cells, plots and "
                      "tune.json here (default: runs/<name>)")
    tune.add_argument("--traces", metavar="DIR",
                      help="directory that \"{traces}\" in paths expands to")
    tune.add_argument("--json", action="store_true", help="print tune.json instead")
    tune.add_argument("--no-progress", action="store_true",
                      help="no progress on stderr (a bar on a terminal, else a line per step, "
                      "each with the trial count and the best objective so far)")
    tune.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """`jsorc-sim tune`: 0 when done, 1 when every candidate failed on train."""
    spec = load_tune(args.file, traces_dir=args.traces)
    out = Path(args.out) if args.out else Path("runs") / spec.name
    progress = not args.no_progress
    result = run_tune(spec, out, workers=args.workers, scheduler=args.scheduler,
                      progress=progress)
    if args.json:
        print(json.dumps(result.summary, indent=2, default=str))
    else:
        print(result.format())
        print(f"\nwrote {out}/: {', '.join(TUNE_FILES)}, manifest.json")
    return 1 if math.isinf(result.best.objective("train")) else 0
