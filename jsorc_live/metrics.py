"""Prometheus metrics the runtime and the action servers share.

- `HttpBytes`: an ASGI middleware counting the HTTP bytes a server receives and sends
  (`jsorc_http_received_bytes_total`, `jsorc_http_sent_bytes_total`). A process has no
  network counters of its own outside a pod's network namespace (the kernel counts per
  interface), so these are the per-process network figures tracksys reports: request and
  response lines, headers and bodies; TCP/IP overhead is not included.
- `RuntimeMetrics`: the runtime's end-to-end call latency by action and placement
  (`jsorc_call_latency_seconds`, a histogram built from the call log, so the router needs
  no hook), where each action is placed (`jsorc_action_placement`) and the replicas asked for
  (`jsorc_replicas_desired`). The call counters and ready replicas are api_routes._Metrics'.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policies import Mode

__all__ = ["LATENCY_BUCKETS", "HttpByteCounters", "HttpBytes", "RuntimeMetrics"]

#: Call latency buckets in seconds (the action servers use the same).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
PLACEMENTS = tuple(m.value for m in Mode)


class HttpByteCounters:
    """The two counters, created once per registry (the middleware may be built again)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter("jsorc_http_received_bytes",
                                "HTTP bytes received by this server (request line, headers, body)",
                                registry=registry)
        self.sent = Counter("jsorc_http_sent_bytes",
                            "HTTP bytes sent by this server (status line, headers, body)",
                            registry=registry)


def _header_bytes(headers: Sequence[tuple[bytes, bytes]] | Any) -> int:
    return sum(len(k) + len(v) + 4 for k, v in headers)  # "k: v\r\n"


class HttpBytes:
    """Pure ASGI middleware: counts the bytes of every HTTP exchange into `counters`."""

    def __init__(self, app: ASGIApp, counters: HttpByteCounters) -> None:
        self.app = app
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        line = len(scope.get("method", "")) + len(scope.get("raw_path") or b"") + 12
        self.counters.received.inc(line + _header_bytes(scope.get("headers", ())) + 2)

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.counters.received.inc(len(message.get("body", b"")))
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.counters.sent.inc(17 + _header_bytes(message.get("headers", ())) + 2)
            elif message["type"] == "http.response.body":
                self.counters.sent.inc(len(message.get("body", b"")))
            await send(message)

        await self.app(scope, counting_receive, counting_send)


class _CallLog(Protocol):
    @property
    def cursor(self) -> int: ...

    def since(self, cursor: int) -> tuple[list[tuple[Any, ...]], int]: ...


class _Runtime(Protocol):
    @property
    def calls(self) -> _CallLog: ...

    @property
    def routers(self) -> dict[str, Any]: ...


class RuntimeMetrics(Collector):
    """Latency histograms and placements of a runtime (jsorc_live.runtime.Runtime).

    The histogram reads the rows logged since the last scrape (a call row: action at 3,
    placement at 4, latency_ms at 9, ok at 10), so every successful call is counted once
    whatever the number of scrapers; failed calls have no latency and are not in it.
    """

    def __init__(self, runtime: _Runtime, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.runtime = runtime
        self.buckets = tuple(buckets)
        self._cursor = runtime.calls.cursor
        self._lock = threading.Lock()
        # (action, placement) -> [count per bucket (last: +Inf)..., sum of seconds]
        self._hist: dict[tuple[str, str], list[float]] = {}

    def describe(self) -> Iterator[Any]:
        yield HistogramMetricFamily("jsorc_call_latency_seconds", "", labels=["a", "p"])
        yield GaugeMetricFamily("jsorc_action_placement", "", labels=["a", "p"])
        yield GaugeMetricFamily("jsorc_replicas_desired", "", labels=["a"])

    def _absorb(self) -> None:
        rows, self._cursor = self.runtime.calls.since(self._cursor)
        for row in rows:
            latency_ms = row[9]
            if not row[10] or not isinstance(latency_ms, float | int) \
                    or not math.isfinite(latency_ms):
                continue
            seconds = latency_ms / 1000.0
            counts = self._hist.setdefault((row[3], row[4]), [0.0] * (len(self.buckets) + 2))
            index = next((i for i, b in enumerate(self.buckets) if seconds <= b),
                         len(self.buckets))
            counts[index] += 1
            counts[-1] += seconds

    def collect(self) -> Iterator[Any]:
        latency = HistogramMetricFamily(
            "jsorc_call_latency_seconds",
            "End-to-end latency of successful action calls (wait, service and network)",
            labels=["action", "placement"])
        with self._lock:
            self._absorb()
            for (action, placement), counts in sorted(self._hist.items()):
                cumulative, running = [], 0.0
                for bound, n in zip((*map(str, self.buckets), "+Inf"), counts[:-1],
                                    strict=True):
                    running += n
                    cumulative.append((bound, running))
                latency.add_metric([action, placement], cumulative, counts[-1])
        yield latency
        placed = GaugeMetricFamily("jsorc_action_placement",
                                   "1 for where each action's calls go now",
                                   labels=["action", "placement"])
        desired = GaugeMetricFamily("jsorc_replicas_desired",
                                    "remote replicas asked for (0 unless remote)",
                                    labels=["action"])
        for name, router in sorted(self.runtime.routers.items()):
            now = str(router.placement.mode.value)
            for placement in PLACEMENTS:
                placed.add_metric([name, placement], 1.0 if placement == now else 0.0)
            desired.add_metric([name], float(router.desired.replicas))
        yield placed
        yield desired
