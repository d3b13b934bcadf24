"""A small action module for the tests: every parameter kind, an alias, an action that
raises, a slow one, one kept local, and a setup() whose effect is visible.

The Jaseci twin of this module (test_jaseci_interop.py) has the same functions under
``jaseci_action``, so that both servers' answers can be compared one for one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from jsorc_live.actions.registry import jsorc_action

FACTOR = 0
_lock = threading.Lock()
_running = 0
_peak = 0


@jsorc_action(group="demo")
def setup(factor: int = 3) -> int:
    global FACTOR
    FACTOR = factor
    return factor


@jsorc_action(group="demo", aliases=("twice",))
def double(x: int) -> int:
    return 2 * x


@jsorc_action(group="demo")
def add(a: float, b: float = 2.0) -> float:
    return a + b


@jsorc_action(group="demo")
def gather(first: Any, *rest: Any, scale: int = 1, **extra: Any) -> dict[str, Any]:
    return {"first": first, "rest": list(rest), "scale": scale, "extra": extra}


@jsorc_action(group="demo")
def boom(msg: str = "bad") -> None:
    raise ValueError(msg)


@jsorc_action(group="demo")
def factor() -> int:
    return FACTOR


@jsorc_action(group="demo")
def nap(seconds: float = 0.2) -> dict[str, float]:
    """Sleeps; reports the most naps seen running at once (concurrency)."""
    global _running, _peak
    with _lock:
        _running += 1
        _peak = max(_peak, _running)
    time.sleep(seconds)
    with _lock:
        _running -= 1
    return {"slept": seconds, "peak": _peak}


@jsorc_action(group="demo", allow_remote=False)
def local_only() -> str:
    return "here"


@jsorc_action
def nogroup(t: str) -> str:
    return t.upper()


def helper() -> str:
    """Not an action."""
    return "helper"
