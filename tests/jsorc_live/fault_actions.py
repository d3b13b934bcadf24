"""Action functions for the router's fault tests (test_router_faults.py): each records that
it ran (a line `PID TAG` in the `counter` file, when given) so a test counts executions on
the server side, whichever replica ran them.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from jsorc_live.actions.registry import jsorc_action


def _record(counter: str, tag: str) -> None:
    if counter:
        with Path(counter).open("a") as out:
            out.write(f"{os.getpid()} {tag}\n")


@jsorc_action(group="fault")
def work(counter: str = "", tag: str = "") -> dict[str, Any]:
    """Answers at once with the pid that ran it."""
    _record(counter, tag)
    return {"pid": os.getpid(), "tag": tag}


@jsorc_action(group="fault")
def sleep(seconds: float = 0.1, counter: str = "", tag: str = "") -> dict[str, Any]:
    """Records the run, then sleeps `seconds`."""
    _record(counter, tag)
    time.sleep(seconds)
    return {"pid": os.getpid(), "tag": tag, "slept": seconds}


@jsorc_action(group="fault")
def hang(counter: str = "", tag: str = "") -> None:
    """Records the run, then never returns (a call stuck in a model)."""
    _record(counter, tag)
    threading.Event().wait()
