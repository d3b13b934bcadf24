"""One action in the simulated runtime: where it is placed, how it moves, how a call runs.

Placement follows a reconcile loop (as a Kubernetes controller does): `apply` records the
desired placement, `_reconcile` moves the actual state towards it whenever something
finishes (a local load, a replica start, a drained copy). Calls keep using the old placement
until the new one is ready; a local copy is freed when its last in-flight call ends; a
retiring replica serves the calls it holds, then is gone.

`call` is the simulator's hot path: locals are bound once and nothing is computed that the
row does not need.
"""

from __future__ import annotations

import typing
from collections.abc import Generator
from enum import Enum
from typing import TYPE_CHECKING, Any

import simpy
from simpy.resources.resource import Request

from jsorc_sim.distributions import Sampler
from jsorc_sim.recorder import Failure, Where
from jsorc_sim.remote import RemotePool
from jsorc_sim.resume import CallResume
from jsorc_sim.scenario import ActionSpec
from policies import Mode, Placement

if TYPE_CHECKING:
    from jsorc_sim.runtime import Runtime

LOCAL, REMOTE = int(Where.LOCAL), int(Where.REMOTE)


class LocalState(Enum):
    NONE = "none"
    LOADING = "loading"  # memory is taken from the start of the load
    READY = "ready"
    DRAINING = "draining"  # no new calls; freed when the last in-flight one ends


class ActionRuntime:
    """The placement state and call path of one action."""

    def __init__(self, runtime: Runtime, spec: ActionSpec, code: int, load_time: Sampler,
                 start_time: Sampler, network_ms: float) -> None:
        self.runtime = runtime
        self.env = runtime.env
        self.spec = spec
        self.name = spec.name
        self.code = code
        self.load_time = load_time
        self.network_ms = network_ms
        self.per_size_ms = spec.per_size_ms
        self.slowdown = spec.local_slowdown
        self.desired = Placement.unloaded()
        self.route = Mode.UNLOADED  # where new calls go now
        self.local = LocalState.NONE
        self.local_in_flight = 0
        self.cold_starts = 0
        self._ready: simpy.Event | None = None  # calls waiting for a first placement
        self._load_token: object | None = None  # identifies the load under way, if any
        self.signals = runtime.observations.action(spec.name)
        self.app_names = runtime.recorder.apps
        self.pool = RemotePool(
            self.env, cores=spec.remote_cores, memory_mb=spec.replica_memory_mb,
            start_time=start_time, per_replica=spec.remote_queue == "per_replica",
            memory=runtime.replica_memory, replica_cores=runtime.replica_cores,
            on_ready=self._reconcile, signals=self.signals,
        )

    # ------------------------------------------------------------------ placement

    @property
    def placement(self) -> Placement:
        """Where calls go now."""
        if self.route is Mode.REMOTE:
            return Placement.remote(max(1, self.pool.ready))
        return Placement(self.route)

    @property
    def in_transition(self) -> bool:
        want = self.desired
        if self.route is not want.mode or self.local in (LocalState.LOADING,
                                                          LocalState.DRAINING):
            return True
        return want.mode is Mode.REMOTE and (self.pool.ready != want.replicas
                                             or len(self.pool.replicas) != want.replicas)

    def apply(self, target: Placement, source: str, reason: str) -> bool:
        """Ask for `target`; returns whether that changed what is desired."""
        if target == self.desired:
            return False
        if self.runtime.fast is not None:
            self.runtime.fast.before_change()  # its requests go back to SimPy first
        self.runtime.recorder.decision(self.env.now, self.name, str(target), str(self.desired),
                                       source, reason)
        self.desired = target
        self._reconcile()
        return True

    def _reconcile(self) -> None:
        want = self.desired.mode
        pool = self.pool
        if want is Mode.LOCAL:
            if self.local is LocalState.NONE:
                self._set_local(LocalState.LOADING)
                self._load_token = token = object()
                self.env.process(self._load(token))
            elif self.local is LocalState.DRAINING:
                self._set_local(LocalState.READY)  # still in memory: use it again
            if self.local is LocalState.READY:
                self._route_to(Mode.LOCAL)
                pool.scale_to(0)
            elif self.route is Mode.UNLOADED and pool.ready:
                self._route_to(Mode.REMOTE)  # serve from what is ready until the copy is
        elif want is Mode.REMOTE:
            pool.scale_to(self.desired.replicas)
            if pool.ready:
                self._route_to(Mode.REMOTE)
                self._drain_local()
            elif self.route is Mode.UNLOADED and self.local is LocalState.READY:
                self._route_to(Mode.LOCAL)  # serve from the loaded copy until a replica is
        else:
            pool.scale_to(0)
            self._route_to(Mode.UNLOADED)
            self._drain_local()
            if self._ready is not None:
                # Calls are waiting for this action: wake them so that they load it again
                # (a call to an unloaded action is a cold start, whoever unloaded it).
                waiting, self._ready = self._ready, None
                waiting.succeed()

    def _route_to(self, mode: Mode) -> None:
        self.route = mode
        if mode is not Mode.UNLOADED and self._ready is not None:
            ready, self._ready = self._ready, None
            ready.succeed()

    def _drain_local(self) -> None:
        if self.local is LocalState.READY:
            self._set_local(LocalState.DRAINING)
        if self.local is LocalState.DRAINING and self.local_in_flight == 0:
            self._set_local(LocalState.NONE)
            self.runtime.memory.add(-self.spec.local_memory_mb)

    def _set_local(self, state: LocalState) -> None:
        self.local = state
        self.signals.local(self.env.now, state.value)

    def _load(self, token: object) -> Generator[simpy.Event, Any, None]:
        runtime = self.runtime
        while not runtime.up:  # a load asked for during a restart starts once it is over
            yield runtime.up_event
        if self._load_token is not token:
            return
        if self.desired.mode is not Mode.LOCAL:
            # Moved away before the load began (during a restart): cancel, take no memory.
            self._load_token = None
            self._set_local(LocalState.NONE)
            return
        if not runtime.allocate(self.spec.local_memory_mb, self.name):
            return  # out of memory: the runtime restarted and dropped every local copy
        epoch = runtime.epoch
        yield self.env.timeout(self.load_time())
        if self._load_token is not token or runtime.epoch != epoch:
            return
        self._load_token = None
        self._set_local(LocalState.READY)
        self._reconcile()

    def drop_local(self) -> None:
        """Out of memory: the local copy is gone (its memory was released with the runtime)."""
        self._set_local(LocalState.NONE)
        self.local_in_flight = 0
        self._load_token = None
        if self.route is Mode.LOCAL:
            self.route = Mode.UNLOADED
        if self.desired.mode is Mode.LOCAL:
            self.runtime.recorder.decision(self.env.now, self.name, "unloaded", "local",
                                           "runtime", "out of memory: runtime restarted")
            self.desired = Placement.unloaded()
        self._ready = None  # its waiters were interrupted with the requests

    # ------------------------------------------------------------------ calls

    def call(self, rid: int, app: int, size: float, service_ms: float,
             resume: CallResume | None = None) -> Generator[simpy.Event, Any, None]:
        """One call from a walker: wait for a placement if there is none, then run it.

        `service_ms` is the call's base service-time draw, made when its request arrived (so
        it does not depend on the policy); `size` and a local run's slowdown are added here.
        `resume` carries on a remote call the fast path handed back (jsorc_sim.resume): its
        service already has its size in, and what happened before now is already observed.

        The whole call, remote or local, is this one generator: every `yield from` level
        below the walker would be resumed at each of the call's events (the hot path)."""
        env = self.env
        signals = self.signals
        if resume is None:
            issued = env.now
            token = signals.issued(issued)
        else:
            issued, token, size = resume.issued, resume.token, 0.0
        cold = 0
        if self.route is Mode.UNLOADED and resume is None:
            cold = 1
            self.cold_starts += 1
            try:
                yield from self._wait_for_placement()
            except simpy.Interrupt as stop:
                self._record_failure(rid, app, issued, int(self.spec.default_mode == "remote"),
                                     stop, token)
                raise
        if size:
            service_ms += size * self.per_size_ms
        runtime = self.runtime
        if self.route is not Mode.LOCAL or resume is not None:
            pool = self.pool
            network_ms = self.network_ms
            # After any cold-start wait, which counts as waiting, not network. (Time has not
            # moved since `issued` otherwise: the clock is a property call, spared here.)
            sent = env.now if cold else issued
            req: Request | None = None  # per_replica mode: the replica's queue slot
            moved_local = False
            held = False  # a handed-back call already in service on its replica
            try:
                if resume is None:
                    signals.dispatched(token, sent, REMOTE)
                    if network_ms and runtime.network_holds_core:
                        # node.network_holds_core: on loopback the hop is both ends' CPU.
                        with runtime.cores.request() as wire_core:
                            yield wire_core
                            yield env.timeout(network_ms / 1000.0)
                    elif network_ms:
                        yield env.timeout(network_ms / 1000.0)
                    queued = env.now if network_ms else sent
                else:  # handed back by the fast path: dispatched, maybe on a replica
                    queued = resume.queued
                    held = resume.replica is not None
                    if held:
                        yield from self._resumed_service(resume, service_ms)
                    elif queued > env.now:
                        yield env.timeout(queued - env.now)  # the rest of the wire
                if held:
                    assert resume is not None and resume.replica is not None
                    replica_id, start = resume.replica, resume.start
                else:
                    if not pool.ready and not pool.slots.get_queue:
                        # The placement moved while this call was on the wire: no replica
                        # will take it, so it goes where calls go now.
                        yield from self._wait_for_placement()
                        queued = env.now
                        moved_local = self._routes_local()
                    if not moved_local:
                        if pool.per_replica:
                            replica = pool.pick()
                            assert replica is not None and replica.queue is not None
                            replica_id = replica.id
                            req = replica.queue.request()
                            try:
                                yield req
                            except simpy.Interrupt:
                                req.cancel()
                                if req.triggered:
                                    replica.queue.release(req)
                                raise
                        else:
                            get = pool.slots.get() if resume is None or resume.get is None \
                                else resume.get
                            try:
                                replica_id = yield get
                            except simpy.Interrupt:
                                if get.triggered:
                                    pool.give_back(typing.cast(int, get.value))
                                else:
                                    pool.slots.cancel(get)
                                raise
                        pool.replicas[replica_id].busy += 1
                        start = env.now
                        if runtime.replicas_share_cores:
                            start = yield from self._serve_on_node_core(replica_id, req,
                                                                        service_ms, token)
                        else:
                            signals.started(token, start, replica_id)
                            try:
                                yield env.timeout(service_ms / 1000.0)
                            except simpy.Interrupt:
                                self._finish_orphaned(replica_id, req, start, service_ms)
                                raise
            except simpy.Interrupt as stop:
                self._record_failure(rid, app, issued, REMOTE, stop, token)
                raise
            if not moved_local:
                self._release(replica_id, req)
                now = env.now
                latency = (now - issued) * 1000.0
                wire = (queued - sent) * 1000.0
                signals.finished(token, now, True, latency, service_ms, wire, bool(cold),
                                 self.app_names[app])
                # Waiting is the cold start (if any) plus the queue; network is the wire alone.
                runtime.recorder.calls.append(
                    (issued, rid, app, self.code, REMOTE, replica_id,
                     ((sent - issued) + (start - queued)) * 1000.0, service_ms, wire,
                     latency, 1, cold, 0))
                return
        # Local: from the start, or moved here while on the wire.
        service_ms *= self.slowdown
        self.local_in_flight += 1
        signals.dispatched(token, env.now, LOCAL)
        slots = runtime.runtime_slots
        slot = slots.request() if slots is not None else None
        try:
            if slot is not None:
                yield slot
            with runtime.cores.request() as core:
                yield core
                start = env.now
                signals.started(token, start)
                yield env.timeout(service_ms / 1000.0)
        except simpy.Interrupt as stop:
            self._record_failure(rid, app, issued, LOCAL, stop, token)
            raise
        finally:
            if slot is not None:
                runtime.release_slot(slot)
        now = env.now
        latency = (now - issued) * 1000.0
        signals.finished(token, now, True, latency, service_ms, 0.0, bool(cold),
                         self.app_names[app])
        runtime.recorder.calls.append(
            (issued, rid, app, self.code, LOCAL, -1, (start - issued) * 1000.0, service_ms, 0.0,
             latency, 1, cold, 0))
        self.local_in_flight -= 1
        if self.local is LocalState.DRAINING and self.local_in_flight == 0:
            self._drain_local()

    def _resumed_service(self, resume: CallResume,
                         service_ms: float) -> Generator[simpy.Event, Any, None]:
        """The rest of a handed-back call's service, on the token it holds."""
        assert resume.replica is not None
        env = self.env
        try:
            yield env.timeout(max(resume.start + service_ms / 1000.0 - env.now, 0.0))
        except simpy.Interrupt:
            self._finish_orphaned(resume.replica, None, resume.start, service_ms)
            raise

    def _wait_for_placement(self) -> Generator[simpy.Event, Any, None]:
        while self.route is Mode.UNLOADED:
            if self.desired.mode is Mode.UNLOADED:
                mode = self.spec.default_mode
                target = Placement.remote(1) if mode == "remote" else Placement.local()
                self.apply(target, "runtime", "cold start: call to an unloaded action")
                continue  # the placement may be ready at once (a replica with no start-up)
            if self._ready is None:
                self._ready = self.env.event()
            yield self._ready

    def _routes_local(self) -> bool:
        return self.route is Mode.LOCAL

    def _serve_on_node_core(self, replica_id: int, req: Request | None, service_ms: float,
                            token: int) -> Generator[simpy.Event, Any, float]:
        """node.replicas_share_cores: the replica runs on the node's cores too, so its
        service waits for one (that wait is part of the call's queueing). Returns when the
        service started."""
        env = self.env
        cores = self.runtime.cores
        core = cores.request()
        holding = True  # the core request is held (or still waited for)
        start = env.now
        try:
            yield core
            start = env.now
            self.signals.started(token, start, replica_id)
            yield env.timeout(service_ms / 1000.0)
            cores.release(core)
            holding = False
        except simpy.Interrupt:
            if holding:
                granted = core.triggered
                core.cancel()
                cores.release(core)
                if not granted:  # still waiting for a core: the call never started
                    self._release(replica_id, req)
                    raise
            self._finish_orphaned(replica_id, req, start, service_ms)
            raise
        return start

    def _finish_orphaned(self, replica_id: int, req: Request | None, start: float,
                         service_ms: float) -> None:
        """The walker is gone but the replica finishes the call it was given. (Its observed
        busy time ends with the walker's call: out-of-memory only, where the replica's last
        seconds matter to no policy.)"""
        ends = self.env.timeout(start + service_ms / 1000.0 - self.env.now)
        ends.callbacks.append(lambda _e: self._release(replica_id, req))

    def _release(self, token: int, req: Request | None) -> None:
        if req is not None:
            self.pool.replicas[token].queue.release(req)  # type: ignore[union-attr]
        self.pool.release(token)

    def _record_failure(self, rid: int, app: int, issued: float, where: int,
                        stop: simpy.Interrupt, token: int) -> None:
        now = self.env.now
        self.signals.finished(token, now, False, (now - issued) * 1000.0, app=self.app_names[app])
        error = int(stop.cause) if isinstance(stop.cause, Failure) else int(Failure.OUT_OF_MEMORY)
        self.runtime.recorder.calls.append(
            (issued, rid, app, self.code, where, -1, 0.0, 0.0, 0.0, (now - issued) * 1000.0,
             0, 0, error))
