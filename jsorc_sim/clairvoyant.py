"""The clairvoyant bound: the best piecewise-static placement schedule, chosen with hindsight,
start-up costs paid, so results can report each policy's regret against more than one fixed
placement.

    bound = piecewise_static("experiments/scenarios/jsorc_loadtest.toml", seed=1,
                             app="flow_analysis", duration_s=600, stretches=4)
    bound.schedule          # the `schedule` policy's stretches: [{start_s, placements}, ...]
    bound.metrics           # the bound's whole-run metrics and its objective
    bound.regret(run.report())                   # a policy's objective minus the bound's

**Candidates** (`candidates`): each action the scenario's apps call is local or
`remote:r` for r in the ladder (1, 2, 4, 8), kept when the local copies fit in node memory
beside the runtime (`hindsight.fits`). When the full product, (1 + len(ladder)) ** actions,
is larger than `max_candidates` (64), the set is pruned, deterministically: the feasible
local / remote:1 combinations and, for each, the variants where every remote action has the
same count r from the ladder. The bound is then over that set only.

**Best static** (`best_static`): every candidate simulated for the whole run under the
`static` placement it names (as a one-stretch `schedule`), the same seed for all (common
random numbers: the comparison is paired request by request); the lowest objective wins,
the earliest candidate on ties.

**Piecewise static** (`piecewise_static`): [0, duration) is split into `stretches` equal
stretches, and they are chosen one after another with hindsight: for stretch k, every
candidate is simulated as the `schedule` policy with the stretches already chosen plus that
candidate, from t = 0 to the end of stretch k, and the candidate whose run has the lowest
objective is kept. The run replays from 0 each time, so a change of placement pays what the
simulator charges for it (cold starts, local loads, replica start-up, a copy draining, an
out-of-memory when a new local load does not fit beside a copy still in use). At the end the
schedule's whole-run objective is compared with the best static placement's and the lower is
the bound.

The greedy choice stretch by stretch is not guaranteed optimal (an earlier stretch is chosen
without knowing the later ones), and the candidate set is finite (and may be pruned): the
bound is the best this search found, a strong clairvoyant reference rather than a proof of
optimality. A policy can beat it, and its regret is then negative.

Metrics and the objective come from the report exactly as `jsorc-sim tune` scores a cell
(`tune.report_metrics`, `tune.parse_objective`, `tune.score_cell`): a run with no walker
completed after warm-up, a missing metric or a stopped run scores +inf. Seeded and
deterministic; `workers > 1` simulates each stretch's candidates in a process pool and gives
the same result.

    jsorc-sim bound SCENARIO [--app A] [--seed N] [--set k=v ...] [--duration S]
                    [--stretches K] [--objective EXPR] [--ladder 1,2,4,8] [--workers N]
                    [--json] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsorc_sim import outputs
from jsorc_sim import scenario as scenario_mod
from jsorc_sim.scenario import Scenario
from jsorc_sim.tune import (
    METRICS,
    CellOutcome,
    CellTask,
    parse_objective,
    report_metrics,
    run_cell,
    score_cell,
)
from policies import Mode, Placement

if TYPE_CHECKING:
    # pandas (and hindsight, which imports it) are imported where they are used: every
    # `jsorc-sim` command but run builds this module's parser, and pandas costs ~0.2 s.
    import pandas as pd

DEFAULT_OBJECTIVE = "95th_latency + 0.05 * replica_core_s"
DEFAULT_LADDER = (1, 2, 4, 8)
MAX_CANDIDATES = 64
MAX_RUNS = 4096  # candidates at most, after pruning: beyond this, pick an app
#: The metrics a BoundResult reports (beside "objective").
BOUND_METRICS = ("average_latency", "95th_latency", "replica_core_s", "node_memory_gb_s",
                 "placement_changes", "oom_events")
BOUND_FILES = ("bound.json", "table.csv")
BOUND_KIND = "jsorc-sim bound"


class BoundError(ValueError):
    """Arguments the bound cannot be computed with (the message names the bad value)."""


Stretch = dict[str, Any]  # {"start_s": float, "placements": {action: text}}, a schedule entry


@dataclass(frozen=True, eq=False)
class BoundResult:
    """The clairvoyant bound of one scenario cell (see the module doc).

    `schedule`: the bound's stretches, as the `schedule` policy's `stretches` parameter
    (consecutive equal stretches merged; one stretch when the best static placement won).
    `metrics`: the bound's whole-run `BOUND_METRICS` and `objective`. `static`:
    `{"placements": {action: text}, "metrics": {...}}` of the best static candidate;
    `greedy`: `{"schedule": [...], "metrics": {...}}` of the piecewise schedule the search
    found (the bound when it beat the static one). `table`: one row per simulation, the static
    sweep (`search` "static", the whole run) then the piecewise one (`search` "piecewise", one
    block per stretch, each run from 0 to `end_s`): `stretch`, `start_s`, `end_s`,
    `candidate` (index into the candidates), one column per action, `placement` (as text),
    `objective`, `failure` (why it is +inf), `chosen`, and the tune metrics (`METRICS`).
    """

    scenario: str
    app: str | None
    seed: int
    duration_s: float
    objective: str
    schedule: tuple[Stretch, ...]
    metrics: Mapping[str, float | None]
    static: Mapping[str, Any]
    greedy: Mapping[str, Any]
    table: pd.DataFrame
    method: str
    actions: tuple[str, ...]
    candidates: int
    pruned: bool

    @property
    def value(self) -> float:
        """The bound's objective."""
        return _value(self.metrics)

    def regret(self, run: Mapping[str, Any] | float, *, relative: bool = False) -> float:
        """A policy's objective minus the bound's (`relative`: as a fraction of the bound's).

        `run` is the policy's objective value, its `report()`, or its metrics (`walker_run.all`
        and `cost` keys), scored as `jsorc-sim tune` scores a cell (a run with no walker
        completed scores +inf). Negative when the policy beat the bound: possible, because
        the bound is a greedy choice over a finite candidate set, not a proven optimum."""
        if isinstance(run, Mapping):
            metrics = report_metrics(run) if "walker_run" in run else run
            value, _why = score_cell(parse_objective(self.objective),
                                     CellOutcome(metrics, "ok", 0.0))
        else:
            value = float(run)
        gap = value - self.value
        if not relative:
            return gap
        return gap / abs(self.value) if self.value else math.nan

    def to_json(self) -> dict[str, Any]:
        """Everything but the table, JSON-ready (non-finite numbers as null)."""
        summary: dict[str, Any] = _finite({
            "scenario": self.scenario, "app": self.app, "seed": self.seed,
            "duration_s": self.duration_s, "objective": self.objective,
            "bound": "piecewise" if len(self.schedule) > 1 else "static",
            "schedule": list(self.schedule), "metrics": dict(self.metrics),
            "static": self.static, "greedy": self.greedy, "actions": list(self.actions),
            "candidates": self.candidates, "pruned": self.pruned,
            "simulations": len(self.table), "method": self.method,
        })
        return summary

    def format(self) -> str:
        """The best static placement and the piecewise schedule with their metrics."""
        import pandas as pd

        app = f" (app {self.app})" if self.app else ""
        rows = {"best static": self.static["metrics"],
                "piecewise (greedy)": self.greedy["metrics"]}
        frame = pd.DataFrame({label: {k: m.get(k) for k in ("objective", *BOUND_METRICS)}
                              for label, m in rows.items()}).T.astype(float)
        frame.columns = ["objective", "mean ms", "p95 ms", "replica core·s", "node GB·s",
                         "changes", "OOM"]
        shown = frame.apply(lambda column: column.map(
            lambda v: "-" if pd.isna(v) else f"{v:,.0f}" if column.name in ("changes", "OOM")
            else f"{v:,.2f}"))
        which = "piecewise" if len(self.schedule) > 1 else "static"
        lines = [f"clairvoyant bound: {self.scenario}{app}, seed {self.seed}, "
                 f"{self.duration_s:g} s, objective {self.objective}",
                 shown.to_string(), "",
                 f"bound: {which} (objective {self.value:,.2f})",
                 "best static: " + _placements_text(self.static["placements"]),
                 "piecewise schedule:"]
        lines += [f"  from {s['start_s']:>8g} s: {_placements_text(s['placements'])}"
                  for s in self.greedy["schedule"]]
        lines += ["", textwrap.fill(self.method, width=100)]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- candidates


def candidates(scenario: Scenario, actions: Sequence[str],
               ladder: Sequence[int] = DEFAULT_LADDER, *,
               max_candidates: int = MAX_CANDIDATES) -> list[dict[str, Placement]]:
    """The placements the bound chooses among (see the module doc): every feasible local /
    remote:r combination, all local first, or, when the full product is larger than
    `max_candidates`, the feasible local / remote:1 combinations each followed by its
    variants with every remote action at one count r of the ladder."""
    from jsorc_sim.hindsight import combinations, fits

    ladder = check_ladder(ladder)
    if max_candidates < 1:
        raise BoundError(f"max_candidates must be >= 1, got {max_candidates}")
    if (1 + len(ladder)) ** len(actions) <= max_candidates:
        choices = (Placement.local(), *(Placement.remote(r) for r in ladder))
        full = [dict(zip(actions, combo, strict=True))
                for combo in itertools.product(choices, repeat=len(actions))]
        return [combo for combo in full if fits(scenario, combo)]
    if 2 ** len(actions) > MAX_RUNS:
        raise BoundError(f"{len(actions)} actions make {2 ** len(actions)} local/remote "
                         f"combinations even pruned, more than {MAX_RUNS}; pick an app")
    out: list[dict[str, Placement]] = []
    for base in combinations(actions, 1):
        if not fits(scenario, base):
            continue
        variants = [base] + [{a: Placement.remote(r) if p.mode is Mode.REMOTE else p
                              for a, p in base.items()} for r in ladder]
        for variant in variants:
            if variant not in out:
                out.append(variant)
    return out


def check_ladder(ladder: Sequence[int] | str) -> tuple[int, ...]:
    """The replica ladder as a tuple of distinct counts >= 1 in increasing order; "1,2,4"
    is read too. BoundError names a bad entry."""
    if isinstance(ladder, str):
        try:
            ladder = [int(part) for part in ladder.split(",") if part.strip()]
        except ValueError:
            raise BoundError(f"ladder must be replica counts like 1,2,4,8, got {ladder!r}"
                             ) from None
    counts = tuple(ladder)
    if not counts:
        raise BoundError("ladder must name at least one replica count")
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise BoundError(f"ladder entries must be whole replica counts >= 1, got {count!r}")
    if list(counts) != sorted(set(counts)):
        raise BoundError(f"ladder must increase strictly, got {list(counts)}")
    return counts


# ----------------------------------------------------------------------------- the search


def best_static(
    scenario: Scenario | str | Path,
    *,
    seed: int | None = None,
    app: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    duration_s: float | None = None,
    objective: str = DEFAULT_OBJECTIVE,
    ladder: Sequence[int] = DEFAULT_LADDER,
    workers: int = 1,
    max_candidates: int = MAX_CANDIDATES,
) -> BoundResult:
    """The best static candidate by `objective` over the whole run: `piecewise_static` with
    one stretch (see the module doc)."""
    return piecewise_static(scenario, seed=seed, app=app, overrides=overrides,
                            duration_s=duration_s, stretches=1, objective=objective,
                            ladder=ladder, workers=workers, max_candidates=max_candidates)


def piecewise_static(
    scenario: Scenario | str | Path,
    *,
    seed: int | None = None,
    app: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    duration_s: float | None = None,
    stretches: int = 4,
    objective: str = DEFAULT_OBJECTIVE,
    ladder: Sequence[int] = DEFAULT_LADDER,
    workers: int = 1,
    max_candidates: int = MAX_CANDIDATES,
    shortlist: int | None = None,
) -> BoundResult:
    """The clairvoyant piecewise-static bound (see the module doc): `stretches` equal
    stretches chosen greedily with hindsight, compared with the best static candidate.

    `seed` (default: the scenario's), `app`, `overrides` (dotted scenario fields) and
    `duration_s` are as `simulate` takes them; `objective` is a `jsorc-sim tune` objective
    (lower is better); `workers` > 1 simulates each stretch's candidates in that many
    processes. `shortlist`, when given, limits each stretch's choice to that many of the
    best static candidates (by their whole-run objective): a cheaper search, and a bound over
    that smaller set (BoundResult.method says so). Raises BoundError on bad arguments or
    when no candidate scores a finite objective in some stretch, ScenarioError / TuneError
    on a bad scenario or objective."""
    import pandas as pd

    from jsorc_sim.hindsight import actions_in_use

    if isinstance(stretches, bool) or not isinstance(stretches, int) or stretches < 1:
        raise BoundError(f"stretches must be a whole number >= 1, got {stretches!r}")
    if workers < 1:
        raise BoundError(f"workers must be >= 1, got {workers}")
    if shortlist is not None and (isinstance(shortlist, bool) or not isinstance(shortlist, int)
                                  or shortlist < 1):
        raise BoundError(f"shortlist must be a whole number >= 1 or None, got {shortlist!r}")
    parse_objective(objective)  # a bad objective is refused before anything is simulated
    cell, seed = _prepare(scenario, app, overrides, duration_s, seed)
    total = cell.duration_s
    ends = [total * (k + 1) / stretches for k in range(stretches)]
    ends[-1] = total  # the last stretch ends exactly at the run's end
    if ends[0] <= cell.warmup_s:
        raise BoundError(f"stretches = {stretches}: the first stretch ends at {ends[0]:g} s, "
                         f"not after warmup_s = {cell.warmup_s:g} s, so its runs measure "
                         "nothing; use fewer stretches or a longer duration")
    actions = actions_in_use(cell)
    chosen = candidates(cell, actions, ladder, max_candidates=max_candidates)
    if not chosen:
        raise BoundError(f"{cell.name}: no candidate placement fits in node memory "
                         f"({cell.node.memory_mb:g} MB)")
    full = (1 + len(check_ladder(ladder))) ** len(actions)
    with _mapper(workers, len(chosen)) as run:
        static_schedule, static_rows = _greedy(cell, seed, chosen, [total], objective, run,
                                               "static")
        greedy_schedule, greedy_rows = static_schedule, list[dict[str, Any]]()
        if stretches > 1:
            pool = _shortlisted(chosen, static_rows, shortlist)
            greedy_schedule, greedy_rows = _greedy(cell, seed, pool, ends, objective, run,
                                                   "piecewise")
    table = pd.DataFrame([*static_rows, *greedy_rows])
    static_metrics = _metrics(table, "static", 0)
    greedy_metrics = (static_metrics if stretches == 1
                      else _metrics(table, "piecewise", stretches - 1))
    merged = _merged(greedy_schedule)
    pruned = full > max_candidates
    piecewise_wins = len(merged) > 1 and _value(greedy_metrics) < _value(static_metrics)
    return BoundResult(
        scenario=cell.name, app=app, seed=seed, duration_s=total, objective=objective,
        schedule=tuple(merged if piecewise_wins else static_schedule),
        metrics=greedy_metrics if piecewise_wins else static_metrics,
        static={"placements": dict(static_schedule[0]["placements"]),
                "metrics": static_metrics},
        greedy={"schedule": merged, "metrics": greedy_metrics},
        table=table,
        method=_method(stretches, total, len(chosen), full, pruned, piecewise_wins, shortlist),
        actions=actions, candidates=len(chosen), pruned=pruned,
    )


def _prepare(scenario: Scenario | str | Path, app: str | None,
             overrides: Mapping[str, Any] | None, duration_s: float | None,
             seed: int | None) -> tuple[Scenario, int]:
    """The scenario as every run of the search sees it, and the seed: as `simulate` would
    apply the same arguments."""
    source = str(scenario)
    if not isinstance(scenario, Scenario):
        scenario = scenario_mod.load(scenario)
    if overrides:
        scenario = scenario_mod.override(scenario, overrides, source=f"{source} with overrides")
    if app is not None:
        scenario = scenario.for_app(app)
    if duration_s is not None:
        if not (duration_s > scenario.warmup_s and math.isfinite(duration_s)):
            raise BoundError(f"duration {duration_s:g} s must be finite and exceed warmup_s = "
                             f"{scenario.warmup_s:g}")
        scenario = dataclasses.replace(scenario, duration_s=float(duration_s))
    return scenario, scenario.seed if seed is None else seed


Mapper = Callable[[Callable[[CellTask], CellOutcome], list[CellTask]], list[CellOutcome]]


@contextmanager
def _mapper(workers: int, jobs: int) -> Iterator[Mapper]:
    """`map` over jobs, in a process pool when `workers` > 1 (one pool for the whole search:
    its start-up is paid once, not per stretch)."""
    if workers == 1 or jobs == 1:
        yield lambda fn, tasks: [fn(task) for task in tasks]
        return
    with ProcessPoolExecutor(max_workers=min(workers, jobs)) as pool:
        yield lambda fn, tasks: list(pool.map(fn, tasks))


def _greedy(cell: Scenario, seed: int, chosen: list[dict[str, Placement]],
            ends: list[float], objective: str, run: Mapper, search: str
            ) -> tuple[list[Stretch], list[dict[str, Any]]]:
    """Choose a candidate per stretch ending at `ends`, each given the ones before (see the
    module doc). Returns the schedule and a row per simulation."""
    scoring = parse_objective(objective)
    schedule: list[Stretch] = []
    rows: list[dict[str, Any]] = []
    start = 0.0
    for index, end in enumerate(ends):
        trials = [[*schedule, _stretch(start, combo)] for combo in chosen]
        tasks = [CellTask(cell, seed, end, "schedule", {"stretches": trial})
                 for trial in trials]
        outcomes = run(run_cell, tasks)
        scored = [score_cell(scoring, outcome) for outcome in outcomes]
        values = [value for value, _why in scored]
        finite = [i for i, value in enumerate(values) if math.isfinite(value)]
        if not finite:
            raise BoundError(f"{cell.name}: no candidate scores a finite objective in "
                             f"stretch {index} ({start:g}-{end:g} s); the first: "
                             f"{scored[0][1]}")
        best = min(finite, key=lambda i: (values[i], i))  # the earliest on ties
        schedule = trials[best]
        rows += [{"search": search, "stretch": index, "start_s": start, "end_s": end,
                  "candidate": i, **trials[i][-1]["placements"],
                  "placement": _placements_text(trials[i][-1]["placements"]),
                  "objective": values[i], "failure": why,
                  "chosen": i == best,
                  **{m: outcomes[i].metrics.get(m) for m in METRICS}}
                 for i, (_value, why) in enumerate(scored)]
        start = end
    return schedule, rows


def _shortlisted(chosen: list[dict[str, Placement]], static_rows: list[dict[str, Any]],
                 shortlist: int | None) -> list[dict[str, Placement]]:
    """The `shortlist` best candidates of the static sweep (all of them without one), in
    their enumeration order, so ties still go to the earliest."""
    if shortlist is None or shortlist >= len(chosen):
        return chosen
    ranked = sorted(range(len(chosen)), key=lambda i: (static_rows[i]["objective"], i))
    return [chosen[i] for i in sorted(ranked[:shortlist])]


def _value(metrics: Mapping[str, float | None]) -> float:
    value = metrics["objective"]
    return math.inf if value is None else float(value)


def _stretch(start_s: float, placements: Mapping[str, Placement]) -> Stretch:
    return {"start_s": float(start_s), "placements": {a: str(p) for a, p in placements.items()}}


def _merged(schedule: list[Stretch]) -> list[Stretch]:
    """Consecutive stretches with the same placements as one: the `schedule` policy asks for
    nothing at a stretch that repeats the one before, so the run is the same."""
    out: list[Stretch] = []
    for stretch in schedule:
        if not out or stretch["placements"] != out[-1]["placements"]:
            out.append(stretch)
    return out


def _metrics(table: pd.DataFrame, search: str, stretch: int) -> dict[str, float | None]:
    """The chosen run's `BOUND_METRICS` and objective, in one stretch of one search."""
    import pandas as pd

    row = table[(table["search"] == search) & (table["stretch"] == stretch)
                & table["chosen"]].iloc[0]
    out: dict[str, float | None] = {k: None if pd.isna(row[k]) else float(row[k])
                                    for k in BOUND_METRICS}
    out["objective"] = float(row["objective"])
    return out


def _method(stretches: int, total: float, count: int, full: int, pruned: bool,
            piecewise: bool, shortlist: int | None = None) -> str:
    over = (f"{count} candidates (pruned from {full}: the feasible local/remote:1 "
            "combinations, each also with every remote action at one ladder count; the bound "
            "is over that set)" if pruned
            else f"{count} feasible candidates of {full}")
    if stretches == 1:
        return (f"best static placement over the whole run ({total:g} s) among {over}, by "
                "hindsight.")
    return (f"greedy piecewise-static with hindsight: {stretches} equal stretches of "
            f"{total / stretches:g} s, each the candidate minimising the objective of the run "
            "from 0 to its end given the stretches chosen before (changes pay their "
            f"simulated start-up costs), among {over}"
            + (f" (each stretch chooses among the {shortlist} best static ones)"
               if shortlist is not None and shortlist < count else "")
            + "; the bound is the "
            f"{'piecewise schedule' if piecewise else 'best static placement'}, the lower "
            "of the two by whole-run objective. Greedy stretch by stretch over a finite "
            "set, so not guaranteed optimal: a policy can beat it (negative regret).")


def _placements_text(placements: Mapping[str, str | Placement]) -> str:
    return ", ".join(f"{a}={p}" for a, p in placements.items()) or "(nothing placed)"


def _finite(value: Any) -> Any:
    """`value` with NaN and the infinities as None, for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# ----------------------------------------------------------------------------- command line


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `jsorc-sim bound` on the CLI's subparsers."""
    bound = subparsers.add_parser(
        "bound", help="the clairvoyant bound: best static and best piecewise-static schedule",
        description="Simulate every candidate placement (each action local or remote:r for r "
        "in the ladder, fitting in node memory) for the whole run, and stretch by stretch "
        "with hindsight (start-up costs paid), and print the best static placement and the "
        "piecewise schedule with their metrics; the lower objective is the bound that "
        "policies' regret is measured against.")
    bound.add_argument("scenario", help="scenario TOML file")
    bound.add_argument("--app", help="restrict the workload to one app")
    bound.add_argument("--seed", type=int, help="random seed (default: the scenario's)")
    bound.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                       dest="overrides", help="override a scenario field (as jsorc-sim run "
                       "--set: workload.clients=8); repeatable")
    bound.add_argument("--duration", type=float, help="simulated seconds (default: scenario's)")
    bound.add_argument("--stretches", type=int, default=4,
                       help="equal stretches of the run, each with its own placement (4)")
    bound.add_argument("--objective", default=DEFAULT_OBJECTIVE,
                       help="what is minimised, in jsorc-sim tune's syntax "
                       f"({DEFAULT_OBJECTIVE!r})")
    bound.add_argument("--ladder", default=",".join(map(str, DEFAULT_LADDER)),
                       help="replica counts a remote action may take (1,2,4,8)")
    bound.add_argument("--max-candidates", type=int, default=MAX_CANDIDATES,
                       help="prune the candidates beyond this many (64; see the README)")
    bound.add_argument("--workers", type=int, default=1, help="processes (1: this one)")
    bound.add_argument("--json", action="store_true", help="print bound.json instead")
    bound.add_argument("--out", metavar="DIR", help="write bound.json and table.csv here "
                       "(a file of those names that jsorc did not write is refused first)")
    bound.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """`jsorc-sim bound`: print the bound; 0 when done."""
    from jsorc_sim.cli import BadInput, parse_overrides

    if args.seed is not None and args.seed < 0:
        raise BadInput(f"--seed must be >= 0, got {args.seed}")
    if args.out:
        outputs.check(args.out, BOUND_FILES, BOUND_KIND)  # before simulating
    try:
        ladder = check_ladder(args.ladder)
        result = piecewise_static(
            args.scenario, seed=args.seed, app=args.app,
            overrides=parse_overrides(args.overrides), duration_s=args.duration,
            stretches=args.stretches, objective=args.objective,
            ladder=ladder, workers=args.workers,
            max_candidates=args.max_candidates)
    except BoundError as exc:
        raise BadInput(str(exc)) from None
    summary = result.to_json()
    print(json.dumps(summary, indent=2) if args.json else result.format())
    if args.out:
        outputs.write(args.out, {
            "bound.json": lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"),
            "table.csv": lambda p: result.table.to_csv(p, index=False),
        }, BOUND_KIND)
        if not args.json:
            print(f"\nwrote {args.out}/: {', '.join(BOUND_FILES)}, manifest.json")
    return 0
