"""What one request may take of the server: its body's size, and a thread of the right pool.

`BodyLimit` is a pure-ASGI middleware: a request whose Content-Length exceeds the limit is
answered 413 before a byte of its body is read, and a chunked body (no Content-Length) is
counted as it streams and refused the moment it passes the limit, so the server never holds
more than the limit (plus one chunk) of any body. Default 8 MiB (`jsorc serve --max-body-mb`),
far above any real admin or walker request.

`Pools` keeps walker runs and the admin API on separate thread pools (anyio capacity
limiters), so no walker load can take the threads the operator's commands need: the bug
was that both shared starlette's one default pool of 40. Walker runs beyond their pool wait
in a bounded queue; past it they are answered 503 with Retry-After at once (`PoolFull`),
rather than piling up threads and memory without limit: a client told to come back later
loses nothing, one whose request waits unboundedly may time out after the work is done.

`run_handler` runs a route's handler on its pool and turns its refusals (RuntimeRefusal,
BadRequest, PoolFull) into JSORC's `{"success": false, "message"}` answers (`refuse`); an
unexpected exception is logged with its traceback and answered 500 in the same shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jsorc_live.api_models import BadRequest
from jsorc_live.runtime import RuntimeRefusal

__all__ = ["DEFAULT_MAX_BODY_BYTES", "BodyLimit", "BodyTooLarge", "PoolFull", "PoolSizes",
           "Pools", "refuse", "run_handler"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
T = TypeVar("T")


class BodyTooLarge(Exception):
    """A request body went past the limit while it was read."""


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


class BodyLimit:
    """Refuse (413, JSORC's shape) request bodies larger than `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes!r}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, f"request body of {declared} bytes is over the limit")
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if started:  # a handler that answered before reading it all: nothing to add
                return
            await self._refuse(send, f"request body passed the limit after {seen} bytes")

    async def _refuse(self, send: Send, what: str) -> None:
        body = json.dumps({"success": False, "message": f"{what} of {_mib(self.max_bytes)} "
                           "(jsorc serve --max-body-mb)"}).encode()
        # Connection: close, since the rest of the body is never read.
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server itself refuses a malformed one
    return None


# --------------------------------------------------------------------------- pools


@dataclass(frozen=True)
class PoolSizes:
    """Threads for walker runs and for the admin API, and how many walker runs may wait
    for a thread before more are refused (503)."""

    walker_threads: int = 64
    walker_queue: int = 256
    admin_threads: int = 16

    def __post_init__(self) -> None:
        for name in ("walker_threads", "admin_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.walker_queue, bool) or not isinstance(self.walker_queue, int) \
                or self.walker_queue < 0:
            raise ValueError(f"walker_queue must be an int >= 0, got {self.walker_queue!r}")


class PoolFull(Exception):
    """Every walker thread is busy and the queue is full: 503, retry after `retry_after_s`."""

    retry_after_s = 1

    def __init__(self, sizes: PoolSizes) -> None:
        super().__init__(f"server busy: {sizes.walker_threads} walker runs running and "
                         f"{sizes.walker_queue} waiting (jsorc serve --walker-threads, "
                         f"--walker-queue); retry after {self.retry_after_s} s")


class Pools:
    """Run blocking handlers on the walker pool or the admin pool (from the event loop)."""

    def __init__(self, sizes: PoolSizes | None = None) -> None:
        self.sizes = sizes or PoolSizes()
        self._walker = CapacityLimiter(self.sizes.walker_threads)
        self._admin = CapacityLimiter(self.sizes.admin_threads)
        # Only the event loop's thread touches it: no lock.
        self._walkers_in = 0

    @property
    def walkers_in(self) -> int:
        """Walker runs running or waiting now."""
        return self._walkers_in

    async def admin(self, func: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(func, *args, limiter=self._admin)

    async def walker(self, func: Callable[..., T], *args: Any) -> T:
        """Run `func` on the walker pool; PoolFull when it and its queue are full."""
        if self._walkers_in >= self.sizes.walker_threads + self.sizes.walker_queue:
            raise PoolFull(self.sizes)
        self._walkers_in += 1
        try:
            return await anyio.to_thread.run_sync(func, *args, limiter=self._walker)
        finally:
            self._walkers_in -= 1


# --------------------------------------------------------------------------- answers


def refuse(status: int, message: str, headers: Mapping[str, str] | None = None
           ) -> JSONResponse:
    """JSORC's refusal: `{"success": false, "message": message}` with `status`."""
    return JSONResponse({"success": False, "message": message}, status_code=status,
                        headers=dict(headers) if headers else None)


async def run_handler(pools: Pools, walker: bool, where: str, func: Callable[..., Any],
                      *args: Any, **kwargs: Any) -> JSONResponse:
    """`func` on its pool, its answer as a response (status from its `_status`), or the
    refusal."""
    def call() -> Any:
        return func(*args, **kwargs)

    try:
        result = await (pools.walker(call) if walker else pools.admin(call))
    except RuntimeRefusal as exc:
        return refuse(exc.status, str(exc))
    except BadRequest as exc:
        return refuse(400, str(exc))
    except PoolFull as exc:
        return refuse(503, str(exc), {"Retry-After": str(exc.retry_after_s)})
    except Exception as exc:  # a bug: answer in JSORC's shape, keep the traceback
        log.exception("unexpected error in %s", where)
        return refuse(500, f"internal error in {where}: {type(exc).__name__}: {exc} "
                           "(logged)")
    status = int(result.pop("_status", 200)) if isinstance(result, dict) else 200
    return JSONResponse(result, status_code=status)
