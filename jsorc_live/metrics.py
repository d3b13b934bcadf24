"""Prometheus metrics the runtime and the action servers share.

- `HttpBytes`: an ASGI middleware counting the HTTP bytes a server receives and sends
  (`jsorc_http_received_bytes_total`, `jsorc_http_sent_bytes_total`). A process has no
  network counters of its own outside a pod's network namespace (the kernel counts per
  interface), so these are the per-process network figures tracksys reports: request and
  response lines, headers and bodies; TCP/IP overhead is not included.
- `RuntimeMetrics`: the runtime's end-to-end call latency by action and placement
  (`jsorc_call_latency_seconds`, a histogram built from the call log, so the router needs
  no hook), where each action is placed (`jsorc_action_placement`) and the replicas asked for
  (`jsorc_replicas_desired`), and each app's walker runs (`jsorc_walker_runs_total` by
  outcome, `jsorc_walker_latency_seconds`, both from the request log). The call counters and
  ready replicas are api_routes._Metrics'.
- `ServiceMetrics`: each kept-alive service's state (`jsorc_service_state`, 1 for the state
  it is in) and restarts (`jsorc_service_restarts_total`), for deploy/grafana's dashboard.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policies import Mode

__all__ = ["LATENCY_BUCKETS", "HttpByteCounters", "HttpBytes", "RuntimeMetrics",
           "ServiceMetrics"]

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
    def requests(self) -> _CallLog: ...

    @property
    def routers(self) -> dict[str, Any]: ...


class _Histogram:
    """Counts per bucket (the last: +Inf) and the sum, of one label set."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0.0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        index = next((i for i, b in enumerate(self.buckets) if seconds <= b), len(self.buckets))
        self.counts[index] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0.0
        for bound, n in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def _finite(value: Any) -> bool:
    return isinstance(value, float | int) and math.isfinite(value)


class RuntimeMetrics(Collector):
    """Latency histograms and placements of a runtime (jsorc_live.runtime.Runtime).

    The histogram reads the rows logged since the last scrape (a call row: action at 3,
    placement at 4, latency_ms at 9, ok at 10), so every successful call is counted once
    whatever the number of scrapers; failed calls have no latency and are not in it. Walker
    runs are read the same way from the request log: every run is counted by outcome, the
    successful ones' latency goes into `jsorc_walker_latency_seconds`.
    """

    def __init__(self, runtime: _Runtime, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.runtime = runtime
        self.buckets = tuple(buckets)
        self._cursor = runtime.calls.cursor
        self._request_cursor = runtime.requests.cursor
        self._lock = threading.Lock()
        self._hist: dict[tuple[str, str], _Histogram] = {}  # (action, placement)
        self._walker_hist: dict[str, _Histogram] = {}  # app
        self._walker_runs: dict[tuple[str, bool], int] = {}  # (app, ok)

    def describe(self) -> Iterator[Any]:
        yield HistogramMetricFamily("jsorc_call_latency_seconds", "", labels=["a", "p"])
        yield GaugeMetricFamily("jsorc_action_placement", "", labels=["a", "p"])
        yield GaugeMetricFamily("jsorc_replicas_desired", "", labels=["a"])
        yield CounterMetricFamily("jsorc_walker_runs", "", labels=["app", "ok"])
        yield HistogramMetricFamily("jsorc_walker_latency_seconds", "", labels=["app"])

    def _absorb(self) -> None:
        rows, self._cursor = self.runtime.calls.since(self._cursor)
        for row in rows:
            if row[10] and _finite(row[9]):
                self._hist.setdefault((row[3], row[4]), _Histogram(self.buckets)).observe(
                    row[9] / 1000.0)
        # A request row: ts, id, app, latency_ms, ok, error.
        requests, self._request_cursor = self.runtime.requests.since(self._request_cursor)
        for _, _, app, latency_ms, ok, _ in requests:
            key = (app, bool(ok))
            self._walker_runs[key] = self._walker_runs.get(key, 0) + 1
            if ok and _finite(latency_ms):
                self._walker_hist.setdefault(app, _Histogram(self.buckets)).observe(
                    latency_ms / 1000.0)

    def collect(self) -> Iterator[Any]:
        latency = HistogramMetricFamily(
            "jsorc_call_latency_seconds",
            "End-to-end latency of successful action calls (wait, service and network)",
            labels=["action", "placement"])
        runs = CounterMetricFamily("jsorc_walker_runs", "walker runs finished, by outcome",
                                   labels=["app", "ok"])
        walker_latency = HistogramMetricFamily(
            "jsorc_walker_latency_seconds", "Latency of successful walker runs (every call)",
            labels=["app"])
        with self._lock:
            self._absorb()
            for (action, placement), hist in sorted(self._hist.items()):
                latency.add_metric([action, placement], hist.cumulative(), hist.sum)
            for (app, ok), count in sorted(self._walker_runs.items()):
                runs.add_metric([app, str(ok).lower()], count)
            for app, hist in sorted(self._walker_hist.items()):
                walker_latency.add_metric([app], hist.cumulative(), hist.sum)
        yield runs
        yield walker_latency
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


class ServiceMetrics(Collector):
    """The kept-alive services (`status()`: name -> a MetaService status row) as gauges: one
    series per known state, 1 for the one the service is in (a state timeline needs the 0s
    to end a state when the next begins), and its restarts so far."""

    def __init__(self, status: Callable[[], Mapping[str, Mapping[str, Any]]],
                 states: Sequence[str]) -> None:
        self.status = status
        self.states = tuple(states)

    def describe(self) -> Iterator[Any]:
        yield GaugeMetricFamily("jsorc_service_state", "", labels=["service", "state"])
        yield CounterMetricFamily("jsorc_service_restarts", "", labels=["service"])

    def collect(self) -> Iterator[Any]:
        state = GaugeMetricFamily("jsorc_service_state",
                                  "1 for the state each kept-alive service is in",
                                  labels=["service", "state"])
        restarts = CounterMetricFamily("jsorc_service_restarts",
                                       "restarts of each kept-alive service by keep-alive",
                                       labels=["service"])
        for name, row in sorted(self.status().items()):
            now = str(row.get("state", ""))
            for known in dict.fromkeys((*self.states, now)):
                state.add_metric([name, known], 1.0 if known == now else 0.0)
            if isinstance(row.get("restarts"), int):
                restarts.add_metric([name], float(row["restarts"]))
        yield state
        yield restarts
