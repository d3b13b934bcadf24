"""The operator's side of a running jsorc: keep-alive services, tracksys, the runtime's
process and latency metrics, and their admin commands.

`Ops.attach(app, service, registry)` (from api_routes.make_app) adds to the app: the
process collector, `RuntimeMetrics`, `ServiceMetrics` and `HttpBytes` (jsorc_live.metrics) on
its /metrics, and the routes (`routes()`) of

    POST /jsorc/tracksys/start | stop | report
    POST /jsorc/service/refresh {"name": N} | /jsorc/service/status

which make_app serves like its own (token, checked JSON, refusals, the admin pool).
`Ops.start` (at the app's start-up) runs the MetaService that keeps the META_CONFIG
`keep_alive` services alive (the built-ins and the META_CONFIG `services` table);
`Ops.close` (at shutdown) stops them. `serving` tells it the URL the runtime serves on, so
Prometheus can scrape it, applies `jsorc serve --keep-alive`, and gives the persistent
services (PostgreSQL) a data folder beside the server's state file. `Ops.database_url()` is
the kept-alive PostgreSQL's URL, for the runtime's state store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, ProcessCollector
from pydantic import BaseModel

from jsorc_live.api_models import Answer, Empty, ServiceName
from jsorc_live.api_schema import Handler, Operation, Route
from jsorc_live.children import state_path
from jsorc_live.meta_config import definitions_of
from jsorc_live.metrics import HttpByteCounters, HttpBytes, RuntimeMetrics, ServiceMetrics
from jsorc_live.runtime import RuntimeRefusal
from jsorc_live.service_kinds import ALIASES
from jsorc_live.services import MetaService, ScrapeTarget, ServiceError, State
from jsorc_live.tracksys import PodScope, TrackSys, TrackSysError

if TYPE_CHECKING:
    from jsorc_live.api import JsorcService

__all__ = ["Ops", "serving"]


class Ops:
    """Keep-alive services and tracksys of one JsorcService."""

    def __init__(self, service: JsorcService, *, runtime_url: str | None = None,
                 meta: Callable[..., MetaService] = MetaService,
                 scrape_interval_s: float = 1.0) -> None:
        self.service = service
        self.runtime_url = runtime_url
        self.services_dir: Path | None = None  # where persistent services keep their data

        def new_meta() -> MetaService:
            return meta(lambda: service.settings.keep_alive, self.targets,
                        defined=lambda: definitions_of(service.settings.services),
                        scrape_interval_s=scrape_interval_s, state_dir=self.services_dir)

        self._new_meta = new_meta
        self.meta = new_meta()
        # A Prometheus that runs beside jsorc (a cluster's: `serve --prometheus-url`); else
        # the kept-alive one.
        self.prometheus_url: str | None = None
        self.tracksys = TrackSys(self.targets, self._prometheus, pods=self._pods,
                                 why_no_prometheus=self._why_no_prometheus)

    @classmethod
    def attach(cls, app: FastAPI, service: JsorcService, registry: CollectorRegistry) -> Ops:
        """Ops for `service`, its metrics added to `registry` and its byte counting to
        `app` (its routes are `routes()`)."""
        ops = cls(service)
        ProcessCollector(registry=registry)
        registry.register(RuntimeMetrics(service.runtime))
        # ops.meta is replaced by restart_services: read it at each scrape.
        registry.register(ServiceMetrics(lambda: ops.meta.status(),
                                         [s.value for s in State]))
        app.add_middleware(HttpBytes, counters=HttpByteCounters(registry))
        app.state.jsorc_ops = ops
        return ops

    def start(self) -> None:
        self.meta.start()

    def use_services_dir(self, folder: Path) -> None:
        """Persistent services keep their data in `folder` (before `start`)."""
        self.services_dir = folder
        self.meta = self._new_meta()

    def database_url(self) -> str | None:
        """The kept-alive PostgreSQL's URL while it answers, else None."""
        return self.meta.database_url()

    def close(self) -> None:
        self.tracksys.close()
        self.meta.close()

    def restart_services(self) -> dict[str, dict[str, Any]]:
        """Stop every kept-alive service and start those `keep_alive` names again (JSORC's
        MetaService reset); their status."""
        old, self.meta = self.meta, self._new_meta()
        old.close()
        self.meta.start()
        return self.meta.status()

    # ----------------------------------------------------------------- targets

    def targets(self) -> list[ScrapeTarget]:
        """The runtime (this process) and every replica of every action: the ready ones
        the routers deal calls to (attached servers included) and the backend's own."""
        out = [ScrapeTarget(self.runtime_url or "", "runtime", pid=os.getpid())]
        backend = self.service.backend
        for name, router in sorted(self.service.runtime.routers.items()):
            pids = {r.url: r.pid for r in backend.replicas(name)} if backend else {}
            remote = router.status().get("remote") or {}
            for url in dict.fromkeys([*remote.get("replicas", []), *pids]):
                out.append(ScrapeTarget(url, "replica", name, pids.get(url)))
        return out

    def _prometheus(self) -> str | None:
        return self.prometheus_url or self.meta.url("prometheus")

    def _pods(self) -> PodScope | None:
        """With the kube backend, tracksys measures the pods of its namespace."""
        settings = self.service.settings
        return None if settings.kubernetes is None else PodScope(settings.namespace)

    def _why_no_prometheus(self) -> str:
        status = self.meta.status().get("prometheus")
        if status is None:
            return "no Prometheus configured: keep_alive does not name prometheus"
        return f"Prometheus is {status['state']}: {status['message']}"

    # ----------------------------------------------------------------- commands

    def routes(self) -> list[Route]:
        """The admin routes, for api_routes.make_app's table."""
        def r(path: str, summary: str, model: type[BaseModel], answer: type[BaseModel],
              handler: Handler, *refusals: int) -> Route:
            return Route(Operation(path, summary, answer, model, refusals, tags=("ops",)),
                         handler)

        return [
            r("/jsorc/tracksys/start", "start tracking the system's usage", Empty, Answer,
              lambda d: self._tracksys(self.tracksys.start), 409, 502),
            r("/jsorc/tracksys/stop", "stop tracking; the usage report", Empty, Answer,
              lambda d: self._tracksys(self.tracksys.stop), 409, 502),
            r("/jsorc/tracksys/report", "the usage report so far", Empty, Answer,
              lambda d: self._tracksys(self.tracksys.report), 409, 502),
            r("/jsorc/service/refresh", "restart a kept-alive service", ServiceName, Answer,
              lambda d: self.service_refresh(d["name"]), 404, 409, 504),
            r("/jsorc/service/status", "the kept-alive services", Empty, Answer,
              lambda d: self.service_status()),
        ]

    def _tracksys(self, command: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            answer = command()
        except TrackSysError as exc:
            raise RuntimeRefusal(str(exc), exc.status) from None
        if "processes" in answer:
            return {"success": True, "report": answer}
        return {"success": True, "message": f"tracking system metrics from "
                f"{answer['source']}: {answer['detail']}", **answer}

    def service_refresh(self, name: str) -> dict[str, Any]:
        name = ALIASES.get(name, name)  # JSORC's names (promon, jaseci-db), as keep_alive takes
        try:
            status = self.meta.refresh(name)
        except ServiceError as exc:
            raise RuntimeRefusal(str(exc), exc.status) from None
        return {"success": True, "message": f"{name} restarted: {status['message']}",
                "service": status}

    def service_status(self) -> dict[str, Any]:
        return {"success": True, "keep_alive": list(self.service.settings.keep_alive),
                "services": self.meta.status()}


def serving(app: FastAPI, host: str, port: int, keep_alive: str | None = None,
            prometheus_url: str | None = None, state_dir: str | Path | None = None) -> None:
    """`jsorc serve` is about to serve `app` on host:port: Prometheus scrapes it there,
    `--keep-alive a,b` sets the keep_alive config, `--prometheus-url` names a Prometheus
    that runs beside jsorc (tracksys reads it before any kept-alive one), and `state_dir`
    (`--state-dir`) holds the persistent services' data, one folder per address like the
    state file: `<state_dir>/<host>-<port>.services/<service>`."""
    ops: Ops = app.state.jsorc_ops
    if state_dir is not None:
        ops.use_services_dir(state_path(state_dir, host, port).with_suffix(".services"))
    if prometheus_url:
        ops.prometheus_url = prometheus_url.rstrip("/")
    scrape_host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    if ":" in scrape_host:
        scrape_host = f"[{scrape_host}]"
    ops.runtime_url = f"http://{scrape_host}:{port}"
    if keep_alive is not None:
        ops.service.settings.set("keep_alive", keep_alive)
