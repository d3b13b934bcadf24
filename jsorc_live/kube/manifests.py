"""What jsorc asks the cluster for, as plain dicts: one Deployment and one ClusterIP Service
per remote action (jac-splice-orc's Pod + Service, with replicas). Pure functions.

Both carry `app.kubernetes.io/managed-by=jsorc` (what jsorc lists, adopts and may delete),
`jsorc.dev/action=<label-safe name>` (what the selectors match), the exact action name in the
`jsorc.dev/action` annotation, and `jsorc.dev/config-hash`: a hash of what the config
decides (image, command, port, resources), so a changed config is patched and an unchanged
one is left alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jsorc_live.actions.config import DEFAULT_IMAGE, KubernetesSpec, server_command

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "jsorc"
ACTION_LABEL = "jsorc.dev/action"
ACTION_ANNOTATION = "jsorc.dev/action"
HASH_ANNOTATION = "jsorc.dev/config-hash"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # on EndpointSlices
SPEC_PATH = "/jaseci_actions_spec/"
CONTAINER = "action-server"
SELECTOR = f"{MANAGED_BY}={MANAGER}"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def object_name(action: str) -> str:
    """A DNS-1035 label for the action's Deployment and Service: `use_enc` -> `jsorc-use-enc`.
    A name that had to be shortened keeps a hash of the original, so two long names differ."""
    slug = re.sub(r"[^a-z0-9]+", "-", action.lower()).strip("-") or "action"
    name = f"jsorc-{slug}"
    if len(name) > 63:
        digest = hashlib.sha256(action.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    return name


def label_value(action: str) -> str:
    """The action's name as a label value when it is one, else its object name."""
    return action if len(action) <= 63 and _LABEL_VALUE.match(action) else object_name(action)


def labels(action: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, ACTION_LABEL: label_value(action)}


def cpu_quantity(cores: float) -> str:
    """Cores as millicores ("500m"), at least 1m."""
    return f"{max(1, round(cores * 1000))}m"


def memory_quantity(mb: float) -> str:
    return f"{max(1, math.ceil(mb))}Mi"


@dataclass(frozen=True)
class Objects:
    """The action's Deployment and Service, and the hash both carry."""

    action: str
    name: str
    deployment: dict[str, Any]
    service: dict[str, Any]
    config_hash: str
    port: int


def default_spec(module: str, setup: Mapping[str, Any], memory_mb: float,
                 cores: float) -> KubernetesSpec:
    """The container for an action that came without one (see ActionConfig.kubernetes)."""
    port = 80
    return KubernetesSpec(image=DEFAULT_IMAGE, port=port, command=tuple(
        server_command(module, "0.0.0.0", port, setup=setup, python="python")),
        cpu=cores, memory_mb=math.ceil(memory_mb))


def build(action: str, spec: KubernetesSpec, namespace: str, replicas: int) -> Objects:
    """The Deployment (with `replicas`) and the Service of `action` in `namespace`."""
    name = object_name(action)
    chosen = labels(action)
    resources = {"requests": {"cpu": cpu_quantity(spec.cpu),
                              "memory": memory_quantity(spec.memory_mb)},
                 "limits": {"memory": memory_quantity(spec.memory_mb)}}
    container = {
        "name": CONTAINER,
        "image": spec.image,
        "command": list(spec.command),
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "resources": resources,
        "readinessProbe": {"httpGet": {"path": SPEC_PATH, "port": spec.port},
                           "periodSeconds": 1, "failureThreshold": 3},
    }
    pod_spec = {"containers": [container]}
    service_spec = {"type": "ClusterIP", "selector": dict(chosen),
                    "ports": [{"name": "http", "port": spec.port, "targetPort": spec.port,
                               "protocol": "TCP"}]}
    digest = config_hash(pod_spec, service_spec)
    meta = {"name": name, "namespace": namespace, "labels": dict(chosen),
            "annotations": {ACTION_ANNOTATION: action, HASH_ANNOTATION: digest}}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {"replicas": replicas, "selector": {"matchLabels": dict(chosen)},
                 "template": {"metadata": {"labels": dict(chosen),
                                           "annotations": {HASH_ANNOTATION: digest}},
                              "spec": pod_spec}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": json.loads(json.dumps(meta)),
               "spec": service_spec}
    return Objects(action, name, deployment, service, digest, spec.port)


def config_hash(*parts: Mapping[str, Any]) -> str:
    """A short, stable hash of JSON-able parts (key order does not matter)."""
    text = json.dumps(list(parts), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- reading


def owner_action(obj: Mapping[str, Any]) -> str | None:
    """The action a jsorc-managed object belongs to (None: not jsorc's)."""
    meta = obj.get("metadata") or {}
    if (meta.get("labels") or {}).get(MANAGED_BY) != MANAGER:
        return None
    action = (meta.get("annotations") or {}).get(ACTION_ANNOTATION)
    return action if isinstance(action, str) and action else None


def hash_of(obj: Mapping[str, Any]) -> str | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION)
    return value if isinstance(value, str) else None


def name_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def spec_replicas(deployment: Mapping[str, Any]) -> int:
    value = (deployment.get("spec") or {}).get("replicas", 1)
    return int(value) if isinstance(value, int) else 1


def ready_replicas(deployment: Mapping[str, Any]) -> int:
    value = (deployment.get("status") or {}).get("readyReplicas", 0)
    return int(value) if isinstance(value, int) else 0


@dataclass(frozen=True)
class Endpoint:
    """One pod behind a Service, as its EndpointSlices say."""

    pod: str
    url: str
    ready: bool


def endpoints(slices: Mapping[str, Mapping[str, Any]], service: str,
              default_port: int) -> dict[str, Endpoint]:
    """The pods behind `service` by pod name, from every EndpointSlice naming it. A pod is
    ready when its endpoint says ready and not terminating."""
    out: dict[str, Endpoint] = {}
    for item in slices.values():
        meta = item.get("metadata") or {}
        if (meta.get("labels") or {}).get(SERVICE_NAME_LABEL) != service:
            continue
        ports = [p.get("port") for p in item.get("ports") or [] if isinstance(p, dict)]
        port = next((p for p in ports if isinstance(p, int)), default_port)
        for ep in item.get("endpoints") or []:
            ref = ep.get("targetRef") or {}
            addresses = ep.get("addresses") or []
            if not addresses or not ref.get("name"):
                continue
            cond = ep.get("conditions") or {}
            ready = cond.get("ready") is not False and not cond.get("terminating", False)
            host = str(addresses[0])
            host = f"[{host}]" if ":" in host else host
            pod = str(ref["name"])
            out[pod] = Endpoint(pod, f"http://{host}:{port}", ready)
    return out
