"""A policy wearing a recorder: every observation it was handed, kept in order.

For checks of what a world showed its policy (`experiments/signals.py`, the signal tests):
`spy = Recorded(make("kpa"))`, run the world with `spy`, then read `spy.seen`. Without an
inner policy it changes nothing. Pure apart from keeping the observations it is given.
"""

from __future__ import annotations

from typing import Any

from policies.contract import Decision, Observation, Policy


class Recorded:
    """Keeps every observation, then lets the wrapped policy (if any) decide."""

    def __init__(self, inner: Policy | None = None) -> None:
        self.inner = inner
        self.params: Any = inner.params if inner is not None else None
        self.seen: list[Observation] = []

    def reset(self, seed: int) -> None:
        self.seen = []
        if self.inner is not None:
            self.inner.reset(seed)

    def decide(self, observation: Observation) -> Decision:
        self.seen.append(observation)
        return self.inner.decide(observation) if self.inner is not None else Decision.keep()
