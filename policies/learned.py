"""`AgentPolicy`: any trained agent -- a callable from the encoded observation to an action
array -- as a placement `Policy`, for the simulator and the live controller alike.

    policy = AgentPolicy(lambda x: model.predict(x, deterministic=True)[0],
                         Encoding(("text_seg", "use_enc")), name="ppo")
    simulate(scenario, policy)                  # or a live `jsorc serve --policy-file`

The observation goes through `Encoding.encode`, the agent's answer through
`Encoding.decode` (0 local, k remote:k). Placements are given only for the actions the
observation lists (a world that has not loaded an action yet is not told about it), and the
reason names each: "agent: a=remote:3, b=local". An answer of the wrong shape or out of range
is a ValueError naming the agent, which both worlds record as a policy failure (the placement
is kept). The adapter is as pure as the agent: it reads no clock and does no I/O itself.

Not registered by name (it needs an agent object). To set one by file path (`jsorc-sim run
--policy file.py:Class`, live `jsorc actionpolicy set`), subclass it with the registry's
constructor, `__init__(self, params=None)`, building the agent there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from policies.contract import Decision, Observation
from policies.encoding import Encoding
from policies.registry import CheckedParams, param


@dataclass(frozen=True)
class AgentParams(CheckedParams):
    """The encoding an agent was trained with (its fields are Encoding's)."""

    actions: tuple[str, ...] = param((), "the actions the agent places, in its order")
    max_replicas: int = param(8, "replicas an action may ask for, at most", minimum=1)
    latency_scale_ms: float = param(1000.0, "latency that encodes as log1p(1)", minimum=1e-9)
    rate_scale: float = param(10.0, "call rate (per s) that encodes as 1.0", minimum=1e-9)

    def encoding(self) -> Encoding:
        return Encoding(self.actions, self.max_replicas, self.latency_scale_ms,
                        self.rate_scale)


class AgentPolicy:
    """A trained agent as a `Policy` (see the module)."""

    Params = AgentParams

    def __init__(self, agent: Callable[[np.ndarray], Any], encoding: Encoding, *,
                 name: str = "agent") -> None:
        if not callable(agent):
            raise TypeError(f"AgentPolicy: agent must be callable (encoded observation -> "
                            f"action), got {type(agent).__name__}: {agent!r:.80}")
        if not isinstance(encoding, Encoding):
            raise TypeError(f"AgentPolicy: encoding must be a policies.encoding.Encoding, got "
                            f"{type(encoding).__name__}")
        self.agent = agent
        self.encoding = encoding
        self.name = name
        self.policy_name = name  # what a run records as its policy (simulate, check_policy)
        self.params = AgentParams(encoding.actions, encoding.max_replicas,
                                  encoding.latency_scale_ms, encoding.rate_scale)

    def reset(self, seed: int) -> None:
        pass  # the agent is a fixed function of the observation: nothing to clear

    def decide(self, observation: Observation) -> Decision:
        encoding = self.encoding
        raw = self.agent(encoding.encode(observation))
        want = (len(encoding.actions),)
        try:
            answer = np.asarray(raw)
        except ValueError:  # ragged: (action, state) from a predict(), say
            answer = np.asarray(raw, dtype=object)
        if answer.dtype == object or answer.shape != want:
            got = f"an action of shape {answer.shape}" if answer.dtype != object \
                else f"a {type(raw).__name__}, not a numeric array"
            raise ValueError(
                f"agent {self.name!r} returned {got}, expected shape {want} (one integer "
                f"per action: {', '.join(encoding.actions)}; a stable-baselines3 model's "
                "predict returns (action, state): use its [0])")
        try:
            chosen = encoding.decode(answer)
        except ValueError as exc:
            raise ValueError(f"agent {self.name!r}: {exc}") from None
        placements = {a: p for a, p in chosen.items() if a in observation.actions}
        told = ", ".join(f"{a}={p}" for a, p in placements.items()) or "no action observed"
        return Decision(placements, f"{self.name}: {told}")
