"""The HTTP app around a JsorcService: routes, their pools, body checks and the schema.

Every POST route reads its body with jsorc_live.api_models (strict JSON, the route's model)
and runs its handler on a thread of its pool (jsorc_live.limits): walker runs on the walker
pool, everything else on the admin pool, so walker load never starves the operator. Bodies
over the limit are refused by `BodyLimit` (413). Refusals are `{"success": false, "message"}`
with their 4xx status; an unexpected exception is logged with its traceback and answered
500 in the same shape. `/openapi.json` is built from the same route table
(jsorc_live.api_schema), so every route is documented with what it checks and answers.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from jsorc_live import api_models as m
from jsorc_live.api_models import BadRequest, check_body, plain, read_json_object
from jsorc_live.api_schema import RETRY_AFTER, Auth, Handler, Operation, Route, openapi_document
from jsorc_live.dashboard import DATA_OPERATION
from jsorc_live.dashboard import mount as mount_dashboard
from jsorc_live.jaseci_api import JaseciApi, add_routes
from jsorc_live.jaseci_login import AdminCredentials
from jsorc_live.limits import (
    DEFAULT_MAX_BODY_BYTES,
    BodyLimit,
    Pools,
    PoolSizes,
    refuse,
    run_handler,
)
from jsorc_live.ops import Ops
from jsorc_live.runtime import Runtime

if TYPE_CHECKING:
    from jsorc_live.api import JsorcService

log = logging.getLogger(__name__)

__all__ = ["make_app", "token_check"]

DESCRIPTION = """jsorc's live runtime: walker runs, JSORC's admin API under /jsorc/ (the
token of `jsorc serve` in `Authorization: token T`), Jaseci 1.4's paths for jsctl
(/js_admin/<op>, /js/walker_run, /user/token/; each also with a trailing slash), and
/metrics. Refusals are `{"success": false, "message": ...}` with a 4xx status."""


class _Metrics(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Any]:
        calls = CounterMetricFamily("jsorc_action_calls", "action calls",
                                    labels=["action", "placement", "ok"])
        for (action, placement, ok), count in sorted(self.runtime.call_counts().items()):
            calls.add_metric([action, placement, str(ok).lower()], count)
        yield calls
        ready = GaugeMetricFamily("jsorc_replicas_ready", "ready remote replicas",
                                  labels=["action"])
        flight = GaugeMetricFamily("jsorc_in_flight", "calls in flight", labels=["action"])
        for name, router in sorted(self.runtime.routers.items()):
            ready.add_metric([name], router.replicas_ready)
            flight.add_metric([name], router.in_flight)
        yield ready
        yield flight
        yield GaugeMetricFamily("jsorc_requests_in_system", "walker runs in progress",
                                value=self.runtime.in_system)


Authorise = Callable[[Request], JSONResponse | None]


def token_check(token: str) -> Authorise:
    """None when the request carries `token`, else its 401/403 refusal."""
    def authorised(request: Request) -> JSONResponse | None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not header or scheme.lower() not in ("token", "bearer") or not given:
            return refuse(401, "admin token required: Authorization: token <JSORC_TOKEN>")
        if not hmac.compare_digest(given.strip().encode(errors="replace"), token.encode()):
            return refuse(403, "wrong admin token")
        return None
    return authorised


def _jsorc_routes(service: JsorcService, ops: Ops) -> list[Route]:
    s = service

    def walker_run(d: dict[str, Any]) -> dict[str, Any]:
        result = s.runtime.run_walker(d["name"], d["ctx"])
        if not result.ok:
            return {"_status": 502, "success": False, "message": result.error,
                    "request_id": result.request_id}
        return {"success": True, "report": plain(result.report),
                "request_id": result.request_id, "latency_ms": result.latency_ms}

    def r(path: str, summary: str, model: type[BaseModel], answer: type[BaseModel],
          handler: Handler, *refusals: int) -> Route:
        return Route(Operation(path, summary, answer, model, refusals, tags=("jsorc",)),
                     handler)

    return [
        r("/jsorc/actions/config", "configure an action from a trusted config module",
          m.ActionsConfig, m.ActionAnswer,
          lambda d: s.actions_config(d["name"], d["config"]), 404, 409),
        r("/jsorc/actions/load", "load an action as a module or remote replicas",
          m.ActionsLoad, m.ActionAnswer,
          lambda d: s.actions_load(d["name"], d["mode"], d["url"], d["replicas"]),
          404, 409, 422),
        r("/jsorc/actions/status", "an action's status", m.ActionName, m.ActionAnswer,
          lambda d: s.actions_status(d["name"]), 404),
        r("/jsorc/actions/unload", "unload an action", m.ActionsUnload, m.ActionAnswer,
          lambda d: s.actions_unload(d["name"], d["mode"]), 404, 409),
        r("/jsorc/actionpolicy/set", "set the placement policy", m.ActionpolicySet,
          m.PolicyAnswer, lambda d: s.actionpolicy_set(d["policy_name"], d["policy_params"]),
          404),
        r("/jsorc/actionpolicy/get", "the policy, its parameters and last decisions",
          m.Empty, m.PolicyAnswer, lambda d: s.actionpolicy_get()),
        r("/jsorc/trackact/start", "start tracking action calls", m.Empty, m.Answer,
          lambda d: s.trackact_start()),
        r("/jsorc/trackact/stop", "stop tracking; the calls tracked", m.Empty, m.Answer,
          lambda d: s.trackact_stop(), 409),
        r("/jsorc/trackact/calls", "the calls after a cursor; trackact left as it is",
          m.TrackactCalls, m.CallsAnswer, lambda d: s.trackact_calls(d["since"])),
        r("/jsorc/benchmark/start", "start the walker benchmark", m.Empty, m.Answer,
          lambda d: s.benchmark_start()),
        r("/jsorc/benchmark/stop", "stop the benchmark; its report", m.Empty, m.ReportAnswer,
          lambda d: s.benchmark_stop(), 409),
        r("/jsorc/benchmark/report", "the benchmark's report so far", m.Empty,
          m.ReportAnswer, lambda d: s.benchmark_report(), 409),
        r("/jsorc/benchmark/window", "a report of the walker runs after a cursor; the "
          "benchmark left as it is", m.BenchmarkWindow, m.WindowAnswer,
          lambda d: s.benchmark_window(d["since"], d["start"]), 422),
        r("/jsorc/config/get", "the settings, or one", m.ConfigGet, m.ConfigAnswer,
          lambda d: s.config_get(d["name"]), 404),
        r("/jsorc/config/set", "set one setting", m.ConfigSet, m.ConfigAnswer,
          lambda d: s.config_set(d["name"], d["value"]), 404, 409),
        r("/jsorc/status", "every action at a glance", m.Empty, m.StatusAnswer,
          lambda d: s.status()),
        r("/jsorc/walker/set", "define a walker", m.WalkerSet, m.WalkerSetAnswer,
          lambda d: s.walker_set(d["name"], d["steps"]), 409),
        *ops.routes(),
        Route(Operation("/walker_run", "run a walker (no token needed)", m.WalkerRunAnswer,
                        m.WalkerRun, (404, 409, 502, 503), auth=Auth.NONE,
                        headers={503: RETRY_AFTER}, tags=("walkers",)),
              walker_run, walker=True),
    ]


def make_app(service: JsorcService, token: str, *,
             credentials: AdminCredentials | None = None, pools: PoolSizes | None = None,
             max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
             viewer_token: str | None = None) -> FastAPI:
    """The FastAPI app around `service`; admin calls need `token`. Jaseci's paths
    (jsorc_live.jaseci_api) alias the admin API, and `credentials` turn on their login.
    `pools`: the walker and admin thread pools; `max_body_bytes`: the body limit.
    `viewer_token` opens /dashboard (jsorc_live.dashboard) and nothing else."""
    if not token:
        raise ValueError("an admin token is required (set JSORC_TOKEN)")
    threads = Pools(pools)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await threads.admin(ops.start)  # keep-alive services
        if service.state is not None:  # restored before serving (a kept-alive database is up)
            await threads.admin(service.state.start)
        await threads.admin(dashboard.start)  # its sampler
        yield
        if service.state is not None:  # the last save, while a kept-alive database still runs
            await threads.admin(service.state.close)
        await threads.admin(dashboard.close)
        await threads.admin(jaseci.close)  # its tracksys state recorder
        await threads.admin(ops.close)
        await threads.admin(service.close)

    app = FastAPI(title="jsorc", lifespan=lifespan, openapi_url="/openapi.json")
    registry = CollectorRegistry()
    registry.register(_Metrics(service.runtime))
    ops = Ops.attach(app, service, registry)  # tracksys, keep-alive, process/latency metrics
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)  # outermost: before any reading
    authorised = token_check(token)
    dashboard = mount_dashboard(app, service, ops, token=token, viewer_token=viewer_token)

    def route(spec: Route) -> None:
        op, model = spec.op, spec.op.request
        assert isinstance(model, type)

        async def endpoint(request: Request) -> Response:
            if op.auth is Auth.ADMIN:
                denied = authorised(request)
                if denied is not None:
                    return denied
            try:
                data = check_body(model, read_json_object(await request.body()))
            except BadRequest as exc:
                return refuse(400, str(exc))
            return await run_handler(threads, spec.walker, op.path, spec.handler, data)

        app.add_api_route(op.path, endpoint, methods=["POST"], include_in_schema=False)

    jsorc_routes = _jsorc_routes(service, ops)
    for spec in jsorc_routes:
        route(spec)
    walker_run = next(spec.handler for spec in jsorc_routes if spec.walker)
    # Jaseci's /js_admin/<op>, /js/walker_run and /user/token/ (jsctl, JSORC's clients).
    jaseci = JaseciApi(service, ops, token=token, credentials=credentials)
    jaseci_ops = add_routes(app, jaseci, authorised=authorised, walker_run=walker_run,
                            pools=threads)
    app.state.jaseci_api = jaseci
    app.state.pools = threads

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"success": True})

    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    plain_ops = [
        Operation("/metrics", "Prometheus metrics", {"type": "string"}, auth=Auth.NONE,
                  method="get", answer_media="text/plain", tags=("metrics",)),
        Operation("/healthz", "liveness", m.Answer, auth=Auth.NONE, method="get",
                  tags=("metrics",)),
        DATA_OPERATION,
    ]
    document = openapi_document([*(spec.op for spec in jsorc_routes), *jaseci_ops,
                                 *plain_ops], title="jsorc", version="1",
                                description=DESCRIPTION)

    def openapi() -> dict[str, Any]:
        return document

    app.openapi = openapi  # type: ignore[method-assign]

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Reached only by an error outside a handler (they catch their own): JSORC's shape.
        log.error("unexpected error on %s: %s: %s", request.url.path, type(exc).__name__, exc)
        return refuse(500, f"internal error: {type(exc).__name__}: {exc} (logged)")

    app.add_exception_handler(Exception, unexpected)
    return app
