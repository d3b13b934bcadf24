"""The fault suite's clients and how their requests are counted.

Every request a client sends ends in exactly one class:

- completed: HTTP 200 with ``{"success": true}``;
- failed: an answer with ``{"success": false, "message": <non-empty>}`` (a clear error);
- aborted: no answer because the suite itself killed or stopped the server (rows 7 and 8):
  the connection dropped or was refused while the server was deliberately gone. Such a
  request is not silently lost: the client knows the server went away;
- lost: anything else (no answer, a reset, the client's timeout, a body that is not JSON, or
  an error without a message). Lost must be 0 in every row.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx

#: A client waits this long for an answer: well above every call deadline of fault_config.
CLIENT_TIMEOUT_S = 60.0
#: After a failed or aborted request a client waits this long (a user retrying), so a fault
#: that fails calls at once does not turn into thousands of failures a second.
RETRY_PAUSE_S = 0.1


class Kind(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: when it was sent and answered (monotonic s), and what it became."""

    client: int
    start: float
    end: float
    kind: Kind
    status: int | None
    message: str


def classify(response: httpx.Response) -> tuple[Kind, str]:
    """What an answer is: completed, a clear failure (with its message) or lost."""
    try:
        body = response.json()
    except ValueError:
        return Kind.LOST, f"HTTP {response.status_code}, not JSON: {response.text[:80]!r}"
    if not isinstance(body, dict):
        return Kind.LOST, f"HTTP {response.status_code}, JSON {type(body).__name__}"
    if response.status_code == 200 and body.get("success") is True:
        return Kind.COMPLETED, ""
    message = body.get("message")
    if body.get("success") is False and isinstance(message, str) and message.strip():
        return Kind.FAILED, f"HTTP {response.status_code}: {message.strip()}"
    return Kind.LOST, f"HTTP {response.status_code} without a clear error: {str(body)[:120]}"


class Load:
    """``clients`` threads, each POSTing /walker_run in a closed loop until stopped."""

    def __init__(self, url: str, walker: str, *, clients: int = 4,
                 ctx: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.walker = walker
        self.ctx = dict(ctx or {})
        self.clients = clients
        self.outcomes: list[Outcome] = []
        self.sent = 0  # counted before each send, apart from the outcomes, to check them
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._server_gone = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for i in range(self.clients):
            t = threading.Thread(target=self._client, args=(i,), daemon=True,
                                 name=f"client-{i}")
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        for t in self._threads:
            t.join(timeout=CLIENT_TIMEOUT_S + 10)

    def pause(self) -> None:
        """No new requests (those in flight go on) until :meth:`resume`."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def server_gone(self, gone: bool = True) -> None:
        """From now on a request without an answer is aborted, not lost (the suite is
        killing or stopping the server on purpose)."""
        if gone:
            self._server_gone.set()
        else:
            self._server_gone.clear()

    def send_one(self, ctx: Mapping[str, Any], client: int = -1) -> Outcome:
        """One request outside the loop (a fault's own request); counted like the rest."""
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as http:
            return self._send(http, client, ctx)

    def _client(self, i: int) -> None:
        # One connection per client, like a user's browser or SDK: kept alive between calls.
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as http:
            while not self._stop.is_set():
                self._running.wait()
                if self._stop.is_set():
                    break
                outcome = self._send(http, i, self.ctx)
                if outcome.kind is not Kind.COMPLETED:
                    self._stop.wait(RETRY_PAUSE_S)

    def _send(self, http: httpx.Client, client: int, ctx: Mapping[str, Any]) -> Outcome:
        with self._lock:
            self.sent += 1
        start = time.monotonic()
        status: int | None = None
        try:
            r = http.post(self.url + "/walker_run", json={"name": self.walker, "ctx": dict(ctx)})
            status = r.status_code
            kind, message = classify(r)
        except httpx.HTTPError as exc:
            kind = Kind.ABORTED if self._server_gone.is_set() else Kind.LOST
            message = f"{type(exc).__name__}: {exc}"
        outcome = Outcome(client, start, time.monotonic(), kind, status, message)
        with self._lock:
            self.outcomes.append(outcome)
        return outcome

    def counts(self) -> Counter[Kind]:
        with self._lock:
            return Counter(o.kind for o in self.outcomes)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)


def recovery_after(outcomes: Sequence[Outcome], t0: float, k: int = 5) -> float | None:
    """Seconds from ``t0`` to the answer of the first of ``k`` consecutive successes among
    requests sent at or after ``t0`` (in the order they were answered); None if none yet."""
    after = sorted((o for o in outcomes if o.start >= t0), key=lambda o: o.end)
    run, first = 0, 0.0
    for o in after:
        if o.kind is Kind.COMPLETED:
            run += 1
            if run == 1:
                first = o.end
            if run == k:
                return max(0.0, first - t0)
        else:
            run = 0
    return None
