"""One action's router: where its calls go, its moves, its replicas' health.

Calls go to the placement that is ready: the local copy (run in the copy's worker threads,
so a caller stops waiting at its deadline) or the least-loaded ready replica. A move never
fails a call: calls keep using the old placement until the new one answers, then the old one
is drained (its in-flight calls finish, or reach their deadline) before it is released.

Every call has a deadline (the action's `call_timeout_s`, else the runtime's). A call sent
to a replica waits for its answer until the deadline and no longer; one that was never sent
(the connection was refused) is sent again, to another replica when there is one, after an
exponential, fully jittered pause; one that was sent and got no answer is sent again only
for an idempotent action, since it may have run.

A health thread checks every ready replica over HTTP (its spec, with a short timeout). One
that fails `HealthPolicy.failures` checks in a row leaves balancing: a replica of ours is
stopped and replaced (the reconciler compares the replicas ready with those asked for), an
attached server is suspended until it answers again. A local call that does not finish by
its deadline marks the copy degraded, and the router loads a fresh one (the hung thread is
abandoned).

Threads, not asyncio: local calls are CPU work and the action client is synchronous. The
router's only lock is a `threading.Condition`; no call holds it while it runs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from jsorc_live.actions.client import SPEC_PATH
from jsorc_live.router_health import HealthChecks
from jsorc_live.router_state import DRAIN_GRACE_S, NextStep
from jsorc_live.runtime_types import (
    CallFailed,
    CallTiming,
    Replica,
    RuntimeRefusal,
    TransportError,
)
from jsorc_live.targets import (
    Link,
    LocalTarget,
    RemoteTarget,
    Target,
    left_s,
)
from policies import Mode, Placement
from policies.observe import LOCAL, REMOTE

__all__ = ["DRAIN_GRACE_S", "Router"]

log = logging.getLogger(__name__)


class _Attempt:
    """One call's progress, for its events: its token, where it was dispatched (-1: not
    yet), whether it waited for a first placement (cold)."""

    __slots__ = ("cold", "token", "where")

    def __init__(self, token: int) -> None:
        self.token = token
        self.where = -1
        self.cold = False


def _for_memory(exc: BaseException) -> bool:
    """A MemoryError anywhere in the chain (the loader wraps what setup() raised)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MemoryError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class _Superseded(Exception):
    """A move given up because another wish came while it ran (not a failure)."""


class Router(HealthChecks):
    """Where one action's calls go, and its moves between placements.

    `set_placement` records the wish and returns at once; a worker thread makes it true
    (load the new placement, switch calls to it once it answers, drain the old one, unload
    it) and keeps going until the wish and the placement agree, so the last wish wins.

    Every call, replica and local copy is reported to `signals` as it happens: a replica is
    ready when it joins the target that serves calls, retiring when it leaves balancing
    (scaled down, moved away, dead, unhealthy), gone once stopped (or let go, when attached).

    `call_timeout_s()` is the deadline of a call when the action has none of its own;
    `max_replicas()` caps the replicas a placement may ask for (with the backend's
    `capacity`, when it has one).
    """

    # ----------------------------------------------------------------- moves

    def replica_cap(self) -> tuple[int, str]:
        """The most replicas a placement may ask for, and what sets it."""
        cap, why = self._max_replicas(), "max_replicas"
        capacity = getattr(self._replicas, "capacity", None)
        held = capacity(self.info) if callable(capacity) else None
        if isinstance(held, int) and held < cap:
            cap, why = max(held, 0), "what the backend can hold"
        return cap, why

    def set_placement(self, placement: Placement, *, url: str | None = None) -> None:
        """Ask for `placement`; `url` attaches an already-running action server as the one
        remote replica. Returns at once (wait_settled waits). More replicas than the cap
        (`replica_cap`) are refused with a 422."""
        if placement.mode is Mode.REMOTE and url is None:
            cap, why = self.replica_cap()
            if placement.replicas > cap:
                message = (f"{placement.replicas} replicas of {self.name!r} refused: "
                           f"the cap is {cap} ({why})")
                self._event("placement_refused", message)
                raise RuntimeRefusal(message, 422)
        with self._cond:
            if self._closed:
                raise RuntimeRefusal(f"action {self.name!r} is shut down", 409)
            if placement.mode is Mode.REMOTE:
                if url is not None and url != self._attach_url:
                    # Attaching replaces whatever remote replicas we had.
                    self._attach_url = url
                    self._retire_remote()
                elif url is None and self._attach_url is not None:
                    self._attach_url = None
                    self._retire_remote()
                if self._attach_url is not None:
                    placement = Placement.remote(1)
            self._desired = placement
            self.last_error = ""
            self._kick()

    def _retire_remote(self) -> None:
        # The active remote target stays until the new one answers; only flag it so the
        # worker does not scale it into the new shape.
        if isinstance(self._active, RemoteTarget):
            self._active.retiring = True

    def wait_settled(self, timeout_s: float) -> bool:
        """Wait until the placement is what was asked and nothing drains; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._moving() and not self.last_error:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return not self._moving()

    def _reconcile(self) -> None:
        while True:
            with self._cond:
                want, active, step = self._desired, self._active, self._next_step()
                if self._closed or self.last_error or step is NextStep.DONE:
                    # A failed move keeps the placement; a new set_placement retries.
                    self._worker = None
                    self._cond.notify_all()
                    return
            try:
                if step is NextStep.UNLOAD:
                    self._drain_and_release(self._activate(None))
                elif step is NextStep.LOAD_LOCAL:
                    self._drain_and_release(self._activate(self._build_local()))
                elif step is NextStep.SCALE:
                    assert isinstance(active, RemoteTarget)
                    self._scale(active, want.replicas)
                else:
                    self._move_remote(want.replicas)
            except Exception as exc:  # loading user code can fail in any way
                message = f"{type(exc).__name__}: {exc}"
                with self._cond:
                    if (isinstance(exc, _Superseded) or self._desired != want
                            or self._closed):
                        continue  # superseded while it ran: go after the new wish
                    log.warning("move of %s to %s failed: %s", self.name, want, message)
                    self.last_error = f"move to {want} failed: {message}"
                    self._event("move_failed", self.last_error)
                    self._cond.notify_all()

    def _build_local(self) -> LocalTarget:
        self._signals.local(self.name, "loading")
        try:
            handle = self._load_local(self.info)
        except BaseException as exc:
            self._signals.local(self.name, "none")
            if _for_memory(exc):
                # The node had no room for the copy: the live world's out-of-memory event
                # (the load is refused, the runtime keeps serving).
                self._signals.out_of_memory()
            raise
        measured = float(getattr(handle, "memory_mb", 0.0) or 0.0)
        if measured > 0:
            self.local_memory_mb = measured
            self._announce()
        return LocalTarget(handle, self.name)

    def _move_remote(self, replicas: int) -> None:
        """Start `replicas` replicas; switch calls to them when the first answers, let the
        others join as they answer, then drain and release the old placement."""
        if self._attach_url is not None:
            self._drain_and_release(self._activate(self._attach(self._attach_url)))
            return
        target = RemoteTarget(attached=False)
        # One thread per replica asked for (capped by replica_cap), never more.
        with ThreadPoolExecutor(max_workers=replicas,
                                thread_name_prefix=f"start-{self.name}") as pool:
            pending: set[Future[None]] = {pool.submit(self._start_link, target)
                                          for _ in range(replicas)}
            errors: list[str] = []
            old: Target | None = None
            switched = False
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                errors += [f"{type(f.exception()).__name__}: {f.exception()}"
                           for f in done if f.exception() is not None]
                with self._cond:
                    first = not switched and bool(target.links) and not target.retiring
                if first:
                    old, switched = self._activate(target), True
        if not switched:
            with self._cond:
                target.retiring = True
            for link in target.links:
                self._stop_replica(link.replica)
            raise CallFailed("no replica started: " + "; ".join(errors))
        self._drain_and_release(old)

    def _attach(self, url: str) -> RemoteTarget:
        """A target of the server at `url`, once its spec answers (STARTING until then)."""
        deadline = time.monotonic() + self._ready_timeout_s
        while not self._probe(url, min(self._health.timeout_s, max(left_s(deadline), 0.05))):
            with self._cond:
                if self._closed or self._attach_url != url:
                    raise _Superseded(url)
                self._cond.wait(min(0.2, left_s(deadline)))
            if left_s(deadline) <= 0:
                raise CallFailed(f"the action server at {url} did not answer {SPEC_PATH} "
                                 f"within {self._ready_timeout_s:g} s")
        target = RemoteTarget(attached=True)
        replica = Replica(self.name, url, None)
        target.links.append(Link(replica, self._connect(replica)))
        return target

    def _start_link(self, target: RemoteTarget) -> None:
        if self._replicas is None:
            raise RuntimeRefusal("no backend to start replicas with; attach a url", 409)
        replica = self._replicas.start_replica(self.info)
        # The backend names a replica only once it answers, so "starting" comes here.
        self._signals.replica_starting(self.name, replica.url)
        link = Link(replica, self._connect(replica))
        with self._cond:
            # Superseded while it started (closed, retired, or the wish is no longer remote).
            orphan = (self._closed or target.retiring
                      or self._desired.mode is not Mode.REMOTE)
            if not orphan:
                target.links.append(link)
                if target is self._active:
                    self._signals.replica_ready(self.name, replica.url)
                self._cond.notify_all()
        if orphan:
            self._stop_replica(replica)

    def _activate(self, new: Target | None) -> Target | None:
        """Make `new` where calls go; return the old target (now retiring) to drain. After
        close, nothing new is activated: `new` itself is handed back to be released."""
        with self._cond:
            if self._closed and new is not None:
                new.retiring = True
                self._draining.append(new)
                return new
            old = self._active
            self._active = new
            if old is not None:
                old.retiring = True
                self._draining.append(old)
                self._report(old, serving=False)
            if new is not None:
                self._report(new, serving=True)
                if isinstance(new, RemoteTarget):
                    self._ensure_checker()
            self._event("placement", str(new.placement if new else Placement.unloaded()))
            self._cond.notify_all()
            return old

    def _wait_idle(self, busy: Callable[[], bool], limit_s: float | None = None) -> bool:
        """Wait while `busy()` (held under the condition), at most `limit_s` (default
        `drain_s`: every call reaches its deadline by then). False when it gave up."""
        deadline = time.monotonic() + (self.drain_s if limit_s is None else limit_s)
        with self._cond:
            while busy():
                left = left_s(deadline)
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def _drain_and_release(self, old: Target | None, limit_s: float | None = None) -> None:
        if old is None:
            return
        if not self._wait_idle(lambda: old.in_flight > 0, limit_s):
            log.warning("%s: %d call(s) still held the old placement at the drain's end; "
                        "released anyway", self.name, old.in_flight)
        try:
            if isinstance(old, LocalTarget):
                self._unload(old)
            elif isinstance(old, RemoteTarget):
                for link in old.links:
                    self._stop_replica(link.replica)  # an attached one is only let go
        finally:
            with self._cond:
                if old in self._draining:
                    self._draining.remove(old)
                self._cond.notify_all()

    def _unload(self, old: LocalTarget) -> None:
        old.runner.close()
        if not old.hung:
            old.handle.unload()
            self._signals.local(self.name, "none")
            return
        # A call that never returned still runs in the copy: unloading would wait for it.
        # Let it go in the background; the copy is freed if (when) the call ends.
        def unload() -> None:
            try:
                old.handle.unload()
            except Exception as exc:
                log.warning("%s: the abandoned local copy was not unloaded: %s", self.name, exc)
                return
            self._signals.local(self.name, "none")

        threading.Thread(target=unload, name=f"unload-{self.name}", daemon=True).start()

    def _scale(self, target: RemoteTarget, replicas: int) -> None:
        """Grow or shrink a serving remote target; removed replicas drain first."""
        with self._cond:
            ready = target.ready
            surplus = ready[replicas:]
            for link in surplus:
                link.retiring = True
                self._signals.replica_retiring(self.name, link.replica.url)
            grow = replicas - len(ready)
        for link in surplus:
            self._wait_idle(link.busy)
            self._stop_replica(link.replica)
            with self._cond:  # settled only once it is stopped (see _moving)
                target.links.remove(link)
                self._cond.notify_all()
        if grow > 0:
            with ThreadPoolExecutor(max_workers=grow,
                                    thread_name_prefix=f"start-{self.name}") as pool:
                futures = [pool.submit(self._start_link, target) for _ in range(grow)]
            errors = [f"{type(f.exception()).__name__}: {f.exception()}"
                      for f in futures if f.exception() is not None]
            if errors:
                raise CallFailed("replica start failed: " + "; ".join(errors))

    # ----------------------------------------------------------------- calls

    def call(self, function: str, kwargs: dict[str, Any], app: str = ""
             ) -> tuple[Any, dict[str, Any]]:
        """Run one call where the action is placed now: (result, call-row fields).

        The call's deadline is the action's `call_timeout_s`, else `timeout_s`, else the
        runtime's. Raises CallFailed when the action raised or nothing answered by then.
        A call to an unloaded action loads it in its default mode and waits (cold). `app`
        is the walker calling (for the observations' calls per request).
        """
        budget = self.deadline_s
        start = time.perf_counter()
        attempt = _Attempt(self._signals.issued(self.name))
        try:
            result, row = self._run(function, kwargs, start, budget, attempt)
        except BaseException:
            latency = (time.perf_counter() - start) * 1000.0
            self._signals.finished(self.name, attempt.token, False, latency, math.nan,
                                   math.nan, attempt.cold, app)
            raise
        self._signals.finished(self.name, attempt.token, True, row["latency_ms"],
                               row["service_ms"], row["network_ms"], row["cold"], app)
        return result, row

    def _run(self, function: str, kwargs: dict[str, Any], start: float, budget: float,
             attempt: _Attempt) -> tuple[Any, dict[str, Any]]:
        deadline = time.monotonic() + budget
        what = f"{self.name}.{function}"
        failed: set[Link] = set()
        failures = 0
        while True:
            target, link = self._acquire(deadline, budget, attempt, failed)
            began = time.perf_counter()
            try:
                if isinstance(target, LocalTarget):
                    result, timing = self._call_local(target, function, kwargs, deadline,
                                                      budget)
                else:
                    assert link is not None
                    result, timing = link.invoke(function, kwargs, left_s(deadline))
            except TransportError as exc:
                self._release(target, link)
                if link is None:  # raised by a local module: its own error
                    raise CallFailed(f"{what}: {type(exc).__name__}: {exc}") from exc
                failed.add(link)
                failures += 1
                self._transport_failed(link, exc, what, budget, failures, deadline)
                continue
            except CallFailed:
                self._release(target, link)
                raise
            except Exception as exc:
                self._release(target, link)
                raise CallFailed(f"{what}: {type(exc).__name__}: {exc}") from exc
            self._release(target, link)
            end = time.perf_counter()
            remote = isinstance(target, RemoteTarget)
            replica = (link.replica.pid or 0) if remote and link is not None else -1
            return result, {"placement": "remote" if remote else "local", "replica": replica,
                            "wait_ms": (began - start) * 1000.0,
                            "service_ms": timing.service_ms,
                            "network_ms": timing.network_ms if remote else 0.0,
                            "latency_ms": (end - start) * 1000.0, "cold": attempt.cold}

    def _transport_failed(self, link: Link, exc: TransportError, what: str, budget: float,
                          failures: int, deadline: float) -> None:
        """Decide on a send that got no answer: return to send again (after a pause), or
        raise CallFailed saying why not (see RetryPolicy)."""
        if not exc.sent:
            # Nothing listens there: as good as a failed health check.
            self._record_check(link, False)
        elif not self.info.idempotent:
            raise CallFailed(f"{what}: {exc}; not sent again: it may have run "
                             f"({self.name} is not declared idempotent)") from exc
        elif failures >= self._retry.attempts:
            raise CallFailed(f"{what}: gave up after {failures} sends: {exc}") from exc
        pause = self._retry.pause_s(failures, self._rng)
        if pause >= left_s(deadline):
            raise CallFailed(f"{what}: no answer within its {budget:g} s deadline: "
                             f"{exc}") from exc
        time.sleep(pause)

    def _call_local(self, target: LocalTarget, function: str, kwargs: dict[str, Any],
                    deadline: float, budget: float) -> tuple[Any, CallTiming]:
        future = target.submit(function, kwargs)
        try:
            result: tuple[Any, CallTiming] = future.result(timeout=left_s(deadline))
            return result
        except FutureTimeout:
            pass
        if future.cancel():  # still queued behind other calls: it never ran
            raise CallFailed(f"{self.name}.{function} did not start within {budget:g} s "
                             "(the local copy's workers were busy)")
        target.abandon(future)
        message = f"{self.name}.{function} did not finish within {budget:g} s"
        with self._cond:
            if not target.degraded:
                target.degraded = message
                log.warning("%s: local copy degraded, loading a fresh one", message)
                self._event("local_degraded", message)
                if target is self._active:
                    self._kick()
        raise CallFailed(message)

    def _acquire(self, deadline: float, budget: float, attempt: _Attempt,
                 avoid: Collection[Link]) -> tuple[Target, Link | None]:
        """A target for the call (and its replica when remote), counted in flight and
        reported as the call's placement; waits while none is ready, to the deadline."""
        with self._cond:
            if self._closed:
                raise CallFailed(f"action {self.name!r} is shut down")
            while True:
                target = self._active
                link = target.next_link(avoid) if isinstance(target, RemoteTarget) else None
                if target is not None and (link is not None or isinstance(target, LocalTarget)):
                    target.in_flight += 1
                    where = LOCAL if link is None else REMOTE
                    if link is not None:
                        link.in_flight += 1
                    # Under the condition, so no replica event can come between the pick
                    # and the report (a replica is never gone before its calls started).
                    self._signals.placed(self.name, attempt.token, where,
                                         None if link is None else link.replica.url,
                                         where != attempt.where)
                    attempt.where = where
                    return target, link
                if target is None and self._desired.mode is Mode.UNLOADED:
                    attempt.cold = True
                    self._desired = (Placement.remote(1) if self.info.default_mode
                                     is Mode.REMOTE else Placement.local())
                    self._event("cold_start", str(self._desired))
                    self._kick()
                if target is None and not self._moving():
                    raise CallFailed(f"action {self.name!r} is not loaded")
                if self.last_error and self._worker is None:
                    raise CallFailed(self.last_error)
                if self._closed:
                    raise CallFailed(f"action {self.name!r} is shut down")
                attempt.cold = attempt.cold or target is None
                left = left_s(deadline)
                if left <= 0:
                    raise CallFailed(f"{self.name}: no placement answered within the call's "
                                     f"{budget:g} s deadline (asked for {self._desired})")
                self._cond.wait(min(left, 0.2))

    def _release(self, target: Target, link: Link | None) -> None:
        with self._cond:
            target.in_flight -= 1
            if link is not None:
                link.in_flight -= 1
            self._cond.notify_all()

    # ----------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Unload everything (drained first, bounded by the call deadline); the router
        refuses calls afterwards. Returns within `drain_s` even when a call never returns
        (its thread is abandoned) or a move is under way (it finishes in the background and
        releases what it made)."""
        deadline = time.monotonic() + self.drain_s
        with self._cond:
            self._closed = True
            self._desired = Placement.unloaded()
            worker = self._worker
            self._cond.notify_all()
        self._stop.set()
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=left_s(deadline))
        with self._cond:
            old, self._active = self._active, None
            if old is not None:
                old.retiring = True
                self._draining.append(old)
                self._report(old, serving=False)
        self._drain_and_release(old, left_s(deadline))
