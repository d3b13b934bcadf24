"""The cAdvisor-shaped exporter: Prometheus text with the four container families for every
running pod, CPU and memory from the pod's process, network from the action server's own
HTTP byte counters."""

from __future__ import annotations

import httpx
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from jsorc_live.devcluster import DevCluster
from tests.jsorc_live.devcluster.helpers import PORT, action_deployment

NS = "jsorc"
FAMILIES = ("container_cpu_usage_seconds", "container_memory_working_set_bytes",
            "container_network_receive_bytes", "container_network_transmit_bytes")


def scrape(url: str) -> dict[str, dict[tuple[str, str], float]]:
    """family -> (pod, container) -> value."""
    out: dict[str, dict[tuple[str, str], float]] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            assert sample.labels["namespace"] == NS
            key = (sample.labels["pod"], sample.labels["container"])
            out.setdefault(family.name, {})[key] = sample.value
    return out


def test_the_four_families_for_the_running_pods(cluster: DevCluster,
                                                api: client.ApiClient) -> None:
    client.AppsV1Api(api).create_namespaced_deployment(NS, action_deployment("m", replicas=2))
    pods = cluster.wait_for_pods(2, namespace=NS)
    for pod in pods:  # some traffic, which the pod's server counts
        assert httpx.post(f"http://{pod.ip}:{PORT}/double/", json={"x": 21}).json() == 42
    metrics = scrape(cluster.metrics_url)
    assert set(FAMILIES) <= set(metrics)
    for pod in pods:
        cpu = metrics["container_cpu_usage_seconds"]
        memory = metrics["container_memory_working_set_bytes"]
        assert cpu[(pod.name, "action-server")] > 0
        assert cpu[(pod.name, "")] >= cpu[(pod.name, "action-server")]  # the pod level
        assert memory[(pod.name, "action-server")] > 10 * 2**20  # a Python server's RSS
        received = metrics["container_network_receive_bytes"][(pod.name, "")]
        sent = metrics["container_network_transmit_bytes"][(pod.name, "")]
        assert received > len('{"x": 21}') and sent > len("42")
    assert {p for p, _ in metrics["container_cpu_usage_seconds"]} == {p.name for p in pods}
