"""`jsorc loadtest` against a real `jsorc serve`: closed loop and trace replay."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pandas as pd
import pytest

from jsorc_live import cli
from jsorc_live.runtime import CALL_COLUMNS
from tests.jsorc_live.test_api_cli import TOKEN, served  # noqa: F401  (the server fixture)


def jsorc(url: str, *argv: str) -> int:
    return cli.main([*argv, "--server", url, "--token", TOKEN])


@pytest.fixture(scope="module")
def loaded(served: str) -> str:  # noqa: F811
    for action in ("bi_enc", "tfm_ner"):
        assert jsorc(served, "actions", "config", action, "jsorc_live.actions.config") == 0
        assert jsorc(served, "actions", "load", action, "-mode", "module") == 0
    return served


def test_closed_loop_clients_report_and_keep_the_call_trace(
        loaded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    out = tmp_path / "lt"
    code = jsorc(loaded, "loadtest", "--app", "restaurant_chatbot", "--clients", "2",
                 "--duration", "3", "--out", str(out), "--json")
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == "closed" and summary["failed"] == 0
    assert summary["walker_runs"] >= 4
    stats = summary["benchmark"]["walker_run"]["restaurant_chatbot"]
    assert stats["throughput"] > 0 and stats["average_latency"] > 0
    calls = pd.read_parquet(out / "calls.parquet")
    assert list(calls.columns) == list(CALL_COLUMNS)
    assert len(calls) == summary["calls_tracked"] >= 2 * summary["walker_runs"] - 2
    assert set(calls["action"]) == {"bi_enc", "tfm_ner"} and calls["ok"].all()
    requests = pd.read_parquet(out / "requests.parquet")
    assert len(requests) == summary["walker_runs"] and requests["ok"].all()
    assert json.loads((out / "report.json").read_text())["walker_runs"] == len(requests)


def test_a_trace_replays_every_arrival_at_its_time(
        loaded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "arrivals.csv"
    times = [0.1 * i for i in range(12)]
    trace.write_text("ts,app\n" + "".join(f"{t + 100:.3f},restaurant_chatbot\n" for t in times))
    capsys.readouterr()
    code = jsorc(loaded, "loadtest", "--app", "restaurant_chatbot", "--trace", str(trace),
                 "--duration", "5", "--json")
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == "trace" and summary["walker_runs"] == 12
    assert summary["failed"] == 0


def test_bad_input_exits_2_naming_it(loaded: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    missing = tmp_path / "nope.csv"
    assert jsorc(loaded, "loadtest", "--app", "restaurant_chatbot", "--trace", str(missing)) == 2
    assert "nope.csv" in capsys.readouterr().err
    assert jsorc(loaded, "loadtest", "--app", "restaurant_chatbot", "--clients", "0") == 2
    assert "--clients must be >= 1, got 0" in capsys.readouterr().err


def test_remote_calls_to_jsorc_servers_split_service_from_network(
        served: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    assert jsorc(served, "actions", "config", "cl_summer", "jsorc_live.actions.config") == 0
    assert jsorc(served, "actions", "load", "cl_summer", "-mode", "remote") == 0
    deadline = __import__("time").monotonic() + 60
    while True:  # remote loads answer at once: wait for READY (bounded)
        capsys.readouterr()
        assert jsorc(served, "actions", "status", "cl_summer", "--json") == 0
        status = json.loads(capsys.readouterr().out)["action_status"]
        if status["remote"]["status"] == "READY":
            break
        assert __import__("time").monotonic() < deadline, status
        __import__("time").sleep(0.2)
    if jsorc(served, "actions", "status", "bi_enc") != 0:
        jsorc(served, "actions", "config", "bi_enc", "jsorc_live.actions.config")
    out = tmp_path / "calls.parquet"
    assert jsorc(served, "trackact", "start") == 0
    for _ in range(5):
        assert jsorc(served, "walker", "run", "discussion_analysis") == 0
    assert jsorc(served, "trackact", "stop", "--out", str(out)) == 0
    calls = pd.read_parquet(out)
    remote = calls[(calls["action"] == "cl_summer") & (calls["placement"] == "remote")]
    assert len(remote) == 5 and remote["ok"].all()
    # The server's own time for the action, and the rest of the round trip as network.
    assert (remote["service_ms"] > 0).all() and (remote["network_ms"] >= 0).all()
    assert (remote["service_ms"] + remote["network_ms"] <= remote["latency_ms"] + 1e-6).all()


def admin(url: str, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(url + path, json=body, headers={"Authorization": f"token {TOKEN}"},
                      timeout=10.0)


def test_a_load_test_leaves_a_users_benchmark_and_trackact_sessions_running(
        loaded: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert admin(loaded, "/jsorc/benchmark/start", {}).status_code == 200
    assert admin(loaded, "/jsorc/trackact/start", {}).status_code == 200
    capsys.readouterr()
    code = jsorc(loaded, "loadtest", "--app", "restaurant_chatbot", "--clients", "1",
                 "--duration", "2", "--json")
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    runs = summary["benchmark"]["walker_run"]["restaurant_chatbot"]
    assert summary["walker_runs"] >= 2 and runs["throughput"] > 0
    # Both sessions still run and hold the load test's work, which the user asked for.
    report = admin(loaded, "/jsorc/benchmark/stop", {})
    assert report.status_code == 200
    users = report.json()["report"]["walker_run"]["restaurant_chatbot"]
    assert users["throughput"] > 0
    tracked = admin(loaded, "/jsorc/trackact/stop", {}).json()
    assert len(tracked["calls"]) >= summary["calls_tracked"] > 0 and tracked["lost"] == 0


def test_the_benchmark_window_refuses_a_cursor_or_start_from_the_future(loaded: str) -> None:
    now = admin(loaded, "/jsorc/benchmark/window", {}).json()
    assert set(now) >= {"cursor", "now"} and now.get("report") is None
    ahead = admin(loaded, "/jsorc/benchmark/window", {"since": now["cursor"] + 5})
    assert ahead.status_code == 422 and "past the request log's cursor" in ahead.text
    later = admin(loaded, "/jsorc/benchmark/window",
                  {"since": now["cursor"], "start": now["now"] + 3600})
    assert later.status_code == 422 and "later than the runtime's clock" in later.text
    bad = admin(loaded, "/jsorc/benchmark/window", {"since": -1})
    assert bad.status_code == 400 and "since" in bad.text  # the body is malformed
    empty = admin(loaded, "/jsorc/benchmark/window", {"since": now["cursor"]}).json()
    assert empty["report"]["walker_run"] == {"all": {
        "throughput": None, "average_latency": None, "50th_latency": None,
        "90th_latency": None, "95th_latency": None, "99th_latency": None}}  # no runs, no span
