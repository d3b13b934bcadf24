"""The control plane's own client of the dev cluster's API (the stand-in kubelet and
controllers talk to the API over HTTP, as a kubelet and the controller manager do).

Plain JSON over httpx; the User-Agent marks these requests as the control plane's, so
injected faults skip them. 404 reads as "gone" (None / False); other errors raise
:class:`ApiCallError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from jsorc_live.devcluster.emulator import CONTROL_PLANE_AGENT

__all__ = ["ApiCallError", "ControlPlaneClient", "path"]

MERGE = "application/merge-patch+json"


class ApiCallError(RuntimeError):
    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url}: HTTP {status}: {body[:300]}")
        self.status = status


def path(group: str, version: str, plural: str, namespace: str | None = None,
         name: str | None = None, sub: str | None = None) -> str:
    """The URL path of a collection, an object or a subresource."""
    parts = ["/api", version] if not group else ["/apis", group, version]
    if namespace is not None:
        parts += ["namespaces", namespace]
    parts.append(plural)
    if name is not None:
        parts.append(name)
    if sub is not None:
        parts.append(sub)
    return "/".join(parts)


class ControlPlaneClient:
    """Calls to the API with the control plane's identity."""

    def __init__(self, url: str, token: str | None, *, role: str = "kubelet",
                 timeout_s: float = 10.0) -> None:
        headers = {"User-Agent": f"{CONTROL_PLANE_AGENT}/{role}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, url: str, *, body: Any = None,
              content_type: str = "application/json",
              params: Mapping[str, str] | None = None) -> httpx.Response:
        headers = {"Content-Type": content_type} if body is not None else {}
        response = self._http.request(method, url, json=body, headers=headers,
                                      params=dict(params or {}))
        if response.status_code >= 400 and response.status_code != 404:
            raise ApiCallError(method, url, response.status_code, response.text)
        return response

    def list(self, url: str, **params: str) -> tuple[list[dict[str, Any]], int]:
        """The items of a list (each given its kind back) and the list's resourceVersion."""
        response = self._call("GET", url, params=params)
        if response.status_code == 404:
            return [], 0
        doc = response.json()
        kind = str(doc.get("kind", "")).removesuffix("List")
        items = [{"kind": kind, "apiVersion": doc.get("apiVersion"), **item}
                 for item in doc.get("items") or []]
        return items, int(doc.get("metadata", {}).get("resourceVersion") or 0)

    def get(self, url: str) -> dict[str, Any] | None:
        response = self._call("GET", url)
        return None if response.status_code == 404 else dict(response.json())

    def create(self, url: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The created object; None when the namespace is gone (404)."""
        response = self._call("POST", url, body=dict(body))
        return None if response.status_code == 404 else dict(response.json())

    def patch(self, url: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """A merge patch; None when the object is gone."""
        response = self._call("PATCH", url, body=dict(body), content_type=MERGE)
        return None if response.status_code == 404 else dict(response.json())

    def delete(self, url: str, grace_s: int | None = None) -> dict[str, Any] | None:
        """The answer (a pod marked for graceful deletion, or a Status); None when it was
        already gone."""
        body = None if grace_s is None else {"gracePeriodSeconds": grace_s}
        response = self._call("DELETE", url, body=body)
        return None if response.status_code == 404 else dict(response.json())
