"""Policies that misbehave, for rows 12-14 of the fault suite. `jsorc serve
--allow-policy-module tests.reliability.fault_policies` allows them; `actionpolicy set
tests.reliability.fault_policies:Raising` (or Nonsense, Slow) sets one.

Each is a well-formed policy class (Params, reset, decide): only what decide does is wrong.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from policies import Decision, NoParams, Observation, Placement, param


class _Base:
    Params: type[Any] = NoParams

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()

    def reset(self, seed: int) -> None:
        pass


class Raising(_Base):
    """Raises at every step."""

    def decide(self, observation: Observation) -> Decision:
        raise RuntimeError("fault_policies.Raising: this policy always raises")


class Nonsense(_Base):
    """Returns something that is not a valid decision, a different kind at each step: not a
    Decision at all, a Decision for an action that does not exist, and a Decision whose
    placements bypassed their checks (a negative replica count)."""

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._step = 0

    def decide(self, observation: Observation) -> Decision:
        self._step += 1
        kind = self._step % 3
        if kind == 0:
            return "remote everything, please"  # type: ignore[return-value]
        if kind == 1:
            return Decision({"no_such_action": Placement.remote(1)}, "nonsense: unknown")
        bad = object.__new__(Placement)  # skips __post_init__'s checks on purpose
        object.__setattr__(bad, "mode", Placement.remote(1).mode)
        object.__setattr__(bad, "replicas", -3)
        names = list(observation.actions) or ["fast"]
        decision = object.__new__(Decision)
        object.__setattr__(decision, "placements", {names[0]: bad})
        object.__setattr__(decision, "reason", "nonsense: negative replicas")
        return decision


@dataclass(frozen=True)
class SlowParams:
    seconds: float = param(3600.0, "how long decide blocks", minimum=0.0)


class Slow(_Base):
    """Blocks in decide far longer than any step deadline (an hour by default). It waits on
    an event that nobody sets rather than time.sleep, so it behaves the same."""

    Params = SlowParams

    def decide(self, observation: Observation) -> Decision:
        threading.Event().wait(self.params.seconds)
        return Decision.keep("slow: finally")
