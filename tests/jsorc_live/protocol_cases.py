"""The remote-action protocol as a table: a request and what an action server answers.

test_server_protocol.py runs it against jsorc's server; test_jaseci_interop.py runs the same
table against a real Jaseci 1.4 server of the same functions and checks both answer alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Case:
    """``method path`` with ``body`` (raw text, or None for no body) answers ``status`` with a
    body of ``kind``: "json" (``json``), "detail" (422, errors at ``locs``) or "text"."""

    id: str
    method: str
    path: str
    body: str | None
    status: int
    kind: str
    json: Any = None
    locs: tuple[tuple[Any, ...], ...] = ()


CASES = [
    Case("call", "POST", "/double/", '{"x": 21}', 200, "json", 42),
    Case("alias", "POST", "/twice/", '{"x": 5}', 200, "json", 10),
    Case("lax coercion", "POST", "/double/", '{"x": "21"}', 200, "json", 42),
    Case("omitted is default", "POST", "/add/", '{"a": 1}', 200, "json", 3.0),
    Case("varargs", "POST", "/gather/",
         '{"first": 1, "*rest": [2, 3], "scale": 5, "**extra": {"k": "v"}}', 200, "json",
         {"first": 1, "rest": [2, 3], "scale": 5, "extra": {"k": "v"}}),
    Case("varargs omitted", "POST", "/gather/", '{"first": "a"}', 200, "json",
         {"first": "a", "rest": [], "scale": 1, "extra": {}}),
    Case("setup ran at start", "POST", "/factor/", "{}", 200, "json", 3),
    Case("empty body", "POST", "/factor/", None, 200, "json", 3),
    Case("no group in the path", "POST", "/nogroup/", '{"t": "abc"}', 200, "json", "ABC"),
    Case("missing", "POST", "/double/", "{}", 422, "detail", locs=(("body", "x"),)),
    Case("unknown parameter", "POST", "/double/", '{"x": 1, "zzz": 3}', 422, "detail",
         locs=(("body", "zzz"),)),
    Case("wrong type", "POST", "/double/", '{"x": "abc"}', 422, "detail", locs=(("body", "x"),)),
    Case("not an object", "POST", "/double/", "[1]", 422, "detail", locs=(("body",),)),
    Case("bad JSON", "POST", "/double/", "{bad", 422, "detail", locs=(("body", 1),)),
    Case("GET on an action", "GET", "/double/", None, 405, "json",
         {"detail": "Method Not Allowed"}),
    Case("unknown action", "POST", "/nope/", "{}", 404, "json", {"detail": "Not Found"}),
    Case("local-only action", "POST", "/local_only/", "{}", 404, "json", {"detail": "Not Found"}),
    Case("action raises", "POST", "/boom/", '{"msg": "kaput"}', 500, "text"),
]

#: Where jsorc answers differently on purpose: an empty body is an empty object, so a missing
#: required parameter is a 422 like any other (Jaseci's server calls the function without it
#: and answers 500 Internal Server Error).
EMPTY_BODY = Case("empty body, a required parameter", "POST", "/double/", None, 422, "detail",
                  locs=(("body", "x"),))
