"""Fixtures of the dev cluster tests: a DevCluster per test (it starts in ~50 ms; pods are
real action-server processes on loopback), the official client configured from the
kubeconfig it wrote, and kubectl against it. Every cluster is stopped whatever happens, and
its stop fails the test if a pod process is left."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from kubernetes import client, config

from jsorc_live.devcluster import DevCluster
from tests.conftest import REPO


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    logs = tmp_path_factory.mktemp("devcluster-logs")
    with DevCluster(namespace="jsorc", workdir=REPO, log_dir=logs, grace_period_s=5.0) as dev:
        yield dev


@pytest.fixture
def api(cluster: DevCluster) -> Iterator[client.ApiClient]:
    """The official client from the cluster's kubeconfig, without urllib3's own retries
    (they would hide injected 429s and stalls), as the kube backend configures it."""
    configuration = client.Configuration()
    config.load_kube_config(str(cluster.kubeconfig), client_configuration=configuration)
    configuration.retries = 0
    with client.ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture(scope="session")
def kubectl_bin() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not on PATH (v1.32 is on this project's machines)")
    return found
