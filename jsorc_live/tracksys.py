"""`jsorc tracksys`: system metrics of the runtime and every replica over a window.

`TrackSys.start` opens a window, `stop` closes it, `report` answers (while it runs: up to
now) one row per process: CPU seconds (and percent of one core), resident memory (mean, max,
last) and network bytes (the HTTP bytes its server received and sent, see
jsorc_live.metrics) over the window. The source is chosen at `start` and the report names it:

- `prometheus`, when the keep-alive Prometheus answers: instant queries through
  prometheus-api-client's PrometheusConnect at the window's ends, on
  `process_cpu_seconds_total`, `process_resident_memory_bytes`,
  `process_start_time_seconds` and `jsorc_http_*_bytes_total` (scraped every second, so
  each end is the last scrape before it);
- `cadvisor`, in a cluster (the kube backend gives a `PodScope`) when Prometheus answers:
  one row per pod of the namespace whose name matches, from cAdvisor's per-container series
  (`CADVISOR_METRICS`, scraped from the kubelets) over the window: CPU seconds (increase)
  and cores (rate), working-set memory (mean, max, last) and network bytes (increase) of the
  pod's interfaces; `PodQueries` writes the PromQL;
- `psutil`, when there is no Prometheus: a thread samples each process (cpu_times, RSS) every
  `sample_every_s`, and each /metrics is read at both ends for the network counters (in a
  cluster that measures the runtime's own process only: pods are on other machines).

A counter's rise over the window starts from 0 for a process born inside it, and from the
first sample in the window for one Prometheus had not scraped before it opened.
`usage_from_prometheus`, `usage_from_pods` (but for their query) and `usage_from_samples` are
pure.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from jsorc_live.services import ScrapeTarget

log = logging.getLogger(__name__)

__all__ = ["CADVISOR_METRICS", "PodQueries", "PodScope", "ProcessUsage", "Source", "TrackSys",
           "TrackSysError", "usage_from_pods", "usage_from_prometheus", "usage_from_samples"]

JOB = 'job="jsorc"'
NET_COUNTERS = {"net_received_bytes": "jsorc_http_received_bytes_total",
                "net_sent_bytes": "jsorc_http_sent_bytes_total"}


class TrackSysError(RuntimeError):
    """A tracksys command that cannot be done now (not started, Prometheus gone)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class Source(StrEnum):
    PROMETHEUS = "prometheus"
    CADVISOR = "cadvisor"  # per pod, through Prometheus, in a cluster
    PSUTIL = "psutil"


@dataclass
class ProcessUsage:
    """One process (the runtime or a replica) over the window; None: not measured."""

    name: str
    role: str
    action: str = ""
    instance: str = ""
    pid: int | None = None
    cpu_seconds: float | None = None
    cpu_percent: float | None = None  # of one core, over the window
    rss_bytes_mean: float | None = None
    rss_bytes_max: float | None = None
    rss_bytes_last: float | None = None
    # HTTP bytes through the process's own server (jsorc_live.metrics.HttpBytes): requests
    # in, responses out. The runtime's calls to its replicas are counted at the replicas.
    net_received_bytes: float | None = None
    net_sent_bytes: float | None = None
    samples: int = 0
    note: str = ""


def counter_rise(at_start: float | None, at_stop: float | None, first_in_window: float | None,
                 born_in_window: bool) -> float | None:
    """How much a counter rose over the window (pure). A process born inside it counts from
    0; a counter lower at the end than at the start was reset (the process restarted)."""
    if at_stop is None:
        return None
    if born_in_window:
        return at_stop
    if at_start is not None:
        return at_stop if at_stop < at_start else at_stop - at_start
    if first_in_window is not None:
        return max(at_stop - first_in_window, 0.0)
    return None


# --------------------------------------------------------------------------- Prometheus

# (PromQL, unix time) -> {the series' key label (instance, or pod in a cluster): value}
Query = Callable[[str, float], Mapping[str, float]]


def usage_from_prometheus(query: Query, start: float, stop: float,
                          targets: Sequence[ScrapeTarget],
                          labels: Mapping[str, Mapping[str, str]]) -> list[ProcessUsage]:
    """One row per instance Prometheus has samples of, or that is a target now (pure but for
    `query`). `labels` gives each instance's scrape labels (role, action, name)."""
    window = f"{max(int((stop - start) * 1000), 1)}ms"

    def at(expr: str, t: float) -> Mapping[str, float]:
        return query(expr, t)

    def over(fn: str, metric: str) -> Mapping[str, float]:
        return query(f"{fn}({metric}{{{JOB}}}[{window}])", stop)

    started = at(f"process_start_time_seconds{{{JOB}}}", stop)
    rss = {fn: over(fn, "process_resident_memory_bytes")
           for fn in ("avg_over_time", "max_over_time", "count_over_time")}
    rss_last = at(f"process_resident_memory_bytes{{{JOB}}}", stop)
    counters = {}
    for key, metric in {"cpu_seconds": "process_cpu_seconds_total", **NET_COUNTERS}.items():
        counters[key] = (at(f"{metric}{{{JOB}}}", start), at(f"{metric}{{{JOB}}}", stop),
                         over("min_over_time", metric))
    by_instance = {t.instance: t for t in targets}
    instances = sorted({*by_instance, *started, *rss_last, *counters["cpu_seconds"][1]})
    rows = []
    for inst in instances:
        target = by_instance.get(inst)
        lab = labels.get(inst, {})
        row = ProcessUsage(name=lab.get("name") or (target.name if target else inst),
                           role=lab.get("role") or (target.role if target else ""),
                           action=lab.get("action") or (target.action if target else ""),
                           instance=inst, pid=target.pid if target else None)
        born = started.get(inst, 0.0) >= start
        for key, (s0, s1, first) in counters.items():
            setattr(row, key, counter_rise(s0.get(inst), s1.get(inst), first.get(inst), born))
        row.rss_bytes_mean = rss["avg_over_time"].get(inst)
        row.rss_bytes_max = rss["max_over_time"].get(inst)
        row.rss_bytes_last = rss_last.get(inst)
        row.samples = int(rss["count_over_time"].get(inst, 0))
        if row.samples == 0:
            row.note = "no scrape inside the window"
        rows.append(row)
    return rows


def prometheus_query(url: str, timeout_s: float, key: str = "instance"
                     ) -> tuple[Query, Callable[[], None]]:
    """A Query over PrometheusConnect answering by the `key` label, and its closer."""
    from prometheus_api_client import PrometheusConnect
    from urllib3.util.retry import Retry

    connect = PrometheusConnect(url=url, disable_ssl=True, timeout=int(max(timeout_s, 1)),
                                retry=Retry(total=1, backoff_factor=0.1))

    def query(expr: str, t: float) -> dict[str, float]:
        result = connect.custom_query(expr, params={"time": f"{t:.3f}"})
        return {str(r["metric"].get(key, "")): float(r["value"][1]) for r in result}

    return query, connect.close


def scrape_labels(url: str, timeout_s: float) -> dict[str, dict[str, str]]:
    """instance -> the labels Prometheus scrapes it with (from /api/v1/targets)."""
    answer = httpx.get(f"{url}/api/v1/targets", params={"state": "any"}, timeout=timeout_s)
    answer.raise_for_status()
    out: dict[str, dict[str, str]] = {}
    for kind in ("activeTargets", "droppedTargets"):
        for t in answer.json().get("data", {}).get(kind, []):
            lab = t.get("labels") or {}
            if lab.get("instance"):
                out.setdefault(lab["instance"], dict(lab))
    return out


# --------------------------------------------------------------------------- cluster

# cAdvisor's per-container series (the kubelet's /metrics/cadvisor, or the dev cluster's
# exporter) that tracksys reads in a cluster: ProcessUsage field -> metric.
CADVISOR_METRICS: Mapping[str, str] = {
    "cpu_seconds": "container_cpu_usage_seconds_total",
    "rss_bytes": "container_memory_working_set_bytes",
    "net_received_bytes": "container_network_receive_bytes_total",
    "net_sent_bytes": "container_network_transmit_bytes_total",
}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def promql_string(value: str) -> str:
    """`value` as a PromQL string literal (double-quoted, backslashes and quotes escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def promql_duration(seconds: float) -> str:
    """A PromQL duration of at least 1 ms."""
    return f"{max(round(seconds * 1000), 1)}ms"


@dataclass(frozen=True)
class PodScope:
    """The pods tracksys measures in a cluster: those of `namespace` whose name matches
    `pod_regex` (RE2, anchored at both ends as Prometheus anchors `=~`). `runtime_pod` names
    the runtime's own pod (its row's role is then "runtime" even when Prometheus does not
    scrape it); `resolution_s` is the step of the subquery for the memory maximum: cAdvisor's
    scrape interval (deploy/prometheus/prometheus.yml: 10 s)."""

    namespace: str
    pod_regex: str = "jsorc-.*"
    runtime_pod: str | None = None
    resolution_s: float = 10.0

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.namespace):
            raise ValueError(f"PodScope namespace must be a DNS label (a Kubernetes "
                             f"namespace), got {self.namespace!r}")
        try:
            re.compile(self.pod_regex)
        except re.error as exc:
            raise ValueError(f"PodScope pod_regex {self.pod_regex!r} is not a regular "
                             f"expression: {exc}") from None
        if not (math.isfinite(self.resolution_s) and self.resolution_s > 0):
            raise ValueError(f"PodScope resolution_s must be > 0 seconds, got "
                             f"{self.resolution_s!r}")


@dataclass(frozen=True)
class PodQueries:
    """The per-pod PromQL over a window of `window_s` seconds ending at the query's time
    (pure: strings only). Every answer has one series per pod, labelled `pod`.

    CPU and memory sum the pod's containers (`container!=""` drops the pod's own cgroup,
    which cAdvisor reports beside them, and `container!="POD"` the pause container of
    docker-era kubelets). Network is one per pod network namespace, which every container of
    the pod shares: cAdvisor may report the same bytes for several of them, so the queries
    take the largest per interface and sum the interfaces."""

    scope: PodScope
    window_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"PodQueries window_s must be > 0 seconds, got {self.window_s!r}")

    @property
    def window(self) -> str:
        return promql_duration(self.window_s)

    def selector(self, metric: str, *, containers: bool = True) -> str:
        matchers = [f"namespace={promql_string(self.scope.namespace)}",
                    f"pod=~{promql_string(self.scope.pod_regex)}"]
        if containers:
            matchers += ['container!=""', 'container!="POD"']
        return f"{metric}{{{','.join(matchers)}}}"

    def cpu_cores(self) -> str:
        """CPU cores in use, averaged over the window (rate)."""
        cpu = self.selector(CADVISOR_METRICS["cpu_seconds"])
        return f"sum by (pod) (rate({cpu}[{self.window}]))"

    def cpu_seconds(self) -> str:
        """CPU seconds used over the window (increase: counter resets are restarts)."""
        cpu = self.selector(CADVISOR_METRICS["cpu_seconds"])
        return f"sum by (pod) (increase({cpu}[{self.window}]))"

    def memory_last(self) -> str:
        """The working set now (the last scrape before the query's time)."""
        return f"sum by (pod) ({self.selector(CADVISOR_METRICS['rss_bytes'])})"

    def memory_mean(self) -> str:
        mem = self.selector(CADVISOR_METRICS["rss_bytes"])
        return f"sum by (pod) (avg_over_time({mem}[{self.window}]))"

    def memory_max(self) -> str:
        """The largest pod total: a subquery, since the sum of each container's maximum
        could exceed every total the pod had."""
        step = promql_duration(self.scope.resolution_s)
        return (f"max_over_time((sum by (pod) ({self.selector(CADVISOR_METRICS['rss_bytes'])}))"
                f"[{self.window}:{step}])")

    def samples(self) -> str:
        """Scrapes of the pod's working set inside the window."""
        mem = self.selector(CADVISOR_METRICS["rss_bytes"])
        return f"max by (pod) (count_over_time({mem}[{self.window}]))"

    def network(self, field_name: str) -> str:
        """Bytes received (`net_received_bytes`) or sent (`net_sent_bytes`) over the window."""
        net = self.selector(CADVISOR_METRICS[field_name], containers=False)
        return f"sum by (pod) (max by (pod, interface) (increase({net}[{self.window}])))"

    def all(self) -> dict[str, str]:
        """Every query tracksys makes, by what it answers."""
        return {"cpu_cores": self.cpu_cores(), "cpu_seconds": self.cpu_seconds(),
                "rss_bytes_last": self.memory_last(), "rss_bytes_mean": self.memory_mean(),
                "rss_bytes_max": self.memory_max(), "samples": self.samples(),
                "net_received_bytes": self.network("net_received_bytes"),
                "net_sent_bytes": self.network("net_sent_bytes")}


def usage_from_pods(query: Query, start: float, stop: float, scope: PodScope,
                    labels: Mapping[str, Mapping[str, str]]) -> list[ProcessUsage]:
    """One row per pod cAdvisor reported inside the window (pure but for `query`, which
    answers pod -> value). `labels` gives a pod's scrape labels (role, action) when
    Prometheus scrapes its /metrics too."""
    queries = PodQueries(scope, stop - start)
    answers = {key: query(expr, stop) for key, expr in queries.all().items()}
    rows = []
    for pod in sorted({p for answer in answers.values() for p in answer}):
        lab = labels.get(pod, {})
        role = lab.get("role") or ("runtime" if pod == scope.runtime_pod else "")
        row = ProcessUsage(name=pod, role=role, action=lab.get("action", ""), instance=pod)
        for key in ("cpu_seconds", "rss_bytes_last", "rss_bytes_mean", "rss_bytes_max",
                    "net_received_bytes", "net_sent_bytes"):
            setattr(row, key, answers[key].get(pod))
        cores = answers["cpu_cores"].get(pod)
        row.cpu_percent = None if cores is None else round(100.0 * cores, 2)
        row.samples = int(answers["samples"].get(pod, 0))
        if row.cpu_seconds is None:
            row.note = "fewer than two scrapes inside the window"
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- psutil


@dataclass
class _Series:
    """psutil samples of one process: (unix time, CPU seconds, RSS bytes)."""

    target: ScrapeTarget
    born: float  # the process's create time
    samples: list[tuple[float, float, float]] = field(default_factory=list)


def usage_from_samples(series: Sequence[_Series], start: float, stop: float,
                       net: Mapping[str, tuple[Mapping[str, float], Mapping[str, float]]],
                       ) -> list[ProcessUsage]:
    """Rows from psutil samples and the /metrics network counters read at both ends
    (`net[url] = (at start, at stop)`; pure)."""
    rows = []
    for s in series:
        t = s.target
        row = ProcessUsage(name=t.name, role=t.role, action=t.action, instance=t.instance,
                           pid=t.pid, samples=len(s.samples))
        inside = [x for x in s.samples if start <= x[0] <= stop] or s.samples[-1:]
        if inside:
            # The first sample is taken as the window opens: the baseline.
            row.cpu_seconds = counter_rise(None, inside[-1][1], s.samples[0][1],
                                           s.born >= start)
            memory = [x[2] for x in inside]
            row.rss_bytes_mean = sum(memory) / len(memory)
            row.rss_bytes_max = max(memory)
            row.rss_bytes_last = memory[-1]
        else:
            row.note = "no sample (pid unknown or gone)"
        rows.append(row)
    for row, s in zip(rows, series, strict=True):
        begin, end = net.get(s.target.url, ({}, {}))
        born = s.born >= start
        for key, metric in NET_COUNTERS.items():
            setattr(row, key, counter_rise(begin.get(metric), end.get(metric), None, born))
    return rows


def read_counters(url: str, timeout_s: float = 2.0) -> dict[str, float]:
    """The jsorc_http_* counters of one /metrics (empty when it does not answer)."""
    if not url:
        return {}
    try:
        text = httpx.get(f"{url}/metrics", timeout=timeout_s).text
    except httpx.HTTPError:
        return {}
    wanted = set(NET_COUNTERS.values())
    return {s.name: s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name in wanted}


# --------------------------------------------------------------------------- TrackSys


@dataclass
class _Window:
    source: Source
    detail: str
    start: float
    prometheus: str | None = None
    scope: PodScope | None = None
    stop: float | None = None
    series: dict[int, _Series] = field(default_factory=dict)
    procs: dict[int, psutil.Process] = field(default_factory=dict)
    net_start: dict[str, dict[str, float]] = field(default_factory=dict)
    net_stop: dict[str, dict[str, float]] = field(default_factory=dict)


class TrackSys:
    """A tracking window over `targets()`; Prometheus when `prometheus_url()` answers, and
    then the pods of `pods()` instead when it gives a scope (the backend is kube)."""

    def __init__(self, targets: Callable[[], Sequence[ScrapeTarget]],
                 prometheus_url: Callable[[], str | None], *,
                 why_no_prometheus: Callable[[], str] = lambda: "no Prometheus configured",
                 pods: Callable[[], PodScope | None] = lambda: None,
                 sample_every_s: float = 0.5, query_timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._targets = targets
        self._prometheus_url = prometheus_url
        self._pods = pods
        self._why_not = why_no_prometheus
        self.sample_every_s = sample_every_s
        self.query_timeout_s = query_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._window: _Window | None = None
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    @property
    def running(self) -> bool:
        with self._lock:
            return self._window is not None and self._window.stop is None

    def start(self) -> dict[str, Any]:
        """Open a window (a running one is replaced)."""
        self._halt_sampler()
        url = self._prometheus_url()
        scope = self._pods()
        now = self._clock()
        if url and scope:
            window = _Window(Source.CADVISOR, f"cAdvisor per pod through Prometheus at {url} "
                             f"(namespace {scope.namespace}, pods ~ {scope.pod_regex})", now,
                             prometheus=url, scope=scope)
        elif url:
            window = _Window(Source.PROMETHEUS, f"Prometheus at {url}", now, prometheus=url)
        else:
            pods_too = "; pods are not measured without it" if scope else ""
            window = _Window(Source.PSUTIL, f"psutil sampling every {self.sample_every_s:g} s "
                             f"({self._why_not()}{pods_too})", now)
        with self._lock:
            self._window = window
        if window.source is Source.PSUTIL:
            self._sample(window)
            window.net_start = {t.url: read_counters(t.url) for t in self._targets()}
            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample_loop, args=(window,),
                                             name="tracksys-sampler", daemon=True)
            self._sampler.start()
        return {"source": window.source.value, "detail": window.detail, "start": now}

    def stop(self) -> dict[str, Any]:
        """Close the window and report it."""
        with self._lock:
            window = self._window
            if window is None or window.stop is not None:
                raise TrackSysError("tracksys is not running: `jsorc tracksys start` first")
        self._halt_sampler()
        if window.source is Source.PSUTIL:
            self._sample(window)
            window.net_stop = {t.url: read_counters(t.url) for t in self._targets()}
        with self._lock:
            window.stop = self._clock()
        return self.report()

    def report(self) -> dict[str, Any]:
        """The window's report (a running window: up to now)."""
        with self._lock:
            window = self._window
        if window is None:
            raise TrackSysError("tracksys was never started: `jsorc tracksys start` first")
        running = window.stop is None
        stop = self._clock() if running else window.stop
        assert stop is not None
        if window.source is Source.PROMETHEUS:
            rows = self._ask_prometheus(window, lambda url: self._prometheus_rows(url, window,
                                                                                  stop))
        elif window.source is Source.CADVISOR:
            rows = self._ask_prometheus(window, lambda url: self._pod_rows(url, window, stop))
        else:
            if running:
                self._sample(window)
            net_stop = ({t.url: read_counters(t.url) for t in self._targets()} if running
                        else window.net_stop)
            net = {url: (window.net_start.get(url, {}), net_stop.get(url, {}))
                   for url in {*window.net_start, *net_stop}}
            with self._lock:
                series = list(window.series.values())
            rows = usage_from_samples(series, window.start, stop, net)
        span = max(stop - window.start, 1e-9)
        for row in rows:
            if row.cpu_seconds is not None and row.cpu_percent is None:
                row.cpu_percent = round(100.0 * row.cpu_seconds / span, 2)
        return {"source": window.source.value, "detail": window.detail,
                "window": {"start": window.start, "stop": stop, "seconds": round(span, 3),
                           "running": running},
                "processes": [asdict(r) for r in rows]}

    def close(self) -> None:
        self._halt_sampler()

    # ----------------------------------------------------------------- internals

    def _ask_prometheus(self, window: _Window,
                        rows: Callable[[str], list[ProcessUsage]]) -> list[ProcessUsage]:
        assert window.prometheus is not None
        try:
            return rows(window.prometheus)
        except Exception as exc:  # requests, httpx and the client's own errors alike
            raise TrackSysError(f"Prometheus at {window.prometheus} did not answer: "
                                f"{type(exc).__name__}: {exc}", 502) from None

    def _prometheus_rows(self, url: str, window: _Window, stop: float) -> list[ProcessUsage]:
        query, close = prometheus_query(url, self.query_timeout_s)
        try:
            labels = scrape_labels(url, self.query_timeout_s)
            return usage_from_prometheus(query, window.start, stop, self._targets(), labels)
        finally:
            close()

    def _pod_rows(self, url: str, window: _Window, stop: float) -> list[ProcessUsage]:
        assert window.scope is not None
        query, close = prometheus_query(url, self.query_timeout_s, key="pod")
        try:
            labels = {lab["pod"]: lab for lab in scrape_labels(url, self.query_timeout_s).values()
                      if lab.get("pod")}
            return usage_from_pods(query, window.start, stop, window.scope, labels)
        finally:
            close()

    def _halt_sampler(self) -> None:
        self._stop.set()
        if self._sampler is not None and self._sampler is not threading.current_thread():
            self._sampler.join(timeout=5.0)
        self._sampler = None

    def _sample_loop(self, window: _Window) -> None:
        while not self._stop.wait(self.sample_every_s):
            try:
                self._sample(window)
            except Exception:  # a bad pass must not end the window's sampling
                log.exception("tracksys sample failed")

    def _sample(self, window: _Window) -> None:
        now = self._clock()
        for target in self._targets():
            if target.pid is None:
                continue
            with self._lock:
                proc = window.procs.get(target.pid)
            try:
                if proc is None:
                    proc = psutil.Process(target.pid)
                    series = _Series(target, proc.create_time())
                    with self._lock:
                        window.procs[target.pid] = proc
                        window.series.setdefault(target.pid, series)
                with proc.oneshot():
                    cpu = proc.cpu_times()
                    sample = (now, cpu.user + cpu.system, float(proc.memory_info().rss))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            with self._lock, contextlib.suppress(KeyError):
                window.series[target.pid].samples.append(sample)
