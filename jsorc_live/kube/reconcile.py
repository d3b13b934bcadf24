"""Level-triggered reconciliation: from what is wanted and what exists, the writes to make.

`plan` is pure (kopf's cause detection, HPA's replica arithmetic): it compares the wanted
objects of each action with the Deployments and Services that exist (listed by jsorc's
label) and returns the operations, in order. The backend's loop lists, plans and runs them
(`KubeBackend._reconcile`), every interval and whenever a replica is asked for or let go,
so a missed event or a failed write is repaired by the next pass rather than remembered.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jsorc_live.kube.manifests import Objects, hash_of, name_of, owner_action, spec_replicas


class Verb(enum.Enum):
    CREATE = "create"
    PATCH = "patch"  # the template/spec differs from the config (by hash)
    SCALE = "scale"  # through /scale
    DELETE = "delete"
    CONFLICT = "conflict"  # the name is taken by an object jsorc does not own


@dataclass(frozen=True)
class Want:
    """An action jsorc wants in the cluster: its objects (None: adopted from a previous
    controller and not yet configured, so kept as found) and its replica count."""

    action: str
    name: str
    replicas: int
    objects: Objects | None = None


@dataclass(frozen=True)
class Op:
    verb: Verb
    kind: str  # "deployment" | "service"
    name: str
    action: str
    body: Mapping[str, Any] = field(default_factory=dict)
    replicas: int = 0
    reason: str = ""

    @property
    def resource(self) -> str:
        return f"{self.kind} {self.name}"


def plan(wants: Mapping[str, Want], deployments: Mapping[str, Mapping[str, Any]],
         services: Mapping[str, Mapping[str, Any]]) -> list[Op]:
    """The writes that make the cluster what `wants` (by object name) says.

    For each want: a missing Service or Deployment is created (the Service first, so its
    EndpointSlices exist by the time pods are ready); one whose config hash differs is
    patched; a Deployment whose replicas differ is scaled; a name held by an object that is
    not this action's is a CONFLICT (never touched). Every object jsorc owns that no want
    names is deleted (Deployments before Services, so calls have no pods left first).
    """
    ops: list[Op] = []
    for name, want in sorted(wants.items()):
        for kind, existing in (("service", services.get(name)),
                               ("deployment", deployments.get(name))):
            ops += _one(kind, want, existing)
    for kind, existing_of in (("deployment", deployments), ("service", services)):
        for name, obj in sorted(existing_of.items()):
            action = owner_action(obj)
            if action is not None and name not in wants:
                ops.append(Op(Verb.DELETE, kind, name, action, reason="no longer wanted"))
    return ops


def _one(kind: str, want: Want, existing: Mapping[str, Any] | None) -> list[Op]:
    objects = want.objects
    body = None if objects is None else (objects.deployment if kind == "deployment"
                                         else objects.service)
    if existing is None:
        if body is None:
            return []  # adopted but gone meanwhile: nothing to recreate it from
        if kind == "service":
            return [Op(Verb.CREATE, kind, want.name, want.action, body, reason="missing")]
        body = {**body, "spec": {**body["spec"], "replicas": want.replicas}}
        return [Op(Verb.CREATE, kind, want.name, want.action, body, want.replicas,
                   "missing")]
    owner = owner_action(existing)
    if owner != want.action:
        who = f"action {owner!r}'s" if owner else "not jsorc's"
        return [Op(Verb.CONFLICT, kind, want.name, want.action,
                   reason=f"{kind} {name_of(existing)} exists and is {who}")]
    ops = []
    if body is not None and objects is not None and hash_of(existing) != objects.config_hash:
        ops.append(Op(Verb.PATCH, kind, want.name, want.action, _patch_of(kind, body),
                      reason=f"config hash {hash_of(existing)} -> {objects.config_hash}"))
    if kind == "deployment" and spec_replicas(existing) != want.replicas:
        ops.append(Op(Verb.SCALE, kind, want.name, want.action, replicas=want.replicas,
                      reason=f"replicas {spec_replicas(existing)} -> {want.replicas}"))
    return ops


def _patch_of(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch that makes the object's labels, annotations and spec the config's
    (a Deployment's replicas are left to /scale)."""
    meta = body["metadata"]
    spec = dict(body["spec"])
    if kind == "deployment":
        spec.pop("replicas", None)
    return {"metadata": {"labels": meta["labels"], "annotations": meta["annotations"]},
            "spec": spec}
