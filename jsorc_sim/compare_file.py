"""The comparison file (`jsorc-sim compare FILE.toml`): its parts, read and checked.

Every problem of a file is found in one pass and raised in one CompareError, each naming the
key and the value: unknown keys, values of the wrong type (a string where a list of apps is
expected is refused, not read letter by letter), labels that would collide as folder names,
unknown workloads. What only the simulator can check -- policy names and parameters, apps,
scenario fields, tune spaces -- is checked by `jsorc_sim.compare.preflight`, before anything
simulates, by building every tune and experiment the file implies.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsorc_sim.scenario import ScenarioError, read_toml

DEFAULT_OBJECTIVE = "95th_latency + 0.05 * replica_core_s"
KINDS = ("ours", "baseline", "reference")
# Folder names inside --out that labels must not take.
RESERVED = ("tune", "experiments")
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
BOUND_DEFAULTS: dict[str, Any] = {"stretches": 4, "seeds": [1], "ladder": [1, 2, 4, 8],
                                  "max_candidates": 64, "shortlist": 6, "enabled": True}


class CompareError(ScenarioError):
    """A comparison file that cannot run; lists every problem found."""


@dataclass(frozen=True)
class PolicySpec:
    """A policy in the comparison: a fixed part and, when tuned, a search space."""

    label: str
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    space: Mapping[str, Any] = field(default_factory=dict)
    workloads: tuple[str, ...] = ()  # empty: every workload
    kind: str = "baseline"  # ours | baseline | reference (JSORC's own, as published)

    @property
    def tuned(self) -> bool:
        return bool(self.space)


@dataclass(frozen=True)
class WorkloadSpec:
    label: str
    scenario: str  # absolute path
    apps: tuple[str, ...] = ()
    set: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    duration_s: float | None = None
    seeds: tuple[int, ...] = ()  # empty: the file's
    bound: bool = True


@dataclass(frozen=True)
class LearnedSpec:
    """A learned policy trained by the comparison (stable-baselines3 PPO, the `rl` extra)."""

    label: str
    policy: str  # file.py:Class taking `model` (the trained folder)
    scenario: str
    apps: tuple[str, ...]
    set: Mapping[str, Any]
    timesteps: int
    seed: int
    workloads: tuple[str, ...]


@dataclass(frozen=True)
class Targets:
    """Which cells the issue's targets are measured on (labels of the file's workloads)."""

    loadtest: str = "loadtest"  # its cells at `clients` clients, per app
    clients: int = 8
    one_client: int = 1
    traces: tuple[str, ...] = ("azure_llm_2023",)  # also >= 20 % lower p95 there


@dataclass(frozen=True)
class Comparison:
    name: str
    path: Path
    text: str
    objective: str
    seeds: tuple[int, ...]
    tune: Mapping[str, Any]
    bound: Mapping[str, Any]
    policies: tuple[PolicySpec, ...]
    workloads: tuple[WorkloadSpec, ...]
    learned: LearnedSpec | None
    traces_dir: Path
    targets: Targets = Targets()

    @property
    def ours(self) -> str | None:
        """The label of the policy of kind "ours" (the targets are about it)."""
        return next((p.label for p in self.policies if p.kind == "ours"), None)


# ----------------------------------------------------------------------------- readers

class _Reader:
    """Typed reads of a TOML table, each problem recorded with where it is."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def table(self, raw: Any, where: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            self.problems.append(f"{where} must be a table, got {raw!r}")
            return {}
        return dict(raw)

    def tables(self, raw: Any, where: str) -> list[dict[str, Any]]:
        if raw is None:
            return []
        if not isinstance(raw, list) or not all(isinstance(t, Mapping) for t in raw):
            self.problems.append(f"{where} must be an array of tables ([[{where}]]), got {raw!r}")
            return []
        return [dict(t) for t in raw]

    def keys(self, raw: Mapping[str, Any], known: Sequence[str], where: str) -> None:
        self.problems += [f"{where}: unknown key {k!r} (known: {', '.join(known)})"
                          for k in raw if k not in known]

    def strings(self, raw: Any, where: str) -> tuple[str, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
            self.problems.append(f"{where} must be a list of names, got {raw!r}")
            return ()
        return tuple(raw)

    def whole(self, raw: Any, where: str, minimum: int = 0) -> int | None:
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
            self.problems.append(f"{where} must be a whole number >= {minimum}, got {raw!r}")
            return None
        return raw

    def wholes(self, raw: Any, where: str, minimum: int = 0) -> tuple[int, ...]:
        if not isinstance(raw, list) or not raw:
            self.problems.append(f"{where} must be a non-empty list of whole numbers >= "
                                 f"{minimum}, got {raw!r}")
            return ()
        values = [self.whole(v, f"{where} entry", minimum) for v in raw]
        if len(set(raw)) != len(raw):
            self.problems.append(f"{where} has repeated entries: {raw!r}")
        return tuple(v for v in values if v is not None)

    def text(self, raw: Any, where: str) -> str:
        if not isinstance(raw, str) or not raw.strip():
            self.problems.append(f"{where} must be a non-empty string, got {raw!r}")
            return ""
        return raw

    def label(self, raw: Any, where: str) -> str:
        label = self.text(raw, where)
        if label and not LABEL.match(label):
            self.problems.append(f"{where} = {label!r}: a label names folders and files, so it "
                                 "is letters, digits and _ . + - (starting with a letter or "
                                 "digit)")
        return label

    def duration(self, raw: Any, where: str) -> float | None:
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, int | float) or \
                not math.isfinite(raw) or raw <= 0:
            self.problems.append(f"{where} must be a positive number of seconds, got {raw!r}")
            return None
        return float(raw)

    def file(self, raw: Any, here: Path, where: str) -> str:
        text = self.text(raw, where)
        if not text:
            return ""
        path = _resolve(here, text)
        if not path.is_file():
            self.problems.append(f"{where}: scenario file {str(path)!r} does not exist")
        return str(path)


def _resolve(here: Path, text: str) -> Path:
    return Path(text) if Path(text).is_absolute() else (here / text).resolve()


# ----------------------------------------------------------------------------- loading

_TOP = ("name", "objective", "seeds", "traces_dir", "tune", "bound", "baselines", "policy",
        "workload", "learned", "targets")


def load_comparison(path: str | Path, traces_dir: str | Path | None = None, *,
                    quick: bool = False) -> Comparison:
    """Read and check a comparison file; every problem is listed in one CompareError.
    `quick` shrinks it (`shrink`)."""
    from jsorc_sim.tune import _parse_objective

    path = Path(path)
    text, raw = read_toml(path, CompareError)
    here = path.resolve().parent
    problems: list[str] = []
    read = _Reader(problems)
    read.keys(raw, _TOP, "the file")
    name = read.label(raw.get("name", path.stem), "name")
    objective = raw.get("objective", DEFAULT_OBJECTIVE)
    problems += _parse_objective(objective)[1]
    seeds = read.wholes(raw.get("seeds", [1, 2, 3]), "seeds")
    given = traces_dir or os.environ.get("JSORC_TRACES") or raw.get("traces_dir") \
        or "../../shared/traces"
    traces = _resolve(here, str(given))
    tune = read.table(raw.get("tune"), "[tune]")
    for key in ("train", "test"):
        part = read.table(tune.get(key), f"[tune.{key}]")
        if "scenario" not in part:
            problems.append(f"[tune.{key}] with a scenario is required")
        else:
            tune[key] = {**part, "scenario": read.file(part["scenario"], here,
                                                       f"[tune.{key}] scenario")}
    bound = _bound(read.table(raw.get("bound"), "[bound]"), read)
    policies = _baselines(read.table(raw.get("baselines"), "[baselines]"), read) + [
        _policy(entry, i, here, read) for i, entry in
        enumerate(read.tables(raw.get("policy"), "policy"))]
    workloads = [_workload(entry, i, here, read) for i, entry in
                 enumerate(read.tables(raw.get("workload"), "workload"))]
    if not workloads:
        problems.append("at least one [[workload]] is required")
    learned = _learned(raw.get("learned"), here, read)
    _labels(policies, workloads, learned, problems)
    targets = _targets(read.table(raw.get("targets"), "[targets]"), read)
    if problems:
        raise CompareError(str(path), list(dict.fromkeys(problems)))
    comparison = Comparison(name, path, text, str(objective), seeds, tune, bound,
                            tuple(policies), tuple(workloads), learned, traces, targets)
    return shrink(comparison) if quick else comparison


def _bound(raw: dict[str, Any], read: _Reader) -> dict[str, Any]:
    from jsorc_sim.clairvoyant import BoundError, check_ladder

    read.keys(raw, tuple(BOUND_DEFAULTS), "[bound]")
    bound = {**BOUND_DEFAULTS, **raw}
    read.whole(bound["stretches"], "[bound] stretches", 1)
    read.wholes(bound["seeds"], "[bound] seeds")
    read.whole(bound["max_candidates"], "[bound] max_candidates", 1)
    read.whole(bound["shortlist"], "[bound] shortlist", 1)
    if not isinstance(bound["enabled"], bool):
        read.problems.append(f"[bound] enabled must be true or false, got {bound['enabled']!r}")
    if isinstance(bound["ladder"], list):
        try:
            bound["ladder"] = list(check_ladder(bound["ladder"]))
        except BoundError as exc:
            read.problems.append(f"[bound] {exc}")
    else:
        read.problems.append(f"[bound] ladder must be a list of replica counts like [1, 2, 4], "
                             f"got {bound['ladder']!r}")
    return bound


def _baselines(raw: dict[str, Any], read: _Reader) -> list[PolicySpec]:
    """Every placement composed with every scaler, each with the union of both spaces."""
    if not raw:
        return []
    read.keys(raw, ("placements", "scalers", "placement_space", "scaler_space"), "[baselines]")
    placements = read.strings(raw.get("placements"), "[baselines] placements")
    scalers = read.strings(raw.get("scalers"), "[baselines] scalers")
    placement_space = read.table(raw.get("placement_space"), "[baselines.placement_space]")
    scaler_space = read.table(raw.get("scaler_space"), "[baselines.scaler_space]")
    read.problems.extend(f"[baselines.scaler_space]: {s!r} is not in scalers"
                         for s in scaler_space if s not in scalers)
    out = []
    for placement in placements:
        for scaler in scalers:
            own = read.table(scaler_space.get(scaler), f"[baselines.scaler_space.{scaler}]")
            space = {f"scaler_params.{k}": v for k, v in own.items()}
            if placement != "all_remote":  # all_remote has no placement choice to tune
                space.update({f"placement_params.{k}": v for k, v in placement_space.items()})
            out.append(PolicySpec(f"{placement}+{scaler}", "compose",
                                  {"placement": placement, "scaler": scaler}, space))
    return out


def _policy(entry: dict[str, Any], i: int, here: Path, read: _Reader) -> PolicySpec:
    from policies import absolute_ref

    where = f"[[policy]] {i + 1}"
    read.keys(entry, ("label", "name", "params", "space", "workloads", "kind"), where)
    name = read.text(entry.get("name"), f"{where} name")
    kind = entry.get("kind", "baseline")
    if kind not in KINDS:
        read.problems.append(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return PolicySpec(read.label(entry.get("label", name), f"{where} label"),
                      absolute_ref(name, here) if name else "",
                      read.table(entry.get("params"), f"{where} params"),
                      read.table(entry.get("space"), f"{where} space"),
                      read.strings(entry.get("workloads"), f"{where} workloads"), str(kind))


def _workload(entry: dict[str, Any], i: int, here: Path, read: _Reader) -> WorkloadSpec:
    where = f"[[workload]] {i + 1}"
    read.keys(entry, ("label", "scenario", "apps", "set", "grid", "duration_s", "seeds",
                      "bound"), where)
    grid: dict[str, tuple[Any, ...]] = {}
    for key, values in read.table(entry.get("grid"), f"{where} grid").items():
        if not isinstance(values, list) or not values:
            read.problems.append(f"{where} grid {key!r} must be a non-empty list of values, "
                                 f"got {values!r}")
        else:
            grid[key] = tuple(values)
    seeds = read.wholes(entry["seeds"], f"{where} seeds") if "seeds" in entry else ()
    bound = entry.get("bound", True)
    if not isinstance(bound, bool):
        read.problems.append(f"{where} bound must be true or false, got {bound!r}")
    return WorkloadSpec(read.label(entry.get("label"), f"{where} label"),
                        read.file(entry.get("scenario"), here, f"{where} scenario"),
                        read.strings(entry.get("apps"), f"{where} apps"),
                        read.table(entry.get("set"), f"{where} set"), grid,
                        read.duration(entry.get("duration_s"), f"{where} duration_s"),
                        seeds, bool(bound))


def _learned(raw: Any, here: Path, read: _Reader) -> LearnedSpec | None:
    from policies import absolute_ref

    if raw is None:
        return None
    table = read.table(raw, "[learned]")
    read.keys(table, ("label", "policy", "scenario", "apps", "set", "timesteps", "seed",
                      "workloads"), "[learned]")
    policy = read.text(table.get("policy"), "[learned] policy")
    return LearnedSpec(read.label(table.get("label", "ppo"), "[learned] label"),
                       absolute_ref(policy, here) if policy else "",
                       read.file(table.get("scenario"), here, "[learned] scenario"),
                       read.strings(table.get("apps"), "[learned] apps"),
                       read.table(table.get("set"), "[learned] set"),
                       read.whole(table.get("timesteps"), "[learned] timesteps", 1) or 1,
                       read.whole(table.get("seed", 0), "[learned] seed") or 0,
                       read.strings(table.get("workloads"), "[learned] workloads"))


def _targets(raw: dict[str, Any], read: _Reader) -> Targets:
    read.keys(raw, ("loadtest", "clients", "one_client", "traces"), "[targets]")
    default = Targets()
    return Targets(read.text(raw.get("loadtest", default.loadtest), "[targets] loadtest"),
                   read.whole(raw.get("clients", default.clients), "[targets] clients", 1) or 1,
                   read.whole(raw.get("one_client", default.one_client),
                              "[targets] one_client", 1) or 1,
                   read.strings(raw.get("traces", list(default.traces)), "[targets] traces"))


def _labels(policies: list[PolicySpec], workloads: list[WorkloadSpec],
            learned: LearnedSpec | None, problems: list[str]) -> None:
    """Labels are folder and file names: unique where they share a folder, never reserved."""
    runs = [p.label for p in policies] + ([learned.label] if learned else [])
    folders = [w.label for w in workloads] + ([learned.label] if learned else [])
    for kind, labels in (("policy", runs), ("workload", folders)):
        problems += [f"{kind} label {lab!r} is used twice" for lab in sorted(set(labels))
                     if labels.count(lab) > 1]
    problems += [f"label {lab!r} is reserved (a folder of the output)" for lab in folders
                 if lab in RESERVED]
    known = {w.label for w in workloads}
    for p in policies:
        problems += [f"policy {p.label!r}: unknown workload {w!r}" for w in p.workloads
                     if w not in known]
    if learned:
        problems += [f"[learned]: unknown workload {w!r}" for w in learned.workloads
                     if w not in known]
    ours = [p.label for p in policies if p.kind == "ours"]
    if len(ours) > 1:
        problems.append(f"only one policy can be kind = \"ours\", got {', '.join(ours)}")


# ----------------------------------------------------------------------------- quick

def shrink(c: Comparison) -> Comparison:
    """The same comparison, tiny: for tests and a first look (`--quick`)."""
    import copy

    tune = copy.deepcopy(dict(c.tune))
    tune.update(samples=2, iterations=1, duration_s=min(float(tune.get("duration_s", 300)), 120))
    for key in ("train", "test"):
        tune[key]["seeds"] = list(tune[key].get("seeds", [1]))[:1]
        tune[key]["apps"] = list(tune[key].get("apps", []))[:1]
    workloads = tuple(dataclasses.replace(
        w, seeds=(w.seeds or c.seeds)[:1], apps=w.apps[:1],
        grid={k: v[-1:] for k, v in w.grid.items()},
        duration_s=w.duration_s if phased(w) else min(float(w.duration_s or 600), 300.0))
        for w in c.workloads)
    bound = {**c.bound, "stretches": 2, "seeds": list(c.bound["seeds"])[:1],
             "ladder": list(c.bound["ladder"])[:2], "max_candidates": 8, "shortlist": 3}
    learned = dataclasses.replace(c.learned, timesteps=min(c.learned.timesteps, 256)) \
        if c.learned else None
    return dataclasses.replace(c, seeds=c.seeds[:1], tune=tune, bound=bound,
                               workloads=workloads, learned=learned)


def phased(w: WorkloadSpec) -> bool:
    """Whether the workload's mix changes at set times (a shorter run would cut them off)."""
    from jsorc_sim.scenario import load

    return bool(load(w.scenario).workload.phases)
