"""The Deployment and ReplicaSet controllers of the dev cluster, in one: from each
Deployment, a ReplicaSet per pod template and the Pod objects it should have; the
Deployment's and the ReplicaSets' ``status``; garbage collection of what a deleted
Deployment owned. Processes are not its business: the kubelet runs whatever Pods exist.

Pure parts (:func:`template_hash`, :func:`plan`, :func:`scale_down_order`,
:func:`deployment_status`) decide; :class:`WorkloadController` reads and writes through the
API. As a real controller:

- pods are named ``DEPLOYMENT-HASH-xxxxx`` (``generateName`` of the ReplicaSet
  ``DEPLOYMENT-HASH``), labelled with the template's labels and ``pod-template-hash``, owned
  by the ReplicaSet, which the Deployment owns;
- scaling down deletes first the pods that are not running, then not ready, then those with
  the lowest ``controller.kubernetes.io/pod-deletion-cost`` annotation, then the most
  recently ready, the most restarted, the newest (a ReplicaSet's order);
- a changed template (a new hash) starts a new ReplicaSet's pods at once and deletes the old
  pods once as many new ones are ready as the Deployment wants (a rolling update with 100%
  surge, so calls keep an answering pod throughout); ``strategy.type: Recreate`` deletes the
  old pods first and starts the new ones when they are gone; an emptied old ReplicaSet is
  deleted (no revision history);
- terminating pods (deletion requested, the kubelet stopping them) do not count towards the
  replicas: replacements start meanwhile;
- status counters that are zero are omitted, as the API server's JSON omits them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jsorc_live.devcluster import selectors
from jsorc_live.devcluster.apiclient import ApiCallError, ControlPlaneClient, path

__all__ = [
    "DELETION_COST",
    "POD_TEMPLATE_HASH",
    "Plan",
    "PodState",
    "WorkloadController",
    "deployment_status",
    "plan",
    "scale_down_order",
    "template_hash",
]

log = logging.getLogger(__name__)

POD_TEMPLATE_HASH = "pod-template-hash"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable 10-character name for a pod template (the real one is an FNV hash; only
    its stability matters)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(_SAFE[b % len(_SAFE)] for b in digest[:10])


def deletion_cost(pod: Mapping[str, Any]) -> int:
    """The pod-deletion-cost annotation; missing or not an int32 counts as 0."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(DELETION_COST)
    try:
        cost = int(str(value))
    except ValueError:
        return 0
    return cost if -(2**31) < cost < 2**31 else 0


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


@dataclass(frozen=True)
class PodState:
    """What the controller reads of a pod."""

    name: str
    hash: str
    running: bool
    ready: bool
    terminating: bool
    cost: int
    created: str
    ready_since: str
    restarts: int

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> PodState:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        ready = condition(pod, "Ready") or {}
        return cls(
            name=str(meta.get("name")),
            hash=str((meta.get("labels") or {}).get(POD_TEMPLATE_HASH, "")),
            running=status.get("phase") == "Running",
            ready=ready.get("status") == "True",
            terminating=bool(meta.get("deletionTimestamp")),
            cost=deletion_cost(pod),
            created=str(meta.get("creationTimestamp", "")),
            ready_since=str(ready.get("lastTransitionTime", "")) if ready else "",
            restarts=sum(int(c.get("restartCount", 0))
                         for c in status.get("containerStatuses") or []),
        )


def scale_down_order(pods: Sequence[PodState]) -> list[PodState]:
    """Pods in the order a ReplicaSet deletes them when scaling down. Pure."""
    def key(p: PodState) -> tuple[Any, ...]:
        # Timestamps are RFC 3339 in whole seconds: they sort as strings; negate by
        # sorting on the inverted characters.
        return (p.running, p.ready, p.cost, _newest_first(p.ready_since), -p.restarts,
                _newest_first(p.created), p.name)

    return sorted(pods, key=key)


def _newest_first(stamp: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in stamp)


@dataclass(frozen=True)
class Plan:
    """Pods to create from the current template, pods to delete (by name)."""

    create: int
    delete: tuple[str, ...]


def plan(deployment: Mapping[str, Any], pods: Sequence[PodState]) -> Plan:
    """What a Deployment's pods need next (see the module docstring). Pure."""
    spec = deployment.get("spec") or {}
    desired = int(spec.get("replicas", 1))
    current = template_hash(spec.get("template") or {})
    new = [p for p in pods if p.hash == current and not p.terminating]
    old = [p for p in pods if p.hash != current]
    old_active = [p for p in old if not p.terminating]
    if (spec.get("strategy") or {}).get("type") == "Recreate" and old:
        return Plan(0, tuple(p.name for p in old_active))
    create = max(0, desired - len(new))
    delete = [p.name for p in scale_down_order(new)[: max(0, len(new) - desired)]]
    if old_active and sum(1 for p in new if p.ready) >= desired:
        delete += [p.name for p in old_active]
    return Plan(create, tuple(delete))


def _counts(pods: Sequence[PodState], current: str | None = None) -> dict[str, int]:
    active = [p for p in pods if not p.terminating]
    return {"replicas": len(active),
            "updatedReplicas": sum(1 for p in active if current is None or p.hash == current),
            "readyReplicas": sum(1 for p in active if p.ready),
            "availableReplicas": sum(1 for p in active if p.ready)}


def _max_unavailable(spec: Mapping[str, Any], desired: int) -> int:
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate":
        return desired
    value = (strategy.get("rollingUpdate") or {}).get("maxUnavailable", "25%")
    if isinstance(value, str) and value.endswith("%"):
        return math.floor(desired * float(value[:-1]) / 100.0)
    return int(value)


def _condition(kind: str, ok: bool, reason: str, message: str,
               old: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    status = "True" if ok else "False"
    if old is None or old.get("status") != status:
        return {"type": kind, "status": status, "reason": reason, "message": message,
                "lastUpdateTime": now, "lastTransitionTime": now}
    updated = old.get("lastUpdateTime", now) if old.get("reason") == reason else now
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastUpdateTime": updated, "lastTransitionTime": old.get("lastTransitionTime", now)}


def deployment_status(deployment: Mapping[str, Any], pods: Sequence[PodState], now: str
                      ) -> dict[str, Any]:
    """The Deployment's status for its pods now (conditions keep their times while they
    hold). Pure."""
    spec, meta = deployment.get("spec") or {}, deployment.get("metadata") or {}
    desired = int(spec.get("replicas", 1))
    counts = _counts(pods, template_hash(spec.get("template") or {}))
    counts["unavailableReplicas"] = max(0, desired - counts["availableReplicas"])
    status: dict[str, Any] = {"observedGeneration": int(meta.get("generation", 1))}
    status.update({k: v for k, v in counts.items() if v})
    available = counts["availableReplicas"] >= desired - _max_unavailable(spec, desired)
    complete = (counts["updatedReplicas"] == desired == counts["replicas"]
                and counts["availableReplicas"] == desired)
    name = meta.get("name")
    status["conditions"] = [
        _condition("Available", available,
                   "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                   "Deployment has minimum availability." if available else
                   "Deployment does not have minimum availability.",
                   condition(deployment, "Available"), now),
        _condition("Progressing", True,
                   "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                   f'ReplicaSet "{name}" has successfully progressed.' if complete else
                   f'ReplicaSet "{name}" is progressing.',
                   condition(deployment, "Progressing"), now),
    ]
    return status


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning status ``old`` into ``new`` (dropped keys set to null)."""
    patch: dict[str, Any] = dict(new)
    for key in old or {}:
        patch.setdefault(key, None)
    return patch


def _owner(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
            "name": meta["name"], "uid": meta["uid"], "controller": True,
            "blockOwnerDeletion": True}


def _controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


RS_PATH = ("apps", "v1", "replicasets")
POD_PATH = ("", "v1", "pods")


class WorkloadController:
    """Deployments -> ReplicaSets -> Pods through the API (see the module docstring)."""

    def __init__(self, client: ControlPlaneClient, node_name: str) -> None:
        self.client = client
        self.node_name = node_name

    def sync(self, deployments: list[dict[str, Any]], replicasets: list[dict[str, Any]],
             pods: list[dict[str, Any]], now: str) -> list[dict[str, Any]]:
        """One pass; returns ``pods`` as they are after this pass's creates and deletes."""
        pods = list(pods)
        by_uid = {d["metadata"]["uid"]: d for d in deployments}
        live_rs = []
        for rs in replicasets:
            if _controller_uid(rs) in by_uid:
                live_rs.append(rs)
            elif _controller_uid(rs) is not None:  # its Deployment is gone
                self._delete(RS_PATH, rs)
        rs_uids = {rs["metadata"]["uid"] for rs in live_rs}
        for pod in pods:
            owner = _controller_uid(pod)
            if owner is not None and owner not in rs_uids and not pod["metadata"].get(
                    "deletionTimestamp"):
                self._delete(POD_PATH, pod)  # garbage: its ReplicaSet is gone
        for deployment in deployments:
            try:
                pods = self._sync_deployment(deployment, live_rs, pods, now)
            except ApiCallError as exc:
                log.info("deployment %s/%s: %s", deployment["metadata"].get("namespace"),
                         deployment["metadata"]["name"], exc)
        return pods

    def _sync_deployment(self, deployment: dict[str, Any], replicasets: list[dict[str, Any]],
                         pods: list[dict[str, Any]], now: str) -> list[dict[str, Any]]:
        meta, spec = deployment["metadata"], deployment.get("spec") or {}
        ns, uid = meta["namespace"], meta["uid"]
        current = template_hash(spec.get("template") or {})
        owned = [rs for rs in replicasets if _controller_uid(rs) == uid]
        rs_now = next((rs for rs in owned
                       if rs["metadata"].get("labels", {}).get(POD_TEMPLATE_HASH) == current),
                      None)
        desired = int(spec.get("replicas", 1))
        if rs_now is None:
            rs_now = self.client.create(path(*RS_PATH, ns), self._replicaset(deployment,
                                                                               current))
            if rs_now is None:
                return pods
            owned.append(rs_now)
        owned_uids = {rs["metadata"]["uid"] for rs in owned}
        mine = [p for p in pods if _controller_uid(p) in owned_uids]
        states = [PodState.of(p) for p in mine]
        step = plan(deployment, states)
        for name in step.delete:
            pod = next(p for p in mine if p["metadata"]["name"] == name)
            marked = self._delete(POD_PATH, pod)
            pods = [p for p in pods if p["metadata"]["name"] != name or
                    p["metadata"]["namespace"] != ns] + ([marked] if marked else [])
        for _ in range(step.create):
            created = self.client.create(path(*POD_PATH, ns), self._pod(deployment, rs_now,
                                                                         current))
            if created is not None:
                pods.append(created)
        mine = [p for p in pods if _controller_uid(p) in owned_uids]
        for rs in owned:
            self._sync_replicaset(rs, [p for p in mine if _controller_uid(p) ==
                                       rs["metadata"]["uid"]], desired, rs is rs_now)
        states = [PodState.of(p) for p in mine]
        new_status = deployment_status(deployment, states, now)
        if _differs(deployment.get("status"), new_status):
            self.client.patch(path("apps", "v1", "deployments", ns, meta["name"], "status"),
                              {"status": status_patch(deployment.get("status"), new_status)})
        return pods

    def _sync_replicaset(self, rs: dict[str, Any], pods: list[dict[str, Any]], desired: int,
                         current: bool) -> None:
        meta = rs["metadata"]
        url = path(*RS_PATH, meta["namespace"], meta["name"])
        if not current and not pods:
            self.client.delete(url)
            return
        states = [PodState.of(p) for p in pods]
        replicas = desired if current else sum(1 for s in states if not s.terminating)
        if (rs.get("spec") or {}).get("replicas") != replicas:
            self.client.patch(url, {"spec": {"replicas": replicas}})
        counts = _counts(states)
        new_status: dict[str, Any] = {"observedGeneration": int(meta.get("generation", 1))}
        new_status.update({k: v for k, v in counts.items() if v and k != "updatedReplicas"})
        if counts["replicas"]:
            new_status["fullyLabeledReplicas"] = counts["replicas"]
        if _differs(rs.get("status"), new_status):
            self.client.patch(url + "/status",
                              {"status": status_patch(rs.get("status"), new_status)})

    def _delete(self, where: tuple[str, str, str], obj: dict[str, Any]) -> dict[str, Any] | None:
        """Delete (gracefully for pods); the pod as marked, or None once gone."""
        meta = obj["metadata"]
        url = path(*where, meta.get("namespace"), meta["name"])
        try:
            answer = self.client.delete(url)
            if where == POD_PATH and answer is not None and answer.get("kind") == "Pod":
                return answer  # marked for graceful deletion: the kubelet stops it
        except ApiCallError as exc:
            log.info("delete %s: %s", url, exc)
        return None

    def _replicaset(self, deployment: Mapping[str, Any], current: str) -> dict[str, Any]:
        meta, spec = deployment["metadata"], deployment.get("spec") or {}
        template = json.loads(json.dumps(spec.get("template") or {}))
        template.setdefault("metadata", {}).setdefault("labels", {})[POD_TEMPLATE_HASH] = \
            current
        selector = json.loads(json.dumps(spec.get("selector") or {}))
        selector.setdefault("matchLabels", {})[POD_TEMPLATE_HASH] = current
        return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": f"{meta['name']}-{current}",
                             "namespace": meta["namespace"],
                             "labels": dict(template["metadata"]["labels"]),
                             "annotations": {"deployment.kubernetes.io/desired-replicas":
                                             str(spec.get("replicas", 1))},
                             "ownerReferences": [_owner(deployment)]},
                "spec": {"replicas": int(spec.get("replicas", 1)), "selector": selector,
                         "template": template}}

    def _pod(self, deployment: Mapping[str, Any], rs: Mapping[str, Any], current: str
             ) -> dict[str, Any]:
        template = json.loads(json.dumps((deployment.get("spec") or {}).get("template") or {}))
        tmeta = template.get("metadata") or {}
        labels = {**(tmeta.get("labels") or {}), POD_TEMPLATE_HASH: current}
        meta: dict[str, Any] = {"generateName": f"{rs['metadata']['name']}-",
                                "namespace": rs["metadata"]["namespace"], "labels": labels,
                                "ownerReferences": [_owner(rs)]}
        if tmeta.get("annotations"):
            meta["annotations"] = dict(tmeta["annotations"])
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": {**(template.get("spec") or {}), "nodeName": self.node_name}}


def _differs(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether a status write would change anything (condition times aside)."""
    def bare(status: Mapping[str, Any] | None) -> dict[str, Any]:
        out = dict(status or {})
        out["conditions"] = [{k: v for k, v in c.items() if k != "lastUpdateTime"}
                             for c in out.get("conditions") or []]
        return out

    return bare(old) != bare(new)


def selected_pods(selector: Mapping[str, Any] | None, pods: Sequence[dict[str, Any]],
                  namespace: str) -> list[dict[str, Any]]:
    """Pods of ``namespace`` matching a Service's map selector."""
    reqs = selectors.from_label_selector({"matchLabels": dict(selector or {})})
    return [p for p in pods if p["metadata"].get("namespace") == namespace
            and selectors.matches(reqs, p["metadata"].get("labels"))]
