"""Helpers of the dev cluster tests: manifests of a Deployment of the sample action server,
kubectl, and bounded polling (never a bare sleep)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SAMPLE_MODULE = "tests.jsorc_live.sample_actions"
PORT = 8080
SPEC = "/jaseci_actions_spec/"


def action_deployment(name: str, replicas: int = 1, *, module: str = SAMPLE_MODULE,
                      env: dict[str, str] | None = None) -> dict[str, Any]:
    """A Deployment as the kube backend writes one: the action server on 0.0.0.0:8080 in
    the image, a readiness probe on its spec endpoint."""
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "jsorc-test"}
    container: dict[str, Any] = {
        "name": "action-server", "image": "jsorc:dev",
        "command": ["python", "-m", "jsorc_live.actions.server", module,
                    "--host", "0.0.0.0", "--port", str(PORT)],
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": SPEC, "port": "http"}, "periodSeconds": 5},
    }
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"terminationGracePeriodSeconds": 5,
                                           "containers": [container]}}}}


def service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": selector,
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def kubectl(kubectl_bin: str, kubeconfig: Path, *args: str, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([kubectl_bin, "--kubeconfig", str(kubeconfig), *args],
                          capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n"
                             f"{done.stdout}\n{done.stderr}")
    return done


def kubectl_json(kubectl_bin: str, kubeconfig: Path, *args: str) -> Any:
    return json.loads(kubectl(kubectl_bin, kubeconfig, *args, "-o", "json").stdout)


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 20.0,
             every_s: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")
