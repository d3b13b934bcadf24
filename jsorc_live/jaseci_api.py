"""Jaseci 1.4's API over jsorc: `jsctl` and JSORC's own clients drive `jsorc serve`.

`add_routes` adds, beside jsorc's own `/jsorc/...`, Jaseci's paths (jsorc_live.jaseci_ops
lists the ops and turns bodies into arguments):

    POST /user/token/                 login (jaseci_login): {"token": <the admin token>}
    POST /js_admin/<op>               every JSORC op of Jaseci 1.4 (`OPS`), with or
    POST /js/walker_run               without the trailing slash

Answers take JSORC's shapes where they differ from jsorc's (`JaseciApi`): `module` is
`{"name": path}`, `trackact_stop` is JSORC's list (one entry per walker run with its
`actions_calls`), `tracksys_stop` has `states`, the benchmark answers its report bare,
`config_get` a JSON string. Refusals keep jsorc's 4xx and `{"success": false, "message"}`.
The shape builders (`jaseci_status`, `runs_of`) are pure.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from jsorc_live import api_models as m
from jsorc_live.actions.config import DEFAULT_CONFIG_MODULE
from jsorc_live.api_models import BadRequest, read_json_object
from jsorc_live.api_schema import RETRY_AFTER, Auth, Operation
from jsorc_live.jaseci_loadtest import synthetic_apps
from jsorc_live.jaseci_login import NOT_CONFIGURED, AdminCredentials, LoginLimiter
from jsorc_live.jaseci_ops import (
    ADMIN,
    JASECI_KITS,
    OPS,
    Op,
    coerce_args,
    jsorc_policy_params,
    request_schema,
)
from jsorc_live.jaseci_states import StateRecorder
from jsorc_live.limits import Pools, refuse, run_handler
from jsorc_live.meta_config import (
    CONFIG_NAMES,
    SERVICE_ALIASES,
    MetaConfig,
    MetaConfigError,
    apply_to,
    parse_meta_config,
)
from jsorc_live.runtime import RuntimeRefusal, Step
from jsorc_live.tracksys import (
    TrackSysError,
    prometheus_query,
    scrape_labels,
    usage_from_prometheus,
)

if TYPE_CHECKING:
    from jsorc_live.api import JsorcService
    from jsorc_live.ops import Ops

log = logging.getLogger(__name__)

__all__ = ["JaseciApi", "add_routes", "jaseci_status", "runs_of"]

# --------------------------------------------------------------------------- shapes


def jaseci_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """JSORC's `action_status` of jsorc's (pure): `module` is `{"name": module path}`."""
    out = dict(status)
    if not isinstance(out.get("module"), Mapping):
        out["module"] = {"name": out.get("module")}
    return out


def _offset(steps: Sequence[Step], actions: Sequence[str]) -> int | None:
    """Where `actions` (a run's tracked calls) sit in the walker's steps: a run tracked
    from its middle, or stopped in it, is a slice of them."""
    for k in range(len(steps) - len(actions) + 1):
        if all(steps[k + i].action == a for i, a in enumerate(actions)):
            return k
    return None


def runs_of(rows: Sequence[Mapping[str, Any]], steps_of: Callable[[str], Sequence[Step]],
            unix: Callable[[float], float]) -> list[dict[str, Any]]:
    """JSORC's `trackact_stop`: one entry per walker run, in the order the runs started,
    with `actions_calls` ({"action.function": calls}) beside its rows of jsorc's call table
    (pure). A call row does not name the function: the walker's steps do, in order (a
    runtime logs one row per step, stopping at the first failure)."""
    by_run: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(row["request_id"], []).append(row)
    out = []
    for rid, calls in by_run.items():
        steps = steps_of(str(calls[0]["app"]))
        at = _offset(steps, [str(c["action"]) for c in calls])
        counts: dict[str, int] = {}
        for i, row in enumerate(calls):
            key = (f"{row['action']}.{steps[at + i].function}" if at is not None
                   else str(row["action"]))
            counts[key] = counts.get(key, 0) + 1
        out.append({"ts": unix(float(calls[0]["ts"])), "request_id": rid,
                    "walker": calls[0]["app"], "actions_calls": counts,
                    "calls": [dict(c) for c in calls]})
    return out


# --------------------------------------------------------------------------- the ops


class JaseciApi:
    """JSORC's ops over one JsorcService and its Ops, answering JSORC's shapes.

    `pending` is a META_CONFIG set but not applied yet: `service_refresh meta` applies it
    (JSORC's MetaService read its config when reset).
    """

    def __init__(self, service: JsorcService, ops: Ops, *, token: str,
                 credentials: AdminCredentials | None = None,
                 limiter: LoginLimiter | None = None, clock: Callable[[], float] = time.time
                 ) -> None:
        self.service = service
        self.ops = ops
        self.token = token
        self.credentials = credentials
        self.limiter = limiter or LoginLimiter()
        self._clock = clock
        self.pending: MetaConfig | None = None
        # The settings in force when the pending document was first staged: refresh applies
        # what the document changed from them, so a `config set` made since is not undone
        # by keys the document only copied.
        self._staged_over: dict[str, Any] = {}
        self._config_lock = threading.Lock()  # config_set and refresh, one at a time
        self.states = StateRecorder(self._placements, self._readings,
                                    lambda: service.settings.backoff_interval, clock=clock)

    # ----------------------------------------------------------------- actions

    def actions_config(self, config: str, name: str) -> dict[str, Any]:
        if config in JASECI_KITS:
            raise RuntimeRefusal(f"{config} is Jaseci's AI kit, whose models jsorc does not "
                                 f"run; jsorc's example actions are configured by "
                                 f"{DEFAULT_CONFIG_MODULE} (or the module of `jsorc serve "
                                 "--config`)", 404)
        answer = self.service.actions_config(name, config)
        return {**answer, "action_status": jaseci_status(answer["action_status"])}

    def actions_load(self, name: str, mode: str, url: str | None,
                     replicas: int | None) -> dict[str, Any]:
        answer = self.service.actions_load(name, mode, url, replicas)
        return {**answer, "action_status": jaseci_status(answer["action_status"])}

    def actions_status(self, name: str) -> dict[str, Any]:
        answer = self.service.actions_status(name)
        return {**answer, "action_status": jaseci_status(answer["action_status"])}

    def actions_unload(self, name: str, mode: str, retire_svc: bool) -> dict[str, Any]:
        was = self.service.runtime.router(name).status()
        answer = self.service.actions_unload(name, mode)
        what = (f"Remote action {name} unloaded; its replicas stop once their calls drain"
                if was["mode"] == "remote" else f"Action module {name} unloaded")
        return {**answer, "message": f"{what}.",
                "action_status": jaseci_status(answer["action_status"])}

    # ----------------------------------------------------------------- policy

    def actionpolicy_set(self, policy_name: str, policy_params: dict[str, Any]
                         ) -> dict[str, Any]:
        answer = self.service.actionpolicy_set(policy_name, jsorc_policy_params(policy_params))
        return {"success": True, "message": f"Action optimization policy configured as "
                f"{policy_name} with params {policy_params}",
                "policy": answer["policy"], "params": answer["params"]}

    def actionpolicy_get(self) -> dict[str, Any]:
        return self.service.actionpolicy_get()

    # ----------------------------------------------------------------- tracking, benchmark

    def trackact_start(self) -> dict[str, Any]:
        return self.service.trackact_start()

    def trackact_stop(self) -> list[dict[str, Any]]:
        runtime = self.service.runtime
        if not runtime.track_active:
            return []  # JSORC's answer when nothing was tracked
        rows = self.service.trackact_stop()["calls"]
        offset = self._clock() - runtime.now()

        def steps_of(app: str) -> Sequence[Step]:
            walker = runtime.walkers.get(app)
            return walker.steps if walker is not None else ()

        return runs_of(rows, steps_of, lambda ts: ts + offset)

    def benchmark_start(self) -> dict[str, Any]:
        return self.service.benchmark_start()

    def benchmark_report(self) -> dict[str, Any]:
        report: dict[str, Any] = self.service.benchmark_report()["report"]
        return report

    def benchmark_stop(self, report: bool) -> dict[str, Any]:
        if not self.service.runtime.benchmark_active:
            return {}  # JSORC's answer when no benchmark runs
        summary: dict[str, Any] = self.service.benchmark_stop()["report"]
        return summary if report else {}

    def tracksys_start(self) -> dict[str, Any]:
        try:
            window = self.ops.tracksys.start()
        except TrackSysError as exc:
            raise RuntimeRefusal(str(exc), exc.status) from None
        self.states.start()
        return {"success": True, "message": f"tracking the system every "
                f"{self.service.settings.backoff_interval:g} s; usage from "
                f"{window['source']}: {window['detail']}", **window}

    def tracksys_report(self) -> dict[str, Any]:
        return {**self.states.report(), **self._usage(self.ops.tracksys.report)}

    def tracksys_stop(self) -> dict[str, Any]:
        usage = self._usage(self.ops.tracksys.stop)
        return {**self.states.stop(), **usage}

    def _usage(self, command: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """jsorc's tracksys report beside JSORC's states (None with the reason)."""
        try:
            return {"report": command()}
        except TrackSysError as exc:
            return {"report": None, "report_reason": str(exc)}

    def _placements(self) -> dict[str, Any]:
        """Every action's placement now, for a state."""
        out = {}
        for name, router in sorted(self.service.runtime.routers.items()):
            st = router.status()
            out[name] = {k: st[k] for k in ("mode", "placement", "desired", "transition")}
            if "remote" in st:
                out[name]["remote"] = st["remote"]
        return out

    def _readings(self, start: float, stop: float) -> tuple[list[dict[str, Any]] | None, str]:
        """Prometheus' rows for every process over [start, stop], or None and why."""
        url = self.ops.prometheus_url or self.ops.meta.url("prometheus")  # as tracksys reads
        if url is None:
            status = self.ops.meta.status().get("prometheus")
            if status is None:
                return None, ("no Prometheus kept alive: META_CONFIG keep_alive does not "
                              "name prometheus (JSORC's promon)")
            return None, f"Prometheus is {status['state']}: {status['message']}"
        try:
            query, close = prometheus_query(url, 5.0)
            try:
                rows = usage_from_prometheus(query, start, stop, self.ops.targets(),
                                             scrape_labels(url, 5.0))
            finally:
                close()
        except Exception as exc:  # requests, httpx and the client's own errors alike
            return None, f"Prometheus at {url} did not answer: {type(exc).__name__}: {exc}"
        span = max(stop - start, 1e-9)
        for r in rows:  # of one core, as tracksys reports it
            if r.cpu_seconds is not None:
                r.cpu_percent = round(100.0 * r.cpu_seconds / span, 2)
        return [asdict(r) for r in rows], ""

    # ----------------------------------------------------------------- loadtest

    def loadtest(self, test: str, experiment: str, mem: int, policy: str,
                 experiment_duration: float, eval_phase: float, perf_phase: float
                 ) -> dict[str, Any]:
        """JSORC's `synthetic_apps` load test (jaseci_serv/base/jsorc_loadtest.py): the app's
        actions all local, all remote, or placed by Evaluation; one client runs the walker
        back to back for `experiment_duration` s; the benchmark and the tracked calls."""
        return synthetic_apps(self, test=test, experiment=experiment, mem=mem, policy=policy,
                              duration_s=experiment_duration, eval_phase_s=eval_phase,
                              perf_phase_s=perf_phase)

    # ----------------------------------------------------------------- config

    def _current(self) -> MetaConfig:
        return self.pending or parse_meta_config({}, self.service.settings.as_dict())

    def _config_name(self, name: str) -> str:
        if name not in CONFIG_NAMES:
            raise RuntimeRefusal(f"unknown config {name!r}: jsorc keeps one, "
                                 f"{' (or '.join(CONFIG_NAMES)}), with the keys "
                                 f"{', '.join(MetaConfig.model_fields)}", 404)
        return name

    def config_get(self, name: str, do_check: bool) -> str:
        """The document as one JSON string (Jaseci keeps configs as strings): the one set
        and not applied yet, if any, else the settings in force."""
        self._config_name(name)
        return json.dumps(self._current().as_settings())

    def config_set(self, name: str, value: Any, do_check: bool) -> list[str]:
        self._config_name(name)
        with self._config_lock:
            return self._stage(name, value)

    def _stage(self, name: str, value: Any) -> list[str]:
        try:
            doc = parse_meta_config(value, self._current().as_settings(), name=name)
            # What the settings themselves refuse (the backend's keys), tried on a copy.
            apply_to(copy.deepcopy(self.service.settings), doc)
        except (MetaConfigError, ValueError) as exc:
            message = str(exc)
            if not isinstance(exc, MetaConfigError):
                message = f"{name} refused, nothing changed: {message}"
            raise RuntimeRefusal(message, getattr(exc, "status", 400)) from None
        if self.pending is None:
            self._staged_over = self._current().as_settings()
        self.pending = doc
        text = json.dumps(doc.as_settings())
        out = [f"Config of '{name}' to '{text}' set!",
               "It takes effect on `service refresh meta` (POST /js_admin/service_refresh "
               "{\"name\": \"meta\"}), which restarts the controller and the kept-alive "
               "services."]
        return out

    def _apply_pending(self) -> MetaConfig:
        with self._config_lock:
            doc = self._current()
            changed = None if self.pending is None else [
                k for k, v in doc.as_settings().items() if self._staged_over.get(k) != v]
            try:
                apply_to(self.service.settings, doc, only=changed)
            except ValueError as exc:  # the settings changed since config_set checked it
                raise RuntimeRefusal(f"META_CONFIG refused at refresh, nothing changed: "
                                     f"{exc}", getattr(exc, "status", 409)) from None
            self.pending = None
            self.service.apply_settings()
            # What is in force now (the document's changes over any `config set` since).
            return parse_meta_config({}, self.service.settings.as_dict())

    def close(self) -> None:
        self.states.close()

    def refresh(self) -> dict[str, Any]:
        """`jsorc_refresh`: apply the config and restart the controller with it."""
        doc = self._apply_pending()
        self.service.restart_controller()
        return {"success": True, "running_interval": self.service.settings.backoff_interval,
                "config": doc.as_settings()}

    def service_info(self, name: str) -> dict[str, Any]:
        if name == "meta":
            return {"success": True, "name": "meta",
                    "config": parse_meta_config({}, self.service.settings.as_dict())
                    .as_settings(),
                    "pending": self.pending.as_settings() if self.pending else None,
                    "policy": self.service.policy_name,
                    "controller": self.service.controller_info(),
                    "services": self.ops.meta.status()}
        services = self.ops.meta.status()
        kept = SERVICE_ALIASES.get(name, name)
        if kept not in services:
            raise RuntimeRefusal(f"unknown service {name!r} (services: meta, "
                                 f"{', '.join(sorted(services)) or 'none kept alive'})", 404)
        return {"success": True, **services[kept]}

    def service_refresh(self, name: str) -> dict[str, Any]:
        """`meta`: apply the META_CONFIG, restart the controller and every kept-alive
        service (JSORC's MetaService reset); a service's name: restart that one."""
        if name != "meta":
            answer: dict[str, Any] = self.ops.service_refresh(SERVICE_ALIASES.get(name, name))
            return answer
        doc = self._apply_pending()
        self.service.restart_controller()
        services = self.ops.restart_services()
        return {"success": True, "message": f"meta restarted: automation "
                f"{'on' if doc.automation else 'off'}, every {doc.backoff_interval:g} s, "
                f"policy {self.service.policy_name}; keep_alive "
                f"{', '.join(doc.keep_alive) or 'none'}",
                "config": doc.as_settings(), "services": services}

    # ----------------------------------------------------------------- login

    def login(self, address: str, email: Any, password: Any) -> tuple[int, dict[str, Any]]:
        """(HTTP status, answer) of `POST /user/token/`."""
        if self.credentials is None:
            return 503, {"success": False, "message": NOT_CONFIGURED}
        wait = self.limiter.wait_s(address)
        if wait:
            return 429, {"success": False, "retry_after_s": math.ceil(wait),
                         "message": f"too many failed logins from {address}: try again in "
                                    f"{math.ceil(wait)} s"}
        if not isinstance(email, str) or not isinstance(password, str) \
                or not email or not password:
            return 400, {"success": False, "message": "login needs email and password "
                         "(form fields or JSON strings)"}
        if not self.credentials.matches(email, password):
            self.limiter.failed(address)
            return 400, {"success": False,
                         "non_field_errors": ["Unable to log in with provided credentials."],
                         "message": "wrong email or password"}
        self.limiter.succeeded(address)
        return 200, {"token": self.token, "expiry": None}


# --------------------------------------------------------------------------- HTTP

Authorise = Callable[[Request], JSONResponse | None]
WalkerRun = Callable[[dict[str, Any]], dict[str, Any]]


async def _fields(request: Request) -> dict[str, Any]:
    """The body as a dict: a JSON object (strict: jsorc_live.api_models), or a form
    (jsctl's login; Jaseci takes both). BadRequest names what is wrong."""
    raw = await request.body()
    if not raw.strip():
        return {}
    if request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"):
        try:
            pairs = urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True,
                                           strict_parsing=True)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"malformed form body: {exc}") from None
        return dict(pairs)
    return read_json_object(raw)


#: What each op answers, where it is not jsorc's `{"success": true, ...}` object.
ANSWERS: Mapping[str, type[BaseModel] | Mapping[str, Any]] = {
    "actions_config": m.ActionAnswer, "actions_load": m.ActionAnswer,
    "actions_status": m.ActionAnswer, "actions_unload": m.ActionAnswer,
    "actionpolicy_get": m.PolicyAnswer,
    "trackact_stop": {"type": "array", "items": {"type": "object"},
                      "description": "JSORC's: one entry per walker run"},
    "benchmark_report": {"type": "object", "description": "the report, bare"},
    "benchmark_stop": {"type": "object", "description": "the report, bare ({} when none "
                       "runs, or report false)"},
    "tracksys_start": {"type": "object"}, "tracksys_report": {"type": "object"},
    "tracksys_stop": {"type": "object"}, "loadtest": {"type": "object"},
    "config_get": {"type": "string", "description": "the META_CONFIG document as JSON text"},
    "config_set": {"type": "array", "items": {"type": "string"}},
    "walker_run": m.WalkerRunAnswer,
}

#: The statuses each op refuses with (beyond the body checks' and the token's).
REFUSALS: Mapping[str, tuple[int, ...]] = {
    "actions_config": (404, 409), "actions_load": (404, 409, 422),
    "actions_status": (404,), "actions_unload": (404, 409), "actionpolicy_set": (404,),
    "trackact_stop": (409,), "benchmark_report": (409,), "benchmark_stop": (409,),
    "tracksys_start": (409, 502), "tracksys_report": (409, 502), "tracksys_stop": (409, 502),
    "loadtest": (404, 409, 422, 502), "refresh": (409,), "config_get": (404,),
    "config_set": (404, 409), "service_info": (404,), "service_refresh": (404, 409, 504),
    "walker_run": (404, 409, 502, 503),
}


def add_routes(app: FastAPI, api: JaseciApi, *, authorised: Authorise,
               walker_run: WalkerRun, pools: Pools) -> list[Operation]:
    """Jaseci's paths on `app`: every op of `OPS` and the login, each with and without the
    trailing slash; their documentation. Admin ops need the token (`authorised`) and run on
    the admin pool; /js/walker_run is as public as jsorc's /walker_run (and runs on the
    walker pool), but a token that is sent must be right."""
    def endpoint(op: Op) -> Callable[[Request], Any]:
        method = getattr(api, op.method) if op.prefix == ADMIN else None

        async def run(request: Request) -> Response:
            if op.prefix == ADMIN or request.headers.get("authorization"):
                denied = authorised(request)
                if denied is not None:
                    return denied
            try:
                kwargs = coerce_args(op, await _fields(request))
            except BadRequest as exc:
                return refuse(400, str(exc))
            except RuntimeRefusal as exc:
                return refuse(exc.status, str(exc))
            if method is None:  # walker_run: jsorc's own handler, on the walker pool
                return await run_handler(pools, True, op.path, walker_run,
                                         {"name": kwargs["name"], "ctx": kwargs["ctx"]})
            return await run_handler(pools, False, op.path, method, **kwargs)

        return run

    async def login(request: Request) -> Response:
        try:
            body = await _fields(request)
        except BadRequest as exc:
            return refuse(400, str(exc))
        address = request.client.host if request.client else "unknown"
        status, answer = api.login(address, body.get("email"), body.get("password"))
        headers = ({"Retry-After": str(answer["retry_after_s"])} if status == 429 else None)
        return JSONResponse(answer, status_code=status, headers=headers)

    docs = []
    for op in OPS.values():
        handler = endpoint(op)
        for path in (op.path, op.path + "/"):
            app.add_api_route(path, handler, methods=["POST"], include_in_schema=False)
        walker = op.prefix != ADMIN
        docs.append(Operation(
            op.path, f"Jaseci's {op.name}", ANSWERS.get(op.method, m.Answer),
            request_schema(op), REFUSALS.get(op.method, ()),
            auth=Auth.OPTIONAL if walker else Auth.ADMIN,
            headers={503: RETRY_AFTER} if walker else {}, tags=("jaseci",)))
    for path in ("/user/token", "/user/token/"):
        app.add_api_route(path, login, methods=["POST"], include_in_schema=False)
    docs.append(Operation("/user/token/", "Jaseci's login: the admin token", m.TokenAnswer,
                          m.Login, (429, 503), auth=Auth.NONE, forms=True,
                          headers={429: RETRY_AFTER}, tags=("jaseci",)))
    return docs
