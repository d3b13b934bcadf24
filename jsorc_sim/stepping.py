"""A simulation driven from outside, one control interval at a time (for jsorc_sim.gym_env).

    stepper = Stepper("experiments/scenarios/jsorc_loadtest.toml", app="flow_analysis", seed=1)
    while not stepper.done:
        observation = stepper.observe()         # what a policy would see now
        stepper.apply(Decision({...}), "agent")  # checked and applied as the controller does
        stepper.advance()                       # run to the next control point
        stepper.window()                        # latency and cost of that interval
    stepper.result().report()                   # as simulate() reports (mid-run too)

The world is `simulate`'s (jsorc_sim.simulate.build: the same processes registered in the
same order); only the control loop differs. Here it is a SimPy process that, at each control
point, builds the observation with one `Observer` (as jsorc_sim.controller.control does) and
then pauses the run; `apply` does what control() does with a decision, and `advance` hands
the fast path the next control point (`runtime.fast.stepped`) and creates the next wake-up,
in the order control() does. The pause is an event scheduled before anything else at that
instant, so no other event runs between the observation and the decision: driven with the
decisions a policy makes, a Stepper reproduces that policy's run exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simpy
from simpy.events import EventPriority

from jsorc_sim.observe import Observer
from jsorc_sim.recorder import RECORD_MODES
from jsorc_sim.results import LATENCY_KEYS, Result
from jsorc_sim.scenario import Scenario
from jsorc_sim.simulate import World, build, resolve_scenario
from jsorc_sim.simulate import result as world_result
from jsorc_sim.stats import RunStatistics
from policies import Decision, Observation, check_decision

# Latency metrics of a window, as the report names them (walker_run's keys).
WINDOW_LATENCY = ("average_latency", *(key for key, _ in LATENCY_KEYS))
# Cost keys that are time integrals or counts: a window holds their change.
WINDOW_COST = ("replica_core_s", "node_memory_gb_s", "replica_memory_gb_s",
               "placement_changes", "oom_events", "failed_requests", "cold_starts",
               "failed_calls", "arrivals")
# Before everything at its instant, SimPy's URGENT (0) included: nothing runs between the
# observation and the decision, as in control(), where both happen in one step.
_FIRST = EventPriority(-1)


@dataclass
class _WindowStatistics(RunStatistics):
    """The run's statistics, also keeping the latencies of the walker runs recorded since
    the last window (what the report would count: arrived after warm-up, succeeded)."""

    window_ms: list[np.ndarray] = field(default_factory=list)

    def add_requests(self, ts: np.ndarray, app: np.ndarray, latency_ms: np.ndarray,
                     ok: np.ndarray) -> None:
        super().add_requests(ts, app, latency_ms, ok)
        done = (ts >= self.warmup_s) & ok.astype(bool, copy=False)
        self.window_ms.append(np.asarray(latency_ms[done], dtype=float))


class Stepper:
    """One run of `scenario` whose decisions come from the caller (see the module).

    `seed`, `app`, `overrides` and `duration_s` are simulate()'s; `record` says which tables
    to keep ("requests", the default, keeps all but calls); `fast` chooses the engine."""

    def __init__(self, scenario: Scenario | str | Path, *, seed: int | None = None,
                 app: str | None = None, overrides: Mapping[str, Any] | None = None,
                 duration_s: float | None = None, record: str = "requests",
                 fast: str = "auto") -> None:
        if record not in RECORD_MODES:
            raise ValueError(f"record must be one of {', '.join(RECORD_MODES)}, got {record!r}")
        self.scenario = resolve_scenario(scenario, overrides=overrides, app=app, seed=seed,
                                         duration_s=duration_s)
        self.interval_s = self.scenario.policy.interval_s
        self.duration_s = self.scenario.duration_s
        world = build(self.scenario, "agent", {}, record=record, fast=fast, observed=True)
        recorder = world.recorder
        recorder.statistics = self._statistics = _WindowStatistics(
            recorder.apps, recorder.statistics.warmup_s, recorder.statistics.relative_error)
        self._world: World = world
        self._observer = Observer(world.runtime)
        self._observation: Observation | None = None
        self._pause = world.env.event()
        self._resume = world.env.event()
        self._last_reason = ""
        self._decisions_seen = 0
        self._changes = 0
        self._finished = False
        self._wall_s = 0.0
        self._window: dict[str, float] = {}
        world.env.process(self._control())
        self._run(world.env.now)  # to the first control point, t = 0
        # From the run's start: what happened at t = 0 before it (first arrivals) counts.
        self._mark = dict.fromkeys(WINDOW_COST, 0.0)

    # ------------------------------------------------------------------ the interface

    @property
    def now(self) -> float:
        return float(self._world.env.now)

    @property
    def done(self) -> bool:
        return self.now >= self.duration_s

    @property
    def world(self) -> World:
        """The simulated world (runtime, recorder, fast path) for inspection."""
        return self._world

    def observe(self) -> Observation:
        """The observation at this control point (the same object until `advance`); at the
        end of the run, of the last window, observed there (for an environment's last
        observation: nothing decides on it)."""
        if self._observation is None:  # the end: the last window, observed there
            self._observation = self._observer.observe(self.interval_s)
        return self._observation

    def apply(self, decision: Decision, source: str = "agent") -> bool:
        """Check `decision` (policies.check_decision: a PlacementError names the fault) and
        apply it now, recorded under `source`, as the controller applies a policy's; True
        when a placement changed."""
        if self.done:
            raise RuntimeError(f"the run has ended at t={self.now:g} s: no decision applies")
        runtime = self._world.runtime
        checked = check_decision(decision, runtime.actions)
        self._world.policy_name = source
        changed = False
        for action, placement in checked.placements.items():
            changed |= runtime.actions[action].apply(placement, source, checked.reason)
        if not changed and checked.reason and checked.reason != self._last_reason:
            # A new phase with no placement change still goes in the log (as control()).
            runtime.recorder.decision(self.now, "", "", "", source, checked.reason)
        self._last_reason = checked.reason or self._last_reason
        return changed

    def advance(self) -> None:
        """Run to the next control point (or to the end of the run)."""
        if self.done:
            raise RuntimeError(f"the run has ended at t={self.now:g} s")
        world = self._world
        env = world.env
        start = env.now
        next_at = start + self.interval_s
        fast = world.runtime.fast
        if fast is not None:
            fast.stepped("control", next_at)
        # Created here, after the decision's own events, as control() creates it.
        wake = env.timeout(self.interval_s)
        self._observation = None
        resume, self._resume = self._resume, env.event()
        self._pause = env.event()
        resume.succeed(wake)
        started = time.perf_counter()
        self._run(next_at)
        ended = self.now >= self.duration_s  # (not `self.done`: mypy holds it False here)
        if ended and not self._finished:
            world.recorder.finish()
            self._finished = True
        self._wall_s += time.perf_counter() - started
        totals = self._totals()
        self._window = self._measure(start, self._mark, totals)
        self._mark = totals

    def window(self) -> dict[str, float]:
        """The metrics of the last `advance` (empty before the first): walker latency
        (`average_latency`, `50th_latency` ... `99th_latency`, ms; NaN when no walker run
        that arrived after warm-up finished in the window) and `throughput` (those per
        second) of the walker runs that finished in it; the change of each cost key that is
        a time integral or a count (`WINDOW_COST`); `window_s`; and
        `oldest_unfinished_ms`, the age of the oldest request still in the system at the
        window's end (0 when none)."""
        return dict(self._window)

    def result(self) -> Result:
        """The run as simulate() returns it, as of now: `result().report()` works mid-run."""
        return world_result(self._world, wall_s=self._wall_s)

    # ------------------------------------------------------------------ the loop

    def _control(self) -> Generator[simpy.Event, Any, None]:
        """controller.control with the decision taken outside: observe, pause, and wait
        for `advance` to hand over the next wake-up."""
        env = self._world.env
        recorder = self._world.recorder
        while True:
            self._observation = self._observer.observe(self.interval_s)
            recorder.policy_steps += 1
            pause = self._pause
            # As SimPy's own run(until=...) builds its stop event, at the front of the queue.
            pause._ok = True
            pause._value = None
            env.schedule(pause, _FIRST)
            wake = yield self._resume
            yield wake

    def _run(self, next_at: float) -> None:
        env = self._world.env
        if next_at < self.duration_s:
            env.run(until=self._pause)
        elif env.now < self.duration_s:
            env.run(until=self.duration_s)

    # ------------------------------------------------------------------ windows

    def _totals(self) -> dict[str, float]:
        """The cost counters of the run so far (unrounded)."""
        world = self._world
        runtime, recorder = world.runtime, world.recorder
        recorder.flush()
        decisions = recorder.decisions
        self._changes += sum(1 for d in decisions[self._decisions_seen:]
                             if d["placement"] and d["source"] != "scenario")
        self._decisions_seen = len(decisions)
        st = self._statistics
        return {
            "replica_core_s": runtime.replica_cores.total(),
            "node_memory_gb_s": runtime.memory.total() / 1024.0,
            "replica_memory_gb_s": runtime.replica_memory.total() / 1024.0,
            "placement_changes": float(self._changes),
            "oom_events": float(runtime.oom_events),
            "failed_requests": float(st.failed_requests),
            "cold_starts": float(st.cold_starts),
            "failed_calls": float(st.failed_calls),
            "arrivals": float(runtime.arrivals),
        }

    def _measure(self, start: float, before: Mapping[str, float],
                 after: Mapping[str, float]) -> dict[str, float]:
        span = self.now - start
        latency = np.concatenate(self._statistics.window_ms) \
            if self._statistics.window_ms else np.empty(0)
        self._statistics.window_ms.clear()
        out: dict[str, float] = {"window_s": span,
                                 "throughput": len(latency) / span if span > 0 else 0.0}
        if len(latency):
            out["average_latency"] = float(latency.mean())
            percentiles = np.percentile(latency, [q for _, q in LATENCY_KEYS])
            out.update({key: float(v) for (key, _), v in zip(LATENCY_KEYS, percentiles,
                                                              strict=True)})
        else:
            out.update(dict.fromkeys(WINDOW_LATENCY, math.nan))
        out.update({key: after[key] - before[key] for key in WINDOW_COST})
        pending = self._world.runtime.unfinished
        oldest = min((arrival for arrival, _ in pending.values()), default=None)
        out["oldest_unfinished_ms"] = (self.now - oldest) * 1000.0 if oldest is not None \
            else 0.0
        return out
