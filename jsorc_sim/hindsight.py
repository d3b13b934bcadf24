"""The hindsight baseline: the best static placement for a scenario, so results can report
regret.

`best_static(scenario, seed=1, app="flow_analysis", duration_s=600)` simulates every feasible
static placement of the actions the scenario's apps call -- each action local or
`remote:replicas`; feasible when the local ones fit in node memory beside the runtime --
under the `static` policy with one seed (so every run sees the same arrivals and service
times: the comparison is paired), and returns the one with the lowest mean walker latency
(`report()["walker_run"]["all"]["average_latency"]`) with a table of every combination.
Infeasible combinations are listed but never simulated. Each run starts, like any policy's
run, from the scenario's initial placement; the `static` policy moves to its placement at
t = 0, so `warmup_s` should cover the loads and replica start-ups.

    best = best_static("experiments/scenarios/jsorc_loadtest.toml", seed=1,
                       app="flow_analysis", duration_s=600)
    best.best, best.best_latency_ms, best.table
    regret(other_run_latency_ms, best)              # ms above the best static placement

Seeded and deterministic; `workers > 1` runs the simulations in a process pool and gives
the same table.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from jsorc_sim import scenario as scenario_mod
from jsorc_sim.scenario import Scenario
from jsorc_sim.simulate import simulate
from policies import Mode, Placement

# From `report()`: walker latency of all apps (ms) and throughput, then from `cost`.
LATENCY_KEYS = ("average_latency", "50th_latency", "95th_latency", "99th_latency",
                "throughput")
COST_KEYS = ("failed_requests", "oom_events", "cold_starts", "node_memory_gb_s",
             "replica_memory_gb_s")
COUNT_KEYS = ("failed_requests", "oom_events", "cold_starts")


@dataclass(frozen=True, eq=False)
class HindsightResult:
    """The best static placement and the table of every combination.

    `table`: one row per combination, best first (simulated ones by mean latency, runs
    with no completed walker after them, infeasible ones last; ties in enumeration order).
    Columns: `combination` (enumeration index; 0 is all local), one column per action with
    its placement, `placement` (the same as text), `node_memory_mb` (runtime plus local
    copies), `feasible`, `simulated`, the `walker_run.all` figures (`average_latency`,
    `50th_latency`, `95th_latency`, `99th_latency`, `throughput`; NaN when not simulated or
    no walker completed) and costs (`failed_requests`, `oom_events`, `cold_starts`,
    `node_memory_gb_s`, `replica_memory_gb_s`).
    """

    scenario: str
    app: str | None
    seed: int
    duration_s: float
    actions: tuple[str, ...]
    best: Mapping[str, Placement]
    best_latency_ms: float
    table: pd.DataFrame

    def regret(self, latency_ms: float | None, *, relative: bool = False) -> float:
        """`regret(latency_ms, self, relative=relative)`."""
        return regret(latency_ms, self, relative=relative)


def regret(latency_ms: float | None, best: float | HindsightResult, *,
           relative: bool = False) -> float:
    """How much worse `latency_ms` (a run's mean walker latency) is than the best static
    placement: in ms, or as a fraction of the best with `relative=True`. Negative when the
    run beat every static placement (an adaptive policy can). NaN when the run completed no
    walker (`latency_ms` None or NaN, as `report()` gives it)."""
    reference = best.best_latency_ms if isinstance(best, HindsightResult) else float(best)
    if latency_ms is None or math.isnan(latency_ms):
        return math.nan
    gap = float(latency_ms) - reference
    return gap / reference if relative else gap


def best_static(
    scenario: Scenario | str | Path,
    *,
    seed: int | None = None,
    app: str | None = None,
    duration_s: float | None = None,
    replicas: int = 1,
    workers: int = 1,
    max_runs: int = 4096,
) -> HindsightResult:
    """Simulate every feasible static placement and return the best (see the module doc).

    `seed` (default: the scenario's), `app` and `duration_s` are passed to `simulate`;
    `replicas` is the replica count of every remote placement; `workers` > 1 simulates in
    that many processes. Raises ValueError when there would be more than `max_runs`
    combinations (2 ** actions) or no feasible run completed a walker.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not isinstance(scenario, Scenario):
        scenario = scenario_mod.load(scenario)
    if app is not None:
        scenario = scenario.for_app(app)
    seed = scenario.seed if seed is None else seed
    actions = actions_in_use(scenario)
    if 2 ** len(actions) > max_runs:
        raise ValueError(f"{len(actions)} actions make {2 ** len(actions)} combinations, more "
                         f"than max_runs = {max_runs}; pick an app or raise max_runs")
    combos = combinations(actions, replicas)
    feasible = [fits(scenario, combo) for combo in combos]
    jobs = [(scenario, combo, seed, duration_s)
            for combo, ok in zip(combos, feasible, strict=True) if ok]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            outcomes = list(pool.map(_run, jobs))
    else:
        outcomes = [_run(job) for job in jobs]
    table = _table(scenario, actions, combos, feasible, iter(outcomes))
    done = table[table["simulated"] & table["average_latency"].notna()]
    if done.empty:
        raise ValueError(f"{scenario.name}: no feasible static placement completed a walker "
                         f"run (of {len(jobs)} simulated)")
    best_row = done.iloc[0]
    best = combos[int(best_row["combination"])]
    return HindsightResult(
        scenario=scenario.name, app=app, seed=seed,
        duration_s=scenario.duration_s if duration_s is None else float(duration_s),
        actions=actions, best=best, best_latency_ms=float(best_row["average_latency"]),
        table=table,
    )


def actions_in_use(scenario: Scenario) -> tuple[str, ...]:
    """The actions the scenario's apps call, in the scenario's order."""
    called = {call for spec in scenario.apps.values() for call in spec.calls}
    return tuple(name for name in scenario.actions if name in called)


def combinations(actions: Sequence[str], replicas: int = 1) -> list[dict[str, Placement]]:
    """Every local / remote:replicas assignment of `actions`, all local first."""
    choices = (Placement.local(), Placement.remote(replicas))
    return [dict(zip(actions, combo, strict=True))
            for combo in itertools.product(choices, repeat=len(actions))]


def local_memory_mb(scenario: Scenario, placements: Mapping[str, Placement]) -> float:
    """The node memory a placement holds: the runtime plus every local copy."""
    return scenario.node.runtime_memory_mb + sum(
        scenario.actions[a].local_memory_mb for a, p in placements.items()
        if p.mode is Mode.LOCAL)


def fits(scenario: Scenario, placements: Mapping[str, Placement]) -> bool:
    """Whether the local copies fit in node memory beside the runtime (a load that would
    go past the node's memory is an out-of-memory in the simulator)."""
    return local_memory_mb(scenario, placements) <= scenario.node.memory_mb


def _run(job: tuple[Scenario, dict[str, Placement], int, float | None]) -> dict[str, Any]:
    """One simulation (top level, so a process pool can run it)."""
    scenario, placements, seed, duration_s = job
    result = simulate(scenario, "static",
                      params={"placements": {a: str(p) for a, p in placements.items()}},
                      seed=seed, duration_s=duration_s)
    report = result.report()
    walker, cost = report["walker_run"]["all"], report["cost"]
    out = {key: math.nan if walker[key] is None else float(walker[key])
           for key in LATENCY_KEYS}
    out.update({key: cost[key] for key in COST_KEYS})
    return out


def _table(scenario: Scenario, actions: tuple[str, ...], combos: list[dict[str, Placement]],
           feasible: list[bool], outcomes: Any) -> pd.DataFrame:
    rows = []
    for index, (combo, ok) in enumerate(zip(combos, feasible, strict=True)):
        row: dict[str, Any] = {"combination": index}
        row.update({a: str(combo[a]) for a in actions})
        row["placement"] = ", ".join(f"{a}={combo[a]}" for a in actions)
        row["node_memory_mb"] = local_memory_mb(scenario, combo)
        row["feasible"] = row["simulated"] = ok
        if ok:
            row.update(next(outcomes))
        else:
            row.update({key: math.nan for key in (*LATENCY_KEYS, *COST_KEYS)})
        rows.append(row)
    table = pd.DataFrame(rows)
    for key in COUNT_KEYS:
        table[key] = table[key].astype("Int64")  # counts; <NA> where not simulated
    # Best first: simulated by latency (NaN after), infeasible last; stable for ties.
    table["_group"] = (~table["simulated"]).astype(int)
    table = table.sort_values(["_group", "average_latency"], kind="mergesort",
                              na_position="last")
    return table.drop(columns="_group").reset_index(drop=True)
