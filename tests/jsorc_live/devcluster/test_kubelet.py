"""Deployments become real action-server processes: pods on their own loopback addresses,
ready when their probe answers, in the Deployment's status and the Service's EndpointSlice;
scaled through ``/scale`` (honouring pod-deletion-cost), restarted when they die, rolled on a
template change, stopped (processes gone) on scale-down and delete."""

from __future__ import annotations

import ipaddress
import os
import signal
from typing import Any

import httpx
import psutil
from kubernetes import client, config

from jsorc_live.devcluster import DevCluster, PodInfo
from tests.conftest import REPO
from tests.jsorc_live.devcluster.helpers import (
    PORT,
    SPEC,
    action_deployment,
    kubectl,
    service,
    wait_for,
)

NS = "jsorc"
LABELS = {"app.kubernetes.io/name": "sample", "app.kubernetes.io/part-of": "jsorc-test"}


def gone(pids: set[int]) -> bool:
    def dead(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    return all(dead(pid) for pid in pids)


def slice_ips(api: client.ApiClient, name: str, *, ready: bool = True) -> set[str]:
    slices = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        NS, label_selector=f"kubernetes.io/service-name={name}").items
    return {address for s in slices for e in s.endpoints or []
            if bool(e.conditions.ready) is ready for address in e.addresses}


def ready_replicas(apps: client.AppsV1Api, name: str) -> int:
    status = apps.read_namespaced_deployment_status(name, NS).status
    return int(status.ready_replicas or 0)


def test_pods_of_a_deployment_run_scale_and_stop(cluster: DevCluster,
                                                 api: client.ApiClient) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(NS, action_deployment("sample"))
    core.create_namespaced_service(NS, service("sample", LABELS))
    (first,) = cluster.wait_for_pods(1, namespace=NS, deployment="sample")

    apps.patch_namespaced_deployment_scale("sample", NS, {"spec": {"replicas": 3}})
    pods = cluster.wait_for_pods(3, namespace=NS, deployment="sample")
    ips = {p.ip for p in pods}
    assert len(ips) == 3 and len({p.pid for p in pods}) == 3
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("127.0.0.0/8") for ip in ips)
    for pod in pods:  # the same port on every pod's own address
        answer = httpx.get(f"http://{pod.ip}:{PORT}{SPEC}", timeout=5)
        assert answer.status_code == 200 and "demo.double" in answer.json()
    wait_for("readyReplicas 3", lambda: ready_replicas(apps, "sample") == 3)
    status = apps.read_namespaced_deployment_status("sample", NS).status
    assert (status.replicas, status.updated_replicas, status.available_replicas) == (3, 3, 3)
    assert status.observed_generation == apps.read_namespaced_deployment(
        "sample", NS).metadata.generation
    wait_for("the slice lists the 3 ready pods", lambda: slice_ips(api, "sample") == ips)
    objects = {p.metadata.name: p for p in core.list_namespaced_pod(
        NS, label_selector="app.kubernetes.io/name=sample").items}
    assert set(objects) == {p.name for p in pods}
    for pod in pods:
        obj = objects[pod.name]
        assert obj.status.pod_ip == pod.ip and obj.status.phase == "Running"
        assert {c.type: c.status for c in obj.status.conditions}["Ready"] == "True"
        assert obj.metadata.labels["pod-template-hash"]

    # scale down to one: the pod with the highest deletion cost stays
    keep = next(p for p in pods if p.name != first.name)
    core.patch_namespaced_pod(keep.name, NS, {"metadata": {"annotations": {
        "controller.kubernetes.io/pod-deletion-cost": "1000"}}})
    others = {p.pid for p in pods if p.name != keep.name}
    assert all(p is not None for p in others)
    apps.patch_namespaced_deployment_scale("sample", NS, {"spec": {"replicas": 1}})
    (left,) = cluster.wait_for_pods(1, namespace=NS, deployment="sample")
    assert left.name == keep.name
    wait_for("the removed pods' processes to exit", lambda: gone({p for p in others if p}))
    wait_for("the slice lists the pod left", lambda: slice_ips(api, "sample") == {keep.ip})
    wait_for("their Pod objects to go", lambda: [p.metadata.name for p in
                                                 core.list_namespaced_pod(NS).items]
             == [keep.name])

    # delete: the pods, their processes and the ReplicaSet go
    apps.delete_namespaced_deployment("sample", NS)
    wait_for("no pod left", lambda: not cluster.pods(NS))
    assert gone({keep.pid} if keep.pid else set())
    wait_for("no Pod objects", lambda: not core.list_namespaced_pod(NS).items)
    wait_for("no ReplicaSet", lambda: not apps.list_namespaced_replica_set(NS).items)
    wait_for("an empty slice", lambda: not slice_ips(api, "sample", ready=True)
             and not slice_ips(api, "sample", ready=False))


def test_a_dead_container_is_restarted_and_unready_meanwhile(cluster: DevCluster,
                                                             api: client.ApiClient,
                                                             kubectl_bin: str) -> None:
    core = client.CoreV1Api(api)
    client.AppsV1Api(api).create_namespaced_deployment(NS, action_deployment("crashy"))
    (pod,) = cluster.wait_for_pods(1, namespace=NS)
    assert pod.pid is not None
    os.kill(pod.pid, signal.SIGKILL)

    def restarted() -> PodInfo | None:
        (now,) = cluster.pods(NS) or (None,)
        return now if now is not None and now.restarts == 1 else None

    again = wait_for("restartCount 1", restarted)
    assert again.name == pod.name and again.ip == pod.ip  # the same pod, restarted in place
    statuses: list[dict[str, Any]] = []

    def observed() -> bool:
        obj = core.read_namespaced_pod(pod.name, NS)
        ready = {c.type: c.status for c in obj.status.conditions}["Ready"]
        statuses.append({"ready": ready, "restarts": obj.status.container_statuses[0]
                         .restart_count})
        return ready == "True" and obj.status.container_statuses[0].restart_count == 1

    wait_for("ready again after the restart", observed)
    assert statuses[-1] == {"ready": "True", "restarts": 1}
    (back,) = cluster.wait_for_pods(1, namespace=NS)
    assert back.pid not in (None, pod.pid)
    last = core.read_namespaced_pod(pod.name, NS).status.container_statuses[0].last_state
    assert last.terminated.exit_code == 128 + signal.SIGKILL  # as a container runtime says
    logs = kubectl(kubectl_bin, cluster.kubeconfig, "logs", pod.name, "-n", NS).stdout
    assert logs.count("jsorc action server:") == 2  # both runs wrote to the pod's log


def test_a_template_change_rolls_the_pods(cluster: DevCluster, api: client.ApiClient,
                                          kubectl_bin: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(NS, action_deployment("roll", replicas=2))
    before = cluster.wait_for_pods(2, namespace=NS)
    apps.patch_namespaced_deployment("roll", NS, {"spec": {"template": {"spec": {
        "containers": [{"name": "action-server", "env": [{"name": "V", "value": "2"}]}]}}}})
    after = wait_for("two new pods", lambda: (lambda pods: pods if len(pods) == 2 and not
                                              {p.name for p in pods} & {p.name for p in before}
                                              and all(p.ready for p in pods) else None)(
        [p for p in cluster.pods(NS) if not p.terminating]))
    assert {p.name.rsplit("-", 2)[1] for p in after} != {p.name.rsplit("-", 2)[1]
                                                        for p in before}
    wait_for("the old processes to exit", lambda: gone({p.pid for p in before if p.pid}))
    status = kubectl(kubectl_bin, cluster.kubeconfig, "rollout", "status", "deployment/roll",
                     "-n", NS, "--timeout=20s").stdout
    assert "successfully rolled out" in status


def test_kubectl_delete_pod_gets_a_replacement(cluster: DevCluster, api: client.ApiClient,
                                               kubectl_bin: str) -> None:
    client.AppsV1Api(api).create_namespaced_deployment(NS, action_deployment("replace"))
    (pod,) = cluster.wait_for_pods(1, namespace=NS)
    # the kubelet lists /api/v1/pods; its requests never hit a fault aimed at clients
    rule = cluster.faults.inject("GET", r"^/api/v1/pods$", status=500, times=None)
    kubectl(kubectl_bin, cluster.kubeconfig, "delete", "pod", pod.name, "-n", NS,
            "--timeout=20s")
    (new,) = cluster.wait_for_pods(1, namespace=NS)
    assert new.name != pod.name
    assert gone({pod.pid} if pod.pid else set())
    assert rule.hits == 0


def test_stop_leaves_no_process() -> None:
    cluster = DevCluster(namespace="jsorc", workdir=REPO, grace_period_s=5.0).start()
    configuration = client.Configuration()
    config.load_kube_config(str(cluster.kubeconfig), client_configuration=configuration)
    with client.ApiClient(configuration) as api:
        client.AppsV1Api(api).create_namespaced_deployment(NS, action_deployment("s", 2))
    cluster.wait_for_pods(2, namespace=NS)
    pids = set(cluster.started_pids)
    kubeconfig = cluster.kubeconfig
    cluster.stop()
    assert len(pids) == 2 and gone(pids)
    assert not kubeconfig.exists()  # its temporary folder is removed
    cluster.stop()  # idempotent
