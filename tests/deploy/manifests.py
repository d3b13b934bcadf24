"""Reading deploy/: its files, the `kubectl kustomize deploy/` rendering, and the objects in it.

Shared by the manifest tests and by the tests that run deploy/prometheus/prometheus.yml on
loopback (tests/deploy/prometheus.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO
from tests.jsorc_live.binaries import need

DEPLOY = REPO / "deploy"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
GRAFANA_DASHBOARD = GRAFANA / "jsorc-dashboard.json"
GRAFANA_PROVISIONING = (GRAFANA / "provisioning" / "datasources.yaml",
                        GRAFANA / "provisioning" / "dashboards.yaml")
# YAML files under deploy/ that are not Kubernetes objects.
NOT_OBJECTS = {KUSTOMIZATION, PROMETHEUS_CONFIG, *GRAFANA_PROVISIONING}
# Files kustomization.yaml's configMapGenerator makes ConfigMaps of.
GENERATED = {PROMETHEUS_CONFIG, GRAFANA_DASHBOARD, *GRAFANA_PROVISIONING}

Obj = dict[str, Any]


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def object_files() -> list[Path]:
    return [p for p in yaml_files() if p not in NOT_OBJECTS]


def load_all(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization() -> Obj:
    doc = yaml.safe_load(KUSTOMIZATION.read_text())
    assert isinstance(doc, dict)
    return doc


@cache
def _rendered_text() -> str:
    kubectl = need("kubectl")
    done = subprocess.run([kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, f"kubectl kustomize deploy/ failed:\n{done.stderr}"
    return done.stdout


def rendered() -> list[Obj]:
    """`kubectl kustomize deploy/`'s objects (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(_rendered_text()) if doc]


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    """The object of `kind` named `name`, or (for generated ConfigMaps) `name-<hash>`."""
    def named(obj: Obj) -> bool:
        have = obj["metadata"]["name"]
        return have == name or (kind == "ConfigMap" and have.startswith(name + "-"))

    found = [o for o in objs if o["kind"] == kind and named(o)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in the rendering"
    return found[0]


def pod_template(objs: list[Obj], deployment: str) -> Obj:
    template = find(objs, "Deployment", deployment)["spec"]["template"]
    assert isinstance(template, dict)
    return template


def containers(template: Mapping[str, Any]) -> Iterator[Obj]:
    yield from template["spec"]["containers"]


def rules_of(role: Mapping[str, Any]) -> set[tuple[str, str, str]]:
    """Every (api group, resource, verb) a Role or ClusterRole grants."""
    return {(group, resource, verb) for rule in role.get("rules") or []
            for group in rule.get("apiGroups", [])
            for resource in rule.get("resources", [])
            for verb in rule.get("verbs", [])}
