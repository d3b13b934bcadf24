"""Helpers for tests that run real action servers: free ports, launching a server process,
waiting (bounded) until its spec answers, and always stopping it.

Readiness is polled, never slept for; every wait has a bound; a server that dies or does not
come up fails the test with its log.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from jsorc_live.backend import free_port
from tests.conftest import REPO

SAMPLE = Path(__file__).with_name("sample_actions.py")
JASECI_VENV = REPO / ".jaseci-venv"
JASECI_PYTHON = JASECI_VENV / "bin" / "python"
SPEC = "/jaseci_actions_spec/"
READY_TIMEOUT_S = 30.0


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> float:
    """Poll ``GET url/jaseci_actions_spec/`` until 200; fail if the process exits or the
    bound passes. Returns the seconds waited."""
    start = time.monotonic()
    with httpx.Client() as client:
        while time.monotonic() - start < timeout_s:
            if proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {proc.returncode} before it was ready:\n"
                    + log.read_text(errors="replace")
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url + SPEC, timeout=1.0).status_code == 200:
                    return time.monotonic() - start
            time.sleep(0.05)
    raise AssertionError(f"server at {url} not ready after {timeout_s} s:\n"
                         + log.read_text(errors="replace"))


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    return int(proc.returncode)


@contextlib.contextmanager
def running(
    cmd: list[str],
    port: int,
    log: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[Server]:
    """Run ``cmd`` (a server that will listen on ``port``) until the block ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
            env=dict(os.environ if env is None else env),
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, timeout_s, log)
        yield Server(proc, url, log)
    finally:
        stop(proc)


def jsorc_server_cmd(module: str | Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jsorc_live.actions.server", str(module),
            "--host", "127.0.0.1", "--port", str(port), *extra]


def jaseci_server_cmd(module: str, port: int) -> list[str]:
    return [str(JASECI_VENV / "bin" / "uvicorn"), "--factory", f"{module}:serv_actions",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]


@contextlib.contextmanager
def jsorc_serving(token: str, *extra: str, env: Mapping[str, str] | None = None,
                  timeout_s: float = READY_TIMEOUT_S) -> Iterator[str]:
    """`jsorc serve` on a free port with `token` until the block ends; yields its URL. Its
    state folder is a fresh one unless `extra` names --state-dir (a reused port would
    otherwise restore another test's state)."""
    port = free_port()
    fresh = tempfile.TemporaryDirectory(prefix="jsorc-serve-")
    if "--state-dir" not in extra:
        extra = ("--state-dir", fresh.name, *extra)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jsorc_live.cli", "serve", "--port", str(port), *extra],
        env={**(os.environ if env is None else env), "JSORC_TOKEN": token}, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"jsorc serve exited: {err}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} not ready within {timeout_s:g} s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        fresh.cleanup()
