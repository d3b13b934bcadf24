"""The dev cluster's API against independent clients: the official Python client and
kubectl v1.32, over HTTP on loopback. Objects here are not run (no pods come of a Service or
a ConfigMap; Deployments in these tests ask for 0 replicas)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import urllib3
import yaml
from kubernetes import client, watch

from jsorc_live.devcluster import DevCluster
from jsorc_live.devcluster.resources import RESOURCES
from tests.jsorc_live.devcluster.helpers import action_deployment, kubectl, kubectl_json, service

NS = "jsorc"


def body(exc: client.ApiException) -> dict[str, Any]:
    parsed = json.loads(exc.body)
    assert isinstance(parsed, dict)
    return parsed


def test_kubectl_lists_what_the_python_client_created(cluster: DevCluster,
                                                      api: client.ApiClient,
                                                      kubectl_bin: str) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(NS, action_deployment("web", replicas=0))
    core.create_namespaced_service(NS, service("web", {"app.kubernetes.io/name": "web"}))
    doc = kubectl_json(kubectl_bin, cluster.kubeconfig, "get", "deployments,services",
                       "-n", NS)
    assert doc["kind"] == "List"
    kinds = {(item["kind"], item["metadata"]["name"]) for item in doc["items"]}
    assert kinds == {("Deployment", "web"), ("Service", "web")}
    deployment = next(i for i in doc["items"] if i["kind"] == "Deployment")
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"  # server defaults
    svc = next(i for i in doc["items"] if i["kind"] == "Service")
    assert svc["spec"]["clusterIP"].startswith("10.96.")
    table = kubectl(kubectl_bin, cluster.kubeconfig, "get", "deploy,svc", "-n", NS).stdout
    assert "deployment.apps/web" in table and "service/web" in table
    namespaces = kubectl(kubectl_bin, cluster.kubeconfig, "get", "ns").stdout.split()
    assert {"default", "jsorc", "kube-system"} <= set(namespaces)


def test_lists_carry_kind_api_version_and_resource_version(cluster: DevCluster) -> None:
    for url, kind, version in (("/api/v1/namespaces", "NamespaceList", "v1"),
                               (f"/apis/apps/v1/namespaces/{NS}/deployments",
                                "DeploymentList", "apps/v1"),
                               ("/apis/discovery.k8s.io/v1/endpointslices",
                                "EndpointSliceList", "discovery.k8s.io/v1")):
        doc = httpx.get(cluster.url + url).json()
        assert (doc["kind"], doc["apiVersion"]) == (kind, version)
        assert int(doc["metadata"]["resourceVersion"]) > 0
    items = httpx.get(cluster.url + "/api/v1/namespaces").json()["items"]
    assert items and all("kind" not in i for i in items)  # as a real server's list items


def test_label_selectors_filter_lists(cluster: DevCluster, api: client.ApiClient,
                                      kubectl_bin: str) -> None:
    core = client.CoreV1Api(api)
    for name, tier in (("a", "front"), ("b", "back"), ("c", "front")):
        core.create_namespaced_config_map(NS, {"metadata": {"name": name, "labels": {
            "tier": tier, "app": "shop"}}})
    def names(selector: str) -> list[str]:
        found = core.list_namespaced_config_map(NS, label_selector=selector)
        return [i.metadata.name for i in found.items]
    assert names("tier=front,app=shop") == ["a", "c"]
    assert names("tier!=front") == ["b"]
    assert names("tier in (back, side)") == ["b"]
    assert names("app=other") == []
    by_kubectl = kubectl_json(kubectl_bin, cluster.kubeconfig, "get", "configmaps", "-n", NS,
                              "-l", "tier=back")
    assert [i["metadata"]["name"] for i in by_kubectl["items"]] == ["b"]
    with pytest.raises(client.ApiException) as bad:
        core.list_namespaced_config_map(NS, label_selector="tier in (")
    assert bad.value.status == 400


def test_missing_duplicate_and_wrong_namespace_answer_as_a_real_server(
        api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    with pytest.raises(client.ApiException) as missing:
        apps.read_namespaced_deployment("nope", NS)
    assert missing.value.status == 404
    assert (body(missing.value)["kind"], body(missing.value)["reason"],
            body(missing.value)["message"]) == ("Status", "NotFound",
                                                'deployments.apps "nope" not found')
    apps.create_namespaced_deployment(NS, action_deployment("dup", replicas=0))
    with pytest.raises(client.ApiException) as dup:
        apps.create_namespaced_deployment(NS, action_deployment("dup", replicas=0))
    assert dup.value.status == 409
    assert body(dup.value)["reason"] == "AlreadyExists"
    with pytest.raises(client.ApiException) as no_ns:
        apps.create_namespaced_deployment("absent", action_deployment("x", replicas=0))
    assert no_ns.value.status == 404
    assert body(no_ns.value)["message"] == 'namespaces "absent" not found'
    assert body(no_ns.value)["details"] == {"name": "absent", "kind": "namespaces"}
    broken = action_deployment("broken", replicas=0)
    broken["spec"]["selector"] = {"matchLabels": {"other": "x"}}
    with pytest.raises(client.ApiException) as invalid:
        apps.create_namespaced_deployment(NS, broken)
    assert (invalid.value.status, body(invalid.value)["reason"]) == (422, "Invalid")


def test_resource_versions_uids_and_generations(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    created = apps.create_namespaced_deployment(NS, action_deployment("gen", replicas=0))
    meta = created.metadata
    assert meta.uid and meta.creation_timestamp and meta.generation == 1
    rv0 = int(meta.resource_version)
    labelled = apps.patch_namespaced_deployment("gen", NS, {"metadata": {"labels": {"x": "1"}}})
    assert int(labelled.metadata.resource_version) > rv0
    assert labelled.metadata.generation == 1  # metadata is not spec
    same = apps.patch_namespaced_deployment("gen", NS, {"metadata": {"labels": {"x": "1"}}})
    assert same.metadata.resource_version == labelled.metadata.resource_version  # no-op
    scaled = apps.patch_namespaced_deployment("gen", NS, {"spec": {"replicas": 0,
                                                                   "minReadySeconds": 1}})
    assert scaled.metadata.generation == 2
    assert int(scaled.metadata.resource_version) > int(labelled.metadata.resource_version)
    listed = apps.list_namespaced_deployment(NS)
    assert int(listed.metadata.resource_version) >= int(scaled.metadata.resource_version)
    stale = apps.read_namespaced_deployment("gen", NS)
    stale.metadata.resource_version = str(rv0)
    with pytest.raises(client.ApiException) as conflict:
        apps.replace_namespaced_deployment("gen", NS, stale)
    assert (conflict.value.status, body(conflict.value)["reason"]) == (409, "Conflict")
    fresh = apps.read_namespaced_deployment("gen", NS)
    fresh.spec.min_ready_seconds = 2
    assert apps.replace_namespaced_deployment("gen", NS, fresh).metadata.generation == 3
    assert apps.read_namespaced_deployment("gen", NS).metadata.uid == meta.uid


def test_scale_subresource_reads_and_writes_replicas(api: client.ApiClient,
                                                     kubectl_bin: str,
                                                     cluster: DevCluster) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(NS, action_deployment("scaled", replicas=0))
    scale = apps.read_namespaced_deployment_scale("scaled", NS)
    assert (scale.kind, scale.api_version, scale.spec.replicas) == ("Scale", "autoscaling/v1",
                                                                    0)
    assert "app.kubernetes.io/name=scaled" in scale.status.selector
    patched = apps.patch_namespaced_deployment_scale("scaled", NS, {"spec": {"replicas": 0}})
    assert patched.spec.replicas == 0
    scale.spec.replicas = 0
    scale.metadata.resource_version = "1"  # stale
    with pytest.raises(client.ApiException) as conflict:
        apps.replace_namespaced_deployment_scale("scaled", NS, scale)
    assert conflict.value.status == 409
    with pytest.raises(client.ApiException) as invalid:
        apps.patch_namespaced_deployment_scale("scaled", NS, {"spec": {"replicas": -1}})
    assert invalid.value.status == 422
    kubectl(kubectl_bin, cluster.kubeconfig, "scale", "deployment/scaled", "-n", NS,
            "--replicas=0")


def test_watch_resumes_from_a_resource_version_and_expires(cluster: DevCluster,
                                                           api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    start = core.list_namespaced_config_map(NS).metadata.resource_version

    def writes() -> None:
        time.sleep(0.2)
        core.create_namespaced_config_map(NS, {"metadata": {"name": "w", "labels": {
            "watch": "me"}}, "data": {"k": "1"}})
        core.patch_namespaced_config_map("w", NS, {"data": {"k": "2"}})
        core.patch_namespaced_config_map("w", NS, {"metadata": {"labels": {"watch": "not"}}})
        core.create_namespaced_config_map(NS, {"metadata": {"name": "other"}})

    writer = threading.Thread(target=writes)
    writer.start()
    seen = []
    for event in watch.Watch().stream(core.list_namespaced_config_map, NS,
                                      resource_version=start, label_selector="watch=me",
                                      timeout_seconds=2):
        seen.append((event["type"], event["object"].data.get("k")))
        if len(seen) == 3:
            break
    writer.join()
    # leaving the selector reads as DELETED, and "other" never shows
    assert seen == [("ADDED", "1"), ("MODIFIED", "2"), ("DELETED", "2")]
    cluster.call(lambda store: store.compact())
    with pytest.raises(client.ApiException) as gone:
        for _ in watch.Watch().stream(core.list_namespaced_config_map, NS,
                                      resource_version=start, timeout_seconds=2):
            pass
    assert gone.value.status == 410


def test_faults_answer_as_configured(cluster: DevCluster, api: client.ApiClient) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(NS, action_deployment("f", replicas=0))
    conflict = cluster.faults.inject("PATCH", r"/deployments/f/scale$", status=409)
    with pytest.raises(client.ApiException) as first:
        apps.patch_namespaced_deployment_scale("f", NS, {"spec": {"replicas": 0}})
    assert (first.value.status, body(first.value)["reason"]) == (409, "Conflict")
    apps.patch_namespaced_deployment_scale("f", NS, {"spec": {"replicas": 0}})  # once only
    assert conflict.hits == 1 and conflict.exhausted

    throttle = cluster.faults.inject("GET", r"/namespaces/jsorc/configmaps$", status=429,
                                     retry_after_s=1.2, times=2)
    for _ in range(2):
        with pytest.raises(client.ApiException) as throttled:
            core.list_namespaced_config_map(NS)
        assert throttled.value.status == 429
        assert throttled.value.headers["Retry-After"] == "2"
        assert body(throttled.value)["details"]["retryAfterSeconds"] == 2
    core.list_namespaced_config_map(NS)
    assert throttle.hits == 2

    cluster.faults.inject("*", r"/configmaps/boom$", status=500, times=None)
    for _ in range(3):
        with pytest.raises(client.ApiException) as broken:
            core.read_namespaced_config_map("boom", NS)
        assert (broken.value.status, body(broken.value)["reason"]) == (500, "InternalError")

    cluster.faults.inject("GET", r"/namespaces/jsorc/configmaps$", status=410, watch=True)
    with pytest.raises(client.ApiException) as expired:  # a watch expires with an ERROR event
        for _ in watch.Watch().stream(core.list_namespaced_config_map, NS,
                                      resource_version="1", timeout_seconds=1):
            pass
    assert expired.value.status == 410

    cluster.faults.inject("GET", r"/namespaces/jsorc/services$", stall_s=1.5, status=None)
    began = time.monotonic()
    with pytest.raises((urllib3.exceptions.ReadTimeoutError,
                        urllib3.exceptions.MaxRetryError)) as stalled:
        core.list_namespaced_service(NS, _request_timeout=0.3)
    assert "timed out" in str(stalled.value).lower()
    assert time.monotonic() - began < 1.2
    assert core.list_namespaced_service(NS).kind == "ServiceList"  # the stall was one request
    assert ("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/f/scale", 409) in \
        cluster.faults.log
    cluster.faults.clear()
    assert cluster.faults.rules == []


def test_a_wrong_token_is_unauthorized(cluster: DevCluster) -> None:
    url = cluster.url + "/api/v1/namespaces"
    assert httpx.get(url, headers={"Authorization": f"Bearer {cluster.token}"}).status_code \
        == 200
    refused = httpx.get(url, headers={"Authorization": "Bearer wrong"})
    assert (refused.status_code, refused.json()["reason"]) == (401, "Unauthorized")


def test_discovery_and_version_for_kubectl(cluster: DevCluster, kubectl_bin: str) -> None:
    version = httpx.get(cluster.url + "/version").json()
    assert version["major"] == "1" and version["gitVersion"].startswith("v1.32")
    groups = {g["name"] for g in httpx.get(cluster.url + "/apis").json()["groups"]}
    assert {"apps", "discovery.k8s.io"} <= groups
    resources = kubectl(kubectl_bin, cluster.kubeconfig, "api-resources", "--no-headers"
                        ).stdout
    for name in ("deployments", "endpointslices", "pods", "services", "namespaces"):
        assert name in resources


def test_kubectl_apply_creates_then_leaves_unchanged(cluster: DevCluster, kubectl_bin: str,
                                                     tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump_all([
        {**action_deployment("applied", replicas=0), "metadata": {"name": "applied",
                                                                  "namespace": NS}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "applied", "namespace": NS}, "data": {"a": "1"}}]))
    first = kubectl(kubectl_bin, cluster.kubeconfig, "apply", "-f", str(manifest)).stdout
    assert "deployment.apps/applied created" in first and "configmap/applied created" in first
    again = kubectl(kubectl_bin, cluster.kubeconfig, "apply", "-f", str(manifest)).stdout
    assert again.count("unchanged") == 2
    server_side = kubectl(kubectl_bin, cluster.kubeconfig, "apply", "--server-side", "-f",
                          str(manifest)).stdout
    assert "serverside-applied" in server_side


def test_every_served_resource_lists_with_its_kind(cluster: DevCluster) -> None:
    for spec in RESOURCES:
        prefix = f"/apis/{spec.group}/{spec.version}" if spec.group else "/api/v1"
        doc = httpx.get(f"{cluster.url}{prefix}/{spec.plural}").json()
        assert (doc["kind"], doc["apiVersion"]) == (f"{spec.kind}List", spec.group_version)
