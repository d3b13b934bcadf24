"""The one observation builder: what happened, as events, in; the policy's `Observation` out.

Both worlds describe a run as the same events -- a request arrived or finished; a call was
issued, dispatched to a placement, started on a node core or a replica, finished or failed;
a replica started, became ready, left balancing, was gone; a local copy began loading, was
ready, was dropped; node memory, CPU and out-of-memory events -- and hand them to an
`ObservationBuilder`. The simulator's observer and timeline (`jsorc_sim.observe`) and the
live controller's observer (`jsorc_live.controller`) are thin adapters that emit events;
neither computes a statistic of its own, so the two cannot drift apart.

Window signals are time-weighted integrals over the window, as Knative's queue-proxy
reports concurrency and HPA reads utilisation, never sums over the calls that finished in
it: a 25 s call in service through a 10 s window adds 10 call-seconds to that window, not
0 or 25. Each level (calls in the system, busy cores, ready cores) keeps its running
integral, updated at each event (`area += level x dt`), so a window's mean is a difference
of two integrals divided by its length.

Definitions (the contract's fields, in `policies.contract`):
- a call is *in the system* of its placement from dispatch (after any wait for a first
  placement, which counts in `queued`) until its answer: for a remote call, the wire, the
  replica's queue and its service; for a local call, the wait for a node core and the run;
- a call is *busy* on a replica core from `started` to its finish; a replica whose calls
  outnumber its cores is busy on all of its cores (the live world sees a call at a replica
  from send to answer, not its server's own queue);
- `remote_utilisation` = busy core-seconds on ready replicas / ready replica core-seconds
  (0..1; NaN when no replica was ready in the window); a replica leaves both sides when it
  stops taking calls (retiring), so draining cannot push the ratio past 1;
- `in_flight` and `queued` are counts at `now`, kept per event, so no call is lost at the
  instant another completes.

Pure: no I/O, no clock. Time is whatever the events say (simulated seconds, or seconds since
the live controller started).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from policies.contract import (
    ActionStats,
    AppStats,
    LatencyStats,
    NodeStats,
    Observation,
    Totals,
)
from policies.signals import (
    LOCAL,
    REMOTE,
    ActionInfo,
    ActionSignals,
    Level,
    NodeSignals,
    RemoteWindow,
)

NAN = math.nan

__all__ = ["LOCAL", "REMOTE", "ActionInfo", "ActionSignals", "EventLog", "Integrals", "Level",
           "NodeSignals", "ObservationBuilder", "RemoteWindow", "latency_stats", "replay"]


def latency_stats(values: list[float]) -> LatencyStats:
    """count, mean and percentiles (numpy's linear interpolation) in ms; NaN when empty."""
    if not values:
        return LatencyStats()
    arr = np.asarray(values, dtype=float)
    p50, p95, p99 = np.percentile(arr, (50, 95, 99))
    return LatencyStats(len(arr), float(arr.mean()), float(p50), float(p95), float(p99))


@dataclass(frozen=True, slots=True)
class Integrals:
    """Running integrals at one moment; the difference of two is a window's area."""

    t: float
    node_busy: float
    node_cpu_s: float
    actions: Mapping[str, tuple[float, float, float, float, float, float, float, float]]
    # per action: system local, system remote, busy local, busy remote, capacity,
    # replica cpu seconds (NaN when unmeasured), calls issued so far, waiting for a first
    # placement (so the three system integrals add up to every call's time since issue)


class ObservationBuilder:
    """Events in, `Observation` out. `observe(now, interval_s)` reads the window since the
    last observation and starts the next one.

    `actions` names every action the world knows, with its sizes; `apps` every walker.
    The world calls the methods of `builder.node` and of `builder.action(name)`.
    """

    def __init__(self, t0: float, *, cores: int, memory_total_mb: float,
                 actions: Mapping[str, ActionInfo], apps: Iterable[str]) -> None:
        self.t0 = t0  # where every integral starts
        self.node = NodeSignals(cores, memory_total_mb)
        self.actions = {name: ActionSignals(name, info, self.node)
                        for name, info in actions.items()}
        self.apps = list(apps)
        self._last = self.integrals(t0)

    def action(self, name: str) -> ActionSignals:
        return self.actions[name]

    def add_action(self, name: str, info: ActionInfo) -> ActionSignals:
        """An action configured after the start (live), or one whose sizes changed; an
        existing one keeps its history."""
        signals = self.actions.get(name)
        if signals is None:
            signals = self.actions[name] = ActionSignals(name, info, self.node)
        else:
            signals.info = info
        return signals

    def add_app(self, name: str) -> None:
        if name not in self.apps:
            self.apps.append(name)

    def integrals(self, now: float) -> Integrals:
        node = self.node
        acts = {}
        for name, a in self.actions.items():
            acts[name] = (a.system[LOCAL].integral(now), a.system[REMOTE].integral(now),
                          a.busy_local.integral(now), a.busy_remote.integral(now),
                          a.capacity.integral(now), a._replica_cpu_s, float(a._next),
                          a.waiting.integral(now))
        return Integrals(now, node.busy.integral(now), node.cpu_s, acts)

    def observe(self, now: float, interval_s: float) -> Observation:
        """The window since the last observation (pure in the events seen so far)."""
        start = self._last
        end = self.integrals(now)
        self._last = end
        elapsed = max(now - start.t, 0.0)
        node = self.node
        apps = {}
        names = self.apps + [a for a in node.request_counts if a not in self.apps]
        for app in names:
            finished, failed = node.request_counts.get(app, (0, 0))
            ok = latency_stats(node.requests.get(app, []))
            per_request = ({name: a.by_app[app] / finished for name, a in self.actions.items()
                            if app in a.by_app} if finished else {})
            apps[app] = AppStats(app, finished, failed, ok.mean_ms, ok.p95_ms, per_request)
        # In the order the world announced its actions (a scenario's order; the live
        # runtime's configuration order): policies that walk them decide in that order.
        actions = {name: self._action(a, start, end, elapsed, now)
                   for name, a in self.actions.items()}
        all_ok = [v for values in node.requests.values() for v in values]
        total = sum(c[0] for c in node.request_counts.values())
        failed_all = sum(c[1] for c in node.request_counts.values())
        stats = latency_stats(all_ok)
        totals = Totals(total, failed_all, stats.mean_ms, stats.p95_ms, node.requests_so_far,
                        node.failures_so_far)
        node_stats = NodeStats(
            cores=node.cores,
            memory_total_mb=node.memory_total_mb,
            memory_used_mb=node.memory_used_mb,
            cpu_utilisation=_ratio(_busy(start, end), node.cores * elapsed, empty=0.0),
            runtime_up=node.up,
            oom_events=node.oom_events,
        )
        node.requests = {}
        node.request_counts = {}
        return Observation(now, interval_s, node_stats, actions, apps, totals)

    def forget_window(self) -> None:
        """Drop the window's tallies (latencies, counts) without observing: for a world in
        which nobody observes (a run with no policy), whose tallies would otherwise grow
        with every call. The running integrals and counts now are kept."""
        self.node.requests = {}
        self.node.request_counts = {}
        for a in self.actions.values():
            a.finished_n = a.failures = a.cold = 0
            a.latencies = ([], [])
            a.by_app = {}

    def _action(self, a: ActionSignals, start: Integrals, end: Integrals, elapsed: float,
                now: float) -> ActionStats:
        zero = (0.0, 0.0, 0.0, 0.0, 0.0, NAN, 0.0, 0.0)
        s, e = start.actions.get(a.name, zero), end.actions[a.name]
        info = a.info
        local, remote = a.latencies
        ok = local + remote
        cores = self.node.cores
        n_local, n_remote = a.service_n
        cpu = e[5] - s[5]  # NaN until two measurements bracket a window
        stats = ActionStats(
            name=a.name,
            placement=a.placement,
            desired=a.desired,
            replicas_ready=a.replicas_ready,
            transition=a.transition,
            calls=a.finished_n,
            call_rate=_ratio(e[6] - s[6], elapsed, empty=0.0),
            failures=a.failures,
            cold_starts=a.cold,
            latency=latency_stats(ok),
            latency_local=latency_stats(local),
            latency_remote=latency_stats(remote),
            in_flight=a.in_flight,
            queued=a.queued,
            local_memory_mb=info.local_memory_mb,
            replica_memory_mb=info.replica_memory_mb,
            replica_cores=info.replica_cores,
            remote_concurrency=_ratio(e[1] - s[1], elapsed, empty=0.0),
            remote_utilisation=_utilisation(e[3] - s[3], e[4] - s[4]),
            remote_busy_cores=_ratio(e[3] - s[3], elapsed, empty=0.0),
            local_concurrency=_ratio(e[0] - s[0], elapsed, empty=0.0),
            local_utilisation=_ratio(e[2] - s[2], cores * elapsed, empty=0.0),
            oldest_call_age_s=a.oldest_age(now),
            replica_memory_used_mb=a.replica_memory_used_mb,
            replica_cpu_utilisation=_utilisation(cpu, e[4] - s[4]) if cpu == cpu else NAN,
            local_service_ms=a.service_sum[LOCAL] / n_local if n_local else NAN,
            remote_service_ms=a.service_sum[REMOTE] / n_remote if n_remote else NAN,
            network_ms=a.network_sum / a.network_n if a.network_n else NAN,
        )
        a.finished_n = a.failures = a.cold = 0
        a.latencies = ([], [])
        a.by_app = {}
        return stats


def _busy(start: Integrals, end: Integrals) -> float:
    """Busy node core-seconds in the window: the measured counter when there is one."""
    if end.node_cpu_s == end.node_cpu_s:
        return end.node_cpu_s - start.node_cpu_s if start.node_cpu_s == start.node_cpu_s \
            else 0.0
    return end.node_busy - start.node_busy


def _ratio(num: float, den: float, *, empty: float) -> float:
    return num / den if den > 0 else empty


def _utilisation(busy: float, capacity: float) -> float:
    """busy / capacity in 0..1; NaN with no capacity. The clamp only absorbs float error."""
    if capacity <= 1e-12:
        return NAN
    return min(1.0, max(0.0, busy / capacity))


# --------------------------------------------------------------------------- recording


class EventLog:
    """Records every event a builder receives, in order, so a run can be replayed into a
    fresh builder (`replay`). Wrap the builder the world uses: `log = EventLog(builder)`,
    then use `log.node`, `log.action(name)` and `log.observe` as the builder's own."""

    def __init__(self, builder: ObservationBuilder) -> None:
        self.builder = builder
        # (event, action name or "" for the node, positional args, keyword args)
        self.events: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = []
        self.node = _Recording(self, "", builder.node)
        self._actions: dict[str, _Recording] = {}

    def action(self, name: str) -> Any:
        proxy = self._actions.get(name)
        if proxy is None:
            proxy = self._actions[name] = _Recording(self, name, self.builder.action(name))
        return proxy

    def add_action(self, name: str, info: ActionInfo) -> Any:
        self.events.append(("add_action", name, (info,), {}))
        self.builder.add_action(name, info)
        self._actions.pop(name, None)
        return self.action(name)

    def add_app(self, name: str) -> None:
        self.events.append(("add_app", name, (), {}))
        self.builder.add_app(name)

    def integrals(self, now: float) -> Integrals:
        return self.builder.integrals(now)  # a read: not an event

    def observe(self, now: float, interval_s: float) -> Observation:
        self.events.append(("observe", "", (now, interval_s), {}))
        return self.builder.observe(now, interval_s)

    def forget_window(self) -> None:
        self.events.append(("forget_window", "", (), {}))
        self.builder.forget_window()


class _Recording:
    def __init__(self, log: EventLog, name: str, target: Any) -> None:
        self._log, self._name, self._target = log, name, target

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._target, attr)
        if not callable(value):
            return value
        events, name = self._log.events, self._name

        def record(*args: Any, **kwargs: Any) -> Any:
            events.append((attr, name, args, kwargs))
            return value(*args, **kwargs)

        return record


def replay(events: Iterable[tuple[str, str, tuple[Any, ...], dict[str, Any]]],
           builder: ObservationBuilder) -> list[Observation]:
    """Feed a recorded event log to `builder`; the observations it produced, in order."""
    out = []
    handlers: dict[str, Callable[..., Any]] = {"add_action": builder.add_action,
                                               "add_app": builder.add_app}
    for kind, name, args, kwargs in events:
        if kind == "observe":
            out.append(builder.observe(*args))
        elif kind == "forget_window":
            builder.forget_window()
        elif kind in handlers:
            handlers[kind](name, *args)
        elif name:
            getattr(builder.action(name), kind)(*args, **kwargs)
        else:
            getattr(builder.node, kind)(*args, **kwargs)
    return out
