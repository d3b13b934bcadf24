"""What a router sends calls to: a local copy or remote replicas, and how it picks one.

- `LocalRunner` runs a local copy's calls in daemon worker threads, so that the caller can
  stop waiting at the call's deadline; a call that never returns keeps its thread (it is
  abandoned, and daemon so it never holds up the interpreter's exit).
- `LocalTarget` / `RemoteTarget` are placements with the calls they serve; a remote one
  holds `Link`s (a replica, its invoker, its calls, its health) and picks the least-loaded
  ready one, round-robin among equals.
- `RetryPolicy` and `HealthPolicy` are the tunables, checked at the door.

Everything here is guarded by the owning router's condition; nothing here takes a lock of
its own except the runner.
"""

from __future__ import annotations

import itertools
import queue
import random
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from jsorc_live.runtime_types import CallTiming, Invoker, LocalHandle, Replica, check_timeout
from policies import Placement


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Sending a call again after a send that got no answer, pausing a random time in
    [0, min(cap_s, base_s * 2**(n-1))] after the n-th failed send ("full jitter": clients
    that failed together do not come back together), never past the call's deadline.

    A send that never left (connection refused) is sent again until the deadline: it cannot
    have run. One that was sent and got no answer is sent again only for an idempotent
    action, and at most `attempts` sends in all, since each may have run."""

    attempts: int = 3
    base_s: float = 0.05
    cap_s: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) \
                or self.attempts < 1:
            raise ValueError(f"retry attempts must be an int >= 1, got {self.attempts!r}")
        check_timeout(self.base_s, "retry base_s")
        check_timeout(self.cap_s, "retry cap_s")

    def pause_s(self, failures: int, rng: random.Random) -> float:
        """The pause after the `failures`-th failed send (pure given `rng`)."""
        return rng.uniform(0.0, min(self.cap_s, self.base_s * 2.0 ** (failures - 1)))


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """How replicas are checked: every `interval_s`, each ready replica must answer its spec
    within `timeout_s`; after `failures` checks in a row that it did not, it leaves
    balancing (and, when a backend owns it, is stopped and replaced). A call that could not
    connect to it counts as a failed check."""

    interval_s: float = 1.0
    timeout_s: float = 1.0
    failures: int = 2

    def __post_init__(self) -> None:
        check_timeout(self.interval_s, "health interval_s")
        check_timeout(self.timeout_s, "health timeout_s")
        if isinstance(self.failures, bool) or not isinstance(self.failures, int) \
                or self.failures < 1:
            raise ValueError(f"health failures must be an int >= 1, got {self.failures!r}")


class LocalRunner:
    """Daemon worker threads for one local copy's calls, started as calls need them (up to
    `max_workers`; beyond that, calls queue and their deadline keeps running).

    Not concurrent.futures.ThreadPoolExecutor: its threads are joined at interpreter exit,
    so one call that never returns would keep the server from ever stopping."""

    def __init__(self, name: str, max_workers: int = 128) -> None:
        self._name = name
        self._max = max_workers
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = \
            queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads = 0
        self._closed = False

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the local copy of {self._name} is closed")
            self._queue.put((fn, future))
            if not self._idle.acquire(blocking=False) and self._threads < self._max:
                self._threads += 1
                threading.Thread(target=self._work, name=f"local-{self._name}",
                                 daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # handed to the caller, who decides
                    future.set_exception(exc)
            del item, fn, future  # no reference to a finished call while idle
            self._idle.release()

    def close(self) -> None:
        """Let idle workers end; a worker still in a call ends when (if) the call does."""
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, 0
        for _ in range(threads):
            self._queue.put(None)


class Target:
    """A placement that calls can go to, with the calls it is serving."""

    placement: Placement

    def __init__(self) -> None:
        self.in_flight = 0
        self.retiring = False


class LocalTarget(Target):
    """A local copy. `degraded` holds why it is being replaced (a call that did not finish
    by its deadline); `abandoned` counts such calls still running in its threads."""

    def __init__(self, handle: LocalHandle, name: str) -> None:
        super().__init__()
        self.handle = handle
        self.placement = Placement.local()
        self.runner = LocalRunner(name)
        self.degraded = ""
        self.abandoned = 0
        self._lock = threading.Lock()

    def submit(self, function: str, kwargs: dict[str, Any]) -> Future[tuple[Any, CallTiming]]:
        def run() -> tuple[Any, CallTiming]:
            began = time.perf_counter()
            result = self.handle.call(function, kwargs)
            return result, CallTiming((time.perf_counter() - began) * 1000.0, 0.0)

        return self.runner.submit(run)

    def abandon(self, future: Future[Any]) -> None:
        """Its caller stopped waiting for `future`; counted until the call ends, if ever."""
        with self._lock:
            self.abandoned += 1

        def ended(_: Future[Any]) -> None:
            with self._lock:
                self.abandoned -= 1

        future.add_done_callback(ended)

    @property
    def hung(self) -> bool:
        with self._lock:
            return self.abandoned > 0


class Link:
    """A replica with its invoker, the calls it is serving and its health: `failures` in a
    row; `suspended` while an attached server (not ours to replace) does not answer."""

    def __init__(self, replica: Replica, invoke: Invoker) -> None:
        self.replica = replica
        self.invoke = invoke
        self.in_flight = 0
        self.retiring = False
        self.dead = False
        self.suspended = False
        self.failures = 0

    def busy(self) -> bool:
        return self.in_flight > 0


class RemoteTarget(Target):
    def __init__(self, attached: bool) -> None:
        super().__init__()
        self.links: list[Link] = []
        self.attached = attached  # an action server we were given a URL of: never stopped
        self._turn = itertools.count()

    @property
    def placement(self) -> Placement:  # type: ignore[override]
        return Placement.remote(max(1, len(self.ready)))

    @property
    def ready(self) -> list[Link]:
        return [link for link in self.links
                if not link.retiring and not link.dead and not link.suspended]

    @property
    def checked(self) -> list[Link]:
        """The links health checks watch: in balancing, or suspended until they answer."""
        return [link for link in self.links if not link.retiring and not link.dead]

    def next_link(self, avoid: Collection[Link] = ()) -> Link | None:
        """The ready link with the fewest calls in flight (round-robin among equals), not
        one in `avoid` (those a call already failed on) unless only those are ready."""
        ready = self.ready
        fresh = [link for link in ready if link not in avoid] or ready
        if not fresh:
            return None
        least = min(link.in_flight for link in fresh)
        equal = [link for link in fresh if link.in_flight == least]
        return equal[next(self._turn) % len(equal)]


def left_s(deadline: float) -> float:
    """Seconds until `deadline` (time.monotonic), never negative."""
    return max(0.0, deadline - time.monotonic())

