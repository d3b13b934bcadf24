"""Every Kubernetes API call the kube backend makes, in one table.

`CALLS[(api_group, resource)]` is the set of verbs used on it ("" is the core group;
`deployments/scale` the scale subresource). deploy/'s namespaced Role must grant exactly
these (its test checks), and a test scans `jsorc_live/kube/` for client methods and fails
on any call this table does not name, so a new call cannot ship without its permission.
"""

from __future__ import annotations

from collections.abc import Mapping

CALLS: Mapping[tuple[str, str], frozenset[str]] = {
    # Deployments: listed and watched by label (status, adoption), read after a 409 on
    # create, created, patched when the config hash differs, deleted on unload.
    ("apps", "deployments"): frozenset({"list", "watch", "get", "create", "patch", "delete"}),
    # Scaling goes through the subresource, never by patching the Deployment's replicas.
    ("apps", "deployments/scale"): frozenset({"patch"}),
    # Services: listed by label, read after a 409, created, patched, deleted.
    ("", "services"): frozenset({"list", "get", "create", "patch", "delete"}),
    # Where calls go: the Services' EndpointSlices (pod addresses and readiness).
    ("discovery.k8s.io", "endpointslices"): frozenset({"list", "watch"}),
    # controller.kubernetes.io/pod-deletion-cost on the pod a scale-down should remove.
    ("", "pods"): frozenset({"patch"}),
}
