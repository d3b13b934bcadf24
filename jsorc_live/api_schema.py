"""The OpenAPI document of the HTTP API, built from the models that check the requests.

The routes parse their bodies themselves (jsorc_live.api_models: strict JSON, JSORC's
refusal shape, 400 rather than FastAPI's 422), so FastAPI cannot see their bodies; each route
is described instead by an `Operation`: its request model (or a JSON Schema, for Jaseci's
ops), its answer, the statuses it refuses with, and whether it needs the admin token.
`openapi_document` turns them into an OpenAPI 3.1 document whose components are the
pydantic models' own JSON Schemas, so the document and the checks cannot drift apart. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from jsorc_live.api_models import Refusal

__all__ = ["RETRY_AFTER", "Auth", "Handler", "Operation", "Route", "openapi_document"]

Schema = type[BaseModel] | Mapping[str, Any]
Handler = Callable[[dict[str, Any]], Any]  # the checked body -> the answer


class Auth(Enum):
    ADMIN = "admin"  # the admin token is required
    VIEWER = "viewer"  # the admin token or the read-only viewer token (the dashboard's data)
    OPTIONAL = "optional"  # public, but a token that is sent must be right
    NONE = "none"


@dataclass(frozen=True)
class Operation:
    """One documented route. `refusals`: the 4xx/5xx statuses its handler answers (the
    body checks' 400 and 413, and the token's 401 and 403, are added from `method` and
    `auth`); `headers`: response headers of a status (Retry-After)."""

    path: str
    summary: str
    answer: Schema
    request: Schema | None = None
    refusals: tuple[int, ...] = ()
    auth: Auth = Auth.ADMIN
    method: str = "post"
    answer_media: str = "application/json"
    forms: bool = False  # the body may also be a form (Jaseci's login)
    headers: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    """A documented POST route of the app and its handler; `walker`: it runs walkers, on
    the walker pool (else the admin pool)."""

    op: Operation
    handler: Handler
    walker: bool = False


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again",
                               "required": True,
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}

_WHY = {400: "bad input: malformed JSON, a missing, unknown or ill-typed field, or a bad "
             "value (the message names it)",
        401: "no admin token: send `Authorization: token <JSORC_TOKEN>`",
        403: "wrong admin token",
        404: "unknown action, walker, config, service or policy",
        409: "refused in the current state (the message says why and what to do)",
        413: "request body over the limit (jsorc serve --max-body-mb)",
        422: "the action could not be loaded",
        429: "too many failed logins from this address",
        500: "an unexpected error (a bug; logged with its traceback)",
        502: "an action call or a dependency failed",
        503: "busy or not configured: retry later (Retry-After)",
        504: "a dependency did not answer in time"}


def _statuses(op: Operation) -> list[int]:
    out = set(op.refusals) | {500}
    if op.method == "post":
        out |= {400, 413}
    if op.auth is Auth.ADMIN or op.auth is Auth.OPTIONAL:
        out |= {401, 403}
    elif op.auth is Auth.VIEWER:
        out |= {401}  # a wrong token and no token alike
    return sorted(out)


def openapi_document(operations: Iterable[Operation], *, title: str, version: str,
                     description: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations`."""
    ops = list(operations)
    models: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(Refusal, "serialization"):
                                                                 None}
    for op in ops:
        if isinstance(op.request, type):
            models[(op.request, "validation")] = None
        if isinstance(op.answer, type):
            models[(op.answer, "serialization")] = None
    refs, defs = models_json_schema(list(models), ref_template="#/components/schemas/{model}")

    def schema_of(schema: Schema, mode: JsonSchemaMode) -> dict[str, Any]:
        if isinstance(schema, type):
            return dict(refs[(schema, mode)])
        return dict(schema)

    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        responses: dict[str, Any] = {"200": {
            "description": "done", "content": {op.answer_media: {
                "schema": schema_of(op.answer, "serialization")}}}}
        for status in _statuses(op):
            responses[str(status)] = {
                "description": _WHY.get(status, HTTPStatus(status).phrase),
                "content": {"application/json": {"schema": schema_of(Refusal,
                                                                     "serialization")}}}
            if status in op.headers:
                responses[str(status)]["headers"] = dict(op.headers[status])
        entry: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(op),
                                 "responses": responses}
        if op.tags:
            entry["tags"] = list(op.tags)
        if op.request is not None:
            body = schema_of(op.request, "validation")
            content = {"application/json": {"schema": body}}
            if op.forms:
                content["application/x-www-form-urlencoded"] = {"schema": body}
            entry["requestBody"] = {"required": False, "content": content}
        if op.auth is Auth.ADMIN:
            entry["security"] = [{"token": []}]
        elif op.auth is Auth.OPTIONAL:
            entry["security"] = [{}, {"token": []}]
        elif op.auth is Auth.VIEWER:
            entry["security"] = [{"token": []}, {"viewer": []}, {"dashboard_cookie": []}]
        else:
            entry["security"] = []
        paths.setdefault(op.path, {})[op.method] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"token": {
                "type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`token <JSORC_TOKEN>` or `Bearer <JSORC_TOKEN>` (the "
                               "token of `jsorc serve`; Jaseci's login answers it)"},
                "viewer": {
                    "type": "apiKey", "in": "header", "name": "Authorization",
                    "description": "`token <JSORC_VIEWER_TOKEN>`: the read-only token of "
                                   "`jsorc serve --viewer-token`; it opens the dashboard "
                                   "only, never the admin API"},
                "dashboard_cookie": {
                    "type": "apiKey", "in": "cookie", "name": "jsorc_dashboard",
                    "description": "set by POST /dashboard/login (the admin or the viewer "
                                   "token), scoped to /dashboard"}}},
    }


def _operation_id(op: Operation) -> str:
    return op.method + op.path.replace("/", "_").rstrip("_")
