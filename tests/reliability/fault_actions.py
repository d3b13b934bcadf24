"""The action module of the fault suite: one function that sleeps, so a walker's cost is
chosen by its ctx (a few ms for load, seconds for slow walkers, an hour for a hung call).

It imports nothing heavy on purpose: every replica of the suite imports it, on 2 cores."""

from __future__ import annotations

import time

from jsorc_live.actions.registry import jsorc_action


@jsorc_action
def sleep(seconds: float = 0.005) -> float:
    """Sleep ``seconds`` and return them; an hour stands for a call that never ends."""
    time.sleep(max(0.0, seconds))
    return seconds
