"""The dashboard's numbers: bounded time series of the runtime, and Prometheus range queries.

`Sampler` takes one sample every `sample_s` (2 s) on its own thread and keeps each series in
a ring buffer covering the longest window the dashboard offers (2 h), so a server that runs
for weeks holds a fixed amount. It reads what the controller's observer reads — each router's
placement, desired and ready replicas; the runtime's call and request logs (by cursor, so no
other reader's window moves); psutil's `ProcessMeter` on this process and on the backend's
replica processes — but never the observation builder itself: `LiveSignals.observe` closes a
window, and a dashboard that closed the policy's windows would change what the policy sees.
The controller ticks every `backoff_interval` and only with automation on; the sampler ticks
whether or not it does, so a manual `actions load` shows too.

`prometheus_charts` asks a Prometheus (the kept-alive one, or `serve --prometheus-url`) for
range queries over the same window; every chart says which source it came from.

`Ring` and the percentile helpers are pure; `Sampler.sample` reads the runtime once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy as np

from jsorc_live.runtime import Replica, Runtime
from jsorc_live.signals import ProcessMeter
from policies import Mode

log = logging.getLogger(__name__)

__all__ = ["CHARTS", "MAX_POINTS", "MAX_WINDOW_S", "PLACEMENT_LEVEL", "SAMPLE_S", "WINDOWS_S",
           "Chart", "Ring", "Sampler", "Series", "downsample", "prometheus_charts"]

#: Seconds between samples (the page polls at the same pace).
SAMPLE_S = 2.0
#: The windows the page offers; any window up to MAX_WINDOW_S is answered.
WINDOWS_S = (300, 1800, 7200)
MAX_WINDOW_S = 7200.0
#: Most points a runtime chart sends: a 2 h window of 2 s samples is averaged down to this.
MAX_POINTS = 600
#: A placement as a level of the placement chart.
PLACEMENT_LEVEL = {Mode.UNLOADED: 0.0, Mode.LOCAL: 1.0, Mode.REMOTE: 2.0}
_MB = 1024.0 * 1024.0

#: chart id -> (title, unit), in the page's order.
CHARTS: dict[str, tuple[str, str]] = {
    "placement": ("placement (0 unloaded, 1 local, 2 remote)", "level"),
    "replicas": ("replicas ready / desired", "replicas"),
    "call_latency": ("call latency p50 / p95 by action and placement", "ms"),
    "memory": ("memory: runtime (node) and replicas", "MB"),
    "cpu": ("CPU: runtime (node) and replicas", "cores"),
    "throughput": ("walker throughput by app", "runs/s"),
    "walker_latency": ("walker latency p50 / p95 by app", "ms"),
}


#: Charts where a series that reads 0 throughout (an action never loaded) is left out.
IDLE_IS_EMPTY = frozenset({"placement", "replicas"})


@dataclass(frozen=True)
class Series:
    label: str
    values: tuple[float | None, ...]  # None: no sample (a gap), never a made-up 0


@dataclass(frozen=True)
class Chart:
    """One chart: `t` in Unix seconds, every series aligned with it."""

    id: str
    title: str
    unit: str
    source: str  # "runtime" (the sampler) or "prometheus"
    t: tuple[float, ...]
    series: tuple[Series, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "unit": self.unit, "source": self.source,
                "t": list(self.t),
                "series": [{"label": s.label, "values": list(s.values)} for s in self.series]}


class Ring:
    """Aligned ring buffers: one time axis, one buffer per series key, `capacity` samples.

    A series first seen at a later sample is padded with NaN for the samples before it, so
    every buffer stays aligned with the time axis; a series missing from a sample gets NaN.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"Ring capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._t: deque[float] = deque(maxlen=capacity)
        self._values: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def add(self, t: float, values: Mapping[tuple[str, str], float]) -> None:
        with self._lock:
            for key in values:
                if key not in self._values:
                    self._values[key] = deque([math.nan] * len(self._t), maxlen=self.capacity)
            self._t.append(t)
            for key, buffer in self._values.items():
                buffer.append(float(values.get(key, math.nan)))

    def keys(self, chart: str) -> list[str]:
        with self._lock:
            return [label for c, label in self._values if c == chart]

    def window(self, since: float) -> tuple[list[float], dict[tuple[str, str], list[float]]]:
        """The samples at or after `since`: the times and each series' values."""
        with self._lock:
            times = list(self._t)
            start = next((i for i, t in enumerate(times) if t >= since), len(times))
            return times[start:], {k: list(v)[start:] for k, v in self._values.items()}


def percentiles(values: Sequence[float], qs: Sequence[float] = (50.0, 95.0)) -> list[float]:
    """The qs-th percentiles (NaN for no value)."""
    if not values:
        return [math.nan for _ in qs]
    return [float(v) for v in np.percentile(np.asarray(values, dtype=float), list(qs))]


def _gap(value: float) -> float | None:
    return value if math.isfinite(value) else None


class ReplicaLister(Protocol):
    def replicas(self, action: str) -> list[Replica]: ...


class Sampler:
    """The runtime's series, sampled every `sample_s` on a daemon thread (`start`/`close`)."""

    def __init__(self, runtime: Runtime, backend: ReplicaLister | None, *,
                 sample_s: float = SAMPLE_S, keep_s: float = MAX_WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        if not (math.isfinite(sample_s) and sample_s > 0):
            raise ValueError(f"sample_s must be a positive number of seconds, got {sample_s!r}")
        self.runtime = runtime
        self.backend = backend
        self.sample_s = sample_s
        self.ring = Ring(max(1, math.ceil(keep_s / sample_s)))
        self._clock = clock
        self._meter = ProcessMeter()
        self._calls = runtime.calls.cursor
        self._requests = runtime.requests.cursor
        self._last_t = clock()
        self._cpu: dict[str, float] = {}  # series label -> CPU seconds at the last sample
        self._apps: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.sample_s):
                try:
                    self.sample()
                except Exception:  # a bad reading must not end the series
                    log.exception("dashboard sample failed")

        self._thread = threading.Thread(target=loop, name="dashboard-sampler", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def sample(self) -> None:
        """Read the runtime once and append a sample to every series."""
        with self._lock:
            t = self._clock()
            dt = max(t - self._last_t, 1e-6)
            self._last_t = t
            values: dict[tuple[str, str], float] = {}
            self._routers(values)
            self._call_latency(values)
            self._walkers(values, dt)
            self._usage(values, dt)
            self.ring.add(t, values)

    def _routers(self, values: dict[tuple[str, str], float]) -> None:
        for name, router in sorted(self.runtime.routers.items()):
            placement, desired, _ = router.state()
            values["placement", name] = PLACEMENT_LEVEL[placement.mode]
            values["replicas", f"{name} ready"] = float(router.replicas_ready)
            values["replicas", f"{name} desired"] = float(desired.replicas)

    def _call_latency(self, values: dict[tuple[str, str], float]) -> None:
        rows, self._calls = self.runtime.calls.since(self._calls)
        by: dict[tuple[str, str], list[float]] = {}
        for row in rows:  # the CALL_COLUMNS: action 3, placement 4, latency_ms 9, ok 10
            latency = row[9]
            if row[10] and isinstance(latency, float | int) and math.isfinite(latency):
                by.setdefault((row[3], row[4]), []).append(float(latency))
        for (action, placement), latencies in sorted(by.items()):
            p50, p95 = percentiles(latencies)
            values["call_latency", f"{action} {placement} p50"] = p50
            values["call_latency", f"{action} {placement} p95"] = p95

    def _walkers(self, values: dict[tuple[str, str], float], dt: float) -> None:
        rows, self._requests = self.runtime.requests.since(self._requests)
        by: dict[str, list[float]] = {}
        for row in rows:  # the REQUEST_COLUMNS: app 2, latency_ms 3, ok 4
            if row[4]:
                by.setdefault(row[2], []).append(float(row[3]))
        self._apps.update(by)
        for app in sorted(self._apps):  # an app that ran before and not now reads 0 runs/s
            latencies = by.get(app, [])
            values["throughput", app] = len(latencies) / dt
            p50, p95 = percentiles(latencies)
            values["walker_latency", f"{app} p50"] = p50
            values["walker_latency", f"{app} p95"] = p95

    def _usage(self, values: dict[tuple[str, str], float], dt: float) -> None:
        rss_mb, cpu_s = self._meter.own()
        values["memory", "runtime (node)"] = rss_mb
        values["cpu", "runtime (node)"] = self._cores("runtime (node)", cpu_s, dt)
        if self.backend is None:
            return
        for name in sorted(self.runtime.routers):
            pids = [r.pid for r in self.backend.replicas(name) if r.pid is not None]
            usage = self._meter.replicas(name, pids)
            if usage is None:
                continue
            memory_mb, replica_cpu_s = usage
            label = f"{name} replicas"
            values["memory", label] = memory_mb if pids else math.nan
            values["cpu", label] = self._cores(label, replica_cpu_s, dt) if pids else math.nan

    def _cores(self, label: str, cpu_s: float, dt: float) -> float:
        """Cores in use since the last sample (NaN at the first one: no interval yet)."""
        before = self._cpu.get(label)
        self._cpu[label] = cpu_s
        return math.nan if before is None else max(0.0, cpu_s - before) / dt

    def charts(self, window_s: float) -> list[Chart]:
        """Every chart over the last `window_s` seconds. A series with no value in the
        window is left out, and so are the placement and replicas of an action that was
        unloaded throughout it (ten configured actions would otherwise draw ten flat 0s)."""
        times, values = self.ring.window(self._clock() - window_s)
        step = max(1, math.ceil(len(times) / MAX_POINTS))
        shown = times[step - 1::step] if step > 1 else times
        out = []
        for chart, (title, unit) in CHARTS.items():
            series = []
            for (c, label), raw in sorted(values.items()):
                column = downsample(raw, step, last=chart in IDLE_IS_EMPTY)
                finite = [v for v in column if math.isfinite(v)]
                if c != chart or not finite or (chart in IDLE_IS_EMPTY
                                                and not any(finite)):
                    continue
                series.append(Series(label, tuple(_gap(v) for v in column)))
            out.append(Chart(chart, title, unit, "runtime", tuple(shown), tuple(series)))
        return out


def downsample(values: Sequence[float], step: int, *, last: bool = False) -> list[float]:
    """Every `step` samples as one, at the time of the bucket's last sample: their mean
    (NaNs aside; NaN when all are), or their last value for a state (`last`: a placement
    level must stay a level). A trailing partial bucket is dropped, as the time axis does
    (pure)."""
    if step <= 1:
        return list(values)
    out = []
    for end in range(step, len(values) + 1, step):
        bucket = [v for v in values[end - step:end] if math.isfinite(v)]
        if not bucket:
            out.append(math.nan)
        else:
            out.append(bucket[-1] if last else sum(bucket) / len(bucket))
    return out


# --------------------------------------------------------------------------- Prometheus

#: chart id -> (title, unit, PromQL with {rate} for the rate window, the series' label keys).
PROMETHEUS_QUERIES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "prom_call_latency": (
        "call latency p95 (Prometheus: jsorc_call_latency_seconds)", "ms",
        "1000 * histogram_quantile(0.95, sum by (le, action, placement) "
        "(rate(jsorc_call_latency_seconds_bucket[{rate}])))", ("action", "placement")),
    "prom_replicas": ("replicas ready (Prometheus: jsorc_replicas_ready)", "replicas",
                      "jsorc_replicas_ready", ("action",)),
    "prom_memory": ("resident memory per process (Prometheus)", "MB",
                    'process_resident_memory_bytes{{job="jsorc"}} / 1048576', ("name",)),
    "prom_cpu": ("CPU per process (Prometheus)", "cores",
                 'rate(process_cpu_seconds_total{{job="jsorc"}}[{rate}])', ("name",)),
}


def prometheus_charts(url: str, start: float, end: float, *, points: int = 240,
                      deadline_s: float = 3.0,
                      get: Callable[..., httpx.Response] = httpx.get) -> list[Chart]:
    """The PROMETHEUS_QUERIES over [start, end] from Prometheus at `url` (/api/v1/query_range,
    about `points` steps of at least 1 s), all of them within `deadline_s` together (a
    Prometheus that hangs costs one deadline, not one per query). A query Prometheus refuses
    or cannot answer raises httpx.HTTPError or ValueError, the deadline TimeoutError (the
    caller reports either in the JSON)."""
    if not math.isfinite(deadline_s) or deadline_s <= 0:
        raise ValueError(f"deadline_s must be a positive number of seconds, got {deadline_s!r}")
    step = max(1.0, math.ceil((end - start) / points))
    rate = f"{int(max(10.0, 4 * step))}s"  # a rate needs at least two scrapes in its window
    charts = []
    deadline = time.monotonic() + deadline_s
    for chart, (title, unit, template, keys) in PROMETHEUS_QUERIES.items():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"Prometheus at {url} did not answer the dashboard's queries "
                               f"within {deadline_s:g} s (stopped before {chart})")
        answer = get(f"{url}/api/v1/query_range", timeout=left,
                     params={"query": template.format(rate=rate), "start": f"{start:.3f}",
                             "end": f"{end:.3f}", "step": f"{step:g}"})
        answer.raise_for_status()
        body = answer.json()
        if body.get("status") != "success":
            raise ValueError(f"Prometheus refused {chart}: {body.get('error')}")
        charts.append(_range_chart(chart, title, unit, keys, body["data"]["result"]))
    return charts


def _range_chart(chart: str, title: str, unit: str, keys: Iterable[str],
                 result: list[dict[str, Any]]) -> Chart:
    """A matrix answer as one chart: the union of the series' times, gaps where a series has
    no point (Prometheus leaves out the steps it has nothing for)."""
    keys = tuple(keys)
    points: dict[str, dict[float, float]] = {}
    for item in result:
        label = " ".join(str(item["metric"].get(k, "")) for k in keys).strip() or chart
        points.setdefault(label, {}).update(
            {float(t): float(v) for t, v in item.get("values", [])})
    times = sorted({t for p in points.values() for t in p})
    series = tuple(Series(label, tuple(_gap(p.get(t, math.nan)) for t in times))
                   for label, p in sorted(points.items())
                   if any(math.isfinite(v) for v in p.values()))
    return Chart(chart, title, unit, "prometheus", tuple(times), series)
