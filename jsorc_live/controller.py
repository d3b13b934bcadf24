"""The live control loop: observe the runtime, let the policy decide, apply the decision.

Three parts, each replaceable (the simulator has the same three):
- `LiveObserver.observe` builds a `policies.Observation` from the runtime's call and request
  logs over the window since its last look, the routers' state, and psutil for the node;
- `Controller.step` hands one observation to the policy object and checks what it returns
  (pure apart from the decision log: it calls the policy and the injected `apply`);
- `apply_to_runtime` applies a placement through the action's router.

A policy that raises or returns an invalid decision is logged (`decisions` row with
`error`, and an `events` row) and the last placement is kept.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import traceback
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np
import psutil

from jsorc_live.runtime import CALL_COLUMNS, REQUEST_COLUMNS, Runtime
from policies import (
    ActionStats,
    AppStats,
    Decision,
    LatencyStats,
    NodeStats,
    Observation,
    Placement,
    Policy,
    Totals,
    check_decision,
)

log = logging.getLogger(__name__)

_C = {name: i for i, name in enumerate(CALL_COLUMNS)}
_R = {name: i for i, name in enumerate(REQUEST_COLUMNS)}


def latency_stats(values: list[float]) -> LatencyStats:
    """count, mean and percentiles in ms; NaN when there is no sample."""
    if not values:
        return LatencyStats()
    arr = np.asarray(values, dtype=float)
    p50, p95, p99 = np.percentile(arr, (50, 95, 99))
    return LatencyStats(len(arr), float(arr.mean()), float(p50), float(p95), float(p99))


class LiveObserver:
    """Turns the runtime's logs since the last look, and its routers, into an Observation."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._calls_cursor = runtime.calls.cursor
        self._requests_cursor = runtime.requests.cursor
        self._last = runtime.now()
        # Running sums since the start: action -> [local sum, local n, remote sum, remote n,
        # network sum, network n] for the service-time and network means.
        self._sums: dict[str, list[float]] = {}
        self._requests_total = 0
        self._failures_total = 0
        psutil.cpu_percent(None)  # primes the counter: the next reading covers the window

    def observe(self, interval_s: float) -> Observation:
        runtime = self.runtime
        now = runtime.now()
        elapsed = max(now - self._last, 0.0)
        self._last = now
        calls, self._calls_cursor = runtime.calls.since(self._calls_cursor)
        requests, self._requests_cursor = runtime.requests.since(self._requests_cursor)
        memory = psutil.virtual_memory()
        node = NodeStats(
            cores=psutil.cpu_count() or 1,
            memory_total_mb=memory.total / 2**20,
            memory_used_mb=(memory.total - memory.available) / 2**20,
            cpu_utilisation=min(1.0, psutil.cpu_percent(None) / 100.0),
        )
        by_action: dict[str, list[tuple[Any, ...]]] = {}
        for row in calls:
            by_action.setdefault(row[_C["action"]], []).append(row)
        actions = {name: self._action(name, by_action.get(name, []), elapsed)
                   for name in sorted(runtime.routers)}
        apps = self._apps(requests, calls)
        ok_all = [r[_R["latency_ms"]] for r in requests if r[_R["ok"]]]
        failed = len(requests) - len(ok_all)
        self._requests_total += len(requests)
        self._failures_total += failed
        stats = latency_stats(ok_all)
        totals = Totals(len(requests), failed, stats.mean_ms, stats.p95_ms,
                        self._requests_total, self._failures_total)
        return Observation(now, interval_s, node, actions, apps, totals)

    def _apps(self, requests: list[tuple[Any, ...]],
              calls: list[tuple[Any, ...]]) -> dict[str, AppStats]:
        pairs: dict[tuple[str, str], int] = {}
        for row in calls:
            key = (row[_C["app"]], row[_C["action"]])
            pairs[key] = pairs.get(key, 0) + 1
        apps = {}
        for name in sorted(self.runtime.walkers):
            mine = [r for r in requests if r[_R["app"]] == name]
            ok = [r[_R["latency_ms"]] for r in mine if r[_R["ok"]]]
            stats = latency_stats(ok)
            per_request = ({action: count / len(mine) for (app, action), count in pairs.items()
                            if app == name} if mine else {})
            apps[name] = AppStats(name, len(mine), len(mine) - len(ok), stats.mean_ms,
                                  stats.p95_ms, per_request)
        return apps

    def _action(self, name: str, rows: list[tuple[Any, ...]], elapsed: float) -> ActionStats:
        router = self.runtime.routers[name]
        sums = self._sums.setdefault(name, [0.0] * 6)
        ok = [r for r in rows if r[_C["ok"]]]
        local = [r for r in ok if r[_C["placement"]] == "local"]
        remote = [r for r in ok if r[_C["placement"]] == "remote"]
        sums[0] += sum(r[_C["service_ms"]] for r in local)
        sums[1] += len(local)
        timed = [r for r in remote if not math.isnan(r[_C["service_ms"]])]
        sums[2] += sum(r[_C["service_ms"]] for r in timed)
        sums[3] += len(timed)
        sums[4] += sum(r[_C["network_ms"]] for r in timed)
        sums[5] += len(timed)
        ready = router.replicas_ready
        remote_busy_s = sum(r[_C["service_ms"]] for r in timed) / 1000.0
        return ActionStats(
            name=name,
            placement=router.placement,
            desired=router.desired,
            replicas_ready=ready,
            transition=router.transition,
            calls=len(rows),
            call_rate=len(rows) / elapsed if elapsed > 0 else 0.0,
            failures=len(rows) - len(ok),
            cold_starts=sum(1 for r in rows if r[_C["cold"]]),
            latency=latency_stats([r[_C["latency_ms"]] for r in ok]),
            latency_local=latency_stats([r[_C["latency_ms"]] for r in local]),
            latency_remote=latency_stats([r[_C["latency_ms"]] for r in remote]),
            in_flight=router.in_flight,
            queued=router.waiting,
            local_memory_mb=router.local_memory_mb,
            replica_memory_mb=router.info.remote_memory_mb or router.local_memory_mb,
            replica_cores=1,
            remote_concurrency=(sum(r[_C["latency_ms"]] for r in remote) / 1000.0 / elapsed
                                if elapsed > 0 else 0.0),
            remote_utilisation=(min(1.0, remote_busy_s / (ready * elapsed))
                                if elapsed > 0 and ready and timed else math.nan),
            local_service_ms=sums[0] / sums[1] if sums[1] else math.nan,
            remote_service_ms=sums[2] / sums[3] if sums[3] else math.nan,
            network_ms=sums[4] / sums[5] if sums[5] else math.nan,
        )


Apply = Callable[[str, Placement], bool]  # (action, placement) -> changed


class Controller:
    """Drives one policy object: `step(observation)` once per interval.

    `apply(action, placement)` makes a placement happen and says whether it changed
    anything; `known()` names the actions a decision may mention. The loop (`start`) calls
    `observe(interval_s)` every interval while `enabled()` says so.
    """

    def __init__(self, policy: Policy, name: str, *, apply: Apply,
                 known: Callable[[], Collection[str]], clock: Callable[[], float],
                 seed: int = 0) -> None:
        self.policy = policy
        self.name = name
        self._apply = apply
        self._known = known
        self._clock = clock
        self.decisions: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._last_reason = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        policy.reset(seed)

    def step(self, observation: Observation) -> Decision | None:
        """Let the policy decide on `observation` and apply it; None when it failed."""
        try:
            decision = check_decision(self.policy.decide(observation), self._known())
        except Exception as exc:  # a user's policy can fail in any way: record, keep going
            where = traceback.extract_tb(exc.__traceback__)[-1]
            message = f"{type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})"
            log.warning("policy %s failed: %s", self.name, message)
            self._record(observation.now, "", "", "", "policy failed; placement kept", message)
            self.events.append({"ts": observation.now, "kind": "policy_error",
                                "detail": message})
            return None
        changed = False
        previous = dict(observation.actions)
        for action, placement in decision.placements.items():
            if self._apply(action, placement):
                changed = True
                before = previous.get(action)
                self._record(observation.now, action, str(placement),
                             str(before.desired) if before else "", decision.reason)
        if not changed and decision.reason and decision.reason != self._last_reason:
            self._record(observation.now, "", "", "", decision.reason)
        self._last_reason = decision.reason or self._last_reason
        return decision

    def _record(self, ts: float, action: str, placement: str, previous: str, reason: str,
                error: str = "") -> None:
        self.decisions.append({"ts": ts, "action": action, "placement": placement,
                               "previous": previous, "source": self.name, "reason": reason,
                               "error": error})

    # ----------------------------------------------------------------- the loop

    def start(self, observe: Callable[[float], Observation], interval_s: Callable[[], float],
              enabled: Callable[[], bool]) -> None:
        """Run the loop in a daemon thread until `stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()

        def loop() -> None:
            # Short waits, so a new backoff_interval or automation switch takes effect at
            # once rather than after the interval that was running.
            last = self._clock()
            while not self._stop.wait(0.05):
                if not enabled():
                    last = self._clock()
                    continue
                if self._clock() - last < interval_s():
                    continue
                last = self._clock()
                try:
                    self.step(observe(interval_s()))
                except Exception:  # observing must not end the loop
                    log.exception("control step failed")

        self._thread = threading.Thread(target=loop, name=f"controller-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None


def apply_to_runtime(runtime: Runtime) -> Apply:
    """An `apply` that asks the action's router for the placement (a no-op when it is
    already what the router was asked for)."""

    def apply(action: str, placement: Placement) -> bool:
        router = runtime.routers[action]
        current = router.desired
        if current.mode is placement.mode and current.replicas == placement.replicas:
            return False
        router.set_placement(placement)
        return True

    return apply


def params_of(policy: Policy) -> Mapping[str, Any]:
    """The policy's parameters as plain data (for `actionpolicy get`)."""
    params = getattr(policy, "params", None)
    if params is None or not dataclasses.is_dataclass(params) or isinstance(params, type):
        return {}
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
