"""The live control loop: observe the runtime, let the policy decide, apply the decision.

Three parts, each replaceable (the simulator has the same three):
- `LiveObserver.observe` is a thin adapter: it reports what is state rather than event (each
  router's placement, what psutil measures of this process and of the replica processes) to
  the runtime's observations, and reads their window. Every statistic comes from the one
  builder both worlds use (`policies.observe`), fed by the runtime's events as they happen;
- `Controller.step` hands one observation to the policy object and checks what it returns
  (pure apart from the decision log: it calls the policy and the injected `apply`);
- `apply_to_runtime` applies a placement through the action's router.

A policy that raises, returns an invalid decision, or takes longer than the step's deadline
is logged (`decisions` row with `error`, an `events` row, `Controller.health()`) and the last
placement is kept; the loop goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
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

#: A policy call gets max(this, the control interval) unless the controller is given a
#: deadline: a policy slower than its interval cannot keep up anyway, and a short interval
#: should not make a policy that is merely slow-ish fail every step.
MIN_DEADLINE_S = 1.0

#: Rows kept in `decisions` and `events`: a server runs for weeks, and a policy failing every
#: step adds a row per step.
LOG_LIMIT = 10_000


class _Call:
    """One policy call (reset or decide) on its own daemon thread, and its outcome.

    A thread per call, never a pool: a call that never returns keeps its thread, and the
    controller starts no other call of that policy until it has returned, so one stuck policy
    holds at most one thread. Daemon, so a stuck policy cannot keep the server from exiting."""

    def __init__(self, what: str, fn: Callable[[], Any], name: str) -> None:
        self.what = what
        self.started = time.monotonic()  # wall time: how long a policy takes is real time
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._fn = fn
        threading.Thread(target=self._run, name=f"policy-{name}-{what}", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:  # SystemExit from a policy included: it is data here
            self.error = exc
        finally:
            self.done.set()


class Controller:
    """Drives one policy object: `step(observation)` once per interval.

    `apply(action, placement)` makes a placement happen and says whether it changed
    anything (it may raise to refuse one: the refusal is recorded); `known()` names the
    actions a decision may mention; `max_replicas()`, when given, is the most replicas a
    decision may ask for. The loop (`start`) calls `observe(interval_s)` every interval while
    `enabled()` says so.

    Each policy call runs on its own thread with a deadline (`deadline_s`; default
    max(MIN_DEADLINE_S, the observation's interval)). A call past it is abandoned for that
    step, and later steps are skipped (recorded) until it returns; what it then returns is
    discarded. A policy that raises, returns what `check_decision` refuses, asks for more
    replicas than allowed, or is too slow leaves the placement as it was, with a `decisions`
    row carrying the error, an `events` row, and `health()` naming the latest error.
    """

    def __init__(self, policy: Policy, name: str, *, apply: Apply,
                 known: Callable[[], Collection[str]], clock: Callable[[], float],
                 seed: int = 0, deadline_s: float | None = None,
                 max_replicas: Callable[[], int | None] | None = None) -> None:
        if deadline_s is not None and not (math.isfinite(deadline_s) and deadline_s > 0):
            raise ValueError(f"deadline_s must be a positive number of seconds, got "
                             f"{deadline_s!r}")
        self.policy = policy
        self.name = name
        self._apply = apply
        self._known = known
        self._clock = clock
        self._deadline_s = deadline_s
        self._max_replicas = max_replicas
        self.decisions: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.last_error: dict[str, Any] | None = None
        self.errors = 0
        self._last_reason = ""
        self._busy: _Call | None = None  # a call past its deadline, still running
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._reset(seed)

    def _reset(self, seed: int) -> None:
        call = _Call("reset", lambda: self.policy.reset(seed), self.name)
        deadline = self._deadline_s or MIN_DEADLINE_S
        if not self._wait(call, deadline):
            self._busy = call
            self._fail(self._clock(), "policy_timeout",
                       f"policy timed out: reset() took longer than {deadline:g} s")
        elif call.error is not None:
            self._fail(self._clock(), "policy_error", f"reset() failed: {_describe(call.error)}")

    def step(self, observation: Observation) -> Decision | None:
        """Let the policy decide on `observation` and apply it; None when it failed."""
        now = observation.now
        if not self._idle(now):
            return None
        known = list(self._known())
        policy = self.policy
        call = _Call("decide", lambda: check_decision(policy.decide(observation), known),
                     self.name)
        deadline = self._deadline_s or max(MIN_DEADLINE_S, observation.interval_s)
        if not self._wait(call, deadline):
            self._busy = call
            if not self._stop.is_set():
                self._fail(now, "policy_timeout", f"policy timed out: decide() took longer "
                           f"than {deadline:g} s; placement kept")
            return None
        if call.error is not None:
            self._fail(now, "policy_error", _describe(call.error))
            return None
        decision: Decision = call.result
        too_many = self._over_cap(decision)
        if too_many:
            self._fail(now, "policy_error", too_many)
            return None
        self._carry_out(observation, decision)
        return decision

    def _idle(self, now: float) -> bool:
        """No earlier call still running (recorded when one is); a late one is collected."""
        busy = self._busy
        if busy is None:
            return True
        elapsed = time.monotonic() - busy.started
        if not busy.done.is_set():
            self._fail(now, "policy_timeout", f"policy timed out: {busy.what}() is still "
                       f"running after {elapsed:.1f} s; step skipped, placement kept")
            return False
        self._busy = None
        self.events.append({"ts": now, "kind": "policy_late",
                            "detail": f"{busy.what}() returned after {elapsed:.1f} s; what it "
                                      "returned was discarded"})
        return True

    def _wait(self, call: _Call, deadline_s: float) -> bool:
        # In slices, so that `stop` does not wait out a slow policy's deadline.
        end = time.monotonic() + deadline_s
        while not call.done.wait(min(0.05, max(0.0, end - time.monotonic()))):
            if time.monotonic() >= end or self._stop.is_set():
                return False
        return True

    def _over_cap(self, decision: Decision) -> str:
        cap = self._max_replicas() if self._max_replicas is not None else None
        if cap is None:
            return ""
        for action, placement in sorted(decision.placements.items()):
            if placement.replicas > cap:
                return (f"PlacementError: decision asks for {placement} of {action!r}, above "
                        f"the replica cap {cap}; placement kept")
        return ""

    def _carry_out(self, observation: Observation, decision: Decision) -> None:
        now = observation.now
        changed = False
        previous = dict(observation.actions)
        for action, placement in decision.placements.items():
            before = previous.get(action)
            try:
                applied = self._apply(action, placement)
            except Exception as exc:  # a refusal (say, over the replica cap): the rest go on
                message = f"{type(exc).__name__}: {exc}"
                log.warning("policy %s: %s %s refused: %s", self.name, action, placement,
                            message)
                self._note_error(now, "apply_error", message)
                self._record(now, action, str(placement), str(before.desired) if before else "",
                             decision.reason, message)
                continue
            if applied:
                changed = True
                self._record(now, action, str(placement),
                             str(before.desired) if before else "", decision.reason)
        if not changed and decision.reason and decision.reason != self._last_reason:
            self._record(now, "", "", "", decision.reason)
        self._last_reason = decision.reason or self._last_reason

    def _fail(self, ts: float, kind: str, message: str) -> None:
        log.warning("policy %s: %s", self.name, message)
        self._record(ts, "", "", "", "policy failed; placement kept", message)
        self._note_error(ts, kind, message)

    def _note_error(self, ts: float, kind: str, message: str) -> None:
        self.errors += 1
        self.last_error = {"ts": ts, "kind": kind, "error": message}
        self.events.append({"ts": ts, "kind": kind, "detail": message})
        del self.events[:-LOG_LIMIT]

    def _record(self, ts: float, action: str, placement: str, previous: str, reason: str,
                error: str = "") -> None:
        self.decisions.append({"ts": ts, "action": action, "placement": placement,
                               "previous": previous, "source": self.name, "reason": reason,
                               "error": error})
        del self.decisions[:-LOG_LIMIT]

    def health(self) -> dict[str, Any]:
        """For `actionpolicy get` and `/jsorc/status`: the latest policy error (None if
        none), how many there were, and whether a call is still running past its deadline."""
        busy = self._busy
        running = busy is not None and not busy.done.is_set()
        return {"last_error": self.last_error, "errors": self.errors,
                "stuck_call": busy.what if running and busy is not None else None,
                "stuck_for_s": round(time.monotonic() - busy.started, 3)
                if running and busy is not None else None}

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
                try:
                    if not enabled():
                        last = self._clock()
                        continue
                    if self._clock() - last < interval_s():
                        continue
                    last = self._clock()
                    self.step(observe(interval_s()))
                except Exception:  # observing (or anything else) must not end the loop
                    log.exception("control step failed")

        self._thread = threading.Thread(target=loop, name=f"controller-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None


def _describe(exc: BaseException) -> str:
    """`Type: message (at file:line)`, the line where the policy's error was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def apply_to_runtime(runtime: Runtime) -> Apply:
    """An `apply` that asks the action's router for the placement (a no-op when it is
    already what the router was asked for). A placement the router refuses (more replicas
    than its cap) raises its RuntimeRefusal: the controller records it as an `apply_error`
    row of that step, the router as a `placement_refused` event, and the last placement is
    kept."""

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
