"""`jsorc loadtest`'s bounds, against a real `jsorc serve` on loopback.

`--duration` bounds a trace replay and a closed loop alike: nothing is sent after it, answers
are awaited `--grace` more, and what was cut off is counted (not sent, unfinished), never
dropped. The server here has 4 walker threads and a walker that naps, so what it can answer
is known: at most 4 runs per nap. A loadtest reads the action calls by cursor and leaves a
`trackact` session the user started running.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from jsorc_live import cli, loadtest
from jsorc_live.load_clients import UNFINISHED
from tests.jsorc_live.servers import jsorc_serving

TOKEN = "bounds-token"
THREADS = 4  # the server's walker threads: at most THREADS runs of a walker nap at once
NAP_S = 0.25
ADMIN_SLACK_S = 15.0  # the admin calls around the load (status, benchmark, calls, stop)


def jsorc(url: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([*argv, "--server", url, "--token", TOKEN])
    return code, out.getvalue(), err.getvalue()


def admin(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(url + path, json=body, headers={"Authorization": f"token {TOKEN}"},
                          timeout=30)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    with jsorc_serving(TOKEN, "--config", "tests.jsorc_live.lifecycle_actions",
                       "--walker-threads", str(THREADS), "--walker-queue", "5000",
                       "--shutdown-timeout", "1") as url:
        admin(url, "/jsorc/actions/load", {"name": "nap", "mode": "module"})
        for name, seconds in (("nap_short", NAP_S), ("nap_long", 3.0), ("nap_none", 0.0)):
            admin(url, "/jsorc/walker/set", {"name": name, "steps": [
                {"action": "nap", "function": "nap", "args": {"seconds": "seconds"},
                 "defaults": {"seconds": seconds}}]})
        yield url


def requests_trace(path: Path, times: np.ndarray[Any, np.dtype[np.float64]]) -> Path:
    pd.DataFrame({"ts": times + 1000.0, "app": "a"}).to_csv(path, index=False)
    return path


def test_an_overloaded_replay_stops_at_its_bound_and_counts_what_it_cut(
        served: str, tmp_path: Path) -> None:
    duration, grace, scale = 2.0, 1.0, 0.01
    # 400 arrivals a trace second, replayed 100 times faster: 40,000/s for 2 s, far past
    # what the client sends or the server (4 threads, 0.25 s naps: 16 runs/s) answers.
    times = np.arange(0.0, 1000.0, 1 / 400)
    trace = requests_trace(tmp_path / "trace.csv", times)
    due = int(np.count_nonzero((times - times[0]) * scale < duration))
    out = tmp_path / "lt"
    began = time.monotonic()
    code, stdout, stderr = jsorc(served, "loadtest", "--app", "nap_short", "--trace",
                                 str(trace), "--time-scale", str(scale), "--duration",
                                 str(duration), "--grace", str(grace), "--out", str(out),
                                 "--json")
    took = time.monotonic() - began
    assert code == 0, stderr
    assert took < duration + grace + ADMIN_SLACK_S
    summary = json.loads(stdout)
    client = summary["client"]
    assert client["offered"] == due == client["sent"] + client["not_sent"]
    assert client["not_sent"] > 0  # the client fell behind and stopped at the bound
    requests = pd.read_parquet(out / "requests.parquet")
    assert len(requests) == client["sent"] == summary["walker_runs"]
    unfinished = requests[requests["error"] == UNFINISHED]
    assert len(unfinished) == client["unfinished"] > 0
    assert unfinished["latency_ms"].isna().all() and not unfinished["ok"].any()
    # No more ok answers than the server's threads could give in duration + grace.
    capacity = THREADS * math.ceil((duration + grace) / NAP_S)
    assert int(requests["ok"].sum()) == client["ok"] <= capacity
    assert client["answered_per_s"] == pytest.approx(client["ok"] / duration, abs=1e-3)
    assert client["offered_per_s"] == pytest.approx(due / duration, abs=1e-3)
    # Said on stderr, in report.json and in run.json, with both rates.
    assert f"{client['offered_per_s']:g}/s offered" in stderr
    assert f"answered {client['answered_per_s']:g} walker runs/s" in stderr
    assert "behind the trace" in stderr
    report = json.loads((out / "report.json").read_text())
    record = json.loads((out / "run.json").read_text())
    assert report["warnings"] == record["warnings"] == summary["warnings"] != []
    assert record["trace_arrivals"] == due and record["grace_s"] == grace


def test_a_closed_loop_stops_waiting_at_duration_plus_grace(served: str) -> None:
    began = time.monotonic()
    code, stdout, stderr = jsorc(served, "loadtest", "--app", "nap_long", "--clients", "2",
                                 "--duration", "1", "--grace", "0.5", "--json")
    took = time.monotonic() - began
    assert code == 0, stderr
    assert took < 1.5 + ADMIN_SLACK_S and took < 3.0 + 1.0  # not the 3 s nap's end
    summary = json.loads(stdout)
    # Each client sent one run (3 s nap) at the start; neither answered within 1.5 s.
    assert summary["client"]["sent"] == 2 == summary["unfinished"]
    assert summary["client"]["ok"] == 0 and summary["failed"] == 0
    assert "answered 0 walker runs/s of the 2/s offered" in stderr


def test_a_replay_the_server_keeps_up_with_gives_no_warning(
        served: str, tmp_path: Path) -> None:
    times = np.arange(0.0, 2.0, 0.1)  # 10 runs/s of a walker that does not nap
    trace = requests_trace(tmp_path / "slow.csv", times)
    code, stdout, stderr = jsorc(served, "loadtest", "--app", "nap_none", "--trace",
                                 str(trace), "--duration", "3", "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["client"]["ok"] == len(times) and summary["warnings"] == []
    assert "warning" not in stderr


def test_a_users_trackact_session_runs_on_through_a_loadtest(
        served: str, tmp_path: Path) -> None:
    assert jsorc(served, "trackact", "start")[0] == 0
    mine = [admin(served, "/walker_run", {"name": "nap_none"})["request_id"]
            for _ in range(3)]
    out = tmp_path / "lt"
    code, _, stderr = jsorc(served, "loadtest", "--app", "nap_none", "--duration", "1",
                            "--out", str(out))
    assert code == 0, stderr
    theirs = pd.read_parquet(out / "calls.parquet")
    assert len(theirs) > 0 and not set(theirs["request_id"]) & set(mine)
    after = admin(served, "/walker_run", {"name": "nap_none"})["request_id"]
    code, stdout, stderr = jsorc(served, "trackact", "stop", "--json")
    assert code == 0, stderr  # still running: the loadtest did not end it
    tracked = {row["request_id"] for row in json.loads(stdout)["calls"]}
    # Everything since the user's start: their runs before and after, and the loadtest's.
    assert {*mine, after} | set(theirs["request_id"]) <= tracked


def test_a_loadtest_starts_no_trackact_session(served: str) -> None:
    assert jsorc(served, "loadtest", "--app", "nap_none", "--duration", "0.5")[0] == 0
    code, _, stderr = jsorc(served, "trackact", "stop")
    assert code == 2 and "trackact is not running" in stderr


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--grace", "-1", "--grace must be a number of seconds >= 0, got -1.0"),
    ("--time-scale", "0", "--time-scale: only with --trace (this is a closed loop)"),
    ("--stream", "a", "--stream: only with --trace"),
    ("--app", "nosuch", "--app 'nosuch': the server has no such walker (its walkers: "),
    ("--duration", "nan", "--duration must be a number of seconds > 0, got nan"),
])
def test_bad_bounds_exit_2_naming_the_value(served: str, flag: str, value: str,
                                             message: str) -> None:
    code, _, stderr = jsorc(served, "loadtest", "--app", "nap_none", flag, value)
    assert code == 2 and message in stderr


@pytest.mark.parametrize(("ok", "offered", "lag", "warned"), [
    (95, 100, 0.0, False),   # 95 % answered, on time
    (90, 100, 0.0, False),   # exactly the threshold
    (89, 100, 0.0, True),
    (100, 100, 2.5, True),   # all answered but the client fell behind the trace
    (0, 0, 0.0, False),      # nothing offered
])
def test_overload_warning_threshold(ok: int, offered: int, lag: float, warned: bool) -> None:
    client = {"offered": offered, "sent": offered, "ok": ok, "failed": offered - ok,
              "unfinished": 0, "not_sent": 0, "offered_per_s": offered / 10,
              "answered_per_s": ok / 10, "max_lag_s": lag}
    text = loadtest.overload_warning(client)
    assert (text is not None) == warned
    if text is not None:
        assert f"{ok / 10:g} walker runs/s of the {offered / 10:g}/s offered" in text


@pytest.mark.parametrize("calls,runs", [(0, 0), (12, 0), (0, 3), (7, 5)])
def test_lost_warning_names_what_the_servers_logs_dropped(calls: int, runs: int) -> None:
    tracked = {"calls": [], "cursor": 9, "lost": calls}
    report = {"success": True, "report": {"walker_run": {}, **({"requests_lost": runs}
                                                              if runs else {})}}
    text = loadtest.lost_warning(tracked, report)
    assert (text is None) == (calls == 0 and runs == 0)
    if text is not None:
        assert f"dropped {calls} calls and {runs} walker runs" in text


def test_a_replay_reads_the_trace_as_numpy_windows_cut_at_the_duration(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(0.0, 20.0, 5000))
    trace = requests_trace(tmp_path / "t.csv", rng.permutation(times))  # any row order
    args = argparse.Namespace(trace=str(trace), trace_format="auto", seed=0, time_scale=0.5,
                              duration=3.0)
    windows = list(loadtest._trace(args).windows())
    assert all(isinstance(w, np.ndarray) and w.dtype == np.float64 for w in windows)
    expected = (times - times[0]) * 0.5
    np.testing.assert_allclose(np.concatenate(windows), expected[expected < 3.0])


@pytest.mark.parametrize("streams,start,scale", [(["b"], 0.0, 1.0), (["a", "c"], 4.5, 0.5),
                                                  ([], 7.0, 2.0), (["c"], 19.0, 1.0)])
def test_a_replay_picks_streams_and_starts_into_the_trace(
        tmp_path: Path, streams: list[str], start: float, scale: float) -> None:
    rng = np.random.default_rng(5)
    times = np.sort(rng.uniform(0.0, 20.0, 3000))
    apps = rng.choice(["a", "b", "c"], size=times.size)
    path = tmp_path / "t.csv"
    pd.DataFrame({"ts": times + 50.0, "app": apps}).to_csv(path, index=False)
    args = argparse.Namespace(trace=str(path), trace_format="auto", seed=0, time_scale=scale,
                              duration=4.0, stream=streams, start=start, spread="uniform")
    got = np.concatenate([np.empty(0), *loadtest._trace(args).windows()])
    shifted = times - times[0]  # the trace's own clock starts at its first arrival
    keep = np.isin(apps, streams) if streams else np.ones(times.size, bool)
    want = (shifted[keep & (shifted >= start)] - start) * scale
    np.testing.assert_allclose(got, want[want < 4.0])


def test_a_replay_names_an_unknown_stream_a_bad_spread_or_start(tmp_path: Path) -> None:
    path = requests_trace(tmp_path / "t.csv", np.arange(0.0, 5.0, 0.5))
    base = {"trace": str(path), "trace_format": "auto", "seed": 0, "time_scale": 1.0,
            "duration": 2.0, "stream": [], "start": 0.0, "spread": "uniform"}
    with pytest.raises(loadtest.LoadtestError, match=r"--stream 'zz': not a stream of .*a\)"):
        loadtest._trace(argparse.Namespace(**{**base, "stream": ["a", "zz"]}))
    with pytest.raises(loadtest.LoadtestError, match=r"spread.*'lumpy'"):
        loadtest._trace(argparse.Namespace(**{**base, "spread": "lumpy"}))
    args = argparse.Namespace(**{**base, "start": -1.0, "clients": None, "grace": None,
                                 "timeout": 5.0, "think_ms": 0.0})
    with pytest.raises(loadtest.LoadtestError, match="--start must be"):
        loadtest._check(args)


def test_many_closed_loop_clients_all_get_runs_out_within_the_bound(served: str) -> None:
    clients, duration, grace = 200, 1.5, 2.0
    started = time.perf_counter()
    code, stdout, stderr = jsorc(served, "loadtest", "--app", "nap_none", "--clients",
                                 str(clients), "--duration", str(duration), "--grace",
                                 str(grace), "--json")
    took = time.perf_counter() - started
    assert code == 0, stderr
    summary = json.loads(stdout)
    # Each client sends at least its first run once the clock starts (they are all up by
    # then), and the whole run ends near the bound, not after every client was built.
    assert summary["walker_runs"] >= clients
    assert took < duration + grace + ADMIN_SLACK_S


@pytest.mark.parametrize("argv,message", [
    (["--clients", "3"], "--clients is for the closed loop"),
    (["--start", "1e6"], "the trace has no arrivals in the window replayed"),
])
def test_a_replay_refuses_clients_and_warns_of_an_empty_window(
        served: str, tmp_path: Path, argv: list[str], message: str) -> None:
    trace = requests_trace(tmp_path / "t.csv", np.arange(0.0, 2.0, 0.1))
    code, _, stderr = jsorc(served, "loadtest", "--app", "nap_none", "--trace", str(trace),
                            "--duration", "1", *argv)
    assert message in stderr
    assert code == (2 if "--clients" in argv else 0)


def test_an_out_that_cannot_be_written_is_refused_before_the_run(
        served: str, tmp_path: Path) -> None:
    a_file = tmp_path / "x.csv"
    a_file.write_text("mine\n")
    for out, message in ((a_file, "is a file"), (Path("/proc/nope"), "cannot write there")):
        started = time.perf_counter()
        code, _, stderr = jsorc(served, "loadtest", "--app", "nap_none", "--duration", "5",
                                "--out", str(out))
        assert code == 2 and f"--out {out}" in stderr and message in stderr
        assert time.perf_counter() - started < 5.0  # refused before the 5 s of load
    assert a_file.read_text() == "mine\n"  # the user's file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]  # and nothing left beside it
