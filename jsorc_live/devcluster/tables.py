"""Server-side printing: the ``meta.k8s.io/v1`` Table that ``kubectl get`` (without ``-o``)
asks for with ``Accept: application/json;as=Table;...``. Pure functions.

The columns follow kubectl's for the kinds the dev cluster runs (pods, deployments,
replicasets, services, endpointslices, endpoints, namespaces, nodes); any other kind prints
NAME and AGE. Priority-1 columns show with ``-o wide``.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from typing import Any

from jsorc_live.devcluster.resources import ResourceSpec

__all__ = ["age", "table", "wants_table"]

Column = tuple[str, int]  # name, priority


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def age(created: str | None, now: float) -> str:
    """kubectl's short duration: 42s, 3m10s, 25m, 5h3m, 2d4h, 30d."""
    if not created:
        return "<unknown>"
    try:
        seconds = int(now - calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return "<unknown>"
    seconds = max(seconds, 0)
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if days < 2:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d"


def _get(obj: Mapping[str, Any], *path: str, default: Any = None) -> Any:
    value: Any = obj
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return default
        value = value[part]
    return value


def _pod_row(pod: Mapping[str, Any]) -> list[Any]:
    statuses = _get(pod, "status", "containerStatuses", default=[]) or []
    containers = _get(pod, "spec", "containers", default=[]) or []
    ready = sum(1 for s in statuses if s.get("ready"))
    phase = _get(pod, "status", "phase", default="Pending")
    for s in statuses:
        waiting = _get(s, "state", "waiting", "reason")
        if waiting:
            phase = waiting
    if _get(pod, "metadata", "deletionTimestamp"):
        phase = "Terminating"
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    return [f"{ready}/{len(containers)}", phase, restarts,
            _get(pod, "status", "podIP", default="<none>"),
            _get(pod, "spec", "nodeName", default="<none>")]


def _ports(service: Mapping[str, Any]) -> str:
    ports = _get(service, "spec", "ports", default=[]) or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _selector(selector: Mapping[str, Any] | None) -> str:
    labels = (selector or {}).get("matchLabels", selector) if selector else None
    if not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if isinstance(v, str))


def _slice_endpoints(eps: list[Mapping[str, Any]]) -> str:
    addresses = [a for e in eps for a in e.get("addresses", [])]
    if not addresses:
        return "<unset>"
    shown = ",".join(addresses[:3])
    return shown + (f" + {len(addresses) - 3} more..." if len(addresses) > 3 else "")


_COLUMNS: dict[str, list[Column]] = {
    "Pod": [("Ready", 0), ("Status", 0), ("Restarts", 0), ("Age", 0), ("IP", 1), ("Node", 1)],
    "Deployment": [("Ready", 0), ("Up-to-date", 0), ("Available", 0), ("Age", 0),
                   ("Containers", 1), ("Images", 1), ("Selector", 1)],
    "ReplicaSet": [("Desired", 0), ("Current", 0), ("Ready", 0), ("Age", 0)],
    "Service": [("Type", 0), ("Cluster-IP", 0), ("External-IP", 0), ("Port(s)", 0),
                ("Age", 0), ("Selector", 1)],
    "EndpointSlice": [("AddressType", 0), ("Ports", 0), ("Endpoints", 0), ("Age", 0)],
    "Endpoints": [("Endpoints", 0), ("Age", 0)],
    "Namespace": [("Status", 0), ("Age", 0)],
    "Node": [("Status", 0), ("Roles", 0), ("Age", 0), ("Version", 0)],
}


def _cells(kind: str, obj: Mapping[str, Any]) -> list[Any]:
    if kind == "Pod":
        return _pod_row(obj)
    if kind == "Deployment":
        containers = _get(obj, "spec", "template", "spec", "containers", default=[]) or []
        return [f"{_get(obj, 'status', 'readyReplicas', default=0)}/"
                f"{_get(obj, 'spec', 'replicas', default=0)}",
                _get(obj, "status", "updatedReplicas", default=0),
                _get(obj, "status", "availableReplicas", default=0),
                ",".join(c.get("name", "") for c in containers),
                ",".join(c.get("image", "") for c in containers),
                _selector(_get(obj, "spec", "selector"))]
    if kind == "ReplicaSet":
        return [_get(obj, "spec", "replicas", default=0),
                _get(obj, "status", "replicas", default=0),
                _get(obj, "status", "readyReplicas", default=0)]
    if kind == "Service":
        return [_get(obj, "spec", "type", default="ClusterIP"),
                _get(obj, "spec", "clusterIP", default="<none>"), "<none>", _ports(obj),
                _selector(_get(obj, "spec", "selector"))]
    if kind == "EndpointSlice":
        ports = ",".join(str(p.get("port")) for p in obj.get("ports") or []) or "<unset>"
        return [obj.get("addressType", "IPv4"), ports,
                _slice_endpoints(obj.get("endpoints") or [])]
    if kind == "Endpoints":
        subsets = obj.get("subsets") or []
        pairs = [f"{a.get('ip')}:{p.get('port')}" for s in subsets
                 for a in s.get("addresses") or [] for p in s.get("ports") or []]
        return [",".join(pairs) or "<none>"]
    if kind == "Namespace":
        return [_get(obj, "status", "phase", default="Active")]
    if kind == "Node":
        roles = sorted(k.split("/", 1)[1] for k in (obj["metadata"].get("labels") or {})
                       if k.startswith("node-role.kubernetes.io/"))
        return ["Ready", ",".join(roles) or "<none>",
                _get(obj, "status", "nodeInfo", "kubeletVersion", default="")]
    return []


def table(spec: ResourceSpec, items: list[dict[str, Any]], meta: Mapping[str, Any],
          now: float) -> dict[str, Any]:
    """The Table of a list of ``spec`` objects (``items`` as stored, with kind)."""
    columns = [("Name", 0), *_COLUMNS.get(spec.kind, [("Age", 0)])]
    definitions = [{"name": name, "type": "string", "format": "name" if name == "Name" else "",
                    "description": "", "priority": priority} for name, priority in columns]
    age_at = [name for name, _ in columns].index("Age")
    rows = []
    for obj in items:
        cells = [obj["metadata"]["name"], *_cells(spec.kind, obj)]
        cells.insert(age_at, age(obj["metadata"].get("creationTimestamp"), now))
        rows.append({"cells": cells, "object": obj})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": dict(meta),
            "columnDefinitions": definitions, "rows": rows}
