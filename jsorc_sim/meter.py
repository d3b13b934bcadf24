"""Time integrals of a level (memory in use, replicas alive): MB x seconds and the like."""

from __future__ import annotations

import simpy


class Meter:
    """Integrates a piecewise-constant level over simulated time."""

    __slots__ = ("_env", "_since", "area", "level", "peak")

    def __init__(self, env: simpy.Environment, level: float = 0.0) -> None:
        self._env = env
        self._since = env.now
        self.level = level
        self.peak = level
        self.area = 0.0  # level x seconds so far, up to the last change

    def set(self, level: float) -> None:
        now = self._env.now
        self.area += self.level * (now - self._since)
        self._since = now
        self.level = level
        if level > self.peak:
            self.peak = level

    def add(self, delta: float) -> None:
        self.set(self.level + delta)

    def total(self) -> float:
        """The integral up to now."""
        return self.area + self.level * (self._env.now - self._since)
