"""An action server: one action module served over HTTP in Jaseci 1.4's remote-action protocol,
so that Jaseci's runtime can call it and jsorc can manage Jaseci's own action servers alike.

- ``GET /jaseci_actions_spec/``: ``{"group.name": [parameter, ...]}``, each alias its own key.
- ``POST /<name>/`` (an action's name or alias, without its group) with a JSON object of
  parameters: 200 and the bare JSON result. ``*args``/``**kwargs`` travel under the literal
  keys ``"*args"``/``"**kwargs"``; an omitted parameter takes its default.
- A path without its trailing slash answers 307 to the slash path (method and body kept).
- Errors as Jaseci's FastAPI server: 422 ``{"detail": [{"loc", "msg", "type"}, ...]}`` for
  parameters that do not fit (unknown ones included), 404 ``{"detail": "Not Found"}``, 405
  ``{"detail": "Method Not Allowed"}``, and 500 with a plain-text body when the action raises
  (here the body is the exception, ``ValueError: ...``; Jaseci sends "Internal Server Error").
  An empty body is an empty object, as in Jaseci; one deliberate difference: when that
  leaves a required parameter out, the answer is a 422 like any other (Jaseci calls the
  function without it and answers 500).
- ``GET /metrics``: Prometheus text; per action (``group.name``) calls by outcome, a latency
  histogram and calls in flight, plus the module's load memory, the HTTP bytes received and
  sent (``jsorc_http_*_bytes_total``) and the process's own metrics.

Run one with ``python -m jsorc_live.actions.server MODULE --host 127.0.0.1 --port P``
(``MODULE`` a module name or a ``.py`` file; naming it there allows it). It is ready when
``GET /jaseci_actions_spec/`` answers 200. With ``--port 0`` it picks a free port; either way
it prints ``jsorc action server: MODULE at http://HOST:PORT`` on stdout once bound.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import uvicorn
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from jsorc_live.actions.config import server_command
from jsorc_live.actions.loader import ActionLoadError, AllowList, LocalModule
from jsorc_live.actions.registry import (
    SERVICE_HEADER,
    ActionArgumentError,
    ActionCallError,
    ActionSpec,
)
from jsorc_live.metrics import HttpByteCounters, HttpBytes

__all__ = ["SPEC_PATH", "main", "make_app", "server_command"]

SPEC_PATH = "/jaseci_actions_spec/"
_RESERVED = {"jaseci_actions_spec", "metrics"}
#: Latency buckets in seconds: model calls range from a millisecond to many seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)

log = logging.getLogger("jsorc_live.actions.server")


class _Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps may share a
    process in tests)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.calls = Counter(
            "jsorc_action_calls", "Action calls served, by outcome (ok, invalid, error)",
            ["action", "outcome"], registry=registry,
        )
        self.latency = Histogram(
            "jsorc_action_latency_seconds", "Time to serve an action call, parsing included",
            ["action"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.in_flight = Gauge(
            "jsorc_action_in_flight", "Action calls being served", ["action"], registry=registry,
        )
        self.module_memory = Gauge(
            "jsorc_action_module_memory_bytes",
            "Resident memory the action module took at load", ["module"], registry=registry,
        )


def make_app(
    module_name: str,
    *,
    allow: AllowList | None = None,
    setup: Mapping[str, Any] | None = None,
    registry: CollectorRegistry | None = None,
) -> Starlette:
    """An app serving ``module_name`` (loaded now, with ``setup`` over ``setup()``'s
    defaults; it must be on ``allow``, default the example configs' modules)."""
    local = LocalModule.load(module_name, allow=allow, setup=setup)
    remote = {name: spec for name, spec in local.actions.items() if spec.allow_remote}
    clash = sorted(_RESERVED.intersection(p for s in remote.values() for p in s.paths))
    if clash:
        raise ActionLoadError(f"action module {module_name!r}: names {clash} are reserved")
    metrics = _Metrics(registry if registry is not None else CollectorRegistry())
    ProcessCollector(registry=metrics.registry)
    metrics.module_memory.labels(module_name).set(max(local.memory_mb, 0.0) * 1024 * 1024)
    spec_body = local.spec(remote_only=True)

    async def action_spec(request: Request) -> Response:
        return JSONResponse(spec_body)

    async def serve_metrics(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route(SPEC_PATH, action_spec, methods=["GET"]),
        Route("/metrics", serve_metrics, methods=["GET"]),
    ]
    for spec in remote.values():
        endpoint = _action_endpoint(local, spec, metrics)
        routes += [Route(f"/{path}/", endpoint, methods=["POST"]) for path in spec.paths]

    # HTTP bytes in and out: the replica's network figures for tracksys.
    counting = Middleware(HttpBytes, counters=HttpByteCounters(metrics.registry))
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error},
                    middleware=[counting])
    app.state.module = local
    return app


def _action_endpoint(local: LocalModule, spec: ActionSpec, metrics: _Metrics) -> Any:
    key = spec.key
    latency = metrics.latency.labels(key)
    in_flight = metrics.in_flight.labels(key)
    for outcome in ("ok", "invalid", "error"):  # every series from the start, for rate()
        metrics.calls.labels(key, outcome)

    async def endpoint(request: Request) -> Response:
        start = time.perf_counter()
        in_flight.inc()
        outcome = "error"
        try:
            try:
                params = _parse_body(await request.body(), local.url, key)
                began = time.perf_counter()
                result = await run_in_threadpool(local.call, spec.name, params)
                service_ms = (time.perf_counter() - began) * 1000.0
                body = _encode(result)
            except ActionArgumentError as e:
                outcome = "invalid"
                return JSONResponse({"detail": e.errors}, status_code=422)
            except ActionCallError as e:
                log.error("%s failed: %s", key, e.message, exc_info=e.__cause__)
                return PlainTextResponse(e.message, status_code=e.status or 500)
            except Exception as e:  # a result that is not JSON
                log.exception("%s: cannot encode the result", key)
                return PlainTextResponse(f"{type(e).__name__}: {e}", status_code=500)
            outcome = "ok"
            # Not in Jaseci's protocol (its clients ignore it): how long the action itself
            # worked, so jsorc can tell service time from network and queueing.
            return Response(body, media_type="application/json",
                            headers={SERVICE_HEADER: f"{service_ms:.3f}"})
        finally:
            in_flight.dec()
            latency.observe(time.perf_counter() - start)
            metrics.calls.labels(key, outcome).inc()

    return endpoint


def _parse_body(raw: bytes, url: str, key: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        params = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        pos = getattr(e, "pos", getattr(e, "start", 0))
        raise ActionArgumentError(
            url, key, [{"loc": ["body", pos], "msg": "JSON decode error", "type": "json_invalid"}]
        ) from e
    if not isinstance(params, dict):
        raise ActionArgumentError(
            url, key,
            [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}],
        )
    return params


def _encode(result: Any) -> bytes:
    """The result as strict JSON (no NaN); numpy arrays and scalars become lists and numbers."""
    return json.dumps(
        result, default=_json_default, allow_nan=False, ensure_ascii=False, separators=(",", ":")
    ).encode()


def _json_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"the result contains a {type(value).__name__}, which is not JSON")


async def _http_error(request: Request, exc: Exception) -> Response:
    """404/405 as FastAPI words them (``{"detail": ...}``), the way Jaseci's server does."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m jsorc_live.actions.server",
        description="Serve an action module in Jaseci 1.4's remote-action protocol.",
    )
    p.add_argument("module", help="module name, or path of a .py file, of the action module")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed)")
    p.add_argument("--setup", default="{}", help="JSON object of setup() parameters")
    p.add_argument("--log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m jsorc_live.actions.server``."""
    args = _parse_args(argv)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # our process: no *_created
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        setup = json.loads(args.setup)
        if not isinstance(setup, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        print(f"jsorc action server: --setup must be a JSON object ({e})", file=sys.stderr)
        return 2
    allow = AllowList()
    try:
        if args.module.endswith(".py"):
            module = allow.register_file(args.module)
        else:
            module = args.module
            allow.allow(module)
        app = make_app(module, allow=allow, setup=setup)
    except ActionLoadError as e:
        print(f"jsorc action server: cannot load {args.module}: {e}", file=sys.stderr)
        return 2
    try:
        sock = _bind(args.host, args.port)
    except OSError as e:
        print(f"jsorc action server: cannot bind {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    local: LocalModule = app.state.module
    print(f"jsorc action server: {module} at http://{shown}:{port} "
          f"({local.memory_mb:.1f} MB loaded in {local.load_s:.2f} s)", flush=True)
    config = uvicorn.Config(
        app, log_level=args.log_level, access_log=args.access_log,
        timeout_graceful_shutdown=5, lifespan="off",
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets whose proto
    # says TCP, and without it uvicorn's answer (headers, then body) waits for the client's
    # delayed ACK: ~40 ms added to every call on a kept-alive connection (jsorc-sim validate
    # measured it as bimodal network time).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    sys.exit(main())
