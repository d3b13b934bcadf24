"""The metrics jsorc_live.metrics adds to /metrics: the runtime's call latency histogram by
action and placement, its placements, its walker runs, the kept-alive services' states, and the
HTTP bytes every server counts."""

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

from jsorc_live.metrics import HttpByteCounters, HttpBytes, RuntimeMetrics, ServiceMetrics
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
    registry.register(RuntimeMetrics(SimpleNamespace(calls=calls, requests=RowLog(),
                                                     routers=routers)))
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


def test_walker_runs_by_app_and_outcome_and_their_latency_counted_once() -> None:
    requests = RowLog()
    requests.append((0.0, 0, "early", 5.0, True, ""))  # before the collector: not counted
    registry = CollectorRegistry()
    registry.register(RuntimeMetrics(SimpleNamespace(calls=RowLog(), requests=requests,
                                                     routers={})))
    runs = [("chat", 3.0, True), ("chat", 40.0, True), ("chat", 900.0, True),
            ("chat", 12.0, False), ("search", 2000.0, True)]
    for rid, (app, latency_ms, ok) in enumerate(runs, 1):
        requests.append((float(rid), rid, app, latency_ms, ok, "" if ok else "boom"))
    first = samples(registry)
    assert samples(registry) == first  # a second scrape: the same runs, counted once
    for app, ok in (("chat", "true"), ("chat", "false"), ("search", "true")):
        expected = sum(1 for a, _, good in runs if a == app and str(good).lower() == ok)
        assert first[("jsorc_walker_runs_total", (("app", app), ("ok", ok)))] == expected
    assert ("jsorc_walker_runs_total", (("app", "early"), ("ok", "true"))) not in first

    def bucket(app: str, le: str) -> float:
        return first[("jsorc_walker_latency_seconds_bucket", (("app", app), ("le", le)))]

    chat_ok = [ms / 1000 for a, ms, ok in runs if a == "chat" and ok]  # failed: no latency
    for le in ("0.001", "0.005", "0.05", "1.0", "+Inf"):
        bound = math.inf if le == "+Inf" else float(le)
        assert bucket("chat", le) == sum(1 for s in chat_ok if s <= bound), le
    assert first[("jsorc_walker_latency_seconds_sum", (("app", "chat"),))] == \
        pytest.approx(sum(chat_ok))
    assert bucket("search", "1.0") == 0 and bucket("search", "2.5") == 1


def test_service_state_is_one_for_the_state_each_service_is_in() -> None:
    status: dict[str, dict[str, object]] = {
        "prometheus": {"state": "READY", "restarts": 2},
        "redis": {"state": "BACKOFF", "restarts": 5},
        "mail": {"state": "UNKNOWN"},  # keep_alive named what jsorc does not know: no restarts
    }
    states = ["STARTING", "READY", "BACKOFF", "UNKNOWN"]
    registry = CollectorRegistry()
    registry.register(ServiceMetrics(lambda: status, states))
    got = samples(registry)
    for name, row in status.items():
        for state in states:
            key = ("jsorc_service_state", (("service", name), ("state", state)))
            assert got[key] == (1.0 if state == row["state"] else 0.0), key
    assert got[("jsorc_service_restarts_total", (("service", "redis"),))] == 5
    assert ("jsorc_service_restarts_total", (("service", "mail"),)) not in got
    status["redis"] = {"state": "FAILED", "restarts": 6}  # a state the list did not name
    got = samples(registry)
    assert got[("jsorc_service_state", (("service", "redis"), ("state", "FAILED")))] == 1
    assert got[("jsorc_service_state", (("service", "redis"), ("state", "BACKOFF")))] == 0


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
