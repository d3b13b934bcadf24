"""`jsorc tracksys`: the arithmetic on its own, then a real `jsorc serve` with a real bi_enc
replica measured by a real Prometheus (the keep-alive one, scraping both) and by psutil when
there is no Prometheus. Every wait is bounded; every process is killed in `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from jsorc_live import cli
from jsorc_live.services import ScrapeTarget
from jsorc_live.tracksys import (
    _Series,
    counter_rise,
    usage_from_prometheus,
    usage_from_samples,
)
from tests.conftest import REPO
from tests.jsorc_live.binaries import need, poll
from tests.jsorc_live.servers import free_port

TOKEN = "tracksys-token"
MB = 2**20

# --------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize(("at_start", "at_stop", "first", "born", "rise"), [
    (10.0, 12.5, 10.2, False, 2.5),  # the plain case: stop - start
    (10.0, 3.0, 1.0, False, 3.0),  # lower at the end: restarted, counts from 0
    (None, 4.0, 1.5, False, 2.5),  # not scraped before the window: from the first sample
    (None, 4.0, 1.5, True, 4.0),  # born inside the window: from 0
    (10.0, None, None, False, None),  # gone before the end: unknown
    (None, 4.0, None, False, None),  # nothing to start from: unknown
])
def test_counter_rise(at_start: float | None, at_stop: float | None, first: float | None,
                      born: bool, rise: float | None) -> None:
    assert counter_rise(at_start, at_stop, first, born) == rise


def test_usage_from_prometheus_reads_each_instance_at_both_ends() -> None:
    start, stop = 1000.0, 1010.0
    rt, rep, late = "127.0.0.1:8000", "127.0.0.1:9001", "127.0.0.1:9002"
    answers = {  # (query, time) -> {instance: value}
        ('process_start_time_seconds{job="jsorc"}', stop): {rt: 900.0, rep: 950.0,
                                                            late: 1004.0},
        ('process_cpu_seconds_total{job="jsorc"}', start): {rt: 5.0, rep: 2.0},
        ('process_cpu_seconds_total{job="jsorc"}', stop): {rt: 7.5, rep: 2.25, late: 0.5},
        ('process_resident_memory_bytes{job="jsorc"}', stop): {rt: 90 * MB, rep: 70 * MB,
                                                               late: 60 * MB},
        ('avg_over_time(process_resident_memory_bytes{job="jsorc"}[10000ms])', stop):
            {rt: 85 * MB, rep: 70 * MB, late: 60 * MB},
        ('max_over_time(process_resident_memory_bytes{job="jsorc"}[10000ms])', stop):
            {rt: 95 * MB, rep: 71 * MB, late: 60 * MB},
        ('count_over_time(process_resident_memory_bytes{job="jsorc"}[10000ms])', stop):
            {rt: 10, rep: 10, late: 5},
        ('jsorc_http_received_bytes_total{job="jsorc"}', start): {rt: 1000.0, rep: 500.0},
        ('jsorc_http_received_bytes_total{job="jsorc"}', stop): {rt: 4000.0, rep: 800.0,
                                                                 late: 100.0},
    }

    def query(expr: str, t: float) -> dict[str, float]:
        return answers.get((expr, t), {})

    targets = [ScrapeTarget("http://" + rt, "runtime", pid=11),
               ScrapeTarget("http://" + rep, "replica", "bi_enc", 22)]
    labels = {late: {"role": "replica", "action": "bi_enc", "name": "bi_enc@" + late}}
    rows = {r.instance: r for r in usage_from_prometheus(query, start, stop, targets, labels)}
    assert rows[rt].name == "runtime" and rows[rt].pid == 11
    assert rows[rt].cpu_seconds == 2.5 and rows[rt].rss_bytes_max == 95 * MB
    assert rows[rt].net_received_bytes == 3000.0 and rows[rt].net_sent_bytes is None
    assert rows[rep].cpu_seconds == 0.25 and rows[rep].samples == 10
    # Started inside the window and gone from the targets since: from 0, named by its labels.
    assert rows[late].cpu_seconds == 0.5 and rows[late].name == "bi_enc@" + late
    assert rows[late].pid is None and rows[late].net_received_bytes == 100.0


def test_usage_from_samples_counts_from_the_first_sample_or_from_birth() -> None:
    old = _Series(ScrapeTarget("http://a:1", "runtime", pid=1), born=50.0,
                  samples=[(100.0, 3.0, 80 * MB), (101.0, 3.4, 90 * MB), (102.0, 4.0, 85 * MB)])
    young = _Series(ScrapeTarget("http://b:2", "replica", "x", 2), born=101.5,
                    samples=[(101.6, 0.7, 60 * MB), (102.0, 0.9, 62 * MB)])
    net = {"http://a:1": ({"jsorc_http_sent_bytes_total": 10.0},
                          {"jsorc_http_sent_bytes_total": 30.0}),
           "http://b:2": ({}, {"jsorc_http_sent_bytes_total": 5.0})}
    rows = usage_from_samples([old, young], 100.0, 102.0, net)
    assert rows[0].cpu_seconds == pytest.approx(1.0) and rows[0].rss_bytes_max == 90 * MB
    assert rows[0].rss_bytes_mean == pytest.approx(85 * MB) and rows[0].net_sent_bytes == 20.0
    assert rows[1].cpu_seconds == pytest.approx(0.9) and rows[1].net_sent_bytes == 5.0


# --------------------------------------------------------------------------- real processes


@contextlib.contextmanager
def jsorc_serve(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`jsorc serve` on a free port; at the end it and everything it started are gone."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jsorc_live.cli", "serve", "--port",
                                 str(port), "--state-dir", str(tmp_path)],
                                env={**os.environ, "JSORC_TOKEN": TOKEN},
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    children: set[int] = set()

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"jsorc serve exited: {log.read_text()}")
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        poll(up, 20, "jsorc serve answering")
        yield url, proc
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            children = {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        for pid in children:  # whatever it did not stop itself (it should have)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def jsorc(url: str, *argv: str, capsys: pytest.CaptureFixture[str]) -> Any:
    """`jsorc ARGV --json` in-process; the parsed answer (exit code 0 asserted)."""
    code = cli.main([*argv, "--server", url, "--token", TOKEN, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def with_bi_enc_replica(url: str, serve: subprocess.Popen[bytes],
                        capsys: pytest.CaptureFixture[str]) -> int:
    """bi_enc loaded as one remote replica, and a walker calling it; the replica's pid."""
    jsorc(url, "actions", "config", "bi_enc", "jsorc_live.actions.config", capsys=capsys)
    jsorc(url, "actions", "load", "bi_enc", "-mode", "remote", capsys=capsys)
    poll(lambda: jsorc(url, "actions", "status", "bi_enc", capsys=capsys)["action_status"]
         .get("remote", {}).get("status") == "READY", 30, "bi_enc replica READY")
    step = {"action": "bi_enc", "function": "cos_sim_score", "args": {"q": "q", "a": "a"}}
    answer = httpx.post(url + "/jsorc/walker/set", json={"name": "pairs", "steps": [step]},
                        headers={"Authorization": f"token {TOKEN}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    replica_url = jsorc(url, "actions", "status", "bi_enc",
                        capsys=capsys)["action_status"]["remote"]["url"]
    port = replica_url.rsplit(":", 1)[1]
    servers = [c.pid for c in psutil.Process(serve.pid).children()
               if "jsorc_live.actions.server" in c.cmdline() and port in c.cmdline()]
    assert len(servers) == 1, servers
    return servers[0]


def load(url: str, seconds: float) -> int:
    """Walker runs for `seconds`; the number run (every one must succeed)."""
    runs = 0
    deadline = time.monotonic() + seconds
    ctx = {"q": "Where is my flight? " * 20, "a": "When does the plane leave? " * 20}
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < deadline:
            answer = http.post("/walker_run", json={"name": "pairs", "ctx": ctx})
            assert answer.status_code == 200, answer.text
            runs += 1
    return runs


def rows_by_role(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["role"]: p for p in report["processes"]}


def figures(row: dict[str, Any]) -> str:
    return (f"{row['name']} (pid {row['pid']}): {row['cpu_seconds']:.2f} CPU s, "
            f"RSS max {row['rss_bytes_max'] / MB:.1f} MB, net in/out "
            f"{row['net_received_bytes'] / 1024:.1f}/{row['net_sent_bytes'] / 1024:.1f} KB, "
            f"{row['samples']} samples")


def test_tracksys_from_a_real_prometheus_scraping_the_runtime_and_a_replica(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need("prometheus")
    prometheus_pids: set[int] = set()
    with jsorc_serve(tmp_path) as (url, serve):
        try:
            replica_pid = with_bi_enc_replica(url, serve, capsys)
            jsorc(url, "config", "set", "keep_alive", '["prometheus"]', capsys=capsys)

            def prometheus_ready() -> dict[str, Any] | None:
                s = jsorc(url, "service", "status", capsys=capsys)["services"].get("prometheus")
                if s and s.get("pid"):
                    prometheus_pids.add(s["pid"])
                return s if s and s["state"] == "READY" else None

            prom = poll(prometheus_ready, 20, "keep-alive prometheus READY")

            def both_up() -> bool:
                result = httpx.get(prom["url"] + "/api/v1/query",
                                   params={"query": 'up{job="jsorc"} == 1'},
                                   timeout=2).json()["data"]["result"]
                return {r["metric"]["role"] for r in result} == {"runtime", "replica"}

            began = time.monotonic()
            poll(both_up, 25, "Prometheus scraping the runtime and the replica", every_s=0.25)
            first_scrape = time.monotonic() - began

            started = jsorc(url, "tracksys", "start", capsys=capsys)
            assert started["source"] == "prometheus" and prom["url"] in started["detail"]
            runs = load(url, 3.0)
            report = jsorc(url, "tracksys", "stop", capsys=capsys)["report"]
            assert report["source"] == "prometheus" and not report["window"]["running"]
            rows = rows_by_role(report)
            runtime, replica = rows["runtime"], rows["replica"]
            assert runtime["pid"] == serve.pid and replica["pid"] == replica_pid
            for row in (runtime, replica):
                assert row["cpu_seconds"] > 0 and row["cpu_percent"] > 0, row
                assert row["rss_bytes_max"] > 20 * MB and row["rss_bytes_mean"] > 20 * MB, row
                assert row["net_received_bytes"] > 0 and row["net_sent_bytes"] > 0, row
                assert row["samples"] >= 2, row
            # Prometheus' RSS agrees with the kernel's now (the replica is idle).
            assert replica["rss_bytes_last"] == pytest.approx(
                psutil.Process(replica_pid).memory_info().rss, rel=0.3)
            # Every walker run passed through both: the runtime received each request and
            # sent each call on, the replica received each call.
            assert replica["net_received_bytes"] > runs * 500

            # `jsorc service refresh prometheus`: a new process, and the window's samples
            # survive it (same data folder).
            refreshed = jsorc(url, "service", "refresh", "prometheus", capsys=capsys)
            prometheus_pids.add(refreshed["service"]["pid"])
            assert refreshed["service"]["pid"] != prom["pid"]
            again = jsorc(url, "tracksys", "report", capsys=capsys)["report"]
            assert rows_by_role(again)["replica"]["cpu_seconds"] == replica["cpu_seconds"]

            assert cli.main(["tracksys", "report", "--server", url, "--token", TOKEN]) == 0
            table = capsys.readouterr().out
            assert table.startswith("source: prometheus") and "bi_enc@" in table
            print(f"\nprometheus: first scrape of both {first_scrape:.1f} s after READY; "
                  f"{runs} walker runs in {report['window']['seconds']} s\n  "
                  + "\n  ".join(figures(r) for r in (runtime, replica)))
        finally:
            for pid in prometheus_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_tracksys_falls_back_to_psutil_without_prometheus(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with jsorc_serve(tmp_path) as (url, serve):
        replica_pid = with_bi_enc_replica(url, serve, capsys)
        code = cli.main(["tracksys", "report", "--server", url, "--token", TOKEN])
        assert code == 2 and "never started" in capsys.readouterr().err
        started = jsorc(url, "tracksys", "start", capsys=capsys)
        assert started["source"] == "psutil"
        assert "no Prometheus configured: keep_alive does not name prometheus" \
            in started["detail"]
        runs = load(url, 1.5)
        running = jsorc(url, "tracksys", "report", capsys=capsys)["report"]
        assert running["window"]["running"] is True
        runs += load(url, 1.5)
        report = jsorc(url, "tracksys", "stop", capsys=capsys)["report"]
        assert report["source"] == "psutil" and report["window"]["seconds"] >= 3.0
        rows = rows_by_role(report)
        runtime, replica = rows["runtime"], rows["replica"]
        assert runtime["pid"] == serve.pid and replica["pid"] == replica_pid
        for row in (runtime, replica):
            assert row["cpu_seconds"] > 0 and row["rss_bytes_max"] > 20 * MB, row
            assert row["net_received_bytes"] > 0 and row["net_sent_bytes"] > 0, row
            assert row["samples"] >= 5, row
        assert runtime["cpu_seconds"] >= rows_by_role(running)["runtime"]["cpu_seconds"]
        code = cli.main(["tracksys", "stop", "--server", url, "--token", TOKEN])
        assert code == 2 and "not running" in capsys.readouterr().err
        print(f"\npsutil: {runs} walker runs in {report['window']['seconds']} s\n  "
              + "\n  ".join(figures(r) for r in (runtime, replica)))
