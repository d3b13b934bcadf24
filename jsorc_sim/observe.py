"""Building the policy's `Observation` from the simulated runtime (the "observe" adapter).

The window is the rows the recorder gained since the last observation: calls and requests
that finished in it. Service-time means accumulate over the whole run, so a policy that
moved an action away from a placement still knows what it cost there.
"""

from __future__ import annotations

import math

import numpy as np

from jsorc_sim.recorder import (
    C_ACTION,
    C_APP,
    C_COLD,
    C_LAT,
    C_NETWORK,
    C_OK,
    C_SERVICE,
    C_WHERE,
    CALL_COLUMNS,
    R_APP,
    R_LAT,
    R_OK,
    REQUEST_COLUMNS,
    Where,
    window,
)
from jsorc_sim.runtime import Runtime
from policies import ActionStats, AppStats, LatencyStats, NodeStats, Observation, Totals


def latency_stats(values: np.ndarray) -> LatencyStats:
    if len(values) == 0:
        return LatencyStats()
    p50, p95, p99 = np.percentile(values, (50, 95, 99))
    return LatencyStats(len(values), float(values.mean()), float(p50), float(p95), float(p99))


class Observer:
    """Turns the runtime's state and the rows since the last look into an Observation."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._calls_seen = 0
        self._requests_seen = 0
        self._busy_seen = 0.0
        self._last = runtime.env.now
        n = len(runtime.actions)
        # Running sums for service-time means: [action, where] -> (sum ms, count)
        self._service_sum = np.zeros((n, 2))
        self._service_count = np.zeros((n, 2))
        self._network_sum = np.zeros(n)
        self._requests_total = 0
        self._failures_total = 0

    def observe(self, interval_s: float) -> Observation:
        runtime = self.runtime
        now = runtime.env.now
        elapsed = max(now - self._last, 0.0)
        rec = runtime.recorder
        calls = window(rec.calls, self._calls_seen, len(CALL_COLUMNS))
        requests = window(rec.requests, self._requests_seen, len(REQUEST_COLUMNS))
        self._calls_seen = len(rec.calls)
        self._requests_seen = len(rec.requests)
        busy = runtime.core_busy_s - self._busy_seen
        self._busy_seen = runtime.core_busy_s
        self._last = now

        node = NodeStats(
            cores=runtime.scenario.node.cores,
            memory_total_mb=runtime.memory_total_mb,
            memory_used_mb=runtime.memory_used_mb,
            cpu_utilisation=min(1.0, busy / (runtime.scenario.node.cores * elapsed))
            if elapsed > 0 else 0.0,
            runtime_up=runtime.up,
            oom_events=runtime.oom_events,
        )
        actions = {name: self._action(action_code, name, calls, elapsed)
                   for action_code, name in enumerate(runtime.actions)}
        n_actions = len(rec.actions)
        pair_counts = np.bincount(
            (calls[:, C_APP] * n_actions + calls[:, C_ACTION]).astype(np.int64),
            minlength=len(rec.apps) * n_actions).reshape(len(rec.apps), n_actions)
        apps = {}
        for code, name in enumerate(rec.apps):
            mine = requests[requests[:, R_APP] == code]
            ok = mine[mine[:, R_OK] == 1, R_LAT]
            per_request = {rec.actions[a]: float(pair_counts[code, a] / len(mine))
                           for a in np.flatnonzero(pair_counts[code])} if len(mine) else {}
            apps[name] = AppStats(name, len(mine), int(len(mine) - len(ok)),
                                  float(ok.mean()) if len(ok) else math.nan,
                                  float(np.percentile(ok, 95)) if len(ok) else math.nan,
                                  per_request)
        ok_all = requests[requests[:, R_OK] == 1, R_LAT]
        failed = int(len(requests) - len(ok_all))
        self._requests_total += len(requests)
        self._failures_total += failed
        totals = Totals(len(requests), failed,
                        float(ok_all.mean()) if len(ok_all) else math.nan,
                        float(np.percentile(ok_all, 95)) if len(ok_all) else math.nan,
                        self._requests_total, self._failures_total)
        return Observation(now, interval_s, node, actions, apps, totals)

    def _action(self, code: int, name: str, calls: np.ndarray, elapsed: float) -> ActionStats:
        action = self.runtime.actions[name]
        mine = calls[calls[:, C_ACTION] == code]
        ok = mine[mine[:, C_OK] == 1]
        by_where = []
        for where in (Where.LOCAL, Where.REMOTE):
            rows = ok[ok[:, C_WHERE] == where]
            self._service_sum[code, where] += rows[:, C_SERVICE].sum()
            self._service_count[code, where] += len(rows)
            if where is Where.REMOTE:
                self._network_sum[code] += rows[:, C_NETWORK].sum()
            by_where.append(latency_stats(rows[:, C_LAT]))
        sums, counts = self._service_sum[code], self._service_count[code]
        spec = action.spec
        remote = ok[ok[:, C_WHERE] == Where.REMOTE]
        ready_cores = action.pool.ready * spec.remote_cores
        # Little's law over the window: time spent in calls / window = mean calls in system.
        concurrency = float(remote[:, C_LAT].sum()) / 1000.0 / elapsed if elapsed > 0 else 0.0
        utilisation = (float(remote[:, C_SERVICE].sum()) / 1000.0 / (ready_cores * elapsed)
                       if elapsed > 0 and ready_cores else math.nan)
        return ActionStats(
            name=name,
            placement=action.placement,
            desired=action.desired,
            replicas_ready=action.pool.ready,
            transition=action.in_transition,
            calls=len(mine),
            call_rate=len(mine) / elapsed if elapsed > 0 else 0.0,
            failures=int(len(mine) - len(ok)),
            cold_starts=int(mine[:, C_COLD].sum()),
            latency=latency_stats(ok[:, C_LAT]),
            latency_local=by_where[0],
            latency_remote=by_where[1],
            in_flight=action.in_flight,
            queued=action.pool.queued,
            local_memory_mb=spec.local_memory_mb,
            replica_memory_mb=spec.replica_memory_mb,
            replica_cores=spec.remote_cores,
            remote_concurrency=concurrency,
            remote_utilisation=utilisation,
            local_service_ms=float(sums[0] / counts[0]) if counts[0] else math.nan,
            remote_service_ms=float(sums[1] / counts[1]) if counts[1] else math.nan,
            network_ms=float(self._network_sum[code] / counts[1]) if counts[1] else math.nan,
        )
