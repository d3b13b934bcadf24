"""The kube backend's pure parts: names, the objects of an action, the reconcile plan, the
settings and what a failure means. Table-driven; no cluster."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from jsorc_live.actions.config import ActionConfig, ConfigError, parse_cpu, parse_memory_mb
from jsorc_live.kube.client import FailureKind, backoff, classify
from jsorc_live.kube.manifests import (
    HASH_ANNOTATION,
    build,
    endpoints,
    label_value,
    object_name,
)
from jsorc_live.kube.reconcile import Verb, Want, plan
from jsorc_live.kube.settings import KubeSettings, KubeSettingsError, parse_kube_settings

DNS_1035 = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"


@pytest.mark.parametrize(("action", "name"), [
    ("use_enc", "jsorc-use-enc"),
    ("bi_enc", "jsorc-bi-enc"),
    ("TFM.NER", "jsorc-tfm-ner"),
    ("__x__", "jsorc-x"),
    ("", "jsorc-action"),
])
def test_names_are_dns_labels(action: str, name: str) -> None:
    assert object_name(action) == name


def test_a_long_name_is_cut_with_a_hash_so_two_long_names_differ() -> None:
    a, b = object_name("a" * 80 + "_one"), object_name("a" * 80 + "_two")
    assert a != b and len(a) <= 63 and len(b) <= 63
    import re
    assert re.match(DNS_1035, a)
    assert label_value("use_enc") == "use_enc" and len(label_value("x" * 70)) <= 63


def test_a_config_becomes_a_deployment_and_a_service() -> None:
    cfg = ActionConfig.from_dict("use_enc", {
        "module": "jsorc_live.actions.examples.use_enc", "lib_mem_size_req": "2Gi",
        "lib_cpu_req": "500m", "load_type": "remote", "setup": {"memory_mb": 1}})
    objs = build("use_enc", cfg.kubernetes(), "jsorc", 2)
    dep, svc = objs.deployment, objs.service
    labels = {"app.kubernetes.io/managed-by": "jsorc", "jsorc.dev/action": "use_enc"}
    assert dep["metadata"]["name"] == svc["metadata"]["name"] == "jsorc-use-enc"
    assert dep["metadata"]["labels"] == svc["metadata"]["labels"] == labels
    assert dep["metadata"]["annotations"] == {"jsorc.dev/action": "use_enc",
                                              HASH_ANNOTATION: objs.config_hash}
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"] == {"matchLabels": labels}
    assert dep["spec"]["template"]["metadata"]["labels"] == labels
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "jsorc/action-server:0.1.0"
    assert container["command"][:4] == ["python", "-m", "jsorc_live.actions.server",
                                        "jsorc_live.actions.examples.use_enc"]
    assert container["command"][-2:] == ["--setup", json.dumps({"memory_mb": 1})]
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "2048Mi"},
                                      "limits": {"memory": "2048Mi"}}
    assert container["readinessProbe"]["httpGet"] == {"path": "/jaseci_actions_spec/",
                                                      "port": 80}
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["selector"] == labels
    assert svc["spec"]["ports"][0]["port"] == 80
    # The hash follows the config, not the replica count.
    assert build("use_enc", cfg.kubernetes(), "jsorc", 5).config_hash == objs.config_hash
    other = ActionConfig.from_dict("use_enc", {"module": cfg.module, "lib_mem_size_req": "1Gi"})
    assert build("use_enc", other.kubernetes(), "jsorc", 2).config_hash != objs.config_hash


@pytest.mark.parametrize(("text", "mb"), [("2Gi", 2048.0), ("512Mi", 512.0),
                                          ("1048576", 1.0), (300, 300.0), ("1.5Gi", 1536.0)])
def test_memory_quantities(text: object, mb: float) -> None:
    assert parse_memory_mb(text) == mb


@pytest.mark.parametrize(("text", "cores"), [("500m", 0.5), ("2", 2.0), (1.5, 1.5)])
def test_cpu_quantities(text: object, cores: float) -> None:
    assert parse_cpu(text) == cores


@pytest.mark.parametrize(("data", "words"), [
    ({"lib_mem_size_req": "2 gigs"}, "memory must be a quantity"),
    ({"lib_cpu_req": "half"}, "cpu must be a quantity"),
    ({"load_type": "sideways"}, "load_type"),
    ({"lib_mem_size_req": "1Gi", "remote_memory_mb": 10}, "not both"),
    ({"command": "python -m x"}, "command must be a non-empty list"),
])
def test_bad_splice_keys_are_refused_naming_them(data: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        ActionConfig.from_dict("x", {"module": "m", **data})


def test_splice_keys_set_memory_cpu_mode_and_command() -> None:
    cfg = ActionConfig.from_dict("x", {"module": "m", "lib_mem_size_req": "1Gi",
                                       "lib_cpu_req": "250m", "load_type": "remote",
                                       "command": ["serve", "m"], "image": "me/x:1"})
    spec = cfg.kubernetes()
    assert (cfg.remote_memory_mb, cfg.remote_cores, cfg.default_mode) == (1024, 0.25, "remote")
    assert (spec.command, spec.image, spec.memory_mb) == (("serve", "m"), "me/x:1", 1024)


# --------------------------------------------------------------------------- endpoints


def slice_of(service: str, *eps: tuple[str, str, bool], port: int = 80) -> dict[str, Any]:
    return {"metadata": {"name": f"{service}-abc",
                         "labels": {"kubernetes.io/service-name": service}},
            "ports": [{"port": port}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready},
                           "targetRef": {"kind": "Pod", "name": pod}}
                          for pod, ip, ready in eps]}


def test_endpoints_are_read_from_the_services_slices_only() -> None:
    slices = {"a": slice_of("jsorc-x", ("p1", "127.0.1.1", True), ("p2", "127.0.1.2", False)),
              "b": slice_of("jsorc-y", ("q1", "127.0.1.3", True))}
    eps = endpoints(slices, "jsorc-x", 80)
    assert {p: (e.url, e.ready) for p, e in eps.items()} == {
        "p1": ("http://127.0.1.1:80", True), "p2": ("http://127.0.1.2:80", False)}


# --------------------------------------------------------------------------- plan


def existing(objs: dict[str, Any], replicas: int | None = None,
             digest: str | None = None) -> dict[str, Any]:
    obj = json.loads(json.dumps(objs))
    if replicas is not None:
        obj["spec"]["replicas"] = replicas
    if digest is not None:
        obj["metadata"]["annotations"][HASH_ANNOTATION] = digest
    return obj


CFG = ActionConfig("use_enc", "m", 1, 100)
OBJS = build("use_enc", CFG.kubernetes(), "ns", 1)
N = OBJS.name


@pytest.mark.parametrize(("case", "wants", "deps", "svcs", "expected"), [
    ("nothing exists: service first, then the deployment",
     {N: Want("use_enc", N, 2, OBJS)}, {}, {},
     [(Verb.CREATE, "service", 0), (Verb.CREATE, "deployment", 2)]),
    ("all as wanted: no write",
     {N: Want("use_enc", N, 1, OBJS)}, {N: existing(OBJS.deployment)},
     {N: existing(OBJS.service)}, []),
    ("more replicas: scale",
     {N: Want("use_enc", N, 3, OBJS)}, {N: existing(OBJS.deployment)},
     {N: existing(OBJS.service)}, [(Verb.SCALE, "deployment", 3)]),
    ("the config changed: patch (and scale)",
     {N: Want("use_enc", N, 2, OBJS)}, {N: existing(OBJS.deployment, 1, "old")},
     {N: existing(OBJS.service, digest="old")},
     [(Verb.PATCH, "service", 0), (Verb.PATCH, "deployment", 0),
      (Verb.SCALE, "deployment", 2)]),
    ("nobody wants it: delete the deployment, then the service",
     {}, {N: existing(OBJS.deployment)}, {N: existing(OBJS.service)},
     [(Verb.DELETE, "deployment", 0), (Verb.DELETE, "service", 0)]),
    ("adopted, config unknown: kept as found",
     {N: Want("use_enc", N, 2, None)}, {N: existing(OBJS.deployment, 2, "old")},
     {N: existing(OBJS.service, digest="old")}, []),
])
def test_plan(case: str, wants: dict[str, Want], deps: dict[str, Any], svcs: dict[str, Any],
              expected: list[tuple[Verb, str, int]]) -> None:
    ops = plan(wants, deps, svcs)
    assert [(op.verb, op.kind, op.replicas) for op in ops] == expected, case


def test_a_name_taken_by_another_owner_is_a_conflict_and_never_touched() -> None:
    theirs = existing(OBJS.service)
    theirs["metadata"]["labels"] = {"app": "someone-else"}
    ops = plan({N: Want("use_enc", N, 1, OBJS)}, {}, {N: theirs})
    assert [(op.verb, op.kind) for op in ops] == [(Verb.CONFLICT, "service"),
                                                  (Verb.CREATE, "deployment")]
    assert "not jsorc's" in ops[0].reason


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(("value", "expected"), [
    (False, None), (True, KubeSettings()),
    ({"in_cluster": True}, KubeSettings(in_cluster=True)),
    ({"config": "/k", "context": "c"}, KubeSettings(config="/k", context="c")),
])
def test_kubernetes_settings(value: object, expected: KubeSettings | None) -> None:
    assert parse_kube_settings(value) == expected


@pytest.mark.parametrize(("value", "words"), [
    ("yes", "true, false or an object"), ({"incluster": True}, "unknown key"),
    ({"in_cluster": "yes"}, "in_cluster must be true or false"),
    ({"config": ""}, "non-empty string"), ({"in_cluster": True, "config": "/k"}, "not both"),
])
def test_bad_kubernetes_settings_name_the_key(value: object, words: str) -> None:
    with pytest.raises(KubeSettingsError, match=words):
        parse_kube_settings(value)


# --------------------------------------------------------------------------- failures


def api_error(status: int, body: dict[str, Any] | None = None) -> ApiException:
    exc = ApiException(status=status, reason="r")
    exc.body = json.dumps(body or {"message": "m"})
    return exc


@pytest.mark.parametrize(("exc", "kind"), [
    (api_error(404), FailureKind.MISSING),
    (api_error(404, {"message": 'namespaces "ns" not found',
                     "details": {"name": "ns", "kind": "namespaces"}}), FailureKind.FATAL),
    (api_error(409), FailureKind.CONFLICT), (api_error(410), FailureKind.RELIST),
    (api_error(429), FailureKind.RETRY), (api_error(500), FailureKind.RETRY),
    (api_error(503), FailureKind.RETRY), (api_error(403), FailureKind.FATAL),
    (api_error(401), FailureKind.FATAL), (api_error(422), FailureKind.FATAL),
    (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), FailureKind.RETRY),
    (urllib3.exceptions.MaxRetryError(None, "/", ConnectionRefusedError()), FailureKind.RETRY),
])
def test_what_a_failure_means(exc: BaseException, kind: FailureKind) -> None:
    failure = classify(exc, verb="create", resource="deployment jsorc-x", namespace="ns")
    assert failure.kind is kind
    assert "deployment jsorc-x" in failure.message and "\n" not in failure.message


def test_a_missing_namespace_and_forbidden_say_what_to_do() -> None:
    missing = classify(api_error(404, {"details": {"kind": "namespaces"}}), verb="create",
                       resource="service s", namespace="nope")
    assert "namespace 'nope' does not exist" in missing.message
    forbidden = classify(api_error(403, {"message": "cannot create"}), verb="create",
                         resource="service s", namespace="ns")
    assert "forbidden" in forbidden.message and "rbac.py" in forbidden.message


def test_backoff_has_jitter_under_a_growing_cap() -> None:
    rand = random.Random(1)
    delays = [[backoff(a, rand, base_s=0.1, cap_s=2.0) for _ in range(200)] for a in range(6)]
    assert all(0.01 <= d <= min(2.0, 0.1 * 2 ** a) for a, ds in enumerate(delays) for d in ds)
    assert len({round(d, 6) for d in delays[3]}) > 100  # spread, not one value
