"""The process backend with real processes on 127.0.0.1: ready when the spec answers,
start failures named, dead replicas noticed, every process stopped on shutdown.

A stand-in server (`python -m http.server` over a folder holding jaseci_actions_spec/)
keeps these tests independent of the action modules; the last test runs the real action
server when it exists.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from jsorc_live.actions.client import spec_answers
from jsorc_live.backend import ProcessBackend, ReplicaStartError
from jsorc_live.runtime import ActionInfo, Replica


def stand_in(folder: Path) -> ProcessBackend:
    (folder / "jaseci_actions_spec").mkdir(exist_ok=True)
    (folder / "jaseci_actions_spec" / "index.html").write_text("{}")

    def command(info: ActionInfo, host: str, port: int) -> list[str]:
        return [sys.executable, "-m", "http.server", str(port), "--bind", host,
                "--directory", str(folder)]

    return ProcessBackend(command=command, start_timeout_s=10, check_every_s=0.1,
                          log_dir=folder)


def test_replicas_start_on_free_ports_answer_and_stop(tmp_path: Path) -> None:
    backend = stand_in(tmp_path)
    try:
        first = backend.start_replica(ActionInfo("use_enc", "m"))
        second = backend.start_replica(ActionInfo("use_enc", "m"))
        assert first.url != second.url and first.url.startswith("http://127.0.0.1:")
        assert spec_answers(first.url) and backend.healthy(first)
        assert set(backend.replicas("use_enc")) == {first, second}
        assert backend.replicas("bi_enc") == []
        backend.stop_replica(first)
        assert not psutil.pid_exists(first.pid) or \
            psutil.Process(first.pid).status() == psutil.STATUS_ZOMBIE
        assert backend.replicas("use_enc") == [second]
        assert not backend.healthy(first)
    finally:
        backend.shutdown()
    assert second.pid is not None
    assert not spec_answers(second.url)
    assert backend.replicas("use_enc") == []


def test_a_dead_replica_is_reported(tmp_path: Path) -> None:
    backend = stand_in(tmp_path)
    died: list[Replica] = []
    noticed = threading.Event()

    def on_dead(replica: Replica) -> None:
        died.append(replica)
        noticed.set()

    backend.on_dead = on_dead
    try:
        replica = backend.start_replica(ActionInfo("stt", "m"))
        assert replica.pid is not None
        os.kill(replica.pid, signal.SIGKILL)
        assert noticed.wait(5), "the monitor did not notice the dead replica"
        assert died == [replica] and backend.replicas("stt") == []
    finally:
        backend.shutdown()


def test_start_failures_are_named_with_the_log(tmp_path: Path) -> None:
    crash = ProcessBackend(command=lambda m, h, p: [sys.executable, "-c",
                                                    "raise SystemExit('no such model')"],
                           start_timeout_s=5, log_dir=tmp_path)
    with pytest.raises(ReplicaStartError, match="exited with 1: no such model"):
        crash.start_replica(ActionInfo("a", "m"))
    silent = ProcessBackend(command=lambda m, h, p: [sys.executable, "-c",
                                                     "import time; time.sleep(60)"],
                            start_timeout_s=1, log_dir=tmp_path)
    started = time.monotonic()
    with pytest.raises(ReplicaStartError, match="did not answer"):
        silent.start_replica(ActionInfo("a", "m"))
    assert time.monotonic() - started < 5
    crash.shutdown()
    silent.shutdown()


@pytest.mark.skipif(importlib.util.find_spec("jsorc_live.actions.server") is None,
                    reason="the action server is not built yet")
def test_the_real_action_server_as_a_replica(tmp_path: Path) -> None:
    backend = ProcessBackend(start_timeout_s=30, log_dir=tmp_path)
    try:
        replica = backend.start_replica(
            ActionInfo("text_seg", "jsorc_live.actions.examples.text_seg"))
        spec = httpx.get(replica.url + "/jaseci_actions_spec/", timeout=5).json()
        assert isinstance(spec, dict) and spec
    finally:
        backend.shutdown()
    assert not spec_answers(replica.url)
