"""The events of a run, kept as levels and running integrals: what an `ObservationBuilder`
(policies.observe) reads its window from. The world (the simulator's runtime, the live
controller's adapter) calls these methods as things happen; see policies.observe for the
definitions of each signal.

Pure: no I/O, no clock. Time is whatever the events say.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from policies.contract import Placement

NAN = math.nan
LOCAL, REMOTE = 0, 1

# A call's stage, in `ActionSignals._calls[token][1]`.
_ISSUED, _DISPATCHED, _STARTED = 0, 1, 2
# Replica states.
_STARTING, _READY, _RETIRING = 0, 1, 2


class Level:
    """The running time integral of a piecewise-constant level (calls, busy cores).

    A change of `d` at time `t` adds `d x (T - t)` to the integral up to any later `T`, so
    the integral is `level x T + acc` with `acc` the sum of `-d x t`: two additions per
    event and no clock of its own. The hot paths below inline `add` for that reason
    (`lv.acc -= t; lv.level += 1.0` is an entry, the reverse an exit)."""

    __slots__ = ("acc", "level")

    def __init__(self) -> None:
        self.level = 0.0
        self.acc = 0.0

    def add(self, now: float, delta: float) -> None:
        self.acc -= delta * now
        self.level += delta

    def integral(self, now: float) -> float:
        """level x seconds from the start to `now`."""
        return self.acc + self.level * now


@dataclass(frozen=True, slots=True)
class ActionInfo:
    """What the world knows of an action before any event: its sizes."""

    local_memory_mb: float = 0.0
    replica_memory_mb: float = 0.0
    replica_cores: int = 1


class ActionSignals:
    """The events of one action. The world holds one per action and calls its methods.

    A call's events: `issued` (it returns the call's token), `dispatched(token, t, where)`
    once its placement is known (again if it moves, e.g. from the wire to a local copy),
    `started(token, t, replica)` when a core or a replica slot takes it (again on a retry on
    another replica), then `finished(token, ...)` once, ok or failed, from any stage.
    """

    def __init__(self, name: str, info: ActionInfo, node: NodeSignals) -> None:
        self.name = name
        self.info = info
        self._node = node
        self._next = 0
        # token -> [issued at, stage, where, replica]
        self._calls: dict[int, list[Any]] = {}
        self.waiting = Level()  # issued, not dispatched: waiting for a first placement
        self.system = (Level(), Level())  # dispatched, unfinished: local, remote
        self.busy_local = Level()  # local calls on a node core
        self.busy_remote = Level()  # busy cores of ready replicas
        self.capacity = Level()  # cores of ready replicas
        self.queued_remote = 0  # dispatched remote, not started
        self.started_remote = 0  # remote calls on a replica (ready or retiring)
        # replica id -> [state, calls on it]
        self.replicas: dict[Any, list[int]] = {}
        self.replicas_ready = 0
        self.local_state = "none"
        self.placement = Placement.unloaded()
        self.desired = Placement.unloaded()
        self.transition = False
        self.replica_memory_used_mb = NAN
        self._replica_cpu_s = NAN
        # The window's tallies (cleared by each observation).
        self.finished_n = 0
        self.failures = 0
        self.cold = 0
        self.latencies: tuple[list[float], list[float]] = ([], [])
        self.by_app: dict[str, int] = {}  # app -> calls finished in the window
        # Since the start: service sums and counts by where, network sum (remote, timed).
        self.service_sum = [0.0, 0.0]
        self.service_n = [0, 0]
        self.network_sum = 0.0
        self.network_n = 0
        # Calls a batch left unfinished (`remote_batch`): tokens of their own, below zero.
        self._batch_tokens: list[int] = []
        self._batch_next = 0

    # ----------------------------------------------------------------- calls

    def issued(self, t: float) -> int:
        token = self._next
        self._next = token + 1
        self._calls[token] = [t, _ISSUED, -1, None]
        w = self.waiting
        w.acc -= t
        w.level += 1.0
        return token

    def dispatched(self, token: int, t: float, where: int) -> None:
        call = self._calls[token]
        if call[1] == _ISSUED:
            w = self.waiting
            w.acc += t
            w.level -= 1.0
        else:
            self._leave(call, t)
        call[1] = _DISPATCHED
        call[2] = where
        lv = self.system[where]
        lv.acc -= t
        lv.level += 1.0
        if where:  # REMOTE
            self.queued_remote += 1

    def started(self, token: int, t: float, replica: Any = None) -> None:
        """On a node core (local) or on `replica` (remote); a second call moves it."""
        call = self._calls[token]
        where = call[2]
        if call[1] == _STARTED:
            self._stop(call, t)
        elif where == REMOTE:
            self.queued_remote -= 1
        call[1] = _STARTED
        call[3] = replica
        if where == LOCAL:
            lv = self.busy_local
            lv.acc -= t
            lv.level += 1.0
            lv = self._node.busy
            lv.acc -= t
            lv.level += 1.0
            return
        self.started_remote += 1
        cores = self.info.replica_cores
        state = self.replicas.get(replica)
        if state is None:  # a replica the world never announced (an attached server)
            state = self.replicas[replica] = [_READY, 0]
            self.replicas_ready += 1
            self.capacity.add(t, cores)
        n = state[1] = state[1] + 1
        if n <= cores and state[0] == _READY:
            lv = self.busy_remote
            lv.acc -= t
            lv.level += 1.0

    def finished(self, token: int, t: float, ok: bool, latency_ms: float,
                 service_ms: float = NAN, network_ms: float = NAN, cold: bool = False,
                 app: str = "") -> None:
        """The call ended (its answer came back, or it failed at any stage)."""
        call = self._calls.pop(token)
        stage = call[1]
        if stage == _ISSUED:
            w = self.waiting
            w.acc += t
            w.level -= 1.0
        else:
            where = call[2]
            if stage != _STARTED:
                self._leave(call, t)
            elif where == LOCAL:  # `_leave` and `_stop` inlined (the hot path)
                lv = self.busy_local
                lv.acc += t
                lv.level -= 1.0
                lv = self._node.busy
                lv.acc += t
                lv.level -= 1.0
                lv = self.system[LOCAL]
                lv.acc += t
                lv.level -= 1.0
            else:  # on a replica: `_leave` and `_stop` inlined
                self.started_remote -= 1
                state = self.replicas.get(call[3])
                if state is not None:
                    if state[0] == _READY and state[1] <= self.info.replica_cores:
                        lv = self.busy_remote
                        lv.acc += t
                        lv.level -= 1.0
                    state[1] -= 1
                lv = self.system[where]
                lv.acc += t
                lv.level -= 1.0
            if ok:
                self.latencies[where].append(latency_ms)
                if service_ms == service_ms:  # not NaN: the server said how long
                    self.service_sum[where] += service_ms
                    self.service_n[where] += 1
                    if where and network_ms == network_ms:
                        self.network_sum += network_ms
                        self.network_n += 1
        self.finished_n += 1
        if not ok:
            self.failures += 1
        if cold:
            self.cold += 1
        if app:
            by_app = self.by_app
            by_app[app] = by_app.get(app, 0) + 1

    def _leave(self, call: list[Any], t: float) -> None:
        """Out of its placement's system (finished, or moved to another placement)."""
        if call[1] == _STARTED:
            self._stop(call, t)
        elif call[2] == REMOTE:
            self.queued_remote -= 1
        lv = self.system[call[2]]
        lv.acc += t
        lv.level -= 1.0

    def _stop(self, call: list[Any], t: float) -> None:
        if call[2] == LOCAL:
            lv = self.busy_local
            lv.acc += t
            lv.level -= 1.0
            lv = self._node.busy
            lv.acc += t
            lv.level -= 1.0
            return
        self.started_remote -= 1
        state = self.replicas.get(call[3])
        if state is None:
            return
        if state[0] == _READY and state[1] <= self.info.replica_cores:
            lv = self.busy_remote
            lv.acc += t
            lv.level -= 1.0
        state[1] -= 1

    # ----------------------------------------------------------------- batches

    def remote_batch(self, window: RemoteWindow) -> list[int]:
        """A window's successful remote calls at once, for a world that computes a stretch
        of its run in one go (the simulator's fast path): the same state as each call's
        `issued` + `dispatched(REMOTE)` at its issue time, `started` on its replica and
        `finished` (ok, not cold) would leave, up to float rounding of the sums. Only for
        ready replicas of a shared queue (a replica never holds more calls than cores).

        `window.pending` are the calls unfinished at the window's end; they replace the
        previous batch's pending calls, and their tokens are returned (in that order), for
        the world to finish them one by one later (`started`, `finished`)."""
        for token in self._batch_tokens:
            self._calls.pop(token, None)
        n_issued, n_started, n_finished = (len(window.issued), len(window.started),
                                           len(window.finished))
        self._next += n_issued
        system = self.system[REMOTE]
        system.acc += float(window.finished.sum()) - float(window.issued.sum())
        system.level += n_issued - n_finished
        busy = self.busy_remote
        busy.acc += float(window.finished.sum()) - float(window.started.sum())
        busy.level += n_started - n_finished
        self.queued_remote += n_issued - n_started
        self.started_remote += n_started - n_finished
        replicas = self.replicas
        for replica, count in _counts(window.started_replica).items():
            replicas[replica][1] += count
        for replica, count in _counts(window.finished_replica).items():
            replicas[replica][1] -= count
        if n_finished:
            self.finished_n += n_finished
            self.latencies[REMOTE].extend(window.latency_ms.tolist())
            self.service_sum[REMOTE] += float(window.service_ms.sum())
            self.service_n[REMOTE] += n_finished
            self.network_sum += float(window.network_ms.sum())
            self.network_n += n_finished
            by_app = self.by_app
            for app, count in window.by_app.items():
                by_app[app] = by_app.get(app, 0) + count
        tokens = []
        for issued, started, replica in window.pending:
            self._batch_next -= 1
            token = self._batch_next
            self._calls[token] = [issued, _STARTED if started else _DISPATCHED, REMOTE,
                                  replica if started else None]
            tokens.append(token)
        self._batch_tokens = tokens
        return tokens

    # ----------------------------------------------------------------- replicas

    def replica_starting(self, t: float, replica: Any) -> None:
        self.replicas[replica] = [_STARTING, 0]

    def replica_ready(self, t: float, replica: Any) -> None:
        state = self.replicas.setdefault(replica, [_STARTING, 0])
        if state[0] == _READY:
            return
        state[0] = _READY
        self.replicas_ready += 1
        self.capacity.add(t, self.info.replica_cores)
        self.busy_remote.add(t, min(state[1], self.info.replica_cores))

    def replica_retiring(self, t: float, replica: Any) -> None:
        """It takes no new calls (it may still finish some): out of the ready capacity."""
        state = self.replicas.get(replica)
        if state is None or state[0] == _RETIRING:
            return
        if state[0] == _READY:
            self.replicas_ready -= 1
            self.capacity.add(t, -self.info.replica_cores)
            self.busy_remote.add(t, -min(state[1], self.info.replica_cores))
        state[0] = _RETIRING

    def replica_gone(self, t: float, replica: Any) -> None:
        self.replica_retiring(t, replica)
        self.replicas.pop(replica, None)

    def replica_usage(self, t: float, memory_mb: float, cpu_s: float) -> None:
        """Measured use of all of the action's replica processes (live only): resident
        memory now, and CPU seconds since they started (summed; a cumulative counter)."""
        self.replica_memory_used_mb = memory_mb
        self._replica_cpu_s = cpu_s

    # ----------------------------------------------------------------- local copy, state

    def local(self, t: float, state: str) -> None:
        """The local copy's state: `loading`, `ready`, `draining` or `none`."""
        self.local_state = state

    def state(self, t: float, placement: Placement, desired: Placement,
              transition: bool) -> None:
        """Where calls go now, what was last asked for, and whether a move is under way."""
        self.placement = placement
        self.desired = desired
        self.transition = transition

    # ----------------------------------------------------------------- reading

    @property
    def in_flight(self) -> int:
        """Calls being served now: local ones (waiting for a core or running) and remote
        ones on a replica."""
        return int(self.system[LOCAL].level) + self.started_remote

    @property
    def queued(self) -> int:
        """Calls waiting now: for a first placement, on the wire or for a replica."""
        return int(self.waiting.level) + self.queued_remote

    def oldest_age(self, now: float) -> float:
        """Seconds since the oldest unfinished call was issued (0 when there is none).
        Tokens are issued in time order and dicts keep insertion order."""
        for call in self._calls.values():
            issued: float = call[0]
            return max(now - issued, 0.0)
        return 0.0


@dataclass(frozen=True)
class RemoteWindow:
    """One action's successful remote calls over a window, as arrays of seconds and ms:
    issue times of the calls issued in it, start times (and replicas) of those started in
    it, finish times (and replicas) of those finished in it with their latency, service and
    network ms, the finished calls per app, and the calls unfinished at its end as
    (issued at, started?, replica)."""

    issued: np.ndarray
    started: np.ndarray
    started_replica: np.ndarray
    finished: np.ndarray
    finished_replica: np.ndarray
    latency_ms: np.ndarray
    service_ms: np.ndarray
    network_ms: np.ndarray
    by_app: Mapping[str, int]
    pending: tuple[tuple[float, bool, Any], ...] = ()


def _counts(values: np.ndarray) -> dict[Any, int]:
    if not len(values):
        return {}
    keys, counts = np.unique(values, return_counts=True)
    return {k: int(c) for k, c in zip(keys.tolist(), counts.tolist(), strict=True)}


class NodeSignals:
    """The node's and the requests' events (one per builder)."""

    def __init__(self, cores: int, memory_total_mb: float) -> None:
        self.cores = cores
        self.memory_total_mb = memory_total_mb
        self.memory_used_mb = 0.0
        self.busy = Level()  # node cores busy (walker compute and local calls)
        self.cpu_s = NAN  # a measured cumulative CPU counter (live), overrides `busy`
        self.up = True
        self.oom_events = 0
        # The window's tallies.
        self.requests: dict[str, list[float]] = {}  # app -> ok latencies
        self.request_counts: dict[str, list[int]] = {}  # app -> [finished, failed]
        self.requests_so_far = 0
        self.failures_so_far = 0

    def request_arrived(self, t: float, app: str) -> None:
        """A walker request arrived. No window signal reads arrivals yet (requests count
        when they finish); the event keeps recorded logs whole for replays."""

    def request_finished(self, t: float, app: str, latency_ms: float, ok: bool) -> None:
        self.requests_so_far += 1
        try:
            counts = self.request_counts[app]
        except KeyError:
            counts = self.request_counts[app] = [0, 0]
            self.requests[app] = []
        counts[0] += 1
        if ok:
            self.requests[app].append(latency_ms)
        else:
            counts[1] += 1
            self.failures_so_far += 1

    def batch(self, compute_started: np.ndarray, compute_finished: np.ndarray,
              finished: Mapping[str, np.ndarray]) -> None:
        """A window's walker compute and finished requests at once (see
        `ActionSignals.remote_batch`): `finished` maps an app to the latencies (ms) of its
        requests that finished in the window, all of them ok."""
        busy = self.busy
        busy.acc += float(compute_finished.sum()) - float(compute_started.sum())
        busy.level += len(compute_started) - len(compute_finished)
        for app, latencies in finished.items():
            if not len(latencies):
                continue
            self.requests_so_far += len(latencies)
            counts = self.request_counts.get(app)
            if counts is None:
                counts = self.request_counts[app] = [0, 0]
                self.requests[app] = []
            counts[0] += len(latencies)
            self.requests[app].extend(latencies.tolist())

    def compute_started(self, t: float) -> None:
        """A walker's own compute took a node core."""
        self.busy.add(t, 1.0)

    def compute_finished(self, t: float) -> None:
        self.busy.add(t, -1.0)

    def cpu_time(self, t: float, core_s: float) -> None:
        """A measured CPU counter (core-seconds since the start): used instead of `busy`."""
        self.cpu_s = core_s

    def memory(self, t: float, used_mb: float, total_mb: float | None = None) -> None:
        self.memory_used_mb = used_mb
        if total_mb is not None:
            self.memory_total_mb = total_mb

    def out_of_memory(self, t: float) -> None:
        self.oom_events += 1

    def runtime(self, t: float, up: bool) -> None:
        self.up = up
