"""Which app a trace's stream feeds, when the scenario's `map` does not say (`[workload]
streams`), and the per-function scenario: one app and one action per stream of the trace.

- `mix` (the default): each arrival of an unmapped stream draws an app by the `mix` weights
  (jsorc_sim.workload), so a function's calls spread over every app.
- `by_hash`: each stream goes to one app, chosen by a hash of its name: u = the first 8 bytes
  of BLAKE2b(name, key = `hash_seed`) read as a fraction of 2^64, and the app whose slice of
  [0, 1) (the apps in scenario order, slices as wide as their mix weights) holds u. The app
  depends on the stream's own name, the seed and the weights only: the same in every run, every
  window and every run seed, and unmoved when other streams are added. BLAKE2b rather than
  Python's `hash`, which is salted per process.
- `per_function`: every stream becomes an app that calls one action of its own, both named
  after the stream (`function_names`); each action copies the `template` action (default: the
  scenario's first) and, with `durations`, follows its function's row of an Azure durations file
  (`dist = "percentiles"`: the piecewise-linear inverse CDF through the row's percentiles, see
  jsorc_traces.profiles), and with `memory`, takes `local_memory_mb` and `remote_memory_mb` from
  its app's row of an Azure memory file (`memory_stat`, by default the p99 column: a local copy
  is charged once at load and must fit, so the memory check sizes by a high percentile, as a
  Kubernetes memory request set from observed usage would). The scenario's own apps and actions
  give way to the functions'; a `[placement]` entry of the template applies to every function.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from jsorc_sim.distributions import Sampler, ServiceMaker
from jsorc_sim.scenario import AppSpec, Dist, Scenario, ScenarioError

__all__ = ["TraceStreamWarning", "function_names", "hash_apps", "per_function",
           "percentile_sampler"]

# A stream's app and action are named by its first characters: 12 hex digits of a 64-digit
# hash are unique among millions of functions, and short enough for a table's column.
SHORT: Final = 12
_LISTED: Final = 5  # names listed in a message before "and N more"


class TraceStreamWarning(UserWarning):
    """Rows of a durations or memory file that match no stream of the trace."""


def function_names(streams: Sequence[str]) -> dict[str, str]:
    """Each stream's app and action name: itself when up to 16 characters, else its first 12,
    lengthened (for every stream) until they are distinct."""
    if all(len(s) <= 16 for s in streams):
        return {s: s for s in streams}
    width = SHORT
    while True:
        names = {s: s if len(s) <= 16 else s[:width] for s in streams}
        if len(set(names.values())) == len(names):
            return names
        width += 4


def hash_apps(streams: Sequence[str], weights: Sequence[float], seed: int) -> npt.NDArray[np.int64]:
    """The app code of each stream under `streams = "by_hash"` (see the module docstring)."""
    w = np.asarray(weights, dtype=np.float64)
    edges = np.cumsum(w / w.sum())
    key = seed.to_bytes(8, "little")
    u = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8, key=key).digest(),
                                 "big") / 2.0**64 for s in streams], dtype=np.float64)
    # A zero-weight app has an empty slice and gets no stream; the last edge is 1 (rounding).
    codes = np.searchsorted(edges, u, side="right")
    return np.minimum(codes, len(w) - 1).astype(np.int64)


def percentile_sampler(path: Path, function: str) -> ServiceMaker:
    """Service times (ms) of `function` by its row of an Azure durations file."""
    from jsorc_traces.profiles import DURATION_LEVELS, mean_of_points, read_durations

    durations = read_durations(path)
    if function not in durations.functions:
        raise ScenarioError(str(path), [f"no row for function {function!r} (rows: "
                                        f"{_listing(durations.functions)})"])
    levels = np.array(DURATION_LEVELS)
    values = durations.points(function)
    mean = mean_of_points(levels, values)
    if not mean > 0:
        # All-zero service times would let a closed-loop client spin at one instant forever.
        raise ScenarioError(str(path), [f"function {function!r}: its percentiles are all 0"])
    return lambda rng: Sampler(lambda n: np.interp(rng.random(n) * 100.0, levels, values), mean)


def per_function(scenario: Scenario, source: str) -> Scenario:
    """`scenario` with one app and one action per stream of its trace (the module docstring).

    Idempotent: a scenario already expanded (its actions named after the streams, as
    `to_dict` writes it) keeps its actions."""
    from jsorc_traces.readers import read_stream_apps

    workload = scenario.workload
    streams = read_stream_apps(scenario.resolve(workload.trace), workload.trace_format)
    names = function_names(streams.names)
    problems: list[str] = []
    fresh = [s for s in streams.names if names[s] not in scenario.actions]
    template = workload.template or next(
        (a for a in scenario.actions if a not in set(names.values())), "")
    if workload.template and workload.template not in scenario.actions:
        problems.append(f"workload.template: unknown action {workload.template!r} "
                        f"(actions: {', '.join(scenario.actions)})")
    elif fresh and not template:
        problems.append("workload.streams = \"per_function\" needs an action to copy "
                        "(workload.template)")
    service = _services(scenario, streams.names, problems)
    memory = _memory(scenario, streams.names, streams.apps, problems)
    if problems:
        raise ScenarioError(source, problems)
    actions, apps, placement = {}, {}, {}
    for stream in streams.names:
        name = names[stream]
        if name in scenario.actions:
            actions[name] = scenario.actions[name]
        else:
            action = scenario.actions[template]
            changes: dict[str, object] = {"name": name}
            if stream in service:
                changes["service"] = service[stream]
            if stream in memory:
                changes["local_memory_mb"] = changes["remote_memory_mb"] = memory[stream]
            actions[name] = dataclasses.replace(action, **changes)  # type: ignore[arg-type]
        apps[name] = scenario.apps.get(name) or AppSpec(name=name, calls=(name,))
        if name in scenario.placement:
            placement[name] = scenario.placement[name]
        elif template in scenario.placement:
            placement[name] = scenario.placement[template]
    mix = {name: 1.0 for name in apps}
    return dataclasses.replace(scenario, actions=actions, apps=apps, placement=placement,
                               workload=dataclasses.replace(workload, mix=mix, template=""))


def _services(scenario: Scenario, streams: Sequence[str], problems: list[str]) -> dict[str, Dist]:
    """Each stream's `percentiles` distribution by the durations file, when there is one."""
    workload = scenario.workload
    if not workload.durations:
        return {}
    from jsorc_traces.profiles import read_durations

    rows = read_durations(scenario.resolve(workload.durations)).functions
    missing = sorted(set(streams) - set(rows))
    if missing:
        problems.append(f"workload.durations: no row for {len(missing)} stream(s) of the "
                        f"trace: {_listing(missing)}")
    _warn_unused("durations", workload.durations, set(rows) - set(streams))
    return {s: Dist(dist="percentiles", file=workload.durations, function=s) for s in streams}


def _memory(scenario: Scenario, streams: Sequence[str], stream_apps: Sequence[str],
            problems: list[str]) -> dict[str, float]:
    """Each stream's memory (MB) by the memory file, when there is one: by HashFunction when
    the file has that column, else by the stream's HashApp."""
    workload = scenario.workload
    if not workload.memory:
        return {}
    from jsorc_traces.profiles import read_memory

    table = read_memory(scenario.resolve(workload.memory), workload.memory_stat)
    by_function = table.key_column == "HashFunction"
    wanted = list(streams) if by_function else list(stream_apps)
    value = dict(zip(table.keys, table.values_mb.tolist(), strict=True))
    missing = sorted({k for k in wanted if k not in value})
    if missing:
        problems.append(f"workload.memory: no {table.key_column} row for {len(missing)} "
                        f"stream(s) of the trace: {_listing(missing)}")
    _warn_unused("memory", workload.memory, set(value) - set(wanted))
    return {s: float(value[k]) for s, k in zip(streams, wanted, strict=True) if k in value}


def _warn_unused(what: str, path: str, unused: set[str]) -> None:
    if unused:
        warnings.warn(TraceStreamWarning(
            f"workload.{what}: {len(unused)} row(s) of {path} match no stream of the trace "
            f"(ignored): {_listing(sorted(unused))}"), stacklevel=3)


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(n[:16] for n in names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
