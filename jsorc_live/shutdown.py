"""Bounded shutdown of `jsorc serve`: SIGTERM stops the server within a known time, even with
calls in flight or hung (issue #10: a hung local call kept a server up > 40 s after SIGTERM).

- uvicorn stops accepting, gives the requests in flight `grace_s`, then cancels them;
- then the service closes (`close`: the controller, the runtime, every replica and service);
- a watchdog, armed by the first signal, bounds all of it and the interpreter's exit (which
  joins every non-daemon thread, a hung call's too): past `grace_s + close_s` it SIGKILLs
  every child's process group and exits;
- a second SIGTERM or SIGINT forces the exit at any point: it SIGKILLs the children's
  groups and exits at once.

uvicorn by itself forces only on a second SIGINT, and once stopped re-raises the signals it
caught: with SIGTERM's default action that killed the process before the service closed,
orphaning every replica. `Server.handle_exit` keeps neither habit.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from jsorc_live.children import CHILDREN, Children

log = logging.getLogger(__name__)

__all__ = ["Server", "seconds", "serve"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def seconds(value: str) -> float:
    """argparse type: a positive, finite number of seconds (the error names the value)."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got "
                                         f"{value!r}")
    return number


class _Watchdog:
    """Exit the process, children first, if it is still here `after_s` from `arm`."""

    def __init__(self, children: Children) -> None:
        self.children = children
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def arm(self, after_s: float) -> None:
        with self._lock:
            if self._timer is not None:
                return  # the first bound holds: a later arm must not extend it
            self._timer = threading.Timer(after_s, self._fire, args=(after_s,))
            self._timer.daemon = True
            self._timer.name = "shutdown-watchdog"
            self._timer.start()

    def _fire(self, after_s: float) -> None:
        log.error("shutdown did not finish within %g s: killing the children and exiting; "
                  "where each thread was:", after_s)
        with contextlib.suppress(OSError, ValueError):  # what held it, for the operator
            faulthandler.dump_traceback(sys.stderr, all_threads=True)
        force_exit(self.children, 1)


def force_exit(children: Children, code: int) -> None:
    """SIGKILL every child's group, then leave without running anything else."""
    try:
        children.kill_all()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


class Server(uvicorn.Server):
    """uvicorn's server; the first SIGTERM/SIGINT drains (and arms the watchdog), a second
    kills the children and exits at once."""

    def __init__(self, config: uvicorn.Config, on_first_signal: Callable[[], None],
                 children: Children = CHILDREN) -> None:
        super().__init__(config)
        self._on_first_signal = on_first_signal
        self._children = children

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # State first, logging after: a second signal can run this handler again in the
        # middle of the first one (Python runs handlers between any two bytecodes).
        if self.should_exit:
            self.force_exit = True
            log.warning("second %s: exiting now", signal.Signals(sig).name)
            force_exit(self._children, 128 + sig)
        self.should_exit = True
        self._on_first_signal()
        log.warning("%s: stopping (requests in flight get %s s)", signal.Signals(sig).name,
                    self.config.timeout_graceful_shutdown)


def serve(app: Any, *, host: str, port: int, log_level: str, close: Callable[[], None],
          grace_s: float = 10.0, close_s: float = 10.0,
          children: Children = CHILDREN) -> None:
    """Serve `app` until SIGTERM/SIGINT, then `close()`, all within grace_s + close_s of
    the first signal (and close_s of the server stopping on its own)."""
    watchdog = _Watchdog(children)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=math.ceil(grace_s))
    server = Server(config, lambda: watchdog.arm(grace_s + close_s), children)
    try:
        server.run()
    finally:
        watchdog.arm(close_s)
        _force_on_signal(children)
        close()


def _force_on_signal(children: Children) -> None:
    """From now on (uvicorn's handlers are gone) a signal forces the exit: while the service
    closes and while the interpreter exits, until the process is gone."""
    def force(sig: int, frame: FrameType | None) -> None:
        log.warning("%s while closing: killing the children and exiting now",
                    signal.Signals(sig).name)
        force_exit(children, 128 + sig)

    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, force)
