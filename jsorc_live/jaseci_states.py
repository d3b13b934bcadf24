"""JSORC's system states: what `jsorc_tracksys_stop` answers on Jaseci's paths.

JSORC (`ActionManager.record_system_state`) appends one state per control interval while
tracksys runs: `{"ts", "actions", "prometheus"}`, the placement of every action at that moment
and Prometheus' readings over the interval just ended. `StateRecorder` does the same over
jsorc: a state when tracking starts, one every `interval_s()` (the META_CONFIG
backoff_interval, read at each tick), and one when it stops. `readings(start, stop)` answers
the Prometheus rows of the interval, or None with the reason (no Prometheus kept alive, or it
did not answer); the state then holds `"prometheus": null` and `"prometheus_reason"`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["Readings", "StateRecorder"]

Readings = Callable[[float, float], tuple[list[dict[str, Any]] | None, str]]

#: The first state opens the window: there is no interval before it to read.
OPENING = "the first state opens the tracking window: no interval to read yet"


class StateRecorder:
    """States of `actions()` and `readings` every `interval_s()` between start and stop."""

    def __init__(self, actions: Callable[[], dict[str, Any]], readings: Readings,
                 interval_s: Callable[[], float], *, clock: Callable[[], float] = time.time,
                 max_states: int = 10_000) -> None:
        self._actions = actions
        self._readings = readings
        self._interval_s = interval_s
        self._clock = clock
        self._max_states = max_states
        self._lock = threading.Lock()
        self._states: list[dict[str, Any]] = []
        self._active = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._active

    def start(self) -> None:
        """Open a window (a running one is replaced) with its first state."""
        self._halt()
        with self._lock:
            self._states = []
            self._active = True
        self._record(opening=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="jsorc-tracksys-states",
                                        daemon=True)
        self._thread.start()

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {"active": self._active, "states": list(self._states)}

    def stop(self) -> dict[str, Any]:
        """Close the window with a last state (none when it was not running)."""
        self._halt()
        if self._active:
            self._record()
        with self._lock:
            self._active = False
        return self.report()

    def close(self) -> None:
        self._halt()

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
        self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(max(self._interval_s(), 0.05)):
            try:
                self._record()
            except Exception:  # a bad tick must not end the window
                log.exception("recording a system state failed")

    def _record(self, opening: bool = False) -> None:
        now = self._clock()
        with self._lock:
            last = self._states[-1]["ts"] if self._states else None
        if opening or last is None:
            rows, reason = None, OPENING
        else:
            rows, reason = self._readings(last, now)
        state: dict[str, Any] = {"ts": now, "actions": self._actions(), "prometheus": rows}
        if rows is None:
            state["prometheus_reason"] = reason
        with self._lock:
            self._states.append(state)
            del self._states[:-self._max_states]
