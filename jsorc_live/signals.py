"""The live world's events, into the one observation builder (`policies.observe`).

The runtime owns one `LiveSignals`: its routers report what their calls, replicas and local
copies do, its walkers report requests, and the controller's observer reports what psutil
measures, then reads the window. No statistic is computed here; the builder turns the events
into the `Observation`, exactly as it does for the simulator.

Routers run in many threads and the builder is not thread-safe, so every event and every
observation goes through one lock. The clock is read inside the lock, so the builder sees
its events in time order (its running integrals assume it). A router may emit while it holds
its own condition; nothing here calls back into a router, so the lock order is always
router, then signals.

`ProcessMeter` reads psutil: this process (the node's memory and CPU: the runtime with its
local modules) and the replica processes of each action.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import psutil

from policies import Observation, Placement
from policies.observe import ActionInfo, EventLog, ObservationBuilder

__all__ = ["LiveSignals", "ProcessMeter", "machine_memory_mb", "node_cores"]

_MB = 1024.0 * 1024.0


def node_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return max(1, len(psutil.Process().cpu_affinity() or ()))
    except (AttributeError, psutil.Error):  # no affinity on this OS
        return psutil.cpu_count() or 1


def machine_memory_mb() -> float:
    return float(psutil.virtual_memory().total) / _MB


class LiveSignals:
    """An `ObservationBuilder` behind one lock, stamped by the runtime's clock.

    Pure plumbing: each method takes the lock, reads the clock and forwards one event (the
    builder's own method of the same name). `target` is the builder, or an `EventLog` around
    it once `record` was called.
    """

    def __init__(self, clock: Callable[[], float], *, cores: int, memory_total_mb: float,
                 apps: Iterable[str] = ()) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.target: ObservationBuilder | EventLog = ObservationBuilder(
            clock(), cores=cores, memory_total_mb=memory_total_mb, actions={}, apps=apps)

    def record(self) -> EventLog:
        """Record every event from now on (for a replay: `policies.observe.replay`)."""
        with self._lock:
            target = self.target
            log = target if isinstance(target, EventLog) else EventLog(target)
            self.target = log
            return log

    # ----------------------------------------------------------------- configuration

    def add_action(self, name: str, info: ActionInfo) -> None:
        with self._lock:
            self.target.add_action(name, info)

    def add_app(self, name: str) -> None:
        with self._lock:
            self.target.add_app(name)

    # ----------------------------------------------------------------- calls

    def issued(self, action: str) -> int:
        """A call entered its router: the call's token."""
        with self._lock:
            token: int = self.target.action(action).issued(self._clock())
            return token

    def placed(self, action: str, token: int, where: int, replica: str | None,
               moved: bool) -> None:
        """The call got a target: dispatched there when `moved` (its first placement, or
        another one on a retry), then started (on a node core, or on `replica`)."""
        with self._lock:
            t = self._clock()
            signals = self.target.action(action)
            if moved:
                signals.dispatched(token, t, where)
            signals.started(token, t, replica)

    def finished(self, action: str, token: int, ok: bool, latency_ms: float,
                 service_ms: float, network_ms: float, cold: bool, app: str) -> None:
        with self._lock:
            self.target.action(action).finished(token, self._clock(), ok, latency_ms,
                                                service_ms, network_ms, cold, app)

    # ----------------------------------------------------------------- replicas, copies

    def replica_starting(self, action: str, replica: str) -> None:
        with self._lock:
            self.target.action(action).replica_starting(self._clock(), replica)

    def replica_ready(self, action: str, replica: str) -> None:
        with self._lock:
            self.target.action(action).replica_ready(self._clock(), replica)

    def replica_retiring(self, action: str, replica: str) -> None:
        with self._lock:
            self.target.action(action).replica_retiring(self._clock(), replica)

    def replica_gone(self, action: str, replica: str) -> None:
        with self._lock:
            self.target.action(action).replica_gone(self._clock(), replica)

    def replica_usage(self, action: str, memory_mb: float, cpu_s: float) -> None:
        with self._lock:
            self.target.action(action).replica_usage(self._clock(), memory_mb, cpu_s)

    def local(self, action: str, state: str) -> None:
        """The local copy is `loading`, `ready`, `draining` or `none`."""
        with self._lock:
            self.target.action(action).local(self._clock(), state)

    def state(self, action: str, placement: Placement, desired: Placement,
              transition: bool) -> None:
        with self._lock:
            self.target.action(action).state(self._clock(), placement, desired, transition)

    # ----------------------------------------------------------------- node, requests

    def request_arrived(self, app: str) -> None:
        with self._lock:
            self.target.node.request_arrived(self._clock(), app)

    def request_finished(self, app: str, latency_ms: float, ok: bool) -> None:
        with self._lock:
            self.target.node.request_finished(self._clock(), app, latency_ms, ok)

    def memory(self, used_mb: float, total_mb: float) -> None:
        with self._lock:
            self.target.node.memory(self._clock(), used_mb, total_mb)

    def cpu_time(self, core_s: float) -> None:
        with self._lock:
            self.target.node.cpu_time(self._clock(), core_s)

    def out_of_memory(self) -> None:
        with self._lock:
            self.target.node.out_of_memory(self._clock())

    def runtime(self, up: bool) -> None:
        with self._lock:
            self.target.node.runtime(self._clock(), up)

    # ----------------------------------------------------------------- reading

    def observe(self, interval_s: float) -> Observation:
        """The builder's window since the last observation, ending now."""
        with self._lock:
            return self.target.observe(self._clock(), interval_s)


class ProcessMeter:
    """Memory and CPU of this process and of replica processes, from psutil.

    CPU is a cumulative counter per action: the last reading of every replica process seen,
    kept after the process is gone, so stopping a replica never makes the counter go back.
    A process that cannot be read (gone, a zombie, not ours to read) is skipped.
    """

    def __init__(self) -> None:
        self._own = psutil.Process()
        self._cpu: dict[str, dict[tuple[int, float], float]] = {}

    def own(self) -> tuple[float, float]:
        """(resident MB, user + system CPU seconds) of this process."""
        with self._own.oneshot():
            rss = float(self._own.memory_info().rss) / _MB
            times = self._own.cpu_times()
        return rss, float(times.user + times.system)

    def replicas(self, action: str, pids: Iterable[int]) -> tuple[float, float] | None:
        """(resident MB now, CPU seconds so far) summed over `action`'s replica processes;
        None while none was ever read (the action has no measured replicas)."""
        memory = 0.0
        seen = self._cpu.setdefault(action, {})
        for pid in pids:
            reading = self._read(pid)
            if reading is None:
                continue
            key, rss, cpu = reading
            memory += rss
            seen[key] = cpu
        if not seen:
            return None
        return memory, sum(seen.values())

    def _read(self, pid: int) -> tuple[tuple[int, float], float, float] | None:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                key = (pid, proc.create_time())  # a reused pid is another process
                rss = float(proc.memory_info().rss) / _MB
                times = proc.cpu_times()
        except psutil.Error:
            return None
        return key, rss, float(times.user + times.system)
