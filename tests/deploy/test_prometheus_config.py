"""deploy/prometheus/prometheus.yml's relabelling, run by a real Prometheus on loopback: the
pods as Kubernetes discovery would describe them (the rendered runtime's and Prometheus'
templates, the kube backend's action pod), each with a /metrics server at its own loopback
address like a pod IP, and a cAdvisor-shaped exporter. Only the runtime and the action server
are scraped, labelled as tracksys reads them; only the four cAdvisor series tracksys queries,
of this namespace, are kept.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from jsorc_live.kube.manifests import build, default_spec
from jsorc_live.tracksys import CADVISOR_METRICS
from tests.deploy.manifests import pod_template, rendered
from tests.deploy.prometheus import (
    active_targets,
    instant,
    loopback_config,
    pod_target,
    running_prometheus,
)
from tests.jsorc_live.binaries import need, poll
from tests.jsorc_live.servers import free_port


@contextlib.contextmanager
def metrics_server(registry: CollectorRegistry, port: int | None = None
                   ) -> Iterator[tuple[str, int]]:
    """`registry` served (on every path) at a loopback address of its own, like a pod IP;
    (ip, port). With `port`, that port (another address is tried when it is taken)."""
    last: OSError | None = None
    for _ in range(20):
        ip = f"127.0.1.{random.randint(100, 250)}"
        chosen = port or free_port()
        try:
            server, thread = start_http_server(chosen, addr=ip, registry=registry)
        except OSError as exc:
            last = exc
            continue
        try:
            yield ip, chosen
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        return
    raise AssertionError(f"no loopback address could bind port {port}: {last}")


def some_metrics(name: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge(f"{name}_up_marker", "this server answered", registry=registry).set(1)
    return registry


def cadvisor_metrics() -> CollectorRegistry:
    """The four series tracksys reads, in jsorc and in kube-system, and one it does not."""
    registry = CollectorRegistry()
    labels = ["namespace", "pod", "container"]
    series = [Counter("container_cpu_usage_seconds", "", labels, registry=registry),
              Gauge("container_memory_working_set_bytes", "", labels, registry=registry),
              Counter("container_network_receive_bytes", "", labels, registry=registry),
              Counter("container_network_transmit_bytes", "", labels, registry=registry),
              Gauge("container_fs_usage_bytes", "", labels, registry=registry)]
    for namespace in ("jsorc", "kube-system"):
        for metric in series:
            child = metric.labels(namespace, f"{namespace}-pod", "c")
            if isinstance(child, Counter):
                child.inc(5)
            else:
                child.set(5)
    return registry


def named_pod(template: dict[str, Any], name: str) -> dict[str, Any]:
    pod = copy.deepcopy(template)
    pod["metadata"] = {**pod["metadata"], "name": name, "namespace": "jsorc"}
    return pod


def test_the_scrape_config_keeps_the_runtime_the_action_servers_and_four_cadvisor_series(
        tmp_path: Path) -> None:
    need("prometheus")
    objs = rendered()
    runtime = named_pod(pod_template(objs, "jsorc"), "jsorc-7d9f8b6c5-abcde")
    prometheus_pod = named_pod(pod_template(objs, "prometheus"), "prometheus-5b8c9d-fghij")
    (runtime_port,) = runtime["spec"]["containers"][0]["ports"]
    (prom_port,) = prometheus_pod["spec"]["containers"][0]["ports"]
    spec = dataclasses.replace(default_spec("jsorc_live.actions.examples.bi_enc", {}, 100, 1),
                               port=free_port())
    action = named_pod(build("bi_enc", spec, "jsorc", 1).deployment["spec"]["template"],
                       "jsorc-bi-enc-6d5f4c-klmno")
    with contextlib.ExitStack() as stack:
        rt_ip, _ = stack.enter_context(metrics_server(some_metrics("runtime"),
                                                      runtime_port["containerPort"]))
        act_ip, _ = stack.enter_context(metrics_server(some_metrics("action"), spec.port))
        prom_ip, _ = stack.enter_context(metrics_server(some_metrics("prometheus"),
                                                        prom_port["containerPort"]))
        cadvisor_ip, cadvisor_port = stack.enter_context(metrics_server(cadvisor_metrics()))
        pending = named_pod(action, "jsorc-bi-enc-6d5f4c-pendg")
        sd = tmp_path / "pods.json"
        sd.write_text(json.dumps([*pod_target(runtime, rt_ip), *pod_target(action, act_ip),
                                  *pod_target(prometheus_pod, prom_ip),
                                  *pod_target(pending, act_ip, phase="Pending")]))
        token = tmp_path / "token"
        token.write_text("not-checked")
        config = loopback_config(pods_sd=sd, cadvisor=f"{cadvisor_ip}:{cadvisor_port}",
                                 credentials=token)
        prom = stack.enter_context(running_prometheus(config, tmp_path / "prometheus"))

        def scraped() -> list[dict[str, Any]] | None:
            targets = [t for t in active_targets(prom) if t["labels"]["job"] == "jsorc"]
            return targets if targets and all(t["health"] == "up" for t in targets) else None

        targets = poll(scraped, 30, "the jsorc job's targets up", every_s=0.25)
        # (poll takes an empty answer for an answer: `or None` waits for a series.)
        kept = poll(lambda: instant(prom, 'count by (__name__, namespace) ({job="cadvisor", '
                                          '__name__=~"container_.*"})') or None,
                    30, "cAdvisor scraped")
    labels = sorted((t["labels"] for t in targets), key=lambda lab: lab["pod"])
    assert labels == [
        {"job": "jsorc", "instance": f"{rt_ip}:{runtime_port['containerPort']}",
         "namespace": "jsorc", "pod": "jsorc-7d9f8b6c5-abcde", "role": "runtime"},
        {"job": "jsorc", "instance": f"{act_ip}:{spec.port}", "namespace": "jsorc",
         "pod": "jsorc-bi-enc-6d5f4c-klmno", "role": "replica", "action": "bi_enc"},
    ]
    assert {t["scrapeUrl"].rsplit("/", 1)[1] for t in targets} == {"metrics"}
    assert sorted((r["metric"]["__name__"], r["metric"]["namespace"]) for r in kept) == \
        sorted((name, "jsorc") for name in CADVISOR_METRICS.values())
