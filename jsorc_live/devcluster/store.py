"""The API server's storage semantics over kmock's object store: what a create, read, list,
update, patch or delete does to the objects, as a real API server (and etcd) would.

kmock's ``KubernetesEmulator`` keeps each object's versions in ``emulator.objects`` (an
``ObjectsArray``); :class:`Store` writes there (so kmock's assertions on ``objects`` still
work) and adds what kmock leaves out:

- one ``resourceVersion`` counter over every write, set on each object and on lists; a write
  that changes nothing keeps the version (no event);
- ``metadata.uid``, ``creationTimestamp``, ``generation`` (bumped when the spec changes, for
  Deployments and ReplicaSets), ``generateName``;
- optimistic concurrency: a PUT (or a patch) carrying a ``resourceVersion`` other than the
  stored one is a 409 Conflict; a duplicate create is a 409 AlreadyExists; a missing object
  a 404 NotFound; a create in a namespace that does not exist a 404 ``namespaces "x" not
  found``; each with the Status body a real server sends (:class:`ApiError`);
- the ``status`` subresource split: writes to the object keep its status, writes to
  ``/status`` change only the status; ``/scale`` reads and writes ``spec.replicas`` as an
  ``autoscaling/v1`` Scale;
- defaults and validation (resources.py), the three patch types (patches.py);
- finalizers (delete marks ``deletionTimestamp`` until they are removed), graceful pod
  deletion (a pod on a node is marked and its kubelet removes it), DeleteOptions
  preconditions, namespace deletion removing everything in the namespace;
- a bounded log of watch events, so a watch can resume from a ``resourceVersion``; one older
  than the log answers 410 Expired (:meth:`Store.events_since`; :meth:`Store.compact` drops
  the log, to provoke that in tests).

Everything runs on the emulator's event loop thread; nothing here is thread-safe on its own.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kmock

from jsorc_live.devcluster import patches, selectors
from jsorc_live.devcluster.resources import (
    ApiError,
    ResourceSpec,
    apply_defaults,
    find_resource,
    validate,
)

__all__ = ["NAMESPACES", "Store", "WatchEvent", "timestamp"]



def _resource(group: str, version: str, plural: str) -> ResourceSpec:
    spec = find_resource(group, version, plural)
    assert spec is not None, plural
    return spec


NAMESPACES = _resource("", "v1", "namespaces")
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"
_SAFE = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet of generated name suffixes
_FIXED_META = ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
               "deletionGracePeriodSeconds", "generation")

ObjectKey = tuple[kmock.resource, str | None, str]


def timestamp(seconds: float) -> str:
    """RFC 3339 in whole seconds, as metadata timestamps are written."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``obj`` is the object after it (for DELETED, its last state), ``old`` the
    object before (MODIFIED), so a filtered watch can tell an object entering or leaving
    its selector."""

    rv: int
    spec: ResourceSpec
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None = None


class Store:
    """The objects of one emulator (see the module docstring)."""

    def __init__(self, objects: kmock.ObjectsArray, *, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, event_history: int = 2000,
                 versions_kept: int = 10) -> None:
        self.objects = objects
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.rv = 0
        self.events: deque[WatchEvent] = deque()
        self.event_history = event_history
        self.compacted_rv = 0  # events up to this version are gone from the log
        self.versions_kept = versions_kept
        self.on_change: list[Callable[[], None]] = []
        self._keys: dict[ResourceSpec, kmock.resource] = {}
        self._cluster_ips = ipaddress.ip_network("10.96.0.0/16").hosts()
        next(self._cluster_ips)  # 10.96.0.1 is the kubernetes Service in a real cluster

    # ----------------------------------------------------------------- reads

    def key(self, spec: ResourceSpec, namespace: str | None, name: str) -> ObjectKey:
        if spec not in self._keys:
            self._keys[spec] = kmock.resource(spec.group, spec.version, spec.plural)
        return (self._keys[spec], namespace if spec.namespaced else None, name)

    def find(self, spec: ResourceSpec, namespace: str | None, name: str
             ) -> dict[str, Any] | None:
        """The stored object (a copy), or None."""
        key = self.key(spec, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def get(self, spec: ResourceSpec, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.find(spec, namespace, name)
        if obj is None:
            raise ApiError.not_found(spec, name)
        return obj

    def list_objects(self, spec: ResourceSpec, namespace: str | None,
             labels: Sequence[selectors.Requirement] = (),
             fields: Sequence[tuple[str, bool, str]] = ()) -> list[dict[str, Any]]:
        """Matching objects (copies) in key order, as etcd lists them."""
        found = []
        wanted = self.key(spec, None, "")[0]
        for (resource, ns, name), obj in self.objects.items():
            if resource != wanted or obj.deleted:
                continue
            if spec.namespaced and namespace is not None and ns != namespace:
                continue
            raw = obj.raw
            if selectors.matches(labels, (raw.get("metadata") or {}).get("labels")) and \
                    selectors.matches_fields(fields, raw):
                found.append(((ns or "", name), raw))
        return [copy.deepcopy(raw) for _, raw in sorted(found, key=lambda item: item[0])]

    def events_since(self, rv: int) -> list[WatchEvent]:
        """The events after version ``rv``; 410 Expired if some of them are gone."""
        if rv < self.compacted_rv:
            raise ApiError(410, f"too old resource version: {rv} ({self.compacted_rv + 1})",
                           reason="Expired")
        return [e for e in self.events if e.rv > rv]

    def compact(self) -> None:
        """Forget every event so far (as etcd compaction does): a watch from an older
        version then answers 410."""
        self.events.clear()
        self.compacted_rv = self.rv

    # ----------------------------------------------------------------- writes

    def create(self, spec: ResourceSpec, namespace: str | None, body: Any, *,
               dry_run: bool = False) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise ApiError(400, f"the body of a {spec.kind} create must be a JSON object "
                           "with metadata")
        if body.get("kind") not in (None, "", spec.kind):
            raise ApiError(400, f"the kind {body['kind']!r} of the object does not match the "
                           f"resource {spec.qualified} ({spec.kind})")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        namespace = self._namespace_for(spec, namespace, meta)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = self._generated_name(spec, namespace, str(meta["generateName"]))
        name = str(meta.get("name") or "")
        errors = validate(spec, obj)
        if errors:
            raise ApiError.invalid(spec, name, errors)
        if self.find(spec, namespace, name) is not None:
            raise ApiError.already_exists(spec, name)
        obj["kind"], obj["apiVersion"] = spec.kind, spec.group_version
        if spec.status_subresource:
            obj["status"] = {}
        cluster_ip = None
        if spec.kind == "Service" and (obj.get("spec") or {}).get("clusterIP") is None:
            cluster_ip = str(next(self._cluster_ips))
        apply_defaults(spec, obj, creating=True, cluster_ip=cluster_ip)
        for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds",
                      "managedFields", "selfLink"):
            meta.pop(field, None)
        meta["uid"] = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        meta["creationTimestamp"] = timestamp(self.clock())
        if spec.generation:
            meta["generation"] = 1
        if dry_run:
            return obj
        return self._commit(spec, self.key(spec, namespace, name), obj, None, "ADDED")

    def replace(self, spec: ResourceSpec, namespace: str | None, name: str, body: Any, *,
                subresource: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """PUT: the whole object (or its status)."""
        if not isinstance(body, dict):
            raise ApiError(400, "the body of an update must be a JSON object")
        old = self.get(spec, namespace, name)
        given = (body.get("metadata") or {}).get("name")
        if given not in (None, name):
            raise ApiError(400, f"the name of the object ({given}) does not match the name on "
                           f"the URL ({name})")
        return self._update(spec, old, copy.deepcopy(body), subresource, dry_run)

    def patch(self, spec: ResourceSpec, namespace: str | None, name: str, patch: Any,
              content_type: str, *, subresource: str | None = None,
              dry_run: bool = False) -> dict[str, Any]:
        """PATCH of the object (or its status); an apply patch creates a missing object."""
        old = self.find(spec, namespace, name)
        if old is None:
            if content_type == APPLY and subresource is None:
                return self.create(spec, namespace, patch, dry_run=dry_run)
            raise ApiError.not_found(spec, name)
        return self._update(spec, old, apply_patch(old, patch, content_type), subresource,
                            dry_run)

    def delete(self, spec: ResourceSpec, namespace: str | None, name: str,
               options: Mapping[str, Any] | None = None, *, dry_run: bool = False
               ) -> dict[str, Any]:
        """DELETE: the object's last state, or the object marked with
        ``deletionTimestamp`` while finalizers hold it or, for a pod on a node, while its
        kubelet stops it (graceful deletion: the kubelet deletes it again with grace 0)."""
        old = self.get(spec, namespace, name)
        meta = old["metadata"]
        pre = (options or {}).get("preconditions") or {}
        for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            if pre.get(field) and pre[field] != meta.get(field):
                raise ApiError(409, f"Precondition failed: {label} in precondition: "
                               f"{pre[field]}, {label} in object meta: {meta.get(field)}",
                               reason="Conflict",
                               details={"name": name, "group": spec.group,
                                        "kind": spec.plural})
        if dry_run:
            return old
        if spec.kind == "Namespace":
            self._delete_contents(name)
        key = self.key(spec, namespace, name)
        grace = _grace_s(spec, old, options)
        if meta.get("finalizers") or grace > 0:
            current = meta.get("deletionGracePeriodSeconds")
            if not meta.get("deletionTimestamp") or (current is not None and grace < current):
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = timestamp(self.clock() + grace)
                new["metadata"]["deletionGracePeriodSeconds"] = grace
                return self._commit(spec, key, new, old, "MODIFIED")
            return old
        return self._remove(spec, key, old)

    # ----------------------------------------------------------------- /scale

    def get_scale(self, spec: ResourceSpec, namespace: str | None, name: str
                  ) -> dict[str, Any]:
        return scale_of(self.get(spec, namespace, name))

    def write_scale(self, spec: ResourceSpec, namespace: str | None, name: str, body: Any,
                    content_type: str | None, *, dry_run: bool = False) -> dict[str, Any]:
        """PUT (``content_type`` None) or PATCH of ``/scale``: sets ``spec.replicas``."""
        old = self.get(spec, namespace, name)
        scale = scale_of(old)
        new_scale = body if content_type is None else apply_patch(scale, body, content_type)
        if not isinstance(new_scale, dict):
            raise ApiError(400, "a Scale must be a JSON object")
        given_rv = (new_scale.get("metadata") or {}).get("resourceVersion")
        if given_rv not in (None, "") and given_rv != old["metadata"]["resourceVersion"]:
            raise ApiError.conflict(spec, name)
        replicas = (new_scale.get("spec") or {}).get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise ApiError(422, f'Scale.autoscaling "{name}" is invalid: spec.replicas: '
                           f"Invalid value: {replicas!r}: must be greater than or equal to 0",
                           details={"name": name, "group": "autoscaling", "kind": "Scale"})
        new = copy.deepcopy(old)
        new["spec"]["replicas"] = replicas
        return scale_of(self._update(spec, old, new, None, dry_run))

    # ----------------------------------------------------------------- internals

    def _namespace_for(self, spec: ResourceSpec, namespace: str | None,
                       meta: dict[str, Any]) -> str | None:
        if not spec.namespaced:
            meta.pop("namespace", None)
            return None
        given = meta.get("namespace")
        if given and namespace and given != namespace:
            raise ApiError(400, "the namespace of the provided object does not match the "
                           "namespace sent on the request")
        namespace = namespace or given
        if not namespace:
            raise ApiError(400, "a namespaced object needs a namespace")
        meta["namespace"] = namespace
        if self.find(NAMESPACES, None, namespace) is None:
            raise ApiError(404, f'namespaces "{namespace}" not found',
                           details={"name": namespace, "kind": "namespaces"})
        return namespace

    def _generated_name(self, spec: ResourceSpec, namespace: str | None, prefix: str) -> str:
        while True:
            name = prefix + "".join(self.rng.choice(_SAFE) for _ in range(5))
            if self.find(spec, namespace, name) is None:
                return name

    def _update(self, spec: ResourceSpec, old: dict[str, Any], new: dict[str, Any],
                subresource: str | None, dry_run: bool) -> dict[str, Any]:
        meta_old = old["metadata"]
        name = meta_old["name"]
        given_rv = (new.get("metadata") or {}).get("resourceVersion")
        if given_rv not in (None, "") and given_rv != meta_old.get("resourceVersion"):
            raise ApiError.conflict(spec, name)
        if subresource == "status":
            status = new.get("status")
            new = copy.deepcopy(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        else:
            if spec.status_subresource:
                new["status"] = copy.deepcopy(old.get("status", {}))
            meta = new.setdefault("metadata", {})
            if not isinstance(meta, dict):
                raise ApiError(400, "metadata must be a JSON object")
            for field in _FIXED_META:
                if field in meta_old:
                    meta[field] = meta_old[field]
                else:
                    meta.pop(field, None)
            apply_defaults(spec, new, creating=False)
            if spec.kind == "Service":
                for field in ("clusterIP", "clusterIPs"):
                    if field in (old.get("spec") or {}):
                        new["spec"][field] = old["spec"][field]
        new["kind"], new["apiVersion"] = spec.kind, spec.group_version
        new["metadata"].pop("managedFields", None)
        errors = validate(spec, new, old)
        if errors:
            raise ApiError.invalid(spec, name, errors)
        if spec.generation and new.get("spec") != old.get("spec"):
            new["metadata"]["generation"] = int(meta_old.get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = meta_old.get("resourceVersion")
        key = self.key(spec, meta_old.get("namespace"), name)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return old if dry_run else self._remove(spec, key, new)
        if new == old or dry_run:
            return new
        return self._commit(spec, key, new, old, "MODIFIED")

    def _commit(self, spec: ResourceSpec, key: ObjectKey, new: dict[str, Any],
                old: dict[str, Any] | None, kind: str) -> dict[str, Any]:
        self.rv += 1
        new["metadata"]["resourceVersion"] = str(self.rv)
        if key not in self.objects:
            self.objects[key] = copy.deepcopy(new)
        else:
            history = self.objects[key].history
            history.append(copy.deepcopy(new))
            if len(history) > self.versions_kept:
                del history[:-self.versions_kept]
        self._record(WatchEvent(self.rv, spec, kind, copy.deepcopy(new), old))
        return new

    def _remove(self, spec: ResourceSpec, key: ObjectKey, last: dict[str, Any]
                ) -> dict[str, Any]:
        self.rv += 1
        final = copy.deepcopy(last)
        final["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[key].delete()
        self._record(WatchEvent(self.rv, spec, "DELETED", final))
        return final

    def _record(self, event: WatchEvent) -> None:
        if len(self.events) >= self.event_history:
            self.compacted_rv = self.events.popleft().rv
        self.events.append(event)
        for listener in self.on_change:
            listener()

    def _delete_contents(self, namespace: str) -> None:
        for (resource, ns, name), obj in list(self._live()):
            if ns != namespace or obj is None:
                continue
            spec = find_resource(str(resource.group), str(resource.version),
                                 str(resource.plural))
            if spec is not None:
                self._remove(spec, (resource, ns, name), obj)

    def _live(self) -> Iterator[tuple[ObjectKey, dict[str, Any] | None]]:
        for key, obj in list(self.objects.items()):
            yield key, None if obj.deleted else copy.deepcopy(obj.raw)


def _grace_s(spec: ResourceSpec, obj: Mapping[str, Any],
             options: Mapping[str, Any] | None) -> int:
    """The grace period of a deletion: only pods on a node that are not finished have one
    (DeleteOptions.gracePeriodSeconds, else spec.terminationGracePeriodSeconds)."""
    if spec.kind != "Pod" or not (obj.get("spec") or {}).get("nodeName"):
        return 0
    if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return 0
    given = (options or {}).get("gracePeriodSeconds")
    if isinstance(given, int) and not isinstance(given, bool):
        return max(given, 0)
    return max(int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30)), 0)


def apply_patch(target: dict[str, Any], patch: Any, content_type: str) -> Any:
    """``target`` patched as ``content_type`` says; 415 for a type the server does not
    take, 400/422 for a patch that does not apply."""
    try:
        if content_type == JSON_PATCH:
            return patches.json_patch(target, patch)
        if content_type == MERGE:
            return patches.merge_patch(target, patch)
        if content_type in (STRATEGIC, APPLY):
            return patches.strategic_merge_patch(target, patch)
    except patches.PatchError as exc:
        raise ApiError(400 if exc.malformed else 422, f"the patch does not apply: {exc}"
                       ) from None
    raise ApiError(415, f"the body of the request was in an unknown format - accepted media "
                   f"types include: {JSON_PATCH}, {MERGE}, {STRATEGIC}, {APPLY}")


def scale_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The ``autoscaling/v1`` Scale of a Deployment or ReplicaSet."""
    meta = obj["metadata"]
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                           "creationTimestamp") if k in meta},
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                   "selector": selectors.to_string((obj.get("spec") or {}).get("selector"))},
    }
