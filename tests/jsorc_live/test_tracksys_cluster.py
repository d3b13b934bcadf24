"""tracksys in a cluster: the per-pod PromQL on its own, the rows built from its answers, the
source chosen at `start` (and by `jsorc serve` with the kube backend); then a real Prometheus
running deploy/prometheus/prometheus.yml on loopback, scraping the dev cluster's cAdvisor
exporter while the kube backend's action-server pod does work.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psutil
import pytest

from jsorc_live import cli
from jsorc_live.api import Settings
from jsorc_live.kube.manifests import build, default_spec
from jsorc_live.kube.settings import KubeSettings
from jsorc_live.ops import Ops, serving
from jsorc_live.services import ScrapeTarget
from jsorc_live.tracksys import (
    CADVISOR_METRICS,
    PodQueries,
    PodScope,
    Source,
    TrackSys,
    promql_string,
    usage_from_pods,
)
from tests.deploy.prometheus import instant, loopback_config, pod_target, running_prometheus
from tests.jsorc_live.binaries import need, poll

MB = 2**20
SEL = 'namespace="jsorc",pod=~"jsorc-.*"'
CONTAINERS = SEL + ',container!="",container!="POD"'

# --------------------------------------------------------------------------- the queries


@pytest.mark.parametrize(("query", "expected"), [
    ("cpu_cores", f"sum by (pod) (rate(container_cpu_usage_seconds_total{{{CONTAINERS}}}"
                  "[30000ms]))"),
    ("cpu_seconds", f"sum by (pod) (increase(container_cpu_usage_seconds_total"
                    f"{{{CONTAINERS}}}[30000ms]))"),
    ("rss_bytes_last", f"sum by (pod) (container_memory_working_set_bytes{{{CONTAINERS}}})"),
    ("rss_bytes_mean", f"sum by (pod) (avg_over_time(container_memory_working_set_bytes"
                       f"{{{CONTAINERS}}}[30000ms]))"),
    # The pod's largest total, not the sum of each container's largest.
    ("rss_bytes_max", f"max_over_time((sum by (pod) (container_memory_working_set_bytes"
                      f"{{{CONTAINERS}}}))[30000ms:10000ms])"),
    ("samples", f"max by (pod) (count_over_time(container_memory_working_set_bytes"
                f"{{{CONTAINERS}}}[30000ms]))"),
    # One network namespace per pod: every container may report it, so the largest per
    # interface, summed over the interfaces; no container filter.
    ("net_received_bytes", "sum by (pod) (max by (pod, interface) (increase("
                           f"container_network_receive_bytes_total{{{SEL}}}[30000ms])))"),
    ("net_sent_bytes", "sum by (pod) (max by (pod, interface) (increase("
                       f"container_network_transmit_bytes_total{{{SEL}}}[30000ms])))"),
])
def test_pod_queries(query: str, expected: str) -> None:
    assert PodQueries(PodScope("jsorc"), 30.0).all()[query] == expected


def test_every_cadvisor_metric_is_queried() -> None:
    text = " ".join(PodQueries(PodScope("jsorc"), 5.0).all().values())
    assert all(metric in text for metric in CADVISOR_METRICS.values())


def test_label_values_are_quoted_as_promql_strings() -> None:
    assert promql_string('a"b\\c') == '"a\\"b\\\\c"'
    scope = PodScope("ns-1", pod_regex=r'x\d+"')
    assert 'pod=~"x\\\\d+\\""' in PodQueries(scope, 1.0).cpu_cores()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"namespace": "Jsorc"}, "DNS label"),
    ({"namespace": ""}, "DNS label"),
    ({"namespace": "jsorc", "pod_regex": "jsorc-("}, "not a regular expression"),
    ({"namespace": "jsorc", "resolution_s": 0.0}, "resolution_s must be > 0"),
    ({"namespace": "jsorc", "resolution_s": math.nan}, "resolution_s must be > 0"),
])
def test_pod_scope_refuses_what_promql_or_kubernetes_would(kwargs: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PodScope(**kwargs)


@pytest.mark.parametrize("window", [0.0, -1.0, math.inf, math.nan])
def test_pod_queries_need_a_window(window: float) -> None:
    with pytest.raises(ValueError, match="window_s must be > 0"):
        PodQueries(PodScope("jsorc"), window)


# --------------------------------------------------------------------------- rows


def test_usage_from_pods_gives_one_row_per_pod_named_by_its_scrape_labels() -> None:
    start, stop = 1000.0, 1030.0
    scope = PodScope("jsorc", runtime_pod="jsorc-7d9f-abcde", resolution_s=5.0)
    q = PodQueries(scope, 30.0)
    rt, rep, new = "jsorc-7d9f-abcde", "jsorc-bi-enc-5c6-xyz12", "jsorc-bi-enc-5c6-qqq34"
    answers = {
        q.cpu_cores(): {rt: 0.25, rep: 0.5},
        q.cpu_seconds(): {rt: 7.5, rep: 15.0},
        q.memory_last(): {rt: 300 * MB, rep: 120 * MB, new: 90 * MB},
        q.memory_mean(): {rt: 290 * MB, rep: 118 * MB, new: 90 * MB},
        q.memory_max(): {rt: 310 * MB, rep: 125 * MB, new: 90 * MB},
        q.samples(): {rt: 3, rep: 3, new: 1},
        q.network("net_received_bytes"): {rt: 5e5, rep: 2e5},
        q.network("net_sent_bytes"): {rt: 4e5, rep: 1e5},
    }
    asked: list[tuple[str, float]] = []

    def query(expr: str, t: float) -> dict[str, float]:
        asked.append((expr, t))
        return answers[expr]

    labels = {rep: {"pod": rep, "role": "replica", "action": "bi_enc"}}
    rows = {r.name: r for r in usage_from_pods(query, start, stop, scope, labels)}
    assert {t for _, t in asked} == {stop} and len(asked) == len(answers)
    assert list(rows) == sorted([rt, rep, new])
    # Not scraped by Prometheus, but it is the runtime's own pod.
    assert rows[rt].role == "runtime" and rows[rt].action == ""
    assert rows[rt].cpu_seconds == 7.5 and rows[rt].cpu_percent == 25.0
    assert rows[rep].role == "replica" and rows[rep].action == "bi_enc"
    assert rows[rep].rss_bytes_max == 125 * MB and rows[rep].net_sent_bytes == 1e5
    assert rows[rep].samples == 3 and rows[rep].pid is None and rows[rep].instance == rep
    # Born a moment ago: memory already, no rate yet.
    assert rows[new].cpu_seconds is None and rows[new].cpu_percent is None
    assert rows[new].note == "fewer than two scrapes inside the window"


# --------------------------------------------------------------------------- the source


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("url", "scope", "source", "detail"), [
    ("http://prom:9090", PodScope("jsorc"), Source.CADVISOR,
     "cAdvisor per pod through Prometheus at http://prom:9090 (namespace jsorc, pods ~ jsorc-.*)"),
    ("http://prom:9090", None, Source.PROMETHEUS, "Prometheus at http://prom:9090"),
    (None, PodScope("jsorc"), Source.PSUTIL,
     "psutil sampling every 0.5 s (no Prometheus configured; pods are not measured "
     "without it)"),
    (None, None, Source.PSUTIL, "psutil sampling every 0.5 s (no Prometheus configured)"),
])
def test_start_picks_the_source(url: str | None, scope: PodScope | None, source: Source,
                                detail: str) -> None:
    track = TrackSys(lambda: [ScrapeTarget("", "runtime")], lambda: url, pods=lambda: scope,
                     clock=Clock())
    try:
        started = track.start()
    finally:
        track.close()
    assert started == {"source": source.value, "detail": detail, "start": 1000.0}


# --------------------------------------------------------------------------- real Prometheus


def pair_calls(url: str, seconds: float) -> int:
    ctx = {"q": "Where is my flight? " * 20, "a": "When does the plane leave? " * 20}
    calls = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < deadline:
            answer = http.post("/cos_sim_score/", json=ctx)
            assert answer.status_code == 200, answer.text
            calls += 1
    return calls


def cpu_seconds(pids: tuple[int, ...]) -> float:
    """User + system CPU of these processes and their children, as the kernel counts it."""
    procs = [q for pid in pids for p in [psutil.Process(pid)] for q in [p, *p.children(True)]]
    return sum(p.cpu_times().user + p.cpu_times().system for p in procs)


@contextlib.contextmanager
def bi_enc_pod(tmp_path: Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A dev cluster running the kube backend's bi_enc Deployment (created through its API,
    as the backend does); the cluster and the pod as the API serves it."""
    devcluster = pytest.importorskip("jsorc_live.devcluster",
                                     reason="the dev cluster (jsorc_live/devcluster) is not built")
    from kubernetes import client, config

    with devcluster.DevCluster(namespace="jsorc", port=0,
                               kubeconfig=tmp_path / "kubeconfig") as dc:
        api = config.new_client_from_config(str(dc.kubeconfig))
        try:
            spec = default_spec("jsorc_live.actions.examples.bi_enc", {}, 100, 1)
            objects = build("bi_enc", spec, "jsorc", 1)
            client.AppsV1Api(api).create_namespaced_deployment("jsorc", objects.deployment)
            dc.wait_for_pods(1, namespace="jsorc", deployment=objects.name, timeout_s=60)
            (pod,) = client.CoreV1Api(api).list_namespaced_pod(
                "jsorc", label_selector="jsorc.dev/action=bi_enc").items
            yield dc, api.sanitize_for_serialization(pod)
        finally:
            api.close()


def test_tracksys_reads_each_pod_from_prometheus_scraping_cadvisor(tmp_path: Path) -> None:
    """The dev cluster's cAdvisor exporter (its pods' processes, and a pod-level series beside
    each container's, as the kubelet reports them) scraped by deploy's config."""
    need("prometheus")
    with bi_enc_pod(tmp_path) as (dc, pod):
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
        (port,) = pod["spec"]["containers"][0]["ports"]
        url = f"http://{ip}:{port['containerPort']}"
        (info,) = [p for p in dc.pods("jsorc") if p.name == name]
        sd = tmp_path / "pods.json"
        sd.write_text(json.dumps(pod_target(pod, ip, phase=pod["status"]["phase"])))
        token = tmp_path / "token"
        token.write_text("not-checked")
        metrics = httpx.URL(dc.metrics_url)
        config = loopback_config(pods_sd=sd, cadvisor=f"{metrics.host}:{metrics.port}",
                                 credentials=token, cadvisor_path=metrics.path)
        with running_prometheus(config, tmp_path / "prometheus") as prom:
            began = time.monotonic()
            poll(lambda: len(instant(prom, 'up{job=~"cadvisor|jsorc"} == 1')) == 2, 30,
                 "Prometheus scraping cAdvisor and the action server", every_s=0.25)
            first_scrape = time.monotonic() - began
            scope = PodScope("jsorc", resolution_s=1.0)
            track = TrackSys(lambda: [], lambda: prom, pods=lambda: scope)
            started = track.start()
            assert started["source"] == "cadvisor"
            cpu_before = cpu_seconds(info.pids)
            calls = pair_calls(url, 4.0)
            cpu_used = cpu_seconds(info.pids) - cpu_before
            time.sleep(1.2)  # the scrape after the last call
            report = track.stop()
            stop = report["window"]["stop"]
            answers = {key: instant(prom, expr, stop) for key, expr
                       in PodQueries(scope, stop - started["start"]).all().items()}
    for key, result in answers.items():
        assert [r["metric"] for r in result] == [{"pod": name}], key
    assert report["source"] == "cadvisor"
    (row,) = report["processes"]
    assert row["name"] == name and row["role"] == "replica" and row["action"] == "bi_enc"
    assert row["cpu_seconds"] > 0 and row["cpu_percent"] > 0, row
    # The container's series alone: the pod cgroup's copy beside it is not added.
    assert row["cpu_seconds"] == pytest.approx(cpu_used, rel=0.5), (row, cpu_used)
    assert row["rss_bytes_max"] > 10 * MB and row["rss_bytes_last"] > 10 * MB, row
    assert row["net_received_bytes"] > calls * 500 and row["net_sent_bytes"] > 0, row
    assert row["samples"] >= 3, row
    print(f"\ncadvisor: first scrape {first_scrape:.1f} s after ready; {calls} calls in "
          f"{report['window']['seconds']} s; {name}: {row['cpu_seconds']:.2f} CPU s "
          f"(psutil {cpu_used:.2f}), {row['cpu_percent']:.0f} % of a core, working set max "
          f"{row['rss_bytes_max'] / MB:.1f} MB, net in/out {row['net_received_bytes'] / 1024:.1f}"
          f"/{row['net_sent_bytes'] / 1024:.1f} KB, {row['samples']} samples")


class NoKeptServices:
    """Ops' MetaService when keep_alive is empty."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def url(self, name: str) -> str | None:
        return None

    def status(self) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize(("kube", "source", "detail"), [
    (KubeSettings(in_cluster=True), "cadvisor", "(namespace jsorc, pods ~ jsorc-.*)"),
    (None, "prometheus", "Prometheus at http://prometheus:9090"),
])
def test_serve_measures_the_namespaces_pods_with_the_kube_backend(
        kube: KubeSettings | None, source: str, detail: str) -> None:
    """`jsorc serve --prometheus-url URL`: tracksys reads that Prometheus, per pod of the
    backend's namespace when it is kube."""
    args = cli.build_parser().parse_args(["serve", "--prometheus-url",
                                          "http://prometheus:9090/"])
    service = SimpleNamespace(settings=Settings(namespace="jsorc", kubernetes=kube),
                              runtime=SimpleNamespace(routers={}), backend=None)
    app = SimpleNamespace(state=SimpleNamespace())
    app.state.jsorc_ops = ops = Ops(service, meta=NoKeptServices)  # type: ignore[arg-type]
    serving(app, "0.0.0.0", 8000, None, args.prometheus_url)  # type: ignore[arg-type]
    try:
        started = ops.tracksys.start()
    finally:
        ops.tracksys.close()
    assert started["source"] == source and detail in started["detail"]


@pytest.mark.parametrize("url", ["prometheus:9090", "ftp://prometheus", "http://"])
def test_serve_refuses_a_prometheus_url_that_is_not_http(
        url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--prometheus-url", url])
    assert "expected an http(s):// URL" in capsys.readouterr().err
