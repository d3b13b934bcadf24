"""The endpoints controllers of the dev cluster: for every Service with a selector, one
``discovery.k8s.io/v1`` EndpointSlice and the ``v1`` Endpoints object, from the pods the
selector picks. Pure builders (:func:`endpoint_slice`, :func:`endpoints_object`) and
:class:`EndpointsController`, which writes what changed.

As the real controllers: the slice is labelled ``kubernetes.io/service-name`` and
``endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`` and owned by the
Service; each pod with an IP is an endpoint with ``conditions.ready`` (its Ready condition,
false while terminating), ``serving`` (Ready, even while terminating) and ``terminating``,
and a ``targetRef`` to the pod; ports carry the resolved target port (a named
``targetPort`` is looked up in the pod's container ports). The Endpoints object lists ready
pods under ``addresses`` and the others (not terminating) under ``notReadyAddresses``. One
slice per Service (a real controller splits at 100 endpoints, and by port mapping when pods
disagree on a named port; here pods that do not declare the named port are left out).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from jsorc_live.devcluster.apiclient import ApiCallError, ControlPlaneClient, path
from jsorc_live.devcluster.workloads import condition, selected_pods

__all__ = ["MANAGED_BY", "SERVICE_NAME", "EndpointsController", "endpoint_slice",
           "endpoints_object"]

log = logging.getLogger(__name__)

SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
CONTROLLER = "endpointslice-controller.k8s.io"
_SAFE = "bcdfghjklmnpqrstvwxz2456789"
SLICES = ("discovery.k8s.io", "v1", "endpointslices")
ENDPOINTS = ("", "v1", "endpoints")


def _target_port(port: Mapping[str, Any], pod: Mapping[str, Any]) -> int | None:
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    for container in (pod.get("spec") or {}).get("containers") or []:
        for declared in container.get("ports") or []:
            if declared.get("name") == target:
                return int(declared["containerPort"])
    return int(target) if str(target).isdigit() else None


def _ports(service: Mapping[str, Any], pod: Mapping[str, Any] | None
           ) -> list[dict[str, Any]] | None:
    """The slice's ports for ``pod``'s mapping; None if the pod lacks a named port."""
    out = []
    for port in (service.get("spec") or {}).get("ports") or []:
        number = _target_port(port, pod) if pod is not None else None
        if pod is not None and number is None:
            return None
        entry = {"name": port.get("name", ""), "protocol": port.get("protocol", "TCP")}
        if number is not None:
            entry["port"] = number
        out.append(entry)
    return out


def _members(service: Mapping[str, Any], pods: Sequence[dict[str, Any]]
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pods with an IP that the Service selects and that map its ports alike; and the
    ports."""
    ns = service["metadata"]["namespace"]
    chosen = [p for p in selected_pods((service.get("spec") or {}).get("selector"), pods, ns)
              if (p.get("status") or {}).get("podIP")]
    chosen.sort(key=lambda p: (p["status"]["podIP"], p["metadata"]["name"]))
    ports = _ports(service, chosen[0] if chosen else None) or []
    same = [p for p in chosen if _ports(service, p) == ports]
    return same, ports


def _ready(pod: Mapping[str, Any]) -> bool:
    return (condition(pod, "Ready") or {}).get("status") == "True"


def slice_name(service: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(str(service["metadata"].get("uid")).encode()).digest()
    return f"{service['metadata']['name']}-" + "".join(_SAFE[b % len(_SAFE)]
                                                       for b in digest[:5])


def endpoint_slice(service: Mapping[str, Any], pods: Sequence[dict[str, Any]]
                   ) -> dict[str, Any]:
    """The EndpointSlice a Service should have now. Pure."""
    meta = service["metadata"]
    members, ports = _members(service, pods)
    endpoints = []
    for pod in members:
        terminating = bool(pod["metadata"].get("deletionTimestamp"))
        ready = _ready(pod)
        endpoints.append({
            "addresses": [pod["status"]["podIP"]],
            "conditions": {"ready": ready and not terminating, "serving": ready,
                           "terminating": terminating},
            "nodeName": (pod.get("spec") or {}).get("nodeName"),
            "targetRef": {"kind": "Pod", "name": pod["metadata"]["name"],
                          "namespace": meta["namespace"], "uid": pod["metadata"].get("uid")},
        })
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": slice_name(service), "namespace": meta["namespace"],
                     "generateName": f"{meta['name']}-",
                     "labels": {SERVICE_NAME: meta["name"], MANAGED_BY: CONTROLLER},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Service",
                                          "name": meta["name"], "uid": meta.get("uid"),
                                          "controller": True, "blockOwnerDeletion": True}]},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }


def endpoints_object(service: Mapping[str, Any], pods: Sequence[dict[str, Any]]
                     ) -> dict[str, Any]:
    """The v1 Endpoints a Service should have now. Pure."""
    meta = service["metadata"]
    members, ports = _members(service, pods)
    ready: list[dict[str, Any]] = []
    not_ready: list[dict[str, Any]] = []
    for pod in members:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        address = {"ip": pod["status"]["podIP"],
                   "nodeName": (pod.get("spec") or {}).get("nodeName"),
                   "targetRef": {"kind": "Pod", "name": pod["metadata"]["name"],
                                 "namespace": meta["namespace"],
                                 "uid": pod["metadata"].get("uid")}}
        (ready if _ready(pod) else not_ready).append(address)
    subset: dict[str, Any] = {}
    if ready:
        subset["addresses"] = ready
    if not_ready:
        subset["notReadyAddresses"] = not_ready
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Endpoints",
                           "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                                        "labels": dict(meta.get("labels") or {})}}
    if subset:
        subset["ports"] = [p for p in ports if "port" in p]
        obj["subsets"] = [subset]
    return obj


class EndpointsController:
    """Writes the slices and Endpoints that changed; removes those of Services gone."""

    def __init__(self, client: ControlPlaneClient) -> None:
        self.client = client

    def sync(self, services: list[dict[str, Any]], pods: list[dict[str, Any]],
             slices: list[dict[str, Any]], endpoints: list[dict[str, Any]]) -> None:
        managed = [s for s in services if (s.get("spec") or {}).get("selector")]
        slice_at = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in slices}
        ep_at = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in endpoints}
        wanted_slices, wanted_eps = set(), set()
        for service in managed:
            ns = service["metadata"]["namespace"]
            want = endpoint_slice(service, pods)
            key = (ns, want["metadata"]["name"])
            wanted_slices.add(key)
            self._write(SLICES, slice_at.get(key), want, ("endpoints", "ports"))
            want_ep = endpoints_object(service, pods)
            key = (ns, want_ep["metadata"]["name"])
            wanted_eps.add(key)
            self._write(ENDPOINTS, ep_at.get(key), want_ep, ("subsets",))
        for key, obj in slice_at.items():
            if key not in wanted_slices and \
                    (obj["metadata"].get("labels") or {}).get(MANAGED_BY) == CONTROLLER:
                self._delete(SLICES, key)
        services_at = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in services}
        for key in ep_at:
            if key not in wanted_eps and key not in services_at:
                self._delete(ENDPOINTS, key)

    def _write(self, where: tuple[str, str, str], have: dict[str, Any] | None,
               want: dict[str, Any], fields: tuple[str, ...]) -> None:
        ns, name = want["metadata"]["namespace"], want["metadata"]["name"]
        try:
            if have is None:
                self.client.create(path(*where, ns), want)
                return
            labels = want["metadata"].get("labels") or {}
            have_labels = have["metadata"].get("labels") or {}
            if all(have.get(f) == want.get(f) for f in fields) and \
                    all(have_labels.get(k) == v for k, v in labels.items()):
                return
            patch: dict[str, Any] = {f: want.get(f) for f in fields}
            patch["metadata"] = {"labels": labels}
            self.client.patch(path(*where, ns, name), patch)
        except ApiCallError as exc:
            log.info("%s %s/%s: %s", where[2], ns, name, exc)

    def _delete(self, where: tuple[str, str, str], key: tuple[str, str]) -> None:
        try:
            self.client.delete(path(*where, key[0], key[1]))
        except ApiCallError as exc:
            log.info("delete %s %s/%s: %s", where[2], key[0], key[1], exc)
