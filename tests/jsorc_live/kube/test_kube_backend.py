"""The kube backend on the dev cluster: real HTTP, the official client, real action-server
processes as pods on their own loopback addresses; the runtime's router calls them there."""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlparse

import pytest

from jsorc_live.api import JsorcService, info_of
from jsorc_live.kube.manifests import HASH_ANNOTATION
from jsorc_live.runtime import RuntimeRefusal
from policies import Mode, Placement
from tests.jsorc_live.kube.conftest import WALKER, Env, Kube, wait_for
from tests.jsorc_live.kube.light_config import ACTION_CONFIGS, LIGHT

NAME = "jsorc-light-act"


def settle(router: Any, placement: Placement, timeout_s: float = 30.0) -> None:
    router.set_placement(placement)
    assert router.wait_settled(timeout_s), router.status()
    assert not router.last_error, router.last_error


def test_a_remote_load_creates_the_deployment_and_service_and_calls_reach_the_pods(
        env: Env, kube: Kube) -> None:
    backend = env.backend()
    runtime = env.runtime(backend)
    router = runtime.router(LIGHT)
    settle(router, Placement.remote(2))

    (dep,) = kube.deployments()
    (svc,) = kube.services()
    labels = {"app.kubernetes.io/managed-by": "jsorc", "jsorc.dev/action": LIGHT}
    assert dep.metadata.name == svc.metadata.name == NAME
    assert dep.metadata.labels == svc.metadata.labels == labels
    assert dep.metadata.annotations[HASH_ANNOTATION]
    assert dep.spec.replicas == 2 and dep.status.ready_replicas == 2
    (container,) = dep.spec.template.spec.containers
    assert container.resources.requests == {"cpu": "100m", "memory": "128Mi"}
    assert container.resources.limits == {"memory": "128Mi"}
    assert container.readiness_probe.http_get.path == "/jaseci_actions_spec/"
    assert container.command[1:4] == ["-m", "jsorc_live.actions.server",
                                      "tests.jsorc_live.sample_actions"]
    assert svc.spec.type == "ClusterIP" and svc.spec.selector == labels

    pods = {p.status.pod_ip: p.metadata.name for p in kube.pods()}
    replicas = backend.replicas(LIGHT)
    assert {urlparse(r.url).hostname for r in replicas} == set(pods)
    assert all(p.startswith("127.0.") and not p.startswith("127.0.0.") for p in pods)
    assert {r.pod for r in replicas} == set(pods.values())
    results = [runtime.run_walker(WALKER, {"x": n}) for n in range(6)]
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert [r.report for r in results] == [[2 * n] for n in range(6)]
    assert set(router.status()["remote"]["replicas"]) == {r.url for r in replicas}


def test_scaling_1_3_1_under_load_fails_no_call_and_retires_the_pods_let_go(
        env: Env, kube: Kube) -> None:
    backend = env.backend()
    runtime = env.runtime(backend)
    router = runtime.router(LIGHT)
    settle(router, Placement.remote(1))

    stop = threading.Event()
    results: list[Any] = []

    def client() -> None:
        n = 0
        while not stop.is_set():
            results.append(runtime.run_walker(WALKER, {"x": n}))
            n += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        settle(router, Placement.remote(3))
        assert len(kube.pods()) == 3 and kube.deployments()[0].spec.replicas == 3
        held = {r.pod for r in backend.replicas(LIGHT)}
        time.sleep(0.5)
        settle(router, Placement.remote(1))
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    failed = [r.error for r in results if not r.ok]
    assert not failed and len(results) > 50, (failed[:3], len(results))
    assert kube.deployments()[0].spec.replicas == 1
    (kept,) = backend.replicas(LIGHT)
    # The pods the router let go are the ones removed; no pod was started meanwhile.
    assert kept.pod in held
    wait_for("the let-go pods gone", lambda: {p.metadata.name for p in kube.pods()}
             == {kept.pod})


def test_stop_replica_removes_that_pod_and_no_other(env: Env, kube: Kube) -> None:
    """The pod a stop names gets the lowest deletion cost, so the scale-down takes it even
    when it is the oldest (a ReplicaSet would otherwise remove the newest)."""
    backend = env.backend()
    info = info_of(ACTION_CONFIGS[LIGHT])
    replicas = [backend.start_replica(info) for _ in range(3)]
    assert len({r.pod for r in replicas}) == 3
    oldest = replicas[0]
    backend.stop_replica(oldest)
    assert kube.deployments()[0].spec.replicas == 2
    wait_for("only the stopped pod gone", lambda: {p.metadata.name for p in kube.pods()}
             == {r.pod for r in replicas[1:]})
    assert set(backend.replicas(LIGHT)) == set(replicas[1:])
    backend.stop_replica(oldest)  # again: nothing (already let go)
    assert kube.deployments()[0].spec.replicas == 2
    for replica in replicas[1:]:
        backend.stop_replica(replica)
    wait_for("no replicas: deployment and service deleted",
             lambda: not kube.deployments() and not kube.services())


def test_unload_deletes_everything_it_created(env: Env, kube: Kube) -> None:
    backend = env.backend()
    runtime = env.runtime(backend)
    router = runtime.router(LIGHT)
    settle(router, Placement.remote(2))
    pods = [p.metadata.name for p in kube.pods()]
    assert len(pods) == 2
    settle(router, Placement.unloaded())
    wait_for("deployment, service and pods deleted", lambda: not kube.deployments()
             and not kube.services() and not kube.pods(running=False))
    assert backend.replicas(LIGHT) == []


def test_a_killed_pod_is_replaced_without_a_second_scale_up(env: Env, kube: Kube) -> None:
    backend = env.backend()
    runtime = env.runtime(backend)
    router = runtime.router(LIGHT)
    settle(router, Placement.remote(2))
    victim = backend.replicas(LIGHT)[0]
    kube.core.delete_namespaced_pod(victim.pod, kube.namespace)
    wait_for("a replacement replica", lambda: len(backend.replicas(LIGHT)) == 2
             and victim not in backend.replicas(LIGHT))
    assert kube.deployments()[0].spec.replicas == 2
    assert all(runtime.run_walker(WALKER).ok for _ in range(5))


# --------------------------------------------------------------------------- adoption


def test_a_restarted_controller_adopts_and_deletes_nothing_it_still_wants(
        env: Env, kube: Kube) -> None:
    """Controller A leaves two actions' Deployments (keep_on_shutdown). Controller B is
    configured with one of them: it takes over its running pods (none created, none
    deleted); the other, which nobody configures, is deleted after the grace."""
    configs = {LIGHT: ACTION_CONFIGS[LIGHT],
               "other_act": ACTION_CONFIGS[LIGHT].__class__.from_dict(
                   "other_act", {"module": "tests.jsorc_live.sample_actions"})}

    def service(backend: Any, *names: str) -> JsorcService:
        runtime = env.runtime(backend)
        svc = JsorcService(runtime, backend, load_config=lambda mod, name: info_of(
            configs[name]))
        for name in names:
            svc.actions_config(name, "light")
        return svc

    first = env.backend(keep_on_shutdown=True)
    a = service(first, "other_act")
    for name, n in ((LIGHT, 2), ("other_act", 1)):
        a.runtime.router(name).set_placement(Placement.remote(n))
    for name in (LIGHT, "other_act"):
        assert a.runtime.router(name).wait_settled(30), a.runtime.router(name).status()
    before = {p.metadata.name: p.metadata.uid for p in kube.pods()}
    assert len(before) == 3
    a.close()  # detach: the routers let go, nothing is deleted
    assert {p.metadata.name for p in kube.pods()} == set(before)

    second = env.backend(adopt_grace_s=4.0)
    assert second.adopted() == {LIGHT: 2, "other_act": 1}
    b = service(second)
    answer = b.actions_config(LIGHT, "light")
    assert "adopted its 2 running replica(s)" in answer["message"]
    router = b.runtime.router(LIGHT)
    assert router.wait_settled(30) and router.placement == Placement.remote(2)
    light_pods = {r.pod for r in second.replicas(LIGHT)}
    assert light_pods <= set(before) and len(light_pods) == 2
    assert all(b.runtime.run_walker(WALKER, {"x": 1}).ok for _ in range(4))
    # other_act's Deployment lives out the grace, then goes; LIGHT's pods are untouched.
    assert any(d.metadata.name == "jsorc-other-act" for d in kube.deployments())
    wait_for("the unconfigured action's deployment deleted after the grace",
             lambda: [d.metadata.name for d in kube.deployments()] == [NAME], 15)
    now = {p.metadata.name: p.metadata.uid for p in kube.pods()}
    assert {n: before[n] for n in light_pods} == {n: now[n] for n in light_pods}
    assert kube.deployments()[0].spec.replicas == 2
    first.keep_on_shutdown = False  # the env's check: everything goes at the end
    b.close()


# --------------------------------------------------------------------------- faults


# (case, when the fault is armed, method, path, the fault). "start": before the backend
# exists (its first watch); "load": before remote(2) from nothing; "scale": after remote(1),
# before remote(2).
FAULTS = [
    ("409 on creating the deployment", "load", "POST", r"/deployments$", {"status": 409}),
    ("500 on creating the service", "load", "POST", r"/services$", {"status": 500, "times": 2}),
    ("429 on scaling", "scale", "PATCH", r"/deployments/[^/]+/scale$",
     {"status": 429, "times": 2, "retry_after_s": 1}),
    ("409 on scaling", "scale", "PATCH", r"/deployments/[^/]+/scale$", {"status": 409}),
    ("410 on the endpointslice watch", "start", "GET", r"/endpointslices$",
     {"status": 410, "watch": True}),
    ("410 on the deployment watch", "start", "GET", r"/deployments$",
     {"status": 410, "watch": True}),
    ("500 on listing deployments", "load", "GET", r"/deployments$",
     {"status": 500, "watch": False, "times": 3}),
    ("a stalled list (timeout)", "load", "GET", r"/services$", {"status": None, "stall_s": 5.0}),
    ("a stalled scale (timeout)", "scale", "PATCH", r"/scale$",
     {"status": None, "stall_s": 5.0}),
]


@pytest.mark.parametrize(("case", "when", "method", "path", "fault"), FAULTS,
                         ids=[f[0] for f in FAULTS])
def test_injected_faults_converge_with_no_duplicate_objects(
        env: Env, kube: Kube, case: str, when: str, method: str, path: str,
        fault: dict[str, Any]) -> None:
    arm = lambda: env.cluster.faults.inject(method, path, **fault)  # noqa: E731
    rule = arm() if when == "start" else None
    # A short read timeout, so a stalled answer is a timeout well before it comes.
    backend = env.backend(request_timeout_s=1.0)
    runtime = env.runtime(backend)
    router = runtime.router(LIGHT)
    if when == "scale":
        settle(router, Placement.remote(1))
    rule = rule or arm()
    settle(router, Placement.remote(2), timeout_s=40)
    assert rule.hits >= 1, f"{case}: the fault never fired"
    assert [d.metadata.name for d in kube.deployments()] == [NAME]
    assert [s.metadata.name for s in kube.services()] == [NAME]
    wait_for("exactly two pods", lambda: len(kube.pods()) == 2)
    assert kube.deployments()[0].spec.replicas == 2
    assert all(runtime.run_walker(WALKER).ok for _ in range(4))


def test_a_runtime_forbidden_is_one_clear_error_and_a_retry_recovers(
        env: Env, kube: Kube, caplog: pytest.LogCaptureFixture) -> None:
    backend = env.backend()
    runtime = env.runtime(backend)
    router = runtime.router(LIGHT)
    rule = env.cluster.faults.inject("POST", r"/deployments$", status=403, times=None)
    router.set_placement(Placement.remote(1))
    wait_for("the move failed", lambda: router.last_error, 20)
    assert "forbidden" in router.last_error and f"deployment {NAME}" in router.last_error
    assert router.placement.mode is Mode.UNLOADED  # kept its last state
    messages = [r.getMessage() for r in caplog.records
                if r.name.startswith("jsorc_live.kube") and "forbidden" in r.getMessage()]
    assert len(set(messages)) == 1, messages  # logged once, naming the resource
    assert rule.hits >= 1
    env.cluster.faults.clear()
    settle(router, Placement.remote(1))
    assert runtime.run_walker(WALKER).ok


def test_configuring_a_loaded_action_again_is_refused(env: Env) -> None:
    backend = env.backend()
    runtime = env.runtime(backend)
    settle(runtime.router(LIGHT), Placement.remote(1))
    with pytest.raises(RuntimeRefusal, match="unload it"):
        runtime.configure(info_of(ACTION_CONFIGS[LIGHT]))
