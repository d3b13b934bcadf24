"""The `kubernetes` entry of the META_CONFIG: where the kube backend finds its API server.

    {"in_cluster": false, "config": "PATH or an inline kubeconfig", "context": "NAME",
     "keep_on_shutdown": false}

`true` (JSORC 1.4's boolean) means the default kubeconfig ($KUBECONFIG, else
~/.kube/config) with its current context; `false` means no Kubernetes (the process backend).
Pure data: nothing here talks to a cluster or imports the client (see `client.py`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: DNS-1123 label: what Kubernetes accepts as a namespace name.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class KubeSettingsError(ValueError):
    """A `kubernetes` setting that is not a bool or an object of the known keys."""


@dataclass(frozen=True)
class KubeSettings:
    """How to reach the API server.

    `in_cluster`: the pod's service account (the API server from the environment);
    otherwise `config`, a kubeconfig's path or its YAML text (None: the default kubeconfig),
    and `context` in it (None: its current context). `keep_on_shutdown`: leave the
    Deployments and Services in place when jsorc stops, for the next controller to adopt
    (by default jsorc deletes what it created).
    """

    in_cluster: bool = False
    config: str | None = None
    context: str | None = None
    keep_on_shutdown: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"in_cluster": self.in_cluster, "config": self.config, "context": self.context,
                "keep_on_shutdown": self.keep_on_shutdown}

    @property
    def source(self) -> str:
        """Where the credentials come from, for messages."""
        if self.in_cluster:
            return "the in-cluster service account"
        if self.config is None:
            return "the default kubeconfig"
        return "an inline kubeconfig" if is_inline(self.config) else f"kubeconfig {self.config}"


def is_inline(config: str) -> bool:
    """A kubeconfig given as its text rather than a path."""
    return "\n" in config or config.lstrip().startswith(("{", "apiVersion"))


def parse_kube_settings(value: Any) -> KubeSettings | None:
    """A `kubernetes` setting from JSON: None for false, KubeSettings otherwise."""
    if isinstance(value, bool):
        return KubeSettings() if value else None
    if not isinstance(value, Mapping):
        raise KubeSettingsError(f"config kubernetes must be true, false or an object "
                                f"{{in_cluster, config, context}}, got {value!r}")
    known = set(KubeSettings().as_dict())
    unknown = sorted(set(value) - known)
    if unknown:
        raise KubeSettingsError(f"config kubernetes: unknown key(s) {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(known))})")
    for key in ("in_cluster", "keep_on_shutdown"):
        if not isinstance(value.get(key, False), bool):
            raise KubeSettingsError(f"config kubernetes.{key} must be true or false, "
                                    f"got {value[key]!r}")
    for key in ("config", "context"):
        if value.get(key) is not None and (not isinstance(value[key], str) or not value[key]):
            raise KubeSettingsError(f"config kubernetes.{key} must be a non-empty string, "
                                    f"got {value[key]!r}")
    settings = KubeSettings(**{k: value[k] for k in known if k in value})
    if settings.in_cluster and settings.config is not None:
        raise KubeSettingsError("config kubernetes: give in_cluster or config, not both")
    return settings


def check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not DNS_LABEL.match(namespace):
        raise KubeSettingsError(f"namespace must be a DNS-1123 label (lower-case letters, "
                                f"digits, '-'; at most 63), got {namespace!r}")
    return namespace
