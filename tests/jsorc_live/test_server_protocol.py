"""jsorc's action server over real HTTP: a uvicorn process per server on a free 127.0.0.1
port, driven with httpx. The protocol table is protocol_cases.py (the same one the Jaseci
interop test runs against Jaseci's own server)."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.jsorc_live.protocol_cases import CASES, EMPTY_BODY, Case
from tests.jsorc_live.servers import (
    SAMPLE,
    Server,
    free_port,
    jsorc_server_cmd,
    running,
    stop,
    wait_ready,
)
from tests.jsorc_live.test_registry import SAMPLE_SPEC


def send(server_url: str, case: Case) -> httpx.Response:
    headers = {"content-type": "application/json"} if case.body is not None else {}
    content = case.body.encode() if case.body is not None else None
    return httpx.request(case.method, server_url + case.path, content=content, headers=headers,
                         timeout=10)


def check(case: Case, response: httpx.Response) -> None:
    assert response.status_code == case.status, response.text
    content_type = response.headers["content-type"]
    if case.kind == "text":
        assert content_type.startswith("text/plain")
    else:
        assert content_type == "application/json"
    if case.kind == "json":
        assert response.json() == case.json
    elif case.kind == "detail":
        detail = response.json()["detail"]
        assert tuple(tuple(d["loc"]) for d in detail) == case.locs
        assert all({"loc", "msg", "type"} <= set(d) for d in detail)


def test_the_spec_lists_every_remote_action_and_alias(sample_server: Server) -> None:
    response = httpx.get(sample_server.url + "/jaseci_actions_spec/", timeout=10)
    assert response.status_code == 200
    assert response.json() == SAMPLE_SPEC
    assert list(response.json()) == list(SAMPLE_SPEC)  # signature order of definition


@pytest.mark.parametrize("case", [*CASES, EMPTY_BODY], ids=lambda c: c.id)
def test_protocol(sample_server: Server, case: Case) -> None:
    check(case, send(sample_server.url, case))


def test_an_action_that_raises_answers_500_with_the_exception_as_text(
    sample_server: Server,
) -> None:
    r = httpx.post(sample_server.url + "/boom/", json={"msg": "kaput"}, timeout=10)
    assert (r.status_code, r.text) == (500, "ValueError: kaput")
    assert r.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/jaseci_actions_spec", None), ("POST", "/double", {"x": 21}),
     ("POST", "/twice", {"x": 21})],
)
def test_a_path_without_its_slash_redirects_with_307_keeping_method_and_body(
    sample_server: Server, method: str, path: str, body: dict[str, int] | None
) -> None:
    with httpx.Client(timeout=10) as client:
        first = client.request(method, sample_server.url + path, json=body)
        assert first.status_code == 307  # never 301/302, which would turn a POST into a GET
        assert first.headers["location"] == sample_server.url + path + "/"
        followed = client.request(method, sample_server.url + path, json=body,
                                  follow_redirects=True)
    assert followed.status_code == 200
    assert followed.json() == (SAMPLE_SPEC if method == "GET" else 42)


def metric_samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_calls_by_outcome_and_time_them_per_action(sample_server: Server) -> None:
    ok = ("jsorc_action_calls_total", (("action", "demo.double"), ("outcome", "ok")))
    invalid = ("jsorc_action_calls_total", (("action", "demo.double"), ("outcome", "invalid")))
    error = ("jsorc_action_calls_total", (("action", "demo.boom"), ("outcome", "error")))
    count = ("jsorc_action_latency_seconds_count", (("action", "demo.double"),))
    slow = ("jsorc_action_latency_seconds_bucket", (("action", "demo.nap"), ("le", "0.1")))
    slow_count = ("jsorc_action_latency_seconds_count", (("action", "demo.nap"),))
    before = metric_samples(sample_server.url)
    with httpx.Client(base_url=sample_server.url, timeout=10) as client:
        for x in range(5):
            assert client.post("/double/", json={"x": x}).status_code == 200
        assert client.post("/twice/", json={"x": 1}).status_code == 200  # counted as double
        assert client.post("/double/", json={}).status_code == 422
        assert client.post("/boom/", json={}).status_code == 500
        assert client.post("/nap/", json={"seconds": 0.15}).status_code == 200
    after = metric_samples(sample_server.url)
    assert after[ok] - before[ok] == 6
    assert after[invalid] - before[invalid] == 1
    assert after[error] - before[error] == 1
    assert after[count] - before[count] == 7
    assert after[slow_count] - before[slow_count] == 1
    assert after[slow] - before[slow] == 0  # the 0.15 s nap is above the 0.1 s bucket
    assert after[("jsorc_action_in_flight", (("action", "demo.double"),))] == 0
    assert after[("process_resident_memory_bytes", ())] > 10e6
    assert ("jsorc_action_module_memory_bytes", (("module", "sample_actions"),)) in after


def test_calls_are_served_concurrently(sample_server: Server) -> None:
    def nap() -> dict[str, float]:
        r = httpx.post(sample_server.url + "/nap/", json={"seconds": 0.4}, timeout=10)
        r.raise_for_status()
        result: dict[str, float] = r.json()
        return result

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: nap(), range(4)))
    assert time.monotonic() - start < 1.2  # four 0.4 s naps one after another take 1.6 s
    assert max(r["peak"] for r in results) >= 2


# ----------------------------------------------------------- the process, started and stopped


def test_port_0_picks_a_free_port_prints_it_and_sigterm_stops_the_server_gracefully(
    tmp_path: Path,
) -> None:
    log = tmp_path / "server.log"
    cmd = jsorc_server_cmd(SAMPLE, 0, "--setup", '{"factor": 9}')
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while "at http://" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        line = log.read_text().splitlines()[0]
        assert line.startswith("jsorc action server: sample_actions at http://127.0.0.1:")
        url = line.split(" at ")[1].split()[0]
        wait_ready(url, proc, 30, log)
        assert httpx.post(url + "/factor/", json={}, timeout=10).json() == 9  # --setup applied
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, url + "/nap/", json={"seconds": 0.5}, timeout=10)
            nap = ("jsorc_action_in_flight", (("action", "demo.nap"),))
            deadline = time.monotonic() + 10
            while metric_samples(url)[nap] < 1:  # the call is being served
                assert time.monotonic() < deadline
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            assert in_flight.result().json()["slept"] == 0.5  # finished, not cut off
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert proc.wait(timeout=10) in (0, -signal.SIGTERM)
    finally:
        stop(proc)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no_such_module_xyz"], "cannot load no_such_module_xyz: action module "
                                 "'no_such_module_xyz' is not installed"),
        (["BROKEN"], "setup() parameters ['path'] have no default"),
        ([str(SAMPLE), "--setup", "[1]"], "--setup must be a JSON object"),
    ],
    ids=["not installed", "setup needs a parameter", "bad --setup"],
)
def test_a_server_that_cannot_start_exits_2_saying_why(
    tmp_path: Path, args: list[str], message: str
) -> None:
    broken = tmp_path / "broken_actions.py"
    broken.write_text(textwrap.dedent("""
        def setup(path):
            pass
    """))
    args = [str(broken) if a == "BROKEN" else a for a in args]
    cmd = [sys.executable, "-m", "jsorc_live.actions.server", *args, "--port", str(free_port())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert message in done.stderr


def test_a_busy_port_is_refused_with_exit_2(sample_server: Server) -> None:
    port = sample_server.url.rsplit(":", 1)[1]
    cmd = [sys.executable, "-m", "jsorc_live.actions.server", str(SAMPLE), "--port", port]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert f"cannot bind 127.0.0.1:{port}" in done.stderr


def test_an_example_module_served_by_name(tmp_path: Path) -> None:
    port = free_port()
    cmd = jsorc_server_cmd("jsorc_live.actions.examples.bi_enc", port,
                           "--setup", json.dumps({"memory_mb": 4}))
    with running(cmd, port, tmp_path / "bi_enc.log") as server:
        spec = httpx.get(server.url + "/jaseci_actions_spec/", timeout=10).json()
        assert spec["bi_enc.cos_sim_score"] == ["q", "a"]
        score = httpx.post(server.url + "/cos_sim_score/", json={"q": "hi", "a": "hello"},
                           timeout=10).json()
        assert isinstance(score, float) and -1 <= score <= 1
