"""The API calls of the kube backend, one method each, in one namespace (see rbac.CALLS).

Answers are the API server's JSON as plain dicts (camelCase, like the manifests), not the
client's models. Every call has a bound (`timeout_s`), so a stalled server is a timeout,
never a hang; failures are raised as they are, for `client.classify`.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from jsorc_live.kube.manifests import SELECTOR

MERGE_PATCH = "application/merge-patch+json"  # the client would send a dict as json-patch


class Cluster:
    """Deployments, Services, EndpointSlices and pods of `namespace`."""

    def __init__(self, api: client.ApiClient, namespace: str, *, timeout_s: float = 10.0,
                 connect_timeout_s: float = 3.0) -> None:
        self.api = api
        self.namespace = namespace
        self.server = str(api.configuration.host)
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)
        self._discovery = client.DiscoveryV1Api(api)
        self._timeout = (connect_timeout_s, timeout_s)

    def _json(self, response: Any) -> dict[str, Any]:
        data = response.data
        out = json.loads(data) if data else {}
        return out if isinstance(out, dict) else {}

    def _opts(self) -> dict[str, Any]:
        return {"_request_timeout": self._timeout, "_preload_content": False}

    # ----------------------------------------------------------------- lists

    def list_deployments(self) -> dict[str, Any]:
        """jsorc's Deployments (by label): the list with its resourceVersion."""
        return self._json(self._apps.list_namespaced_deployment(
            self.namespace, label_selector=SELECTOR, **self._opts()))

    def list_services(self) -> dict[str, Any]:
        return self._json(self._core.list_namespaced_service(
            self.namespace, label_selector=SELECTOR, **self._opts()))

    def list_endpoint_slices(self) -> dict[str, Any]:
        """Every EndpointSlice of the namespace (their labels are the endpoint controller's,
        not ours: the backend keeps those of its Services)."""
        return self._json(self._discovery.list_namespaced_endpoint_slice(
            self.namespace, **self._opts()))

    # ----------------------------------------------------------------- watches

    def watch_deployments(self, resource_version: str, timeout_s: int) -> EventStream:
        return EventStream(self._apps.list_namespaced_deployment(
            self.namespace, label_selector=SELECTOR, watch=True,
            resource_version=resource_version, allow_watch_bookmarks=True,
            timeout_seconds=timeout_s, _preload_content=False,
            _request_timeout=(self._timeout[0], timeout_s + 5)))

    def watch_endpoint_slices(self, resource_version: str, timeout_s: int) -> EventStream:
        return EventStream(self._discovery.list_namespaced_endpoint_slice(
            self.namespace, watch=True, resource_version=resource_version,
            allow_watch_bookmarks=True, timeout_seconds=timeout_s, _preload_content=False,
            _request_timeout=(self._timeout[0], timeout_s + 5)))

    # ----------------------------------------------------------------- objects

    def read_deployment(self, name: str) -> dict[str, Any]:
        return self._json(self._apps.read_namespaced_deployment(name, self.namespace,
                                                                **self._opts()))

    def read_service(self, name: str) -> dict[str, Any]:
        return self._json(self._core.read_namespaced_service(name, self.namespace,
                                                             **self._opts()))

    def create_deployment(self, body: dict[str, Any], *, dry_run: bool = False
                          ) -> dict[str, Any]:
        """Create it (`dry_run`: have the server check it, namespace and permission included,
        and store nothing)."""
        return self._json(self._apps.create_namespaced_deployment(
            self.namespace, body, **_dry(dry_run), **self._opts()))

    def create_service(self, body: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        return self._json(self._core.create_namespaced_service(
            self.namespace, body, **_dry(dry_run), **self._opts()))

    def patch_deployment(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(self._apps.patch_namespaced_deployment(
            name, self.namespace, body, _content_type=MERGE_PATCH, **self._opts()))

    def patch_service(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(self._core.patch_namespaced_service(
            name, self.namespace, body, _content_type=MERGE_PATCH, **self._opts()))

    def scale_deployment(self, name: str, replicas: int) -> dict[str, Any]:
        """Set the Deployment's replicas through its /scale subresource."""
        return self._json(self._apps.patch_namespaced_deployment_scale(
            name, self.namespace, {"spec": {"replicas": replicas}},
            _content_type=MERGE_PATCH, **self._opts()))

    def delete_deployment(self, name: str) -> None:
        # Foreground would wait for the pods; background lets the garbage collector (or
        # the dev cluster's kubelet) remove them after the Deployment is gone.
        self._apps.delete_namespaced_deployment(
            name, self.namespace, propagation_policy="Background", **self._opts())

    def delete_service(self, name: str) -> None:
        self._core.delete_namespaced_service(name, self.namespace, **self._opts())

    def annotate_pod(self, name: str, annotations: dict[str, str]) -> None:
        self._core.patch_namespaced_pod(name, self.namespace,
                                        {"metadata": {"annotations": annotations}},
                                        _content_type=MERGE_PATCH, **self._opts())


def _dry(dry_run: bool) -> dict[str, str]:
    return {"dry_run": "All"} if dry_run else {}


class EventStream:
    """A watch's events as dicts ({"type", "object"}), read line by line from the response.

    (The client's `Watch.stream(deserialize=False)` fails on ERROR events, and deserialising
    into models would refuse the odd object; this reads the same lines as plain JSON.)
    `stop()` from another thread shuts the socket, so a blocked read returns."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for line in iter_resp_lines(self._response):
                if not line.strip():
                    continue
                event = json.loads(line)
                if isinstance(event, dict):
                    yield event
        finally:
            self.close()

    def stop(self) -> None:
        conn = getattr(self._response, "connection", None)
        sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._response.close()
            self._response.release_conn()
