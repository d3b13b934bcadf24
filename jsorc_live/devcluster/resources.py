"""What the dev cluster's API serves: the resource table, the Status errors, and what the API
server does to an object on its way in (defaults, validation). Pure data and functions.

The resources are the ones a kube backend and kubectl use (namespaces, nodes, pods, services,
endpoints, endpointslices, deployments with ``/scale``, replicasets) plus objects that
manifests often carry (configmaps, secrets, serviceaccounts, events, leases, RBAC), stored
and served but acted on by nobody. Defaults and validation cover what the stand-in kubelet
and clients rely on, not the whole of the real API's schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jsorc_live.devcluster import selectors

__all__ = [
    "RESOURCES",
    "ApiError",
    "ResourceSpec",
    "apply_defaults",
    "find_resource",
    "status_body",
    "validate",
]

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceSpec:
    """One resource of the API, as discovery describes it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    generation: bool = False  # metadata.generation counts spec changes

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def qualified(self) -> str:
        """How error messages name it: ``deployments.apps``, ``pods``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def status_subresource(self) -> bool:
        return "status" in self.subresources


_ALL = ("all",)
RESOURCES: tuple[ResourceSpec, ...] = (
    ResourceSpec("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",),
                 subresources=("status",)),
    ResourceSpec("", "v1", "nodes", "Node", namespaced=False, short_names=("no",),
                 subresources=("status",)),
    ResourceSpec("", "v1", "pods", "Pod", short_names=("po",),
                 subresources=("status", "log"), categories=_ALL),
    ResourceSpec("", "v1", "services", "Service", short_names=("svc",),
                 subresources=("status",), categories=_ALL),
    ResourceSpec("", "v1", "endpoints", "Endpoints", short_names=("ep",)),
    ResourceSpec("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    ResourceSpec("", "v1", "secrets", "Secret"),
    ResourceSpec("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    ResourceSpec("", "v1", "events", "Event", short_names=("ev",)),
    ResourceSpec("apps", "v1", "deployments", "Deployment", short_names=("deploy",),
                 subresources=("status", "scale"), categories=_ALL, generation=True),
    ResourceSpec("apps", "v1", "replicasets", "ReplicaSet", short_names=("rs",),
                 subresources=("status", "scale"), categories=_ALL, generation=True),
    # Stored and served, not run: the dev cluster's kubelet runs Deployments' pods only (the
    # database's StatefulSet in deploy/ is for real clusters; locally it is a keep-alive).
    ResourceSpec("apps", "v1", "statefulsets", "StatefulSet", short_names=("sts",),
                 subresources=("status", "scale"), categories=_ALL, generation=True),
    ResourceSpec("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    ResourceSpec("coordination.k8s.io", "v1", "leases", "Lease"),
    ResourceSpec("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ResourceSpec("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ResourceSpec("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole",
                 namespaced=False),
    ResourceSpec("rbac.authorization.k8s.io", "v1", "clusterrolebindings",
                 "ClusterRoleBinding", namespaced=False),
)
_BY_KEY = {(r.group, r.version, r.plural): r for r in RESOURCES}


def find_resource(group: str, version: str, plural: str) -> ResourceSpec | None:
    return _BY_KEY.get((group, version, plural))


# --------------------------------------------------------------------------- errors

_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
            405: "MethodNotAllowed", 406: "NotAcceptable", 409: "Conflict", 410: "Expired",
            415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
            500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


class ApiError(Exception):
    """An answer other than success, rendered as a ``Status`` (see :func:`status_body`)."""

    def __init__(self, code: int, message: str, *, reason: str | None = None,
                 details: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    @classmethod
    def not_found(cls, spec: ResourceSpec, name: str) -> ApiError:
        return cls(404, f'{spec.qualified} "{name}" not found',
                   details={"name": name, "group": spec.group, "kind": spec.plural})

    @classmethod
    def already_exists(cls, spec: ResourceSpec, name: str) -> ApiError:
        return cls(409, f'{spec.qualified} "{name}" already exists', reason="AlreadyExists",
                   details={"name": name, "group": spec.group, "kind": spec.plural})

    @classmethod
    def conflict(cls, spec: ResourceSpec, name: str) -> ApiError:
        return cls(409, f'Operation cannot be fulfilled on {spec.qualified} "{name}": the '
                   "object has been modified; please apply your changes to the latest "
                   "version and try again", reason="Conflict",
                   details={"name": name, "group": spec.group, "kind": spec.plural})

    @classmethod
    def invalid(cls, spec: ResourceSpec, name: str, causes: list[tuple[str, str]]) -> ApiError:
        text = ", ".join(f"{field}: {msg}" for field, msg in causes)
        kind = f"{spec.kind}.{spec.group}" if spec.group else spec.kind
        return cls(422, f'{kind} "{name}" is invalid: {text}',
                   details={"name": name, "group": spec.group, "kind": spec.kind,
                            "causes": [{"reason": "FieldValueInvalid", "message": msg,
                                        "field": field} for field, msg in causes]})


def status_body(code: int, message: str, reason: str,
                details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``Status`` as the API server sends with an error."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message, "reason": reason,
                            "code": code}
    if details:
        body["details"] = dict(details)
    return body


# --------------------------------------------------------------------------- defaults


def _pod_spec_defaults(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for container in spec.get("containers") or []:
        if not isinstance(container, dict):
            continue
        image = str(container.get("image", ""))
        latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        for port in container.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")


def apply_defaults(spec: ResourceSpec, obj: dict[str, Any], *, creating: bool,
                   cluster_ip: str | None = None) -> None:
    """Fill what the API server defaults on a write (in place); ``creating`` also sets the
    initial status. ``cluster_ip``: the address for a ClusterIP Service that names none."""
    body = obj.setdefault("spec", {}) if spec.kind in _HAS_SPEC else None
    if spec.kind == "Namespace":
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = \
            obj["metadata"]["name"]
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        if creating:
            obj["status"] = {"phase": "Active"}
    elif spec.kind in ("Deployment", "ReplicaSet") and body is not None:
        body.setdefault("replicas", 1)
        body.setdefault("revisionHistoryLimit", 10)
        if spec.kind == "Deployment":
            body.setdefault("progressDeadlineSeconds", 600)
            strategy = body.setdefault("strategy", {"type": "RollingUpdate"})
            if strategy.get("type", "RollingUpdate") == "RollingUpdate":
                strategy.setdefault("type", "RollingUpdate")
                strategy.setdefault("rollingUpdate", {"maxUnavailable": "25%",
                                                      "maxSurge": "25%"})
        template = body.setdefault("template", {})
        template.setdefault("metadata", {})
        _pod_spec_defaults(template.setdefault("spec", {}))
    elif spec.kind == "Pod" and body is not None:
        _pod_spec_defaults(body)
        if creating:
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    elif spec.kind == "Service" and body is not None:
        body.setdefault("type", "ClusterIP")
        body.setdefault("sessionAffinity", "None")
        body.setdefault("ipFamilies", ["IPv4"])
        body.setdefault("ipFamilyPolicy", "SingleStack")
        body.setdefault("internalTrafficPolicy", "Cluster")
        if body.get("clusterIP") is None and cluster_ip is not None:
            body["clusterIP"] = cluster_ip
        if body.get("clusterIP"):
            body.setdefault("clusterIPs", [body["clusterIP"]])
        for port in body.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
        if creating:
            obj["status"] = {"loadBalancer": {}}


_HAS_SPEC = {"Deployment", "ReplicaSet", "Pod", "Service"}


# --------------------------------------------------------------------------- validation

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?)$")


def _name_error(spec: ResourceSpec, name: str) -> str | None:
    if spec.kind == "Namespace":
        ok = len(name) <= 63 and _DNS_LABEL.match(name)
        rule = "a lowercase RFC 1123 label"
    elif spec.kind == "Service":
        ok = len(name) <= 63 and _DNS_1035.match(name)
        rule = "a DNS-1035 label"
    else:
        ok = len(name) <= 253 and _DNS_SUBDOMAIN.match(name)
        rule = "a lowercase RFC 1123 subdomain"
    return None if ok else f"Invalid value: {name!r}: must be {rule}"


def _label_errors(labels: Any, field: str) -> list[tuple[str, str]]:
    if labels is None:
        return []
    if not isinstance(labels, Mapping):
        return [(field, "must be a map of strings")]
    out = []
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if (not name or len(name) > 63 or not _LABEL_NAME.match(name)
                or (prefix and not _DNS_SUBDOMAIN.match(prefix))):
            out.append((field, f"Invalid value: {key!r}: name part must consist of "
                        "alphanumeric characters, '-', '_' or '.'"))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            out.append((f"{field}[{key}]", f"Invalid value: {value!r}: a valid label must be "
                        "an empty string or consist of alphanumeric characters, '-', '_' or "
                        "'.', at most 63"))
    return out


def _pod_spec_errors(spec: Any, field: str) -> list[tuple[str, str]]:
    if not isinstance(spec, Mapping):
        return [(field, "Required value")]
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [(f"{field}.containers", "Required value")]
    out = []
    for i, container in enumerate(containers):
        where = f"{field}.containers[{i}]"
        if not isinstance(container, Mapping):
            out.append((where, "must be an object"))
            continue
        if not container.get("name"):
            out.append((f"{where}.name", "Required value"))
        if not container.get("image"):
            out.append((f"{where}.image", "Required value"))
    return out


def validate(spec: ResourceSpec, obj: Mapping[str, Any],
             old: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """``(field, message)`` for what the server would refuse (empty: valid). ``old`` is the
    stored object on an update (immutable fields)."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    errors: list[tuple[str, str]] = []
    if not name:
        errors.append(("metadata.name", "Required value: name or generateName is required"))
    elif (message := _name_error(spec, name)) is not None:
        errors.append(("metadata.name", message))
    errors += _label_errors(meta.get("labels"), "metadata.labels")
    body = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    assert isinstance(body, Mapping)
    if spec.kind in ("Deployment", "ReplicaSet"):
        errors += _workload_errors(body, old)
    elif spec.kind == "Pod":
        errors += _pod_spec_errors(body, "spec")
    elif spec.kind == "Service":
        for i, port in enumerate(body.get("ports") or []):
            number = port.get("port") if isinstance(port, Mapping) else None
            if not isinstance(number, int) or not 0 < number < 65536:
                errors.append((f"spec.ports[{i}].port", f"Invalid value: {number!r}: must be "
                               "between 1 and 65535, inclusive"))
    return errors


def _workload_errors(body: Mapping[str, Any], old: Mapping[str, Any] | None
                     ) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    replicas = body.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        errors.append(("spec.replicas", f"Invalid value: {replicas!r}: must be greater than "
                       "or equal to 0"))
    selector = body.get("selector")
    template = body.get("template") if isinstance(body.get("template"), Mapping) else {}
    assert isinstance(template, Mapping)
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not isinstance(selector, Mapping) or not selector:
        errors.append(("spec.selector", "Required value"))
    else:
        try:
            requirements = selectors.from_label_selector(selector)
        except selectors.SelectorError as exc:
            errors.append(("spec.selector", f"Invalid value: {exc}"))
        else:
            if not requirements:
                errors.append(("spec.selector", "Invalid value: empty selector is invalid "
                               "for deployment"))
            elif not selectors.matches(requirements, labels):
                errors.append(("spec.template.metadata.labels", "Invalid value: "
                               f"{labels!r}: `selector` does not match template `labels`"))
    errors += _label_errors(labels, "spec.template.metadata.labels")
    errors += _pod_spec_errors(template.get("spec"), "spec.template.spec")
    if old is not None and (old.get("spec") or {}).get("selector") != selector:
        errors.append(("spec.selector", "Invalid value: field is immutable"))
    return errors
