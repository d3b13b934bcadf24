"""The API server's and controllers' rules as pure functions: selectors, patches, paths,
discovery, the ReplicaSet's scale-down order, a Deployment's plan and status, a container's
command line and environment, pod addresses. No server, no processes."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from jsorc_live.devcluster import discovery, patches, selectors
from jsorc_live.devcluster.emulator import parse_api_path
from jsorc_live.devcluster.pods import (
    AddressPool,
    ContainerConfigError,
    container_argv,
    container_env,
    probe_of,
)
from jsorc_live.devcluster.resources import ApiError
from jsorc_live.devcluster.workloads import (
    Plan,
    PodState,
    deployment_status,
    plan,
    scale_down_order,
    template_hash,
)

# --------------------------------------------------------------------------- selectors

LABELS = {"app": "web", "tier": "front", "env": "prod"}


@pytest.mark.parametrize(("selector", "selected"), [
    ("", True),
    ("app=web", True),
    ("app==web,tier=front", True),
    ("app=web,tier=back", False),
    ("app!=web", False),
    ("app!=db", True),
    ("env in (prod, staging)", True),
    ("env notin (prod)", False),
    ("tier", True),
    ("!tier", False),
    ("!legacy,app=web", True),
    ("missing=", False),
])
def test_label_selector_strings(selector: str, selected: bool) -> None:
    assert selectors.matches(selectors.parse_label_selector(selector), LABELS) is selected


@pytest.mark.parametrize("bad", ["app=(", "a b c", "env in (prod", "=web"])
def test_malformed_label_selectors_are_refused(bad: str) -> None:
    with pytest.raises(selectors.SelectorError):
        selectors.parse_label_selector(bad)


def test_label_selector_objects_and_their_string_form() -> None:
    sel = {"matchLabels": {"app": "web"},
           "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "qa"]},
                                {"key": "legacy", "operator": "DoesNotExist"}]}
    reqs = selectors.from_label_selector(sel)
    assert selectors.matches(reqs, LABELS)
    assert not selectors.matches(reqs, {**LABELS, "legacy": "yes"})
    assert selectors.to_string(sel) == "app=web,env in (prod,qa),!legacy"
    assert selectors.parse_label_selector(selectors.to_string(sel)) == reqs


def test_field_selectors_compare_dotted_paths() -> None:
    pod = {"metadata": {"name": "p1", "namespace": "jsorc"}, "status": {"phase": "Running"}}
    terms = selectors.parse_field_selector("metadata.name=p1,status.phase!=Pending")
    assert selectors.matches_fields(terms, pod)
    assert not selectors.matches_fields(selectors.parse_field_selector("metadata.name=p2"), pod)


# --------------------------------------------------------------------------- patches

DEPLOY: dict[str, Any] = {"spec": {"replicas": 1, "template": {"spec": {"containers": [
    {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
    {"name": "b", "image": "b:1"}]}}}}


def test_merge_patch_replaces_lists_and_null_removes() -> None:
    out = patches.merge_patch(DEPLOY, {"spec": {"replicas": 3, "template": {"spec": {
        "containers": [{"name": "a", "image": "a:2"}]}}}, "metadata": {"x": None}})
    assert out["spec"]["replicas"] == 3
    assert out["spec"]["template"]["spec"]["containers"] == [{"name": "a", "image": "a:2"}]
    assert DEPLOY["spec"]["replicas"] == 1  # the target is not modified


def test_strategic_merge_patch_merges_containers_by_name() -> None:
    out = patches.strategic_merge_patch(DEPLOY, {"spec": {"template": {"spec": {"containers": [
        {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
        {"name": "c", "image": "c:1"}]}}}})
    containers = out["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["a", "b", "c"]
    assert containers[0]["image"] == "a:2"
    assert containers[0]["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]
    deleted = patches.strategic_merge_patch(DEPLOY, {"spec": {"template": {"spec": {
        "containers": [{"name": "b", "$patch": "delete"}]}}}})
    assert [c["name"] for c in deleted["spec"]["template"]["spec"]["containers"]] == ["a"]


def test_json_patch_operations() -> None:
    out = patches.json_patch(DEPLOY, [
        {"op": "replace", "path": "/spec/replicas", "value": 4},
        {"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "c"}},
        {"op": "remove", "path": "/spec/template/spec/containers/1"},
        {"op": "test", "path": "/spec/replicas", "value": 4},
        {"op": "copy", "from": "/spec/replicas", "path": "/spec/minReadySeconds"},
    ])
    assert out["spec"]["replicas"] == 4 == out["spec"]["minReadySeconds"]
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["a", "c"]
    with pytest.raises(patches.PatchError):
        patches.json_patch(DEPLOY, [{"op": "test", "path": "/spec/replicas", "value": 9}])
    with pytest.raises(patches.PatchError) as bad:
        patches.json_patch(DEPLOY, {"op": "add"})
    assert bad.value.malformed


# --------------------------------------------------------------------------- paths, discovery


@pytest.mark.parametrize(("url", "expected"), [
    ("/api/v1/namespaces", ("namespaces", None, None, None)),
    ("/api/v1/namespaces/jsorc", ("namespaces", None, "jsorc", None)),
    ("/api/v1/namespaces/jsorc/status", ("namespaces", None, "jsorc", "status")),
    ("/api/v1/namespaces/jsorc/pods", ("pods", "jsorc", None, None)),
    ("/api/v1/pods", ("pods", None, None, None)),
    ("/api/v1/namespaces/jsorc/pods/p1/log", ("pods", "jsorc", "p1", "log")),
    ("/apis/apps/v1/namespaces/jsorc/deployments/web/scale",
     ("deployments", "jsorc", "web", "scale")),
    ("/apis/discovery.k8s.io/v1/endpointslices", ("endpointslices", None, None, None)),
])
def test_api_paths(url: str, expected: tuple[str, str | None, str | None, str | None]) -> None:
    api = parse_api_path(url)
    assert api is not None
    assert (api.spec.plural, api.namespace, api.name, api.subresource) == expected


@pytest.mark.parametrize("url", ["/api/v1/widgets", "/apis/apps/v1/namespaces/x/pods",
                                 "/api/v1/namespaces/x/pods/p/exec",
                                 "/api/v1/namespaces/x/configmaps/c/status"])
def test_paths_of_no_served_resource_are_404(url: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_api_path(url)
    assert err.value.code == 404


def test_discovery_describes_scale_as_an_autoscaling_scale() -> None:
    doc = discovery.resource_list("apps", "v1")
    assert doc is not None and doc["groupVersion"] == "apps/v1"
    entries = {r["name"]: r for r in doc["resources"]}
    assert entries["deployments"]["kind"] == "Deployment"
    assert "list" in entries["deployments"]["verbs"] and entries["deployments"]["namespaced"]
    scale = entries["deployments/scale"]
    assert (scale["kind"], scale["group"], scale["version"]) == ("Scale", "autoscaling", "v1")
    core = discovery.resource_list("", "v1")
    assert core is not None and core["groupVersion"] == "v1"
    assert discovery.resource_list("apps", "v2") is None


# --------------------------------------------------------------------------- workloads


def pod(name: str, *, cost: int = 0, created: str = "2025-01-01T00:00:00Z", ready: bool = True,
        running: bool = True, hash_: str = "h", terminating: bool = False) -> PodState:
    return PodState(name, hash_, running, ready, terminating, cost, created,
                    created if ready else "", 0)


def test_scale_down_takes_unready_then_lowest_cost_then_newest() -> None:
    pods = [pod("old-cheap", cost=-5, created="2025-01-01T00:00:01Z"),
            pod("new", created="2025-01-01T00:00:09Z"),
            pod("older", created="2025-01-01T00:00:02Z"),
            pod("precious", cost=100, created="2025-01-01T00:00:10Z"),
            pod("starting", ready=False, created="2025-01-01T00:00:00Z"),
            pod("pending", ready=False, running=False)]
    order = [p.name for p in scale_down_order(pods)]
    assert order == ["pending", "starting", "old-cheap", "new", "older", "precious"]


def deployment(replicas: int, template: dict[str, Any] | None = None,
               strategy: str = "RollingUpdate") -> dict[str, Any]:
    return {"metadata": {"name": "web", "generation": 3},
            "spec": {"replicas": replicas, "strategy": {"type": strategy},
                     "template": template or {"spec": {"containers": [{"name": "a"}]}}}}


def test_plan_scales_up_and_down() -> None:
    current = template_hash(deployment(1)["spec"]["template"])
    assert plan(deployment(3), [pod("a", hash_=current)]) == Plan(2, ())
    three = [pod(n, hash_=current, created=f"2025-01-01T00:00:0{i}Z")
             for i, n in enumerate("abc")]
    assert plan(deployment(1), three).delete == ("c", "b")
    # terminating pods do not count: replacements start while they stop
    assert plan(deployment(2), [pod("a", hash_=current),
                                pod("b", hash_=current, terminating=True)]).create == 1


def test_plan_rolls_a_new_template_with_full_surge() -> None:
    new_template = {"spec": {"containers": [{"name": "a", "image": "v2"}]}}
    current = template_hash(new_template)
    old = [pod("o1", hash_="old"), pod("o2", hash_="old")]
    first = plan(deployment(2, new_template), old)
    assert (first.create, first.delete) == (2, ())  # old pods keep serving meanwhile
    half = plan(deployment(2, new_template), [*old, pod("n1", hash_=current),
                                               pod("n2", hash_=current, ready=False)])
    assert half.delete == ()
    done = plan(deployment(2, new_template), [*old, pod("n1", hash_=current),
                                               pod("n2", hash_=current)])
    assert set(done.delete) == {"o1", "o2"}
    recreate = plan(deployment(2, new_template, "Recreate"), old)
    assert (recreate.create, set(recreate.delete)) == (0, {"o1", "o2"})


def test_deployment_status_counts_and_omits_zeros() -> None:
    dep = deployment(3)
    current = template_hash(dep["spec"]["template"])
    status = deployment_status(dep, [pod("a", hash_=current), pod("b", hash_=current,
                                                                  ready=False)], "now")
    assert status["observedGeneration"] == 3
    assert (status["replicas"], status["updatedReplicas"], status["readyReplicas"],
            status["availableReplicas"], status["unavailableReplicas"]) == (2, 2, 1, 1, 2)
    empty = deployment_status(deployment(0), [], "now")
    assert not {"replicas", "readyReplicas", "availableReplicas"} & set(empty)
    available = {c["type"]: c["status"] for c in empty["conditions"]}
    assert available == {"Available": "True", "Progressing": "True"}


# --------------------------------------------------------------------------- containers

POD = {"metadata": {"name": "web-1", "namespace": "jsorc", "uid": "u-1",
                    "labels": {"app": "web"}}, "spec": {"nodeName": "jsorc-dev"}}


def test_container_command_runs_this_python_on_the_pod_ip() -> None:
    container = {"name": "s", "command": ["python3", "-m", "jsorc_live.actions.server", "m"],
                 "args": ["--host", "0.0.0.0", "--port", "$(PORT)", "--x=$(MISSING)", "$$"]}
    argv = container_argv(container, {"PORT": "8080"}, "127.0.1.7")
    assert argv == [sys.executable, "-m", "jsorc_live.actions.server", "m", "--host",
                    "127.0.1.7", "--port", "8080", "--x=$(MISSING)", "$"]
    assert container_argv({"name": "s", "command": ["srv", "--host=::"]}, {}, "127.0.1.2"
                          )[1] == "--host=127.0.1.2"
    with pytest.raises(ContainerConfigError, match="no command"):
        container_argv({"name": "s", "image": "nginx"}, {}, "127.0.1.7")


def test_container_env_resolves_values_fields_and_references() -> None:
    container = {"env": [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "URL", "value": "http://$(POD_IP):8080"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}]}
    secrets = {("secrets", "jsorc", "s"): {"token": "t0k"}}
    env = container_env(container, POD, "127.0.1.3", {"PATH": "/bin"},
                        lambda kind, ns, name, key: secrets.get((kind, ns, name)))
    assert env["PATH"] == "/bin"
    assert (env["POD_IP"], env["NAME"], env["APP"], env["URL"], env["TOKEN"]) == (
        "127.0.1.3", "web-1", "web", "http://127.0.1.3:8080", "t0k")
    with pytest.raises(ContainerConfigError, match="secret"):
        container_env({"env": [{"name": "T", "valueFrom": {"secretKeyRef": {
            "name": "gone", "key": "k"}}}]}, POD, "127.0.1.3", {}, lambda *a: None)


def test_probes_resolve_named_ports() -> None:
    container = {"name": "s", "ports": [{"name": "http", "containerPort": 8080}]}
    probe = probe_of({"httpGet": {"path": "/jaseci_actions_spec/", "port": "http"},
                      "failureThreshold": 2}, container, "127.0.1.4")
    assert probe is not None
    assert (probe.kind, probe.target, probe.failure_threshold) == (
        "http", "http://127.0.1.4:8080/jaseci_actions_spec/", 2)
    assert probe_of(None, container, "127.0.1.4") is None


def test_address_pools_of_two_clusters_take_different_blocks(tmp_path: Path) -> None:
    first, second = AddressPool(tmp_path), AddressPool(tmp_path)
    try:
        block_a, block_b = first.claim(), second.claim()
        assert block_a != block_b
        ip = first.allocate([8080])
        assert ip.startswith(f"127.0.{block_a}.")
        with socket.socket() as busy:  # something already listens on the next address
            busy.bind((f"127.0.{block_a}.2", 8080))
            busy.listen()
            nxt = first.allocate([8080])
        assert nxt not in (ip, f"127.0.{block_a}.2")
    finally:
        first.close()
        second.close()
