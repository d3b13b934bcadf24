"""The metrics jsorc_live.metrics adds to /metrics: the runtime's call latency histogram by
action and placement, its placements, and the HTTP bytes every server counts."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from jsorc_live.metrics import HttpByteCounters, HttpBytes, RuntimeMetrics
from jsorc_live.runtime import RowLog
from policies import Placement


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def call(action: str, placement: str, latency_ms: float, ok: bool = True) -> tuple[object, ...]:
    return (0.0, 1, "app", action, placement, -1, 0.0, 0.0, 0.0, latency_ms, ok, False, "")


def test_latency_histogram_by_action_and_placement_counts_each_call_once() -> None:
    calls = RowLog()
    calls.append(call("old", "local", 1.0))  # before the collector: not counted
    routers = {"bi_enc": SimpleNamespace(placement=Placement.remote(2),
                                         desired=Placement.remote(3)),
               "use_qa": SimpleNamespace(placement=Placement.local(),
                                         desired=Placement.local())}
    registry = CollectorRegistry()
    registry.register(RuntimeMetrics(SimpleNamespace(calls=calls, routers=routers)))
    for row in (call("bi_enc", "remote", 30.0), call("bi_enc", "remote", 300.0),
                call("bi_enc", "local", 4.0), call("bi_enc", "", math.nan, ok=False)):
        calls.append(row)
    first = samples(registry)
    second = samples(registry)  # a second scrape: the same calls, counted once
    assert first == second

    def bucket(action: str, placement: str, le: str) -> float:
        return first[("jsorc_call_latency_seconds_bucket",
                      (("action", action), ("le", le), ("placement", placement)))]

    assert bucket("bi_enc", "remote", "0.025") == 0
    assert bucket("bi_enc", "remote", "0.05") == 1
    assert bucket("bi_enc", "remote", "0.5") == 2 == bucket("bi_enc", "remote", "+Inf")
    assert bucket("bi_enc", "local", "0.005") == 1
    assert first[("jsorc_call_latency_seconds_sum",
                  (("action", "bi_enc"), ("placement", "remote")))] == pytest.approx(0.33)
    assert not any(k[0].startswith("jsorc_call") and ("action", "old") in k[1] for k in first)
    assert not any(("placement", "") in k[1] for k in first)  # failed calls have no latency
    placed = {k[1]: v for k, v in first.items() if k[0] == "jsorc_action_placement"}
    assert placed[(("action", "bi_enc"), ("placement", "remote"))] == 1
    assert placed[(("action", "bi_enc"), ("placement", "local"))] == 0
    assert placed[(("action", "use_qa"), ("placement", "local"))] == 1
    assert first[("jsorc_replicas_desired", (("action", "bi_enc"),))] == 3
    assert first[("jsorc_replicas_desired", (("action", "use_qa"),))] == 0


def test_http_bytes_counts_what_a_server_receives_and_sends() -> None:
    registry = CollectorRegistry()

    async def echo(request: Request) -> Response:
        return PlainTextResponse((await request.body()) * 2)

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])],
                    middleware=[Middleware(HttpBytes, counters=HttpByteCounters(registry))])

    async def post() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.post("/echo", content=b"x" * 1000)).text

    assert asyncio.run(post()) == "x" * 2000
    got = samples(registry)
    received = got[("jsorc_http_received_bytes_total", ())]
    sent = got[("jsorc_http_sent_bytes_total", ())]
    assert 1000 < received < 1400  # the body, and the request line and headers
    assert 2000 < sent < 2300
