"""Fault injection: make the next N API requests that match answer an error, or stall.

Used by the kube backend's tests to exercise their retry paths against the dev cluster::

    with DevCluster() as cluster:
        rule = cluster.faults.inject("PATCH", r"/deployments/jsorc-bi-enc/scale$", status=409)
        ...                      # the next PATCH of that path answers 409 Conflict, once
        assert rule.hits == 1

``Faults.inject(method, path, *, status=500, times=1, retry_after_s=None, stall_s=0.0,
message=None, watch=None) -> Fault``

- ``method``: ``"GET"``, ``"POST"``, ``"PUT"``, ``"PATCH"``, ``"DELETE"`` or ``"*"``.
- ``path``: a regular expression (``str`` or compiled) searched (``re.search``) in the
  request's path, without the query string: ``r"/namespaces/jsorc/deployments$"`` is the
  collection (list, create), ``r"/deployments/web$"`` one object.
- ``status``: the code to answer, with a ``Status`` body as the API server sends (409
  ``Conflict``, 410 ``Expired``, 429 ``TooManyRequests``, 500 ``InternalError``, 503, 504...).
  ``None`` answers normally (useful with ``stall_s``). A 410 on a watch request is sent the way
  a real server expires a watch: 200 and one ``ERROR`` event whose object is the Status.
- ``times``: how many matching requests it answers (``None``: every one until cleared).
- ``retry_after_s``: a ``Retry-After`` header (whole seconds, rounded up) and
  ``details.retryAfterSeconds``, as for 429 and 503.
- ``stall_s``: wait this long before answering (asyncio: other requests are not held up), so
  a client with a shorter timeout gives up first.
- ``watch``: ``True`` matches only watch requests (``?watch=true``), ``False`` only others,
  ``None`` both.

``Fault.hits`` counts the requests it answered, ``Fault.exhausted`` says it is spent;
``Faults.clear()`` removes every rule, ``Faults.rules`` lists those still active,
``Faults.log`` records ``(method, path, status)`` of every faulted answer. Rules are tried in
the order they were added; the first live match answers. Thread-safe: tests call it from
their thread while the emulator serves from its own.

Requests of the dev cluster's own kubelet (User-Agent ``jsorc-devcluster/...``) never match:
a fault is aimed at the client under test, not at the control plane.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field

from jsorc_live.devcluster.resources import status_body

__all__ = ["Fault", "Faults"]

_MESSAGES = {409: "Operation cannot be fulfilled: the object has been modified (injected)",
             410: "too old resource version (injected)",
             429: "Too many requests, please try again later (injected)",
             500: "Internal error (injected)",
             503: "Service unavailable (injected)",
             504: "Timeout: request did not complete (injected)"}
_REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            410: "Expired", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "*"}


@dataclass
class Fault:
    """One rule; mutated only under its Faults' lock."""

    method: str
    pattern: re.Pattern[str]
    status: int | None
    times: int | None
    retry_after_s: float | None = None
    stall_s: float = 0.0
    message: str | None = None
    watch: bool | None = None
    hits: int = field(default=0)

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def matches(self, method: str, path: str, watch: bool) -> bool:
        return (not self.exhausted and self.method in ("*", method.upper())
                and (self.watch is None or self.watch == watch)
                and self.pattern.search(path) is not None)

    def body(self) -> dict[str, object]:
        """The Status body of the answer (``status`` must not be None)."""
        assert self.status is not None
        details: dict[str, object] = {}
        if self.retry_after_s is not None:
            details["retryAfterSeconds"] = math.ceil(self.retry_after_s)
        return status_body(self.status, self.message or _MESSAGES.get(
            self.status, f"injected fault {self.status}"),
            _REASONS.get(self.status, "Unknown"), details)

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(math.ceil(self.retry_after_s))}


class Faults:
    """The fault rules of one emulator (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Fault] = []
        self.log: list[tuple[str, str, int | None]] = []

    def inject(self, method: str, path: str | re.Pattern[str], *, status: int | None = 500,
               times: int | None = 1, retry_after_s: float | None = None,
               stall_s: float = 0.0, message: str | None = None,
               watch: bool | None = None) -> Fault:
        """Add a rule; returns it (its ``hits`` grow as it answers)."""
        if method.upper() not in _METHODS:
            raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
        if status is not None and not 100 <= status < 600:
            raise ValueError(f"status must be an HTTP status code, got {status!r}")
        if status is None and stall_s <= 0:
            raise ValueError("a fault needs a status, a stall_s > 0, or both")
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1 (or None: always), got {times!r}")
        if stall_s < 0 or (retry_after_s is not None and retry_after_s < 0):
            raise ValueError("stall_s and retry_after_s must not be negative")
        pattern = path if isinstance(path, re.Pattern) else re.compile(path)
        rule = Fault(method.upper(), pattern, status, times, retry_after_s, stall_s, message,
                     watch)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[Fault]:
        with self._lock:
            return [r for r in self._rules if not r.exhausted]

    def take(self, method: str, path: str, *, watch: bool = False) -> Fault | None:
        """The rule that answers this request, its use counted; None if none matches."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path, watch):
                    rule.hits += 1
                    self.log.append((method.upper(), path, rule.status))
                    self._rules = [r for r in self._rules if not r.exhausted]
                    return rule
        return None
