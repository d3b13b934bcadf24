"""`kubectl apply -k deploy/` as far as it goes without a real cluster: against the dev
cluster's API (jsorc_live/devcluster), a client-side and a server-side dry run. kubectl needs
the API's discovery even for --dry-run=client; the dev cluster serves no OpenAPI document, so
kubectl's own schema check is off (--validate=false): test_manifests.py validates the schemas.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import DEPLOY, rendered
from tests.jsorc_live.binaries import need


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    devcluster = pytest.importorskip("jsorc_live.devcluster",
                                     reason="the dev cluster (jsorc_live/devcluster) is not built")
    path = tmp_path_factory.mktemp("devcluster") / "kubeconfig"
    with devcluster.DevCluster(namespace="jsorc", port=0, kubeconfig=path) as dc:
        yield dc


def kubectl(kubeconfig: Path, *argv: str) -> str:
    done = subprocess.run([need("kubectl"), "--kubeconfig", str(kubeconfig), *argv],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def kinds_and_names(objs: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"))
                  for o in objs)


@pytest.mark.parametrize("dry_run", ["client", "server"])
def test_kubectl_apply_dry_run_takes_every_object(cluster: Any, dry_run: str) -> None:
    out = kubectl(cluster.kubeconfig, "apply", f"--dry-run={dry_run}", "--validate=false",
                  "-k", str(DEPLOY), "-o", "yaml")
    applied = yaml.safe_load(out)
    items = applied["items"] if applied.get("kind") == "List" else [applied]
    assert kinds_and_names(items) == kinds_and_names(rendered())
    # A dry run changes nothing: no jsorc Deployment exists afterwards.
    listed = yaml.safe_load(kubectl(cluster.kubeconfig, "get", "deployments", "-n", "jsorc",
                                    "-o", "yaml"))
    assert [d["metadata"]["name"] for d in listed.get("items") or []] == []
