"""Fixtures of the kube backend's tests: one dev cluster per module (a real HTTP Kubernetes
API and a stand-in kubelet running each pod as an action-server process on its own loopback
address), the official client to look at it, and runtimes whose remote replicas are its pods.

Every backend a test makes is shut down (deleting what it owns) and every fault cleared
before the next test, so tests in a module share the cluster but not its objects.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from jsorc_live.api import connect_remote, info_of
from jsorc_live.kube import KubeBackend, KubeSettings
from jsorc_live.kube.manifests import SELECTOR
from jsorc_live.runtime import Runtime, Step, Walker
from tests.conftest import REPO
from tests.jsorc_live.kube.light_config import ACTION_CONFIGS, LIGHT

devcluster = pytest.importorskip("jsorc_live.devcluster", reason="the dev cluster is not built")
DevCluster = devcluster.DevCluster

NAMESPACE = "jsorc"
WALKER = "twice"
TUNING: dict[str, Any] = {"resync_s": 0.5, "ready_timeout_s": 30.0, "watch_s": 10}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    path = tmp_path_factory.mktemp("devcluster") / "kubeconfig"
    with DevCluster(namespace=NAMESPACE, port=0, kubeconfig=path, workdir=REPO,
                    grace_period_s=2.0) as dc:
        yield dc


@dataclass
class Kube:
    """The official client on the dev cluster, for the tests' own looking."""

    apps: client.AppsV1Api
    core: client.CoreV1Api
    namespace: str

    def deployments(self) -> list[Any]:
        return list(self.apps.list_namespaced_deployment(self.namespace,
                                                         label_selector=SELECTOR).items)

    def services(self) -> list[Any]:
        return list(self.core.list_namespaced_service(self.namespace,
                                                      label_selector=SELECTOR).items)

    def pods(self, *, running: bool = True) -> list[Any]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=SELECTOR).items
        return [p for p in pods if not running or p.metadata.deletion_timestamp is None]


@pytest.fixture(scope="module")
def kube(cluster: Any) -> Kube:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    return Kube(client.AppsV1Api(api), client.CoreV1Api(api), cluster.namespace)


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """Poll `check` until it returns something true; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what} (last: {value!r})")
        time.sleep(0.05)


def settings_of(cluster: Any) -> KubeSettings:
    return KubeSettings(config=str(cluster.kubeconfig))


class Env:
    """Backends and runtimes a test makes; closed in order after it (runtimes first)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.backends: list[KubeBackend] = []
        self.runtimes: list[Runtime] = []

    def backend(self, **options: Any) -> KubeBackend:
        """KubeBackend.connect on the dev cluster, tuned for tests."""
        backend = KubeBackend.connect(settings_of(self.cluster), self.cluster.namespace,
                                      **{**TUNING, **options})
        self.backends.append(backend)
        return backend

    def runtime(self, backend: KubeBackend) -> Runtime:
        """A runtime whose one action (light_config's) has remote replicas from `backend`,
        and a walker calling it once."""
        runtime = Runtime(load_local=_no_local, connect=connect_remote, replicas=backend,
                          walkers=[Walker(WALKER, (Step(LIGHT, "double", {"x": "x"},
                                                        {"x": 21}),))],
                          ready_timeout_s=TUNING["ready_timeout_s"], call_timeout_s=30.0)
        backend.on_dead = runtime.replica_died
        runtime.configure(info_of(ACTION_CONFIGS[LIGHT]))
        self.runtimes.append(runtime)
        return runtime

    def close(self) -> None:
        for runtime in self.runtimes:
            runtime.close()
        for backend in reversed(self.backends):
            backend.shutdown()


@pytest.fixture()
def env(cluster: Any, kube: Kube) -> Iterator[Env]:
    """Then the namespace must hold nothing of jsorc's (unless a test kept it on purpose,
    and cleans up itself)."""
    made = Env(cluster)
    try:
        yield made
    finally:
        cluster.faults.clear()
        made.close()
    if made.backends and not any(b.keep_on_shutdown for b in made.backends):
        wait_for("jsorc's objects deleted", lambda: not kube.deployments()
                 and not kube.services() and not kube.pods(running=False))


def _no_local(info: Any) -> Any:
    raise AssertionError("these tests load nothing locally")


def kubeconfig_text(cluster: Any) -> str:
    return Path(cluster.kubeconfig).read_text()
