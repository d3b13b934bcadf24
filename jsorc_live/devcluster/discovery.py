"""The discovery documents kubectl and the clients read before anything else: ``/api``,
``/apis``, ``/api/v1``, ``/apis/GROUP``, ``/apis/GROUP/VERSION``, ``/version`` and ``/``.
Pure functions of the resource table.

kubectl 1.32 first asks for the aggregated form (``APIGroupDiscoveryList``); an answer in the
classic form (``APIVersions``, ``APIGroupList``, ``APIResourceList``) makes it fall back to
reading each group version, which is what is served here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jsorc_live.devcluster.resources import RESOURCES, VERBS, ResourceSpec

__all__ = ["SERVER_VERSION", "api_versions", "group", "group_list", "openapi_group_version",
           "openapi_root", "paths", "resource_list"]

SERVER_VERSION = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.0-jsorc-devcluster",
    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
    "platform": "linux/amd64",
}
_SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "scale": ["get", "patch", "update"],
                      "log": ["get"]}


def _groups(resources: Iterable[ResourceSpec]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in resources:
        if r.group and r.version not in out.setdefault(r.group, []):
            out[r.group].append(r.version)
    return out


def api_versions(server_address: str) -> dict[str, Any]:
    """``/api``: the core group's versions."""
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": server_address}]}


def _group_doc(name: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def group_list(resources: Iterable[ResourceSpec] = RESOURCES) -> dict[str, Any]:
    """``/apis``: every named group."""
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_group_doc(g, vs) for g, vs in sorted(_groups(resources).items())]}


def group(name: str, resources: Iterable[ResourceSpec] = RESOURCES) -> dict[str, Any] | None:
    """``/apis/GROUP``, or None for a group not served."""
    versions = _groups(resources).get(name)
    if versions is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(name, versions)}


def resource_list(group_name: str, version: str,
                  resources: Iterable[ResourceSpec] = RESOURCES) -> dict[str, Any] | None:
    """``/api/v1`` or ``/apis/GROUP/VERSION``, or None for a group version not served."""
    served = [r for r in resources if r.group == group_name and r.version == version]
    if not served:
        return None
    entries: list[dict[str, Any]] = []
    for r in served:
        entries.append({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                        "kind": r.kind, "verbs": list(VERBS), "shortNames": list(r.short_names),
                        "categories": list(r.categories)})
        for sub in r.subresources:
            entry: dict[str, Any] = {"name": f"{r.plural}/{sub}", "singularName": "",
                                     "namespaced": r.namespaced, "kind": r.kind,
                                     "verbs": _SUBRESOURCE_VERBS[sub]}
            if sub == "scale":
                entry.update(group="autoscaling", version="v1", kind="Scale")
            entries.append(entry)
    gv = f"{group_name}/{version}" if group_name else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": entries}


def paths(resources: Iterable[ResourceSpec] = RESOURCES) -> dict[str, Any]:
    """``/``: the paths the server answers."""
    out = {"/api", "/api/v1", "/apis", "/version", "/healthz", "/livez", "/readyz"}
    for g, versions in _groups(resources).items():
        out.add(f"/apis/{g}")
        out.update(f"/apis/{g}/{v}" for v in versions)
    return {"paths": sorted(out)}


# --------------------------------------------------------------------------- OpenAPI v3
# Just enough for kubectl: ``kubectl apply`` asks /openapi/v3 whether a resource's PATCH
# takes the ``fieldValidation`` parameter and, if so, leaves validation to the server
# instead of downloading the (protobuf) v2 schema. No schemas are served, so ``kubectl
# explain`` has nothing to show, and the server does not check field names.


def openapi_root(resources: Iterable[ResourceSpec] = RESOURCES) -> dict[str, Any]:
    """``/openapi/v3``: one document per group version."""
    gvs = sorted({("api/" if not r.group else f"apis/{r.group}/") + r.version
                  for r in resources})
    return {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}"} for gv in gvs}}


def openapi_group_version(group_name: str, version: str,
                          resources: Iterable[ResourceSpec] = RESOURCES
                          ) -> dict[str, Any] | None:
    """``/openapi/v3/api/v1``, ``/openapi/v3/apis/GROUP/VERSION``: the object paths of each
    resource with their PATCH operation and its query parameters."""
    served = [r for r in resources if r.group == group_name and r.version == version]
    if not served:
        return None
    prefix = f"/apis/{group_name}/{version}" if group_name else f"/api/{version}"
    parameters = [{"name": name, "in": "query", "schema": {"type": "string"}}
                  for name in ("dryRun", "fieldManager", "fieldValidation", "force")]
    paths: dict[str, Any] = {}
    for r in served:
        where = f"{prefix}/namespaces/{{namespace}}/{r.plural}/{{name}}" if r.namespaced \
            else f"{prefix}/{r.plural}/{{name}}"
        gvk = {"group": r.group, "version": r.version, "kind": r.kind}
        paths[where] = {"patch": {"operationId": f"patch{r.kind}", "parameters": parameters,
                                  "x-kubernetes-group-version-kind": gvk,
                                  "x-kubernetes-action": "patch",
                                  "responses": {"200": {"description": "OK"}}}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths, "components": {"schemas": {}}}
