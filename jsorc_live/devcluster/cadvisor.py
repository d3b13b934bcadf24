"""A cAdvisor-shaped ``/metrics`` of the dev cluster's pods, for whatever Prometheus or
tracksys query a real cluster's kubelet would answer (its ``/metrics/cadvisor``).

Families and labels, as cAdvisor writes them:

- ``container_cpu_usage_seconds_total{namespace, pod, container, image}``: user + system CPU
  seconds of the container's process and its children (psutil), one series per container
  and one per pod with ``container=""`` (the pod's cgroup, their sum), as cAdvisor also
  reports the pod level: sum with ``container!=""`` to count a pod once;
- ``container_memory_working_set_bytes{...}``: resident memory (RSS) of the container's
  process tree; cAdvisor's working set is the cgroup's usage less inactive file pages,
  which a process has no counter for, so RSS is the nearest honest figure;
- ``container_network_receive_bytes_total`` / ``container_network_transmit_bytes_total``
  ``{namespace, pod, container="", image="", interface="eth0"}``: per pod, as cAdvisor reports
  network (a pod has one network namespace). Processes on one host have no network counters
  of their own (the kernel counts per interface, and every pod shares ``lo``), so these are
  the HTTP bytes the pod's servers count themselves: jsorc's action servers export
  ``jsorc_http_received_bytes_total`` / ``jsorc_http_sent_bytes_total`` (jsorc_live/metrics.py),
  scraped from ``http://POD_IP:PORT/metrics`` (the ``prometheus.io/port`` annotation, else each
  declared container port) when this endpoint is scraped. TCP/IP overhead is not counted; a
  pod whose servers export no such counters has no network series.

A container restart starts its counters again from zero, as a new container's do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psutil
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from jsorc_live.devcluster.kubelet import ContainerInfo, PodInfo

__all__ = ["CadvisorCollector", "MetricsServer", "http_bytes", "process_tree_usage"]

LABELS = ["namespace", "pod", "container", "image"]
NET_LABELS = ["namespace", "pod", "container", "image", "interface"]
RECEIVED, SENT = "jsorc_http_received_bytes_total", "jsorc_http_sent_bytes_total"


def process_tree_usage(pid: int) -> tuple[float, int] | None:
    """CPU seconds and RSS bytes of a process and its live children; None if it is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    cpu, rss = 0.0, 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            cpu += times.user + times.system
            rss += proc.memory_info().rss
    return cpu, rss


def http_bytes(url: str, timeout_s: float) -> tuple[float, float] | None:
    """Received and sent bytes from a jsorc server's /metrics; None if it exports none."""
    try:
        text = httpx.get(url, timeout=timeout_s).text
    except httpx.HTTPError:
        return None
    values: dict[str, float] = {}
    with contextlib.suppress(ValueError):
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (RECEIVED, SENT):
                    values[sample.name] = values.get(sample.name, 0.0) + sample.value
    if RECEIVED not in values and SENT not in values:
        return None
    return values.get(RECEIVED, 0.0), values.get(SENT, 0.0)


def _metrics_urls(pod: PodInfo) -> list[str]:
    port = pod.annotations.get("prometheus.io/port")
    if port and port.isdigit():
        return [f"http://{pod.ip}:{port}/metrics"]
    ports = sorted({p for c in pod.containers for p in c.ports})
    return [f"http://{pod.ip}:{p}/metrics" for p in ports]


class CadvisorCollector(Collector):
    """The four families for the pods ``pods()`` lists (read at every scrape)."""

    def __init__(self, pods: Callable[[], Sequence[PodInfo]], scrape_timeout_s: float = 0.5
                 ) -> None:
        self.pods = pods
        self.scrape_timeout_s = scrape_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="devcluster-cadvisor")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> Iterator[Any]:
        return iter(())  # collected fresh at each scrape

    def collect(self) -> Iterator[Any]:
        cpu = CounterMetricFamily("container_cpu_usage_seconds",
                                  "Cumulative cpu time consumed in seconds.", labels=LABELS)
        memory = GaugeMetricFamily("container_memory_working_set_bytes",
                                   "Current working set in bytes.", labels=LABELS)
        received = CounterMetricFamily("container_network_receive_bytes",
                                       "Cumulative count of bytes received.", labels=NET_LABELS)
        sent = CounterMetricFamily("container_network_transmit_bytes",
                                   "Cumulative count of bytes transmitted.", labels=NET_LABELS)
        pods = [p for p in self.pods() if p.pids]
        network = list(self._pool.map(self._pod_bytes, pods))
        for pod, net in zip(pods, network, strict=True):
            total_cpu, total_rss, seen = 0.0, 0, False
            for container in pod.containers:
                usage = _usage(container)
                if usage is None:
                    continue
                seen = True
                total_cpu, total_rss = total_cpu + usage[0], total_rss + usage[1]
                labels = [pod.namespace, pod.name, container.name, container.image]
                cpu.add_metric(labels, usage[0])
                memory.add_metric(labels, float(usage[1]))
            if seen:
                cpu.add_metric([pod.namespace, pod.name, "", ""], total_cpu)
                memory.add_metric([pod.namespace, pod.name, "", ""], float(total_rss))
            if net is not None:
                labels = [pod.namespace, pod.name, "", "", "eth0"]
                received.add_metric(labels, net[0])
                sent.add_metric(labels, net[1])
        yield from (cpu, memory, received, sent)

    def _pod_bytes(self, pod: PodInfo) -> tuple[float, float] | None:
        total: tuple[float, float] | None = None
        for url in _metrics_urls(pod):
            got = http_bytes(url, self.scrape_timeout_s)
            if got is not None:
                total = got if total is None else (total[0] + got[0], total[1] + got[1])
        return total


def _usage(container: ContainerInfo) -> tuple[float, int] | None:
    return process_tree_usage(container.pid) if container.pid is not None else None


class MetricsServer:
    """The exporter's HTTP server on 127.0.0.1 (port 0: a free one)."""

    def __init__(self, collector: CadvisorCollector, port: int = 0) -> None:
        self.collector = collector
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        self._server, self._thread = start_http_server(port, addr="127.0.0.1",
                                                       registry=registry)
        self.url = f"http://127.0.0.1:{self._server.server_port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
        self.collector.close()
