"""The live control loop: observe the runtime, let the policy decide, apply the decision.

Three parts, each replaceable (the simulator has the same three):
- `LiveObserver.observe` is a thin adapter: it reports what is state rather than event (each
  router's placement, what psutil measures of this process and of the replica processes) to
  the runtime's observations, and reads their window. Every statistic comes from the one
  builder both worlds use (`policies.observe`), fed by the runtime's events as they happen;
- `Controller.step` hands one observation to the policy object and checks what it returns
  (pure apart from the decision log: it calls the policy and the injected `apply`);
- `apply_to_runtime` applies a placement through the action's router.

A policy that raises or returns an invalid decision is logged (`decisions` row with
`error`, and an `events` row) and the last placement is kept.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import traceback
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from jsorc_live.runtime import Replica, Runtime
from jsorc_live.signals import ProcessMeter, machine_memory_mb
from policies import Decision, Observation, Placement, Policy, check_decision

log = logging.getLogger(__name__)


class ReplicaLister(Protocol):
    """What the observer needs of a backend: the replica processes it runs of an action."""

    def replicas(self, action: str) -> list[Replica]: ...


class LiveObserver:
    """The runtime's observations, with the state and the measurements of this moment.

    The node is this process: its resident memory (local modules included) out of the
    machine's, and its CPU time. Each action's replica usage is summed over the processes
    `backend` runs of it (none without a backend); a process that cannot be read is skipped.
    """

    def __init__(self, runtime: Runtime, backend: ReplicaLister | None = None) -> None:
        self.runtime = runtime
        self.backend = backend
        self._meter = ProcessMeter()

    def observe(self, interval_s: float) -> Observation:
        runtime = self.runtime
        signals = runtime.observations
        for name, router in sorted(runtime.routers.items()):
            signals.state(name, *router.state())
            if self.backend is not None:
                pids = [r.pid for r in self.backend.replicas(name) if r.pid is not None]
                usage = self._meter.replicas(name, pids)
                if usage is not None:
                    signals.replica_usage(name, *usage)
        rss_mb, cpu_s = self._meter.own()
        signals.memory(rss_mb, machine_memory_mb())
        signals.cpu_time(cpu_s)
        return signals.observe(interval_s)


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
