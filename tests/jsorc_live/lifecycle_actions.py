"""An action that naps, and its ACTION_CONFIGS (`jsorc serve --config
tests.jsorc_live.lifecycle_actions`): the lifecycle tests' replicas import nothing heavy, and a
walker told to nap an hour stands for a call that never ends."""

from __future__ import annotations

import time
from typing import Any

from jsorc_live.actions.registry import jsorc_action

ACTION_CONFIGS: dict[str, dict[str, Any]] = {
    "nap": {"module": __name__, "local_memory_mb": 1, "remote_memory_mb": 60},
    "held": {"module": __name__, "local_memory_mb": 1, "remote_memory_mb": 60},
}


@jsorc_action
def nap(seconds: float = 0.0) -> float:
    """Sleep ``seconds`` and return them."""
    time.sleep(max(0.0, seconds))
    return seconds
