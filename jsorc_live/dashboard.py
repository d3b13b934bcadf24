"""The operators' dashboard at /dashboard, on the same host and port as `jsorc serve`.

    GET  /dashboard                  the page (or the login form)
    POST /dashboard/login            token=T (a form): sets the cookie, back to /dashboard
    POST /dashboard/logout           clears the cookie
    GET  /dashboard/data?window_s=S  the charts, decisions, placements and services (JSON)
    GET  /dashboard/static/NAME      the page's script and styles, and uPlot (vendored)

Read access by the admin token or the viewer token (`jsorc serve --viewer-token`,
JSORC_VIEWER_TOKEN). The viewer token opens these routes only: the admin API checks the admin
token alone (api_routes.token_check). A token is entered once in the login form; the cookie
then holds not the token but an HMAC of it (so a cookie that leaks opens the dashboard, never
the admin API), scoped to the path /dashboard, HttpOnly and SameSite=Strict. Scripts and
tools may send `Authorization: token T` to /dashboard/data instead. Every comparison is
constant-time. A wrong token is a 401 page; a bad window is a 400 answer naming it.

/dashboard/data runs on a pool of its own (DATA_THREADS, no queue: a 503 "busy, try again"
when full), never on the admin pool, so viewers polling while Prometheus hangs cannot hold
the threads the admin API answers on; each window's answer is kept for CACHE_S (the page
polls every 2 s, so many open pages cost about one answer), and the Prometheus queries of one
answer share one deadline (PROMETHEUS_DEADLINE_S).

Every page is plain HTML with no inline script or style, under `Content-Security-Policy:
default-src 'self'`: the page works without internet, since its script (static/dashboard.js)
and uPlot (static/uPlot.iife.min.js, MIT, version in static/VENDORED) come from the package.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from jsorc_live.api_models import plain
from jsorc_live.api_schema import RETRY_AFTER, Auth, Operation
from jsorc_live.dashboard_data import MAX_WINDOW_S, WINDOWS_S, Sampler, prometheus_charts

if TYPE_CHECKING:
    from jsorc_live.api import JsorcService
    from jsorc_live.ops import Ops

__all__ = ["CACHE_S", "COOKIE", "CSP", "DATA_OPERATION", "DATA_THREADS", "PROMETHEUS_DEADLINE_S",
           "Dashboard", "DashboardAccess", "DataPool", "mount"]

COOKIE = "jsorc_dashboard"
CSP = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
PATH = "/dashboard"
#: The files /dashboard/static/ serves, with their media types; nothing else is served.
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css",
          "uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}
#: The decisions rows the data answer carries at most (the newest in the window).
MAX_DECISIONS = 500
MIN_WINDOW_S = 10.0
#: Threads that compute /dashboard/data (its own pool, not the admin API's); no queue.
DATA_THREADS = 2
#: Seconds an answer is reused for the same window.
CACHE_S = 2.0
#: Seconds all the Prometheus range queries of one answer may take together.
PROMETHEUS_DEADLINE_S = 3.0
#: /dashboard/data in the OpenAPI document (the HTML pages and assets are not API). Its
#: `window_s` query parameter (10..7200 s, default 300) is read by the route itself. The
#: viewer token opens it as well as the admin token (Auth.VIEWER).
DATA_OPERATION = Operation(PATH + "/data", "the dashboard's series, decisions, placements and "
                           "services (the admin token, the viewer token or the cookie)",
                           {"type": "object"}, refusals=(400, 503), auth=Auth.VIEWER,
                           method="get", headers={503: RETRY_AFTER}, tags=("dashboard",))


@dataclass(frozen=True)
class DashboardAccess:
    """Who may read the dashboard: the admin token, and the viewer token when there is one."""

    admin_token: str
    viewer_token: str | None = None

    def __post_init__(self) -> None:
        if not self.admin_token:
            raise ValueError("an admin token is required (set JSORC_TOKEN)")
        if self.viewer_token is not None and not self.viewer_token.strip():
            raise ValueError("the viewer token must not be empty (omit --viewer-token)")
        if self.viewer_token is not None and hmac.compare_digest(
                self.viewer_token.encode(), self.admin_token.encode()):
            raise ValueError("the viewer token must differ from the admin token")

    def _tokens(self) -> tuple[str, ...]:
        return (self.admin_token, *((self.viewer_token,) if self.viewer_token else ()))

    def token_ok(self, given: str) -> bool:
        """Constant-time: every known token is compared, whichever matches."""
        ok = False
        for token in self._tokens():
            ok |= hmac.compare_digest(given.encode(errors="replace"), token.encode())
        return ok

    @staticmethod
    def session(token: str) -> str:
        """The cookie's value for `token`: an HMAC keyed by the token, so the cookie
        cannot be turned back into the token."""
        return hmac.new(token.encode(), b"jsorc dashboard session v1",
                        hashlib.sha256).hexdigest()

    def session_ok(self, value: str) -> bool:
        ok = False
        for token in self._tokens():
            ok |= hmac.compare_digest(value.encode(errors="replace"),
                                      self.session(token).encode())
        return ok

    def request_ok(self, request: Request) -> bool:
        cookie = request.cookies.get(COOKIE)
        if cookie and self.session_ok(cookie):
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() in ("token", "bearer") and bool(given) \
            and self.token_ok(given.strip())


def _headers() -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    text = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title>"
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="stylesheet" href="{PATH}/static/uPlot.min.css">'
            f'<link rel="stylesheet" href="{PATH}/static/dashboard.css"></head>'
            f"<body>{body}</body></html>\n")
    return HTMLResponse(text, status_code=status, headers=_headers())


def login_page(message: str = "", status: int = 200) -> HTMLResponse:
    note = f'<p class="error" id="login-error">{html.escape(message)}</p>' if message else ""
    return _page("jsorc dashboard: sign in", f"""
<main class="login"><h1>jsorc dashboard</h1>{note}
<form method="post" action="{PATH}/login" id="login">
<label>admin or viewer token <input type="password" name="token" id="token"
 autocomplete="current-password" required autofocus></label>
<button type="submit">open</button></form>
<p class="hint">The token is kept in a cookie for this path only.</p></main>""", status)


def dashboard_page() -> HTMLResponse:
    options = "".join(f'<option value="{w}"{" selected" if w == WINDOWS_S[0] else ""}>'
                      f"{w // 60 if w < 3600 else w // 3600} {'min' if w < 3600 else 'h'}"
                      f"</option>" for w in WINDOWS_S)
    return _page("jsorc dashboard", f"""
<header><h1>jsorc dashboard</h1>
<label>window <select id="window">{options}</select></label>
<span id="updated" class="muted">loading…</span>
<form method="post" action="{PATH}/logout"><button type="submit">sign out</button></form>
</header>
<main>
<section><h2>placements now</h2><table id="actions"><thead><tr><th>action</th>
<th>placement</th><th>desired</th><th>ready</th><th>moving</th></tr></thead><tbody></tbody>
</table></section>
<section id="charts"></section>
<section><h2>policy decisions</h2><p id="policy" class="muted"></p>
<table id="decisions"><thead><tr><th>time</th><th>action</th><th>from</th><th>to</th>
<th>source</th><th>reason</th><th>error</th></tr></thead><tbody></tbody></table></section>
<section><h2>kept-alive services</h2><table id="services"><thead><tr><th>service</th>
<th>state</th><th>restarts</th><th>last error</th><th>message</th></tr></thead>
<tbody></tbody></table></section>
<p id="sources" class="muted"></p>
</main>
<script src="{PATH}/static/uPlot.iife.min.js"></script>
<script src="{PATH}/static/dashboard.js"></script>""")


def window_of(raw: str | None) -> float:
    """The window in seconds from the query string (default the shortest offered)."""
    if raw is None:
        return float(WINDOWS_S[0])
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"window_s must be a number of seconds, got {raw[:40]!r}") from None
    if not math.isfinite(value) or not MIN_WINDOW_S <= value <= MAX_WINDOW_S:
        raise ValueError(f"window_s must be between {MIN_WINDOW_S:g} and {MAX_WINDOW_S:g} "
                         f"seconds, got {raw[:40]!r}")
    return value


def service_rows(status: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The kept-alive services as the page's rows: name, state, restarts, last error."""
    rows = []
    for name, s in sorted(status.items()):
        failing = [e.get("detail", "") for e in s.get("events", [])
                   if e.get("state") in ("BACKOFF", "MISSING", "UNKNOWN")]
        last_error = s.get("last_error") or (failing[-1] if failing else "")
        if not last_error and s.get("state") in ("MISSING", "UNKNOWN"):
            last_error = s.get("message", "")
        rows.append({"name": name, "state": s.get("state"), "restarts": s.get("restarts", 0),
                     "last_error": str(last_error or ""), "message": s.get("message", "")})
    return rows


class Dashboard:
    """The data behind the page: the sampler's series, the controller's decisions, the
    routers' placements, the kept-alive services and, when one answers, Prometheus."""

    def __init__(self, service: JsorcService, ops: Ops, sampler: Sampler | None = None) -> None:
        self.service = service
        self.ops = ops
        self.sampler = sampler or Sampler(service.runtime, service.backend)

    def start(self) -> None:
        self.sampler.sample()  # the first point at once, not one interval later
        self.sampler.start()

    def close(self) -> None:
        self.sampler.close()

    def prometheus_url(self) -> str | None:
        return self.ops.prometheus_url or self.ops.meta.url("prometheus")

    def data(self, window_s: float) -> dict[str, Any]:
        runtime = self.service.runtime
        wall, now = time.time(), runtime.now()
        offset = wall - now  # runtime seconds -> Unix seconds
        charts = [c.as_dict() for c in self.sampler.charts(window_s)]
        prometheus: dict[str, Any] = {"url": None, "error": None}
        url = self.prometheus_url()
        if url:
            prometheus["url"] = url
            try:
                charts += [c.as_dict() for c in prometheus_charts(
                    url, wall - window_s, wall, deadline_s=PROMETHEUS_DEADLINE_S)]
            except Exception as exc:  # httpx, JSON or Prometheus' own refusal alike
                prometheus["error"] = f"{type(exc).__name__}: {exc}"
        else:
            prometheus["error"] = "no Prometheus: keep_alive does not name prometheus, and " \
                                  "no --prometheus-url"
        decisions = [dict(row, time=row["ts"] + offset)
                     for row in list(self.service.controller.decisions)
                     if row["ts"] >= now - window_s][-MAX_DECISIONS:]
        actions = []
        for name, router in sorted(runtime.routers.items()):
            placement, desired, transition = router.state()
            actions.append({"name": name, "placement": str(placement),
                            "desired": str(desired), "ready": router.replicas_ready,
                            "transition": transition})
        answer: dict[str, Any] = plain({
            "success": True, "now": wall, "window_s": window_s,
            "sample_s": self.sampler.sample_s, "charts": charts, "decisions": decisions,
            "actions": actions, "policy": self.service.policy_name,
            "automation": self.service.settings.automation,
            "services": service_rows(self.ops.meta.status()), "prometheus": prometheus})
        return answer


class DataPool:
    """The data answers: `threads` at a time and no queue (None when full), each window's
    answer reused for `cache_s`. Touched from the event loop only: no lock."""

    def __init__(self, compute: Callable[[float], dict[str, Any]], *,
                 threads: int = DATA_THREADS, cache_s: float = CACHE_S) -> None:
        self.compute = compute
        self.cache_s = cache_s
        self._limiter = CapacityLimiter(threads)
        self._threads = threads
        self._running = 0
        self._cache: dict[float, tuple[float, dict[str, Any]]] = {}

    async def answer(self, window_s: float) -> dict[str, Any] | None:
        now = time.monotonic()
        hit = self._cache.get(window_s)
        if hit is not None and now - hit[0] < self.cache_s:
            return hit[1]
        if self._running >= self._threads:
            return None
        self._running += 1
        try:
            answer = await anyio.to_thread.run_sync(self.compute, window_s,
                                                    limiter=self._limiter)
        finally:
            self._running -= 1
        now = time.monotonic()
        # Any window in range may be asked for: only the fresh entries are kept.
        self._cache = {w: e for w, e in self._cache.items() if now - e[0] < self.cache_s}
        self._cache[window_s] = (now, answer)
        return answer


def mount(app: FastAPI, service: JsorcService, ops: Ops, *, token: str,
          viewer_token: str | None = None) -> Dashboard:
    """Add the /dashboard routes to `app`; the Dashboard (its `start`/`close` go in the
    app's lifespan). `token` is the admin token, `viewer_token` the read-only one."""
    access = DashboardAccess(token, viewer_token)
    dashboard = Dashboard(service, ops)
    pool = DataPool(dashboard.data)
    files = resources.files("jsorc_live") / "static"
    static = {name: (files / name).read_bytes() for name in STATIC}

    async def page(request: Request) -> Response:
        if access.request_ok(request):
            return dashboard_page()
        if request.cookies.get(COOKIE):
            return login_page("the saved token is no longer valid: enter it again", 401)
        return login_page()

    async def login(request: Request) -> Response:
        try:
            form = parse_qs((await request.body()).decode("utf-8"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            return login_page("the form could not be read: send token=T as a form", 400)
        given = form.get("token", [""])[0].strip()
        if not given:
            return login_page("enter the admin or the viewer token", 400)
        if not access.token_ok(given):
            return login_page("wrong token", 401)
        answer = RedirectResponse(PATH, status_code=303, headers=_headers())
        answer.set_cookie(COOKIE, access.session(given), path=PATH, httponly=True,
                          samesite="strict")
        return answer

    async def logout(request: Request) -> Response:
        answer = RedirectResponse(PATH, status_code=303, headers=_headers())
        answer.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")
        return answer

    async def data(request: Request) -> Response:
        if not access.request_ok(request):
            return JSONResponse({"success": False, "message": "dashboard token required: "
                                 "sign in at /dashboard or send Authorization: token T"},
                                status_code=401, headers=_headers())
        try:
            window_s = window_of(request.query_params.get("window_s"))
        except ValueError as exc:
            return JSONResponse({"success": False, "message": str(exc)}, status_code=400,
                                headers=_headers())
        answer = await pool.answer(window_s)
        if answer is None:
            return JSONResponse({"success": False, "message": f"the dashboard is busy (all "
                                 f"{DATA_THREADS} of its threads answer other viewers): try "
                                 "again in a second"}, status_code=503,
                                headers={**_headers(), "Retry-After": "1"})
        return JSONResponse(answer, headers=_headers())

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static:
            return Response("not found", status_code=404, media_type="text/plain",
                            headers=_headers())
        headers = {**_headers(), "Cache-Control": "max-age=3600"}
        return Response(static[name], media_type=STATIC[name], headers=headers)

    app.add_api_route(PATH, page, methods=["GET"], include_in_schema=False)
    app.add_api_route(PATH + "/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route(PATH + "/login", login, methods=["POST"], include_in_schema=False)
    app.add_api_route(PATH + "/logout", logout, methods=["POST"], include_in_schema=False)
    app.add_api_route(PATH + "/data", data, methods=["GET"], include_in_schema=False)
    app.add_api_route(PATH + "/static/{name}", asset, methods=["GET"], include_in_schema=False)
    return dashboard
