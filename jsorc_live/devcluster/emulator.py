"""The dev cluster's Kubernetes API: kmock's ``KubernetesEmulator`` made faithful enough for
kubectl and the official Python client.

kmock 0.8 serves HTTP (aiohttp, through ``kmock.Server``), keeps objects with their history
(``emulator.objects``) and answers discovery; this subclass keeps those and replaces what is
less faithful than a real API server:

- paths: kmock's parser fails on ``/api/v1/namespaces`` and reads ``/api/v1/namespaces/NAME``
  as a namespace with no resource; here every path of the resource table (resources.py)
  routes, cluster-scoped and namespaced, with ``/status``, ``/scale`` and ``pods/NAME/log``;
- storage semantics (store.py): resourceVersion, uid, creationTimestamp, generation, 404 /
  409 AlreadyExists / 409 Conflict / 422 Invalid with Status bodies, PUT, the three patch
  types, the status and scale subresources, namespaces that must exist, finalizers;
- lists carry ``kind: XList``, ``apiVersion`` and ``metadata.resourceVersion`` (kubectl
  refuses a list without its kind) and, as a real server, items without kind/apiVersion;
  ``labelSelector``, ``fieldSelector`` and ``limit``/``continue`` are honoured;
- watches (``?watch=true``) start from a ``resourceVersion`` (or send the current objects
  as ADDED first), follow label/field selectors (an object leaving the selector is DELETED,
  one entering it ADDED), end after ``timeoutSeconds``; a version older than the event log
  is answered as a real server expires a watch: one ``ERROR`` event with a 410 Status;
- discovery (discovery.py) with correct group versions, kinds, verbs, short names,
  subresources (``deployments/scale`` is an ``autoscaling/v1`` Scale) and ``/version``; an
  OpenAPI v3 outline (paths and parameters, no schemas) so ``kubectl apply`` leaves field
  validation to the server (which does not check field names: an unknown field is kept);
  ``/openapi/v2`` is not served (``kubectl apply --validate=false`` would be needed then);
- server-side printing (tables.py) for ``kubectl get`` without ``-o``;
- bearer tokens: a request with another token than the kubeconfig's answers 401
  Unauthorized (one without a token passes: kubectl sends none over plain HTTP);
- fault injection (faults.py) ahead of everything.

Paths outside ``/api`` and ``/apis`` still go to kmock's own reactions (``emulator['get
/x'] << b'...'``), so kmock's DSL keeps working for anything else. Requests of the dev
cluster's kubelet are identified by their User-Agent (``CONTROL_PLANE_AGENT``): faults skip
them and they are not recorded in ``emulator.requests``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import kmock
import yaml

from jsorc_live.devcluster import discovery, selectors, tables
from jsorc_live.devcluster.faults import Fault, Faults
from jsorc_live.devcluster.resources import (
    RESOURCES,
    VERBS,
    ApiError,
    ResourceSpec,
    find_resource,
    status_body,
)
from jsorc_live.devcluster.store import APPLY, Store, WatchEvent

__all__ = ["CONTROL_PLANE_AGENT", "ApiPath", "Emulator", "QuietServer", "parse_api_path"]

log = logging.getLogger(__name__)

CONTROL_PLANE_AGENT = "jsorc-devcluster"
_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
PUBLIC_PATHS = {"/version", "/healthz", "/livez", "/readyz"}
LogLocator = Callable[[str, str, str | None], Path | None]


@dataclass(frozen=True)
class ApiPath:
    """A resource request's path: ``/api/v1/namespaces/NS/pods/NAME/log`` and the like."""

    spec: ResourceSpec
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


class QuietServer(aiohttp.test_utils.RawTestServer):
    """kmock's aiohttp server without the access log (the control loop polls ten times a
    second) and with a short shutdown (watches are ended first anyway)."""

    async def _make_runner(self, debug: bool = True, **kwargs: Any
                           ) -> aiohttp.web.ServerRunner:
        server = aiohttp.web.Server(self._handler, loop=self._loop, debug=debug,
                                    access_log=None, **kwargs)
        return aiohttp.web.ServerRunner(server, debug=debug, shutdown_timeout=2.0, **kwargs)


def _no_route() -> ApiError:
    return ApiError(404, "the server could not find the requested resource")


def parse_api_path(path: str) -> ApiPath | None:
    """The resource a path names; None for paths outside resources (discovery, others);
    404 for an ``/api`` or ``/apis`` path naming no served resource."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        inner = find_resource(group, version, rest[2])
        if inner is not None and inner.namespaced:
            namespace, rest = rest[1], rest[2:]
    spec = find_resource(group, version, rest[0])
    if spec is None or (namespace is not None and not spec.namespaced) or len(rest) > 3:
        raise _no_route()
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in spec.subresources:
        raise _no_route()
    return ApiPath(spec, namespace, name, sub)


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None
          ) -> aiohttp.web.Response:
    return aiohttp.web.Response(text=json.dumps(body), status=status,
                                content_type="application/json", headers=headers)


def _error(exc: ApiError) -> aiohttp.web.Response:
    return _json(status_body(exc.code, exc.message, exc.reason, exc.details), exc.code,
                 exc.headers)


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    """A list item as a real server sends it: without kind and apiVersion."""
    obj.pop("kind", None)
    obj.pop("apiVersion", None)
    return obj


class Emulator(kmock.KubernetesEmulator):
    """The API server of a dev cluster (see the module docstring). Enter it and serve it with
    ``kmock.Server`` on an event loop; it must be created on that loop's thread."""

    def __init__(self, *, token: str | None = None, faults: Faults | None = None,
                 logs: LogLocator | None = None, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, event_history: int = 2000,
                 request_log: int = 1000) -> None:
        super().__init__()
        self.token = token
        self.faults = faults if faults is not None else Faults()
        self.logs = logs
        self.store = Store(self.objects, clock=clock, rng=rng, event_history=event_history)
        self.store.on_change.append(self._wake)
        self.server_address = "127.0.0.1:0"
        self._changed = asyncio.Event()
        self._closing = False
        self._request_log = request_log
        self._request_count = 0
        for spec in RESOURCES:  # kmock's view of the resources, for its own discovery users
            self.resources[f"{spec.group_version}/{spec.plural}"] = kmock.ResourceInfo(
                namespaced=spec.namespaced, kind=spec.kind, singular=spec.singular,
                verbs=set(VERBS), shortnames=set(spec.short_names),
                categories=set(spec.categories), subresources=set(spec.subresources))

    def close_watches(self) -> None:
        """End every watch stream (before the server stops, which waits for handlers)."""
        self._closing = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ----------------------------------------------------------------- entry

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        try:
            body = await raw.read()
            control_plane = raw.headers.get("User-Agent", "").startswith(CONTROL_PLANE_AGENT)
            watch = raw.query.get("watch", "") in _TRUE  # Go's ParseBool
            if not control_plane:
                fault = self.faults.take(raw.method, raw.path, watch=watch)
                if fault is not None:
                    answer = await self._fault(raw, fault, watch)
                    if answer is not None:
                        return answer
            return await self._answer(raw, body, record=not control_plane, watch=watch)
        except ApiError as exc:
            return _error(exc)
        except kmock.KubernetesError as exc:  # kmock's own fallbacks
            return _error(ApiError(exc.status, exc.message or "not found",
                                   reason=(exc.reason or "NotFound").replace(" ", "")))
        except Exception as exc:
            log.exception("dev cluster API: %s %s failed", raw.method, raw.path_qs)
            return _error(ApiError(500, f"{type(exc).__name__}: {exc}"))

    async def _answer(self, raw: aiohttp.web.BaseRequest, body: bytes, *, record: bool,
                      watch: bool) -> aiohttp.web.StreamResponse:
        path = raw.path.rstrip("/") or "/"
        if path in ("/healthz", "/livez", "/readyz"):
            return aiohttp.web.Response(text="ok")
        if path not in PUBLIC_PATHS:
            self._authorize(raw)
        doc = self._discovery(path)
        if doc is not None:
            if raw.method != "GET":
                raise ApiError(405, "the server does not allow this method on the requested "
                               "resource")
            return _json(doc)
        api = parse_api_path(path)
        request = self._record(raw, body, api, watch) if record else None
        if api is None:
            if path.startswith(("/api/", "/apis/")) or path in ("/api", "/apis"):
                raise _no_route()
            if request is None:
                request = self._record(raw, body, None, watch)
            return await kmock.RawHandler._handle(self, request)
        return await self._serve(raw, api, body, watch)

    def _authorize(self, raw: aiohttp.web.BaseRequest) -> None:
        """A wrong bearer token is refused (401); no token at all is let through, as
        behind ``kubectl proxy``: client-go (kubectl) does not send a token over plain
        HTTP, and this server speaks only HTTP on loopback."""
        given = raw.headers.get("Authorization")
        if self.token is not None and given is not None and given != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized")

    def _discovery(self, path: str) -> dict[str, Any] | None:
        parts = [p for p in path.split("/") if p]
        if path == "/":
            return discovery.paths()
        if path == "/version":
            return dict(discovery.SERVER_VERSION)
        if path == "/openapi/v3":
            return discovery.openapi_root()
        if parts[:3] == ["openapi", "v3", "api"] and len(parts) == 4:
            return discovery.openapi_group_version("", parts[3]) or _raise(_no_route())
        if parts[:3] == ["openapi", "v3", "apis"] and len(parts) == 5:
            return discovery.openapi_group_version(parts[3], parts[4]) or _raise(_no_route())
        if path == "/api":
            return discovery.api_versions(self.server_address)
        if path == "/apis":
            return discovery.group_list()
        if parts[:1] == ["api"] and len(parts) == 2:
            return discovery.resource_list("", parts[1]) or {}
        if parts[:1] == ["apis"] and len(parts) == 2:
            return discovery.group(parts[1]) or _raise(_no_route())
        if parts[:1] == ["apis"] and len(parts) == 3:
            return discovery.resource_list(parts[1], parts[2]) or _raise(_no_route())
        return None

    def _record(self, raw: aiohttp.web.BaseRequest, body: bytes, api: ApiPath | None,
                watch: bool) -> kmock.Request:
        """kmock's record of a client request (``emulator.requests``), the oldest dropped
        beyond ``request_log`` so a long-running cluster does not grow without bound."""
        text = body.decode("utf-8", errors="replace")
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        resource = (kmock.resource(api.spec.group, api.spec.version, api.spec.plural)
                    if api is not None else None)
        request = kmock.Request(
            id=self._request_count, method=raw.method, url=raw.url, params=dict(raw.query),
            headers=dict(raw.headers), cookies=dict(raw.cookies), body=body, text=text,
            data=data, action=_action(raw.method, api, watch), resource=resource,
            namespace=api.namespace if api else None, name=api.name if api else None,
            subresource=api.subresource if api else None, raw_request=raw)
        self._request_count += 1
        self._requests.append(request)
        if len(self._requests) > self._request_log:
            del self._requests[: len(self._requests) - self._request_log]
        return request

    async def _fault(self, raw: aiohttp.web.BaseRequest, fault: Fault, watch: bool
                     ) -> aiohttp.web.StreamResponse | None:
        if fault.stall_s > 0:
            await asyncio.sleep(fault.stall_s)
        if fault.status is None:
            return None
        if watch and fault.status == 410:
            response = await self._start_stream(raw)
            await response.write(json.dumps({"type": "ERROR", "object": fault.body()}).encode()
                                 + b"\n")
            await response.write_eof()
            return response
        return _json(fault.body(), fault.status, fault.headers())

    # ----------------------------------------------------------------- resources

    async def _serve(self, raw: aiohttp.web.BaseRequest, api: ApiPath, body: bytes,
                     watch: bool) -> aiohttp.web.StreamResponse:
        spec, ns, name, sub = api.spec, api.namespace, api.name, api.subresource
        query, method, store = raw.query, raw.method, self.store
        dry_run = query.get("dryRun") == "All"
        if method == "GET":
            if watch:
                return await self._watch(raw, api)
            if name is None:
                return self._list(raw, spec, ns)
            if sub == "scale":
                return _json(store.get_scale(spec, ns, name))
            if sub == "log":
                return self._log(ns, name, query)
            return _json(store.get(spec, ns, name))
        if sub == "log":
            raise ApiError(405, "the server does not allow this method on the requested "
                           "resource")
        content_type = raw.headers.get("Content-Type", "application/json").split(";")[0]
        if method == "POST" and name is None:
            if spec.namespaced and ns is None:
                raise ApiError(405, "the server does not allow this method on the requested "
                               "resource (a namespaced resource is created in a namespace)")
            created = store.create(spec, ns, _parse_body(body, content_type), dry_run=dry_run)
            return _json(created, 201)
        if method == "PUT" and name is not None:
            data = _parse_body(body, content_type)
            if sub == "scale":
                return _json(store.write_scale(spec, ns, name, data, None, dry_run=dry_run))
            return _json(store.replace(spec, ns, name, data, subresource=sub, dry_run=dry_run))
        if method == "PATCH" and name is not None:
            data = _parse_body(body, content_type)
            if sub == "scale":
                return _json(store.write_scale(spec, ns, name, data, content_type,
                                               dry_run=dry_run))
            existed = store.find(spec, ns, name) is not None
            patched = store.patch(spec, ns, name, data, content_type, subresource=sub,
                                  dry_run=dry_run)
            return _json(patched, 200 if existed or content_type != APPLY else 201)
        if method == "DELETE" and sub is None:
            options = _parse_body(body, "application/json") if body.strip() else {}
            if not isinstance(options, dict):
                raise ApiError(400, "DeleteOptions must be a JSON object")
            grace = query.get("gracePeriodSeconds")
            if grace is not None and grace.lstrip("-").isdigit():
                options.setdefault("gracePeriodSeconds", int(grace))
            if name is None:
                return self._delete_collection(raw, spec, ns, options, dry_run)
            last = store.delete(spec, ns, name, options, dry_run=dry_run)
            if spec.kind == "Pod" or store.find(spec, ns, name) is not None:
                return _json(last)
            return _json({"kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Success",
                          "details": {"name": name, "group": spec.group, "kind": spec.plural,
                                      "uid": last["metadata"].get("uid")}})
        raise ApiError(405, "the server does not allow this method on the requested resource")

    def _selectors(self, query: Mapping[str, str]
                   ) -> tuple[tuple[selectors.Requirement, ...], tuple[tuple[str, bool, str], ...]]:
        try:
            return (selectors.parse_label_selector(query.get("labelSelector")),
                    selectors.parse_field_selector(query.get("fieldSelector")))
        except selectors.SelectorError as exc:
            raise ApiError(400, f"unable to parse requirement: {exc}") from None

    def _list(self, raw: aiohttp.web.BaseRequest, spec: ResourceSpec, ns: str | None
              ) -> aiohttp.web.Response:
        labels, fields = self._selectors(raw.query)
        items = self.store.list_objects(spec, ns, labels, fields)
        meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        start = _continue_offset(raw.query.get("continue"))
        limit = int(raw.query.get("limit") or 0)
        if start or limit:
            end = start + limit if limit > 0 else len(items)
            if end < len(items):
                meta["continue"] = base64.urlsafe_b64encode(
                    json.dumps({"rv": self.store.rv, "start": end}).encode()).decode()
                meta["remainingItemCount"] = len(items) - end
            items = items[start:end]
        if tables.wants_table(raw.headers.get("Accept", "")):
            return _json(tables.table(spec, items, meta, self.store.clock()))
        return _json({"kind": f"{spec.kind}List", "apiVersion": spec.group_version,
                      "metadata": meta, "items": [_strip(i) for i in items]})

    def _delete_collection(self, raw: aiohttp.web.BaseRequest, spec: ResourceSpec,
                           ns: str | None, options: Any, dry_run: bool
                           ) -> aiohttp.web.Response:
        labels, fields = self._selectors(raw.query)
        deleted = [self.store.delete(spec, ns, obj["metadata"]["name"],
                                     options if isinstance(options, dict) else None,
                                     dry_run=dry_run)
                   for obj in self.store.list_objects(spec, ns, labels, fields)]
        return _json({"kind": f"{spec.kind}List", "apiVersion": spec.group_version,
                      "metadata": {"resourceVersion": str(self.store.rv)},
                      "items": [_strip(i) for i in deleted]})

    def _log(self, ns: str | None, name: str, query: Mapping[str, str]
             ) -> aiohttp.web.Response:
        pod_spec = find_resource("", "v1", "pods")
        assert pod_spec is not None and ns is not None
        pod = self.store.get(pod_spec, ns, name)
        containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        container = query.get("container") or (containers[0] if len(containers) == 1 else None)
        if container is None or container not in containers:
            raise ApiError(400, f"a container name must be specified for pod {name}, choose "
                           f"one of: {containers}")
        path = self.logs(ns, name, container) if self.logs is not None else None
        text = path.read_text(errors="replace") if path is not None and path.exists() else ""
        tail = query.get("tailLines")
        if tail is not None and tail.isdigit():
            text = "".join(text.splitlines(keepends=True)[-int(tail):]) if int(tail) else ""
        return aiohttp.web.Response(text=text, content_type="text/plain")

    # ----------------------------------------------------------------- watch

    async def _start_stream(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(status=200)
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        await response.prepare(raw)
        return response

    async def _watch(self, raw: aiohttp.web.BaseRequest, api: ApiPath
                     ) -> aiohttp.web.StreamResponse:
        labels, fields = self._selectors(raw.query)
        if api.name is not None:
            fields = (*fields, ("metadata.name", True, api.name))
        rv_text = raw.query.get("resourceVersion") or ""
        timeout = raw.query.get("timeoutSeconds")
        deadline = time.monotonic() + float(timeout) if timeout else None
        initial: list[dict[str, Any]] = []
        if rv_text in ("", "0"):
            initial = self.store.list_objects(api.spec, api.namespace, labels, fields)
            cursor = self.store.rv
        elif rv_text.isdigit():
            cursor = int(rv_text)
        else:
            raise ApiError(400, f"invalid resourceVersion {rv_text!r}")
        response = await self._start_stream(raw)
        try:
            for obj in initial:
                await _send(response, "ADDED", obj)
            while not self._closing:
                changed = self._changed
                try:
                    events = self.store.events_since(cursor)
                except ApiError as exc:
                    await _send(response, "ERROR", status_body(exc.code, exc.message,
                                                               exc.reason, exc.details))
                    break
                for event in events:
                    cursor = event.rv
                    shown = _visible(event, api, labels, fields)
                    if shown is not None:
                        await _send(response, shown, event.obj)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the client went away
        return response


async def _send(response: aiohttp.web.StreamResponse, kind: str, obj: dict[str, Any]) -> None:
    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")


def _visible(event: WatchEvent, api: ApiPath, labels: tuple[selectors.Requirement, ...],
             fields: tuple[tuple[str, bool, str], ...]) -> str | None:
    """The event type a filtered watch sees, or None (an object entering the selector is
    ADDED, one leaving it DELETED)."""
    if event.spec != api.spec:
        return None
    if api.namespace is not None and \
            event.obj.get("metadata", {}).get("namespace") != api.namespace:
        return None

    def selected(obj: Mapping[str, Any] | None) -> bool:
        return obj is not None and selectors.matches(
            labels, (obj.get("metadata") or {}).get("labels")) and \
            selectors.matches_fields(fields, obj)

    now = selected(event.obj)
    if event.type != "MODIFIED":
        return event.type if now else None
    before = selected(event.old)
    if now and before:
        return "MODIFIED"
    if now:
        return "ADDED"
    return "DELETED" if before else None


def _parse_body(body: bytes, content_type: str) -> Any:
    if not body.strip():
        raise ApiError(400, "the request needs a body")
    try:
        if content_type == APPLY or content_type.endswith("yaml"):
            return yaml.safe_load(body)
        return json.loads(body)
    except (ValueError, yaml.YAMLError) as exc:
        raise ApiError(400, f"the body is not valid {content_type}: {exc}") from None


def _continue_offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        return int(json.loads(base64.urlsafe_b64decode(token.encode()))["start"])
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "invalid continue token") from None


def _action(method: str, api: ApiPath | None, watch: bool) -> kmock.action | None:
    if api is None:
        return None
    if method == "GET":
        if watch:
            return kmock.action.WATCH
        return kmock.action.FETCH if api.name else kmock.action.LIST
    return {"POST": kmock.action.CREATE, "PATCH": kmock.action.UPDATE,
            "PUT": kmock.action.UPDATE, "DELETE": kmock.action.DELETE}.get(method)


def _raise(exc: ApiError) -> dict[str, Any]:
    raise exc
