"""The clients of `jsorc loadtest` (jsorc_live.loadtest): closed-loop threads or a trace's
open-loop replay, both bounded in time, and the client's log of every walker run it sent.

Both stop sending at `duration_s` after their start and stop waiting for answers `grace_s`
later. What the bound cut off is recorded, never dropped: a trace arrival due before the end
that was not sent by then counts as not sent (`Outcome.not_sent`; the client fell behind), and
a walker run sent but not answered by the end of the grace is a row of `requests.parquet`
with `ok` false, no latency and the error `UNFINISHED`. A late answer after that is ignored:
the row says what the run saw.

The replay reads the trace a window at a time (jsorc_traces.read_windows), so the client
holds one window of arrival times (numpy) and the requests in flight, not the trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

__all__ = ["UNFINISHED", "Bounds", "ClientLog", "Outcome", "closed_loop", "replay"]

UNFINISHED = "unfinished: no answer by --duration + --grace"
PROGRESS_S = 5.0  # a progress line on stderr this often
ISSUE_BATCH = 256  # arrivals sent between two looks at the clock when the client is behind
MAX_CONNECTIONS = 256  # the replay's requests in flight at most; more arrivals wait
POOLS = 16  # httpx clients the replay spreads them over (MAX_CONNECTIONS / POOLS each)

Row = tuple[float, str, float, bool, str, int, float]
Times = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Bounds:
    """When a load stops: sending at `duration_s`, waiting for answers `grace_s` later."""

    duration_s: float
    grace_s: float


@dataclass(frozen=True)
class Outcome:
    """What the client did: `offered` walker runs were due (a trace's arrivals before the
    end, or every run a closed-loop client sent), `not_sent` of them were not sent by the end,
    and the client was at worst `max_lag_s` behind its schedule when it sent one."""

    offered: int
    not_sent: int = 0
    max_lag_s: float = 0.0


@dataclass
class ClientLog:
    """The client's view of every walker run it sent (thread-safe). `send` when a request
    goes out, `answer` when its answer (or error) comes back, `cut` at the end of the grace:
    every run still in flight becomes an `UNFINISHED` row, and later answers are ignored."""

    started: float = field(default_factory=time.perf_counter)
    rows: list[Row] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _in_flight: dict[int, float] = field(default_factory=dict)
    _tokens: Iterator[int] = field(default_factory=itertools.count)

    def send(self) -> int:
        """A request goes out now: its token for `answer`."""
        with self.lock:
            token = next(self._tokens)
            self._in_flight[token] = time.perf_counter()
            return token

    def answer(self, token: int, app: str, ok: bool, error: str, answer: Any = None) -> None:
        """Request `token`'s end; `answer` is the server's JSON answer (its request_id and its
        own latency_ms), when there was one."""
        answered = time.perf_counter()
        rid, server_ms = -1, math.nan
        if isinstance(answer, dict):
            if isinstance(answer.get("request_id"), int):
                rid = answer["request_id"]
            if isinstance(answer.get("latency_ms"), int | float):
                server_ms = float(answer["latency_ms"])
        with self.lock:
            sent = self._in_flight.pop(token, None)
            if sent is None:  # after the cut: already recorded as unfinished
                return
            self.rows.append((sent - self.started, app, (answered - sent) * 1000.0, ok, error,
                              rid, server_ms))

    def cut(self, app: str) -> int:
        """End of the grace: record every run in flight as unfinished; how many there were."""
        with self.lock:
            sent = sorted(self._in_flight.values())
            self._in_flight.clear()
            self.rows.extend((t - self.started, app, math.nan, False, UNFINISHED, -1, math.nan)
                             for t in sent)
            return len(sent)

    @property
    def in_flight(self) -> int:
        with self.lock:
            return len(self._in_flight)

    def counts(self) -> dict[str, int]:
        """sent, ok, failed (answered with an error) and unfinished walker runs."""
        with self.lock:
            ok = sum(1 for row in self.rows if row[3])
            unfinished = sum(1 for row in self.rows if not row[3] and row[4] == UNFINISHED)
            sent = len(self.rows) + len(self._in_flight)
            return {"sent": sent, "ok": ok, "failed": len(self.rows) - ok - unfinished,
                    "unfinished": unfinished}


# --------------------------------------------------------------------------- closed loop


def closed_loop(url: str, app: str, *, clients: int, think_ms: float, timeout_s: float,
                bounds: Bounds, log: ClientLog) -> Outcome:
    """`clients` threads run the walker back to back until the end of the duration; each
    run in flight then gets the grace, and what has not answered by its end is unfinished.

    The clients share one connection pool (a connection each) and every thread is up before
    the clock starts: a client built per thread costs tens of ms, so a few hundred of them
    used to spend the whole duration being built and send nothing."""
    http = httpx.Client(timeout=timeout_s, limits=httpx.Limits(
        max_connections=clients, max_keepalive_connections=clients))
    go = threading.Event()
    deadline = math.inf

    def client() -> None:
        go.wait()
        while time.perf_counter() < deadline:
            _one(http, url, app, log)
            if think_ms:
                time.sleep(think_ms / 1000.0)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    deadline = start + bounds.duration_s
    log.started = start
    go.set()
    progress = Progress(start, bounds, log)
    while (now := time.perf_counter()) < deadline + bounds.grace_s:
        if not any(thread.is_alive() for thread in threads):
            break
        # Short steps: the clients stop at the deadline, usually well before the grace ends.
        time.sleep(min(0.1, deadline + bounds.grace_s - now))
        progress.tick()
    progress.done()
    # A client still waiting keeps its (daemon) thread; its answer, if any, is ignored. The
    # pool is closed aside, so a request still hanging cannot hold the end of the run.
    log.cut(app)
    threading.Thread(target=http.close, daemon=True).start()
    return Outcome(offered=log.counts()["sent"])


def _one(http: httpx.Client, url: str, app: str, log: ClientLog) -> None:
    token = log.send()
    answer = None
    try:
        response = http.post(url, json={"name": app, "ctx": {}})
        ok = response.status_code < 400
        error = "" if ok else f"HTTP {response.status_code}: {response.text[:120]}"
        answer = _json(response)
    except httpx.HTTPError as exc:
        ok, error = False, f"{type(exc).__name__}: {exc}"
    log.answer(token, app, ok, error, answer)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:  # not JSON (a proxy's error page): no server figures for this run
        return None


# --------------------------------------------------------------------------- trace replay


def replay(url: str, app: str, windows: Iterable[Times], *, timeout_s: float, bounds: Bounds,
           log: ClientLog) -> Outcome:
    """Send a walker run at every arrival time of `windows` (seconds from the start, sorted,
    window after window, each before the end of the duration), whatever is still running."""
    return asyncio.run(_replay(url, app, iter(windows), timeout_s, bounds, log))


async def _replay(url: str, app: str, windows: Iterable[Times], timeout_s: float,
                  bounds: Bounds, log: ClientLog) -> Outcome:
    # At most MAX_CONNECTIONS requests are in httpx at once, over POOLS clients: httpx's pool
    # matches every waiting request with every connection each time one frees, a cost that
    # grows with the square of its size (one pool of 256 sent 600 of a 1,200/s replay in
    # 12 s and got no answer). An arrival waiting for a slot here (one semaphore) has not
    # been sent: its wait is the client's lag, not the server's latency.
    slots = asyncio.Semaphore(MAX_CONNECTIONS)
    pending: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS // POOLS)
    # One TLS context for all (each client would load the CA store again: 0.1 s apiece).
    verify = ssl.create_default_context() if url.startswith("https:") else False
    async with contextlib.AsyncExitStack() as stack:
        pools = [await stack.enter_async_context(httpx.AsyncClient(
            timeout=timeout_s, limits=limits, verify=verify)) for _ in range(POOLS)]
        turn = itertools.cycle(pools)

        async def one() -> None:
            token = log.send()
            answer = None
            try:
                response = await next(turn).post(url, json={"name": app, "ctx": {}})
                ok = response.status_code < 400
                error = "" if ok else f"HTTP {response.status_code}: {response.text[:120]}"
                answer = _json(response)
            except httpx.HTTPError as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
            log.answer(token, app, ok, error, answer)

        def finished(task: asyncio.Task[None]) -> None:
            pending.discard(task)
            slots.release()

        start = time.perf_counter()
        schedule = Schedule(start, start + bounds.duration_s)

        async def launch() -> bool:
            if slots.locked():  # wait for a slot, but not past the end
                try:
                    await asyncio.wait_for(slots.acquire(), schedule.end - time.perf_counter())
                except TimeoutError:
                    return False
            else:
                await slots.acquire()  # free: returns at once
            task = asyncio.create_task(one())
            pending.add(task)
            task.add_done_callback(finished)
            return True

        progress = Progress(start, bounds, log)
        ticker = asyncio.create_task(_tick(progress))
        for times in windows:
            if not await schedule.send(times, launch):
                break
        not_sent = schedule.unsent(windows)
        wait_end = schedule.end + bounds.grace_s
        if pending:
            await asyncio.wait(set(pending), timeout=max(0.0, wait_end - time.perf_counter()))
        log.cut(app)
        ticker.cancel()
        for task in list(pending):
            task.cancel()
        await asyncio.gather(*pending, ticker, return_exceptions=True)
        progress.done()
    return Outcome(offered=schedule.sent + not_sent, not_sent=not_sent,
                   max_lag_s=schedule.max_lag_s)


@dataclass
class Schedule:
    """Sends arrivals at their times until `end` (clock of time.perf_counter, arrival times
    counted from `start`), counting what it sent and how late it was at worst."""

    start: float
    end: float
    sent: int = 0
    max_lag_s: float = 0.0
    _left: Times | None = None  # the unsent rest of the window the end cut

    async def send(self, times: Times, launch: Callable[[], Awaitable[bool]]) -> bool:
        """Send one window's arrivals (`launch` sends one, False when it could not before
        the end); False when the end came first (the rest is kept for `unsent`)."""
        i, n = 0, len(times)
        while i < n:
            now = time.perf_counter()
            due = self.start + float(times[i])
            if now >= self.end:
                return self._stop(times, i, now)
            if due > now:
                await asyncio.sleep(min(due, self.end) - now)
                continue
            # Everything due by now goes at once (in batches, so the clock is read between).
            late = int(np.searchsorted(times, now - self.start, side="right"))
            for k in range(i, min(max(late, i + 1), i + ISSUE_BATCH)):
                if not await launch():
                    return self._stop(times, k, time.perf_counter())
                # Late by the time it went: a wait for a slot included.
                self.max_lag_s = max(self.max_lag_s,
                                     time.perf_counter() - self.start - float(times[k]))
                self.sent += 1
                i = k + 1
            await asyncio.sleep(0)  # let the requests just made go out
        return True

    def _stop(self, times: Times, i: int, now: float) -> bool:
        # The first arrival not sent is late by now at least (the loop may have been too busy
        # to come back here earlier).
        self.max_lag_s = max(self.max_lag_s, now - self.start - float(times[i]))
        self._left = times[i:]
        return False

    def unsent(self, windows: Iterable[Times]) -> int:
        """The arrivals left when the end came: the cut window's rest and every later window
        (all before the end of the duration, as the caller gives them)."""
        left = 0 if self._left is None else len(self._left)
        return left + sum(len(times) for times in windows)


# --------------------------------------------------------------------------- progress


@dataclass
class Progress:
    """A line on stderr every PROGRESS_S while the load runs (rewritten in place on a
    terminal), so a long run is never silent."""

    start: float
    bounds: Bounds
    log: ClientLog
    _last: float = 0.0
    _tty: bool = field(default_factory=lambda: sys.stderr.isatty())
    _shown: bool = False

    def tick(self) -> None:
        now = time.perf_counter()
        if now - self.start < PROGRESS_S or now - self._last < PROGRESS_S:
            return
        self._last = now
        c = self.log.counts()
        elapsed = now - self.start
        phase = (f"{elapsed:5.0f}/{self.bounds.duration_s:g} s"
                 if elapsed < self.bounds.duration_s
                 else f"waiting for answers (grace {self.bounds.grace_s:g} s)")
        line = (f"loadtest: {phase}, {c['sent']} sent, {c['ok']} ok, {c['failed']} failed, "
                f"{self.log.in_flight} in flight")
        self._shown = True
        if self._tty:
            print(f"\r{line}\033[K", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self._tty and self._shown:
            print(file=sys.stderr)


async def _tick(progress: Progress) -> None:
    while True:
        await asyncio.sleep(1.0)
        progress.tick()
