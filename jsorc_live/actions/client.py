"""A client of action servers speaking Jaseci 1.4's remote-action protocol: jsorc's own
(``server.py``) and Jaseci's (``jaseci_action`` modules under uvicorn).

Unlike Jaseci's client, every call has a timeout and anything but a 2xx answer with a JSON body
is an error: :class:`ActionCallError` (422: :class:`ActionArgumentError` with the server's
``detail``). Calls go to the slash path directly, so no 307 round trip; redirects are not
followed. A call's ``name`` may be ``group.name`` (a spec key) or the bare name: the path is
its last component, as Jaseci's client does. Parameters are sent as given (Jaseci's client drops
``None`` values; here a ``None`` is sent as ``null``).

Connections are kept alive, with one guard: a request that fails because the server had closed
the kept-alive connection (Jaseci's uvicorn server closes it after an action raised, without
saying so; any uvicorn closes idle ones after 5 s) is sent once more, on a new connection.
Idle connections are dropped after 2 s, before the server's 5 s, to make that rare.

A call that got no answer raises :class:`NoAnswer` (an ActionCallError without status), which
says whether the request was ``sent``: False only when it certainly never left (the
connection was refused or not made in time, no connection was free), so sending it again
cannot run the action twice; True when it was sent, or may have been (read timeout,
connection reset or closed mid-answer), so it may have run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from jsorc_live.actions.registry import SERVICE_HEADER, ActionArgumentError, ActionCallError

__all__ = [
    "SPEC_PATH",
    "ActionArgumentError",
    "ActionCallError",
    "AsyncRemoteActions",
    "NoAnswer",
    "RemoteActions",
    "spec_answers",
]

SPEC_PATH = "/jaseci_actions_spec/"
#: Longest error body kept in an ActionCallError's message.
_MAX_MESSAGE = 2000
#: Below uvicorn's default keep-alive timeout (5 s), so that we close idle connections first.
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=2.0)
#: A kept-alive connection the server had already closed: nothing was answered, send again.
_STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
#: Errors raised before the request left: no connection was made, or none was free.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: At most this long to connect, however long the call may take to answer: a server that
#: does not take a connection in that time is not there, and the call can go elsewhere.
CONNECT_TIMEOUT_S = 2.0


class NoAnswer(ActionCallError):
    """No answer from the server; ``sent`` says whether the request may have reached it."""

    def __init__(self, url: str, name: str, message: str, *, sent: bool) -> None:
        super().__init__(url, name, None, message)
        self.sent = sent


def _timeout(timeout_s: float) -> httpx.Timeout:
    return httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))


def spec_answers(url: str, timeout_s: float = 1.0) -> bool:
    """Whether the action server at ``url`` answers its spec 200 within ``timeout_s`` (a
    health check: a frozen server accepts connections but does not answer)."""
    try:
        response = httpx.get(url.rstrip("/") + SPEC_PATH, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


class _Base:
    def __init__(self, url: str, timeout_s: float) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"action server URL must start with http:// or https://, got {url!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.url = url.rstrip("/")
        self.timeout_s = float(timeout_s)

    def _action_url(self, name: str) -> str:
        path = name.rpartition(".")[2]
        if not path.isidentifier():
            raise ValueError(f"action name must be NAME or GROUP.NAME, got {name!r}")
        return f"{self.url}/{path}/"

    def _result(self, name: str, response: httpx.Response) -> Any:
        """The JSON result of a 2xx answer; otherwise the error it stands for."""
        if response.status_code == 422:
            errors = _detail(response)
            if errors is not None:
                raise ActionArgumentError(self.url, name, errors)
        if not 200 <= response.status_code < 300:
            raise ActionCallError(self.url, name, response.status_code, _message(response))
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ActionCallError(
                self.url, name, response.status_code,
                f"answer is not JSON ({e}): {response.text[:200]!r}",
            ) from e

    def _spec(self, response: httpx.Response) -> dict[str, list[str]]:
        spec = self._result("jaseci_actions_spec", response)
        if not (isinstance(spec, dict) and all(
            isinstance(v, list) and all(isinstance(p, str) for p in v) for v in spec.values()
        )):
            raise ActionCallError(self.url, "jaseci_actions_spec", response.status_code,
                                  f"not an action spec: {str(spec)[:200]}")
        return spec

    def _failed(self, name: str, e: httpx.HTTPError, timeout_s: float,
                first: httpx.HTTPError | None = None) -> NoAnswer:
        """The error for a request that got no answer. `first`: how its first try failed,
        on a kept-alive connection, before this one (a failed write left nothing the server
        could run; a connection closed or reset while it waited may follow a read, so even
        a refused connection now may come after a sent request)."""
        sent_before = first is not None and not isinstance(first, httpx.WriteError)
        sent = sent_before or not isinstance(e, _NEVER_SENT)
        if isinstance(e, httpx.ConnectTimeout):
            message = f"no connection within {min(timeout_s, CONNECT_TIMEOUT_S):g} s"
        elif isinstance(e, httpx.TimeoutException):
            message = f"timed out after {timeout_s:g} s"
        else:
            message = f"{type(e).__name__}: {e}"
        if first is not None:
            message = (f"{type(first).__name__}: {first} on a kept-alive connection, then "
                       f"{message}")
        return NoAnswer(self.url, name, message, sent=sent)


def _detail(response: httpx.Response) -> list[dict[str, Any]] | None:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list) and all(isinstance(d, dict) for d in detail):
        return detail
    return None


def _message(response: httpx.Response) -> str:
    text = response.text.strip()
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("detail"), str):
                text = body["detail"]
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    return text[:_MAX_MESSAGE] or response.reason_phrase


class RemoteActions(_Base):
    """Calls to one action server at ``url``. Thread-safe; close it (or use ``with``)."""

    def __init__(
        self, url: str, timeout_s: float = 30.0, *, client: httpx.Client | None = None
    ) -> None:
        super().__init__(url, timeout_s)
        self._own_client = client is None
        self._client = client or httpx.Client(follow_redirects=False, limits=LIMITS)

    def _send(self, name: str, method: str, url: str, timeout_s: float,
              **kwargs: Any) -> httpx.Response:
        timeout = _timeout(timeout_s)
        try:
            return self._client.request(method, url, timeout=timeout, **kwargs)
        except _STALE_CONNECTION as e:
            first: httpx.HTTPError = e
        except httpx.HTTPError as e:
            raise self._failed(name, e, timeout_s) from e
        try:
            return self._client.request(method, url, timeout=timeout, **kwargs)
        except httpx.HTTPError as e:
            raise self._failed(name, e, timeout_s, first=first) from e

    def spec(self, *, timeout_s: float | None = None) -> dict[str, list[str]]:
        """The server's spec: ``{"group.name": [parameter, ...]}``."""
        t = timeout_s or self.timeout_s
        return self._spec(self._send("jaseci_actions_spec", "GET", self.url + SPEC_PATH, t))

    def call(
        self, name: str, kwargs: Mapping[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> Any:
        """POST ``kwargs`` to action ``name``; its JSON result."""
        t = timeout_s or self.timeout_s
        response = self._send(name, "POST", self._action_url(name), t,
                              json=dict(kwargs or {}))
        return self._result(name, response)

    def call_timed(
        self, name: str, kwargs: Mapping[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> tuple[Any, float]:
        """Like `call`, with the server's own time for the action in ms (its
        `X-Jsorc-Service-Ms` header; NaN from servers that do not send it, Jaseci's)."""
        t = timeout_s or self.timeout_s
        response = self._send(name, "POST", self._action_url(name), t,
                              json=dict(kwargs or {}))
        result = self._result(name, response)
        try:
            service_ms = float(response.headers.get(SERVICE_HEADER, "nan"))
        except ValueError:
            service_ms = math.nan
        return result, service_ms

    def ready(self, timeout_s: float = 1.0) -> bool:
        """Whether the spec answers 200 within ``timeout_s``."""
        try:
            response = self._send("jaseci_actions_spec", "GET", self.url + SPEC_PATH,
                                  timeout_s)
        except ActionCallError:
            return False
        return response.status_code == 200

    def wait_ready(
        self,
        timeout_s: float,
        *,
        alive: Callable[[], bool] | None = None,
        poll_s: float = 0.05,
    ) -> float:
        """Poll the spec until it answers 200; returns the seconds waited. Raises
        TimeoutError after ``timeout_s``, or RuntimeError as soon as ``alive()`` (say, "the
        server process is running") turns false."""
        start = time.monotonic()
        deadline = start + timeout_s
        while True:
            if alive is not None and not alive():
                raise RuntimeError(f"action server at {self.url} exited before it was ready")
            left = deadline - time.monotonic()
            if self.ready(timeout_s=max(min(1.0, left), 0.01)):
                return time.monotonic() - start
            if time.monotonic() + poll_s > deadline:
                raise TimeoutError(f"action server at {self.url} not ready after {timeout_s:g} s")
            time.sleep(poll_s)

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> RemoteActions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteActions({self.url!r}, timeout_s={self.timeout_s:g})"


class AsyncRemoteActions(_Base):
    """:class:`RemoteActions` for asyncio code (one event loop; close it with ``aclose``)."""

    def __init__(
        self, url: str, timeout_s: float = 30.0, *, client: httpx.AsyncClient | None = None
    ) -> None:
        super().__init__(url, timeout_s)
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(follow_redirects=False, limits=LIMITS)

    async def _send(self, name: str, method: str, url: str, timeout_s: float,
                    **kwargs: Any) -> httpx.Response:
        timeout = _timeout(timeout_s)
        try:
            return await self._client.request(method, url, timeout=timeout, **kwargs)
        except _STALE_CONNECTION as e:
            first: httpx.HTTPError = e
        except httpx.HTTPError as e:
            raise self._failed(name, e, timeout_s) from e
        try:
            return await self._client.request(method, url, timeout=timeout, **kwargs)
        except httpx.HTTPError as e:
            raise self._failed(name, e, timeout_s, first=first) from e

    async def spec(self, *, timeout_s: float | None = None) -> dict[str, list[str]]:
        t = timeout_s or self.timeout_s
        response = await self._send("jaseci_actions_spec", "GET", self.url + SPEC_PATH, t)
        return self._spec(response)

    async def call(
        self, name: str, kwargs: Mapping[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> Any:
        t = timeout_s or self.timeout_s
        response = await self._send(name, "POST", self._action_url(name), t,
                                    json=dict(kwargs or {}))
        return self._result(name, response)

    async def ready(self, timeout_s: float = 1.0) -> bool:
        try:
            response = await self._send("jaseci_actions_spec", "GET", self.url + SPEC_PATH,
                                        timeout_s)
        except ActionCallError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncRemoteActions:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
