"""The control loop: observe, let the policy decide, apply (and sample the timeline).

The policy object is the only thing that decides. This loop builds its observation, calls it,
checks what it returned and applies it; a policy that raises or returns an invalid decision
is recorded with the observation time and its placement kept (or, with
`on_error = "stop"`, the run stops with that error).
"""

from __future__ import annotations

import traceback
from collections.abc import Generator
from typing import Any

import simpy

from jsorc_sim.observe import Observer
from jsorc_sim.runtime import Runtime
from policies import Decision, Observation, PlacementError, Policy, check_decision


class PolicyFailure(RuntimeError):
    """Raised out of the run when a policy fails and the scenario says to stop."""


def control(env: simpy.Environment, runtime: Runtime, policy: Policy, interval_s: float,
            on_error: str, name: str) -> Generator[simpy.Event, Any, None]:
    observer = Observer(runtime)
    recorder = runtime.recorder
    last_reason = ""
    while True:
        observation = observer.observe(interval_s)
        recorder.policy_steps += 1
        decision, message, failure = _decide(policy, observation, runtime)
        if decision is None:
            recorder.decision(env.now, "", "", "", name, "policy failed; placement kept",
                              message)
            recorder.event(env.now, "policy_error", message)
            if on_error == "stop":
                raise PolicyFailure(f"policy {name!r} failed at t={env.now:g}s: {message}") \
                    from failure
        else:
            changed = False
            for action, placement in decision.placements.items():
                changed |= runtime.actions[action].apply(placement, name, decision.reason)
            if not changed and decision.reason and decision.reason != last_reason:
                # A new phase with no placement change still goes in the log.
                recorder.decision(env.now, "", "", "", name, decision.reason)
            last_reason = decision.reason or last_reason
        if runtime.fast is not None:
            runtime.fast.stepped("control", env.now + interval_s)
        yield env.timeout(interval_s)


def _decide(policy: Policy, observation: Observation, runtime: Runtime
            ) -> tuple[Decision | None, str, Exception | None]:
    """The policy's checked decision, or None with the failure and its one-line message:
    `Type: message (at file:line)` where it raised, or what it returned and where its
    decide is (`got dict: {...} (returned by Mine.decide at mine.py:12)`)."""
    try:
        returned = policy.decide(observation)
    except Exception as exc:  # a user's policy can fail in any way: record, don't crash
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return None, f"{type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})", exc
    try:
        return check_decision(returned, runtime.actions), "", None
    except PlacementError as exc:
        # The check's own line says nothing; the policy's decide is where to look.
        return None, f"{type(exc).__name__}: {exc} (returned by {_decide_at(policy)})", exc


def _decide_at(policy: Policy) -> str:
    """`Class.decide at file:line`, where the policy's decide is defined."""
    decide = getattr(type(policy), "decide", None)
    code = getattr(decide, "__code__", None)
    where = f" at {code.co_filename}:{code.co_firstlineno}" if code is not None else ""
    return f"{type(policy).__qualname__}.decide{where}"


def sample_timeline(env: simpy.Environment, runtime: Runtime, every_s: float, *,
                    observed: bool = True) -> Generator[simpy.Event, Any, None]:
    """Every `every_s`: node memory and utilisation, and per action placement and queues.

    Utilisation and concurrency are time averages over the sample's interval, read from
    the same event integrals the policy's observation uses (`policies.observe`)."""
    builder = runtime.observations
    cores = runtime.scenario.node.cores
    last = builder.integrals(env.now)
    while True:
        now = builder.integrals(env.now)
        elapsed = now.t - last.t
        node = {
            "ts": env.now,
            "memory_used_mb": runtime.memory_used_mb,
            "cpu_utilisation": (now.node_busy - last.node_busy) / (cores * elapsed)
            if elapsed > 0 else 0.0,
            "cores_queue": len(runtime.cores.queue) + runtime.fast_cores_queue,
            "requests_in_system": len(runtime.active) + runtime.at_door
            + runtime.fast_in_system,
            "runtime_up": runtime.up,
            "replica_memory_mb": runtime.replica_memory.level,
        }
        for name, action in runtime.actions.items():
            signals = builder.action(name)
            before, after = last.actions[name], now.actions[name]
            runtime.recorder.timeline.append({
                **node,
                "action": name,
                "placement": str(action.placement),
                "desired": str(action.desired),
                "replicas": len(action.pool.replicas),
                "replicas_ready": action.pool.ready,
                "in_flight": signals.in_flight,
                "queued": signals.queued,
                "local": action.local.value,
                "local_concurrency": (after[0] - before[0]) / elapsed if elapsed > 0 else 0.0,
                "remote_concurrency": (after[1] - before[1]) / elapsed if elapsed > 0 else 0.0,
            })
        last = now
        if not observed:  # no policy reads the window: its tallies would only grow
            builder.forget_window()
        if runtime.fast is not None:
            runtime.fast.stepped("timeline", env.now + every_s)
        yield env.timeout(every_s)
