"""The simulated runtime: a node's cores and memory, walker requests, out-of-memory restarts.

A walker request holds a node core for its own compute, then makes its action calls in
order. Local calls hold a core too; remote calls do not (the walker waits on the network).
Two options model one machine shared by everything (both off by default): with
`node.replicas_share_cores` a replica's service holds a node core as well (and with
`node.network_holds_core` a remote call's network time too: on loopback it is CPU), and with
`node.runtime_cores` below `cores` the runtime's own work (walker compute and local calls, one
Python process under one GIL) also holds one of `runtime_cores` slots, taken before the core.
When a local load would take the node past its memory, the runtime runs out of memory:
every request in flight fails (recorded, row by row), every local copy is dropped, and the
runtime is down for `restart_s`; requests arriving meanwhile wait at the door.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from jsorc_sim.actions import ActionRuntime
from jsorc_sim.distributions import startup_sampler
from jsorc_sim.meter import Meter
from jsorc_sim.recorder import Failure, Recorder
from jsorc_sim.scenario import Scenario
from policies.observe import ActionInfo as ObservedAction
from policies.observe import EventLog, ObservationBuilder

if TYPE_CHECKING:
    from jsorc_sim.fastpath import FastPath
    from jsorc_sim.resume import Resume


@dataclass(frozen=True)
class AppPlan:
    """An app as the hot path needs it: its code, compute time and the actions it calls."""

    code: int
    name: str
    compute_s: float
    actions: tuple[ActionRuntime, ...]


def observation_builder(scenario: Scenario, t0: float = 0.0) -> ObservationBuilder:
    """The builder of a run's observations: the scenario's node, actions and apps."""
    return ObservationBuilder(
        t0, cores=scenario.node.cores, memory_total_mb=scenario.node.memory_mb,
        actions={name: ObservedAction(spec.local_memory_mb, spec.replica_memory_mb,
                                      spec.remote_cores)
                 for name, spec in scenario.actions.items()},
        apps=scenario.apps)


class Runtime:
    """The node and everything that runs on it."""

    def __init__(self, env: simpy.Environment, scenario: Scenario,
                 streams: dict[str, np.random.SeedSequence], *,
                 record_events: bool = False, recorder: Recorder | None = None) -> None:
        self.env = env
        self.scenario = scenario
        node = scenario.node
        self.recorder = recorder if recorder is not None else Recorder(
            apps=list(scenario.apps), actions=list(scenario.actions),
            warmup_s=scenario.warmup_s)
        self.cores = simpy.Resource(env, capacity=node.cores)
        # None unless it binds: an extra resource would reorder the queue for the cores.
        self.runtime_slots = simpy.Resource(env, capacity=node.runtime_cores) \
            if node.runtime_cores is not None and node.runtime_cores < node.cores else None
        self.replicas_share_cores = node.replicas_share_cores
        self.network_holds_core = node.network_holds_core
        self.memory_total_mb = node.memory_mb
        self.memory = Meter(env, node.runtime_memory_mb)  # node memory in use
        self.replica_memory = Meter(env)  # all replicas of all actions (MB)
        self.replica_cores = Meter(env)
        # Every signal a policy sees comes from these events (policies.observe): the actions,
        # the walkers and this runtime emit them as they happen.
        # `record_events` keeps every event in `event_log` (slower: for replay checks).
        builder = observation_builder(scenario, env.now)
        self.event_log = EventLog(builder) if record_events else None
        self.observations: Any = self.event_log or builder
        self.node_signals = self.observations.node
        self.up = True
        self.up_event = env.event()
        self.epoch = 0  # counts restarts; loads started before one are void
        self.oom_events = 0
        self.active: dict[int, simpy.Process] = {}  # requests past the door, by id
        self.at_door = 0  # requests waiting for a restart to end
        self.next_request = 0
        self.arrivals = 0
        # Every request not finished yet (past the door or waiting at it): id -> (arrival
        # time, app code). The run's unfinished requests are what is left here at the end.
        self.unfinished: dict[int, tuple[float, int]] = {}
        # The fast path (jsorc_sim.fastpath), when the run has one: it is told before the
        # placement changes, and `on_empty` is its call for when SimPy's last request ends.
        # While it runs, the requests it holds are counted here for the timeline.
        self.fast: FastPath | None = None
        self.on_empty: Callable[[], None] | None = None
        self.fast_in_system = 0
        self.fast_cores_queue = 0

        network = scenario.network
        # Service times are drawn by the workload, per source of requests (jsorc_sim.workload).
        startup_seeds = streams["startup"].spawn(len(scenario.actions))
        self.actions: dict[str, ActionRuntime] = {}
        for code, (name, spec) in enumerate(scenario.actions.items()):
            startup_rng = np.random.default_rng(startup_seeds[code])
            network_ms = 0.0
            if network.rtt_ms or spec.payload_kb:
                # KB x 8 = kbit; kbit / (Mbit/s) = ms
                network_ms = network.rtt_ms + spec.payload_kb * 8.0 / network.bandwidth_mbps
            self.actions[name] = ActionRuntime(
                self, spec, code,
                load_time=startup_sampler(spec.local_load_s, spec.startup_cv, startup_rng),
                start_time=startup_sampler(spec.remote_start_s, spec.startup_cv, startup_rng),
                network_ms=network_ms,
            )
        self.apps = [
            AppPlan(code, name, app.compute_ms / 1000.0,
                    tuple(self.actions[a] for a in app.calls))
            for code, (name, app) in enumerate(scenario.apps.items())
        ]

    # ------------------------------------------------------------------ requests

    def serve(self, app_code: int, size: float, draws: Sequence[float],
              resume: Resume | None = None) -> Generator[simpy.Event, Any, None]:
        """One walker request, from arrival to its last call; records one request row.

        `draws` are the base service times (ms) of its calls, one per call in order, drawn by
        the request's source when it arrived (see jsorc_sim.workload). `resume` carries on a
        request the fast path handed back (jsorc_sim.resume), already counted and observed up
        to now."""
        env = self.env
        if resume is None:
            rid = self.next_request
            self.next_request = rid + 1
            self.arrivals += 1
            arrival = env.now
            self.unfinished[rid] = (arrival, app_code)
            while not self.up:
                self.at_door += 1
                yield self.up_event
                self.at_door -= 1
        else:
            rid, arrival = resume.rid, resume.arrival
        self.active[rid] = env.active_process  # type: ignore[assignment]  # always set here
        plan = self.apps[app_code]
        signals = self.node_signals
        if resume is None:
            signals.request_arrived(arrival, plan.name)
        error = 0
        actions: Sequence[ActionRuntime] = plan.actions
        first = 0
        try:
            if resume is not None and resume.call is not None:
                first = resume.call.position
                action = actions[first]
                yield from action.call(rid, app_code, size, resume.call.service_ms, resume.call)
                first += 1
                actions = actions[first:]
            elif plan.compute_s:
                slot = self.runtime_slots.request() if self.runtime_slots else None
                try:
                    if slot is not None:
                        yield slot
                    with self.cores.request() as req:
                        yield req
                        began = resume.compute_start if resume is not None else None
                        if began is None or began != began:  # NaN: it was waiting for a core
                            signals.compute_started(env.now)
                            compute_s = plan.compute_s
                        else:  # computing since `began`: the core is its at once
                            compute_s = max(began + plan.compute_s - env.now, 0.0)
                        try:
                            yield env.timeout(compute_s)
                        finally:
                            signals.compute_finished(env.now)
                finally:
                    if slot is not None:
                        self.release_slot(slot)
            # By index, not zip(strict=True): three times cheaper on the hot path, and the
            # source drew one per call by construction.
            for i, action in enumerate(actions, first):
                yield from action.call(rid, app_code, size, draws[i])
        except simpy.Interrupt as stop:
            error = int(stop.cause) if isinstance(stop.cause, Failure) else 1
        del self.active[rid]
        del self.unfinished[rid]
        now = env.now
        latency = (now - arrival) * 1000.0
        signals.request_finished(now, plan.name, latency, not error)
        self.recorder.requests.append(
            (arrival, rid, app_code, latency, 0 if error else 1, error))
        if self.on_empty is not None and not self.active and not self.at_door:
            self.on_empty()

    def release_slot(self, slot: simpy.resources.resource.Request) -> None:
        """Give back a runtime slot (or stop waiting for one)."""
        assert self.runtime_slots is not None
        slot.cancel()
        self.runtime_slots.release(slot)

    # ------------------------------------------------------------------ memory

    @property
    def memory_used_mb(self) -> float:
        return self.memory.level

    def allocate(self, mb: float, who: str) -> bool:
        """Take `mb` of node memory for a local copy, or run out of memory trying."""
        if self.memory.level + mb > self.memory_total_mb:
            self.out_of_memory(
                f"loading {who} ({mb:.0f} MB) with {self.memory.level:.0f} of "
                f"{self.memory_total_mb:.0f} MB in use")
            return False
        self.memory.add(mb)
        return True

    def out_of_memory(self, detail: str) -> None:
        # The fast path never holds requests here: it runs only while no action loads, and an
        # out-of-memory event comes from a load.
        assert self.fast is None or not self.fast.active, "out of memory during a fast stretch"
        env = self.env
        self.oom_events += 1
        self.recorder.event(env.now, "out_of_memory", detail)
        self.node_signals.out_of_memory(env.now)
        self.node_signals.runtime(env.now, False)
        self.up = False
        self.epoch += 1
        for action in self.actions.values():
            action.drop_local()
        self.memory.set(self.scenario.node.runtime_memory_mb)
        for process in list(self.active.values()):
            process.interrupt(Failure.OUT_OF_MEMORY)
        env.process(self._restart())

    def _restart(self) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(self.scenario.node.restart_s)
        self.up = True
        self.node_signals.runtime(self.env.now, True)
        self.recorder.event(self.env.now, "restarted", "runtime up after out-of-memory")
        event, self.up_event = self.up_event, self.env.event()
        event.succeed()

    # ------------------------------------------------------------------ placement

    def place_initial(self) -> None:
        for name, placement in self.scenario.placement.items():
            self.actions[name].apply(placement, "scenario", "initial placement")
