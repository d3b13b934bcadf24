"""The kube backend calls nothing rbac.CALLS does not name, and names nothing it does not
call: every client method in jsorc_live/kube/*.py's source, found with `ast`, maps to an
(api_group, resource, verb) of the table; a `watch=True` list is the watch verb."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from jsorc_live.kube import rbac

KUBE = Path(__file__).resolve().parents[3] / "jsorc_live" / "kube"

# Kinds as the client spells them in method names -> (api group, plural).
KINDS = {"deployment": ("apps", "deployments"), "service": ("", "services"),
         "endpoint_slice": ("discovery.k8s.io", "endpointslices"), "pod": ("", "pods"),
         "config_map": ("", "configmaps"), "secret": ("", "secrets"),
         "replica_set": ("apps", "replicasets"), "namespace": ("", "namespaces"),
         "event": ("", "events"), "lease": ("coordination.k8s.io", "leases")}
VERBS = {"list": "list", "read": "get", "create": "create", "patch": "patch",
         "replace": "update", "delete": "delete", "delete_collection": "deletecollection"}
METHOD = re.compile(r"^(list|read|create|patch|replace|delete_collection|delete)_"
                    r"(namespaced_)?(.+?)(_scale|_status)?$")


def used_calls() -> set[tuple[str, str, str, str]]:
    """(group, resource, verb, where) of every client call in the package's source."""
    found = set()
    for path in sorted(KUBE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            match = METHOD.match(node.func.attr)
            owner = node.func.value
            if match is None or not (isinstance(owner, ast.Attribute)
                                     and owner.attr in ("_apps", "_core", "_discovery")):
                continue
            verb, _, kind, sub = match.groups()
            assert kind in KINDS, f"{path.name}:{node.lineno}: unknown kind in {node.func.attr}"
            group, plural = KINDS[kind]
            resource = plural + (f"/{sub[1:]}" if sub else "")
            watching = any(k.arg == "watch" and isinstance(k.value, ast.Constant)
                           and k.value.value is True for k in node.keywords)
            found.add((group, resource, "watch" if watching else VERBS[verb],
                       f"{path.name}:{node.lineno}"))
    return found


def test_every_call_of_the_backend_is_in_the_table_and_every_entry_is_called() -> None:
    used = used_calls()
    table = {(g, r, v) for (g, r), verbs in rbac.CALLS.items() for v in verbs}
    outside = sorted(u for u in used if u[:3] not in table)
    assert not outside, f"calls that rbac.CALLS does not grant: {outside}"
    assert {u[:3] for u in used} == table, \
        f"granted but never called: {sorted(table - {u[:3] for u in used})}"


def test_no_client_api_is_reached_around_the_cluster_module() -> None:
    """Only cluster.py holds API objects; the rest goes through it (so the scan sees all)."""
    for path in sorted(KUBE.glob("*.py")):
        text = path.read_text()
        if path.name != "cluster.py":
            assert not re.search(r"\b(AppsV1Api|CoreV1Api|DiscoveryV1Api|CustomObjectsApi|"
                                 r"call_api|dynamic)\b", text), path.name
        assert not re.search(r"getattr\(self\._(apps|core|discovery)", text), \
            f"{path.name}: a call the scan cannot see"
