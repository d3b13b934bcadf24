"""`jsorc serve` as a subprocess on loopback, and what becomes of its children: a replica
and Prometheus never hold the admin token; SIGKILL of the server takes them along; a server
restarted on the same state file stops what a killed one left (and never a process whose pid
was reused); SIGTERM with a walker hung in a call stops the server within its bound.

The server's children are found through psutil (the process tree), not through the server's
own answers. Every process is killed in `finally`; every wait has a generous bound.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from jsorc_live.children import ChildRecord, state_path, write_state
from tests.conftest import REPO
from tests.jsorc_live.binaries import poll
from tests.jsorc_live.servers import free_port, jsorc_server_cmd, wait_ready

TOKEN = "lifecycle-admin-token"
PASSWORD = "lifecycle-admin-password"
CONFIG = "tests.jsorc_live.lifecycle_actions"
ACTIONS = "tests.jsorc_live.lifecycle_actions"


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def post(self, path: str, body: dict[str, Any], timeout_s: float = 30.0) -> Any:
        answer = httpx.post(self.url + path, json=body, timeout=timeout_s,
                            headers={"Authorization": f"token {TOKEN}"})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def children(self) -> list[psutil.Process]:
        return [c for c in psutil.Process(self.proc.pid).children(recursive=True)
                if alive(c.pid)]

    def child(self, marker: str) -> psutil.Process | None:
        """The live child whose command line holds `marker` (one that ends meanwhile, as a
        replica whose port was taken, is skipped)."""
        for kid in self.children():
            with contextlib.suppress(psutil.Error):
                if marker in " ".join(kid.cmdline()):
                    return kid
        return None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def environ_of(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")


@contextlib.contextmanager
def serving(state_dir: Path, log: Path, *extra: str, port: int | None = None
            ) -> Iterator[Served]:
    port = port or free_port()
    env = {**os.environ, "JSORC_TOKEN": TOKEN, "JSORC_ADMIN_EMAIL": "admin@example.com",
           "JSORC_ADMIN_PASSWORD": PASSWORD}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jsorc_live.cli", "serve", "--port", str(port),
             "--state-dir", str(state_dir), "--config", CONFIG, "--log-level", "info", *extra],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    served = Served(proc, f"http://127.0.0.1:{port}", log)
    try:
        poll(lambda: proc.poll() is not None or _answers(served.url), 60.0,
             "jsorc serve to answer /healthz")
        assert proc.poll() is None, f"jsorc serve exited: {served.output()}"
        yield served
    finally:
        descendants = []
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait(timeout=30)
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.kill()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def load_remote(served: Served, action: str = "nap") -> psutil.Process:
    """Load `action` remote:1 and return its replica process (found in the process tree)."""
    served.post("/jsorc/actions/load", {"name": action, "mode": "remote"})

    def ready_url() -> str | None:
        remote = served.post("/jsorc/actions/status", {"name": action}
                             )["action_status"].get("remote") or {}
        return remote.get("url") if remote.get("status") == "READY" else None

    port = poll(ready_url, 60.0, f"{action} to be READY remote").rsplit(":", 1)[1]
    return poll(lambda: served.child(f"{ACTIONS} --host 127.0.0.1 --port {port}"), 30.0,
                f"the replica of {action} in the server's process tree")


def test_children_never_hold_the_admin_token(tmp_path: Path) -> None:
    keep = ("--keep-alive", "prometheus") if shutil.which("prometheus") else ()
    with serving(tmp_path, tmp_path / "serve.log", *keep) as served:
        assert TOKEN in environ_of(served.proc.pid)  # the server has it...
        replica = load_remote(served)
        kids = [replica]
        if keep:
            kids.append(poll(lambda: served.child("--web.listen-address"), 60.0,
                             "Prometheus in the server's process tree"))
        for kid in kids:  # ...its children do not
            env = environ_of(kid.pid)
            assert TOKEN not in env and PASSWORD not in env, kid.cmdline()
            assert "JSORC_TOKEN=" not in env and "JSORC_ADMIN" not in env


def test_sigkill_of_the_server_takes_its_children_along(tmp_path: Path) -> None:
    keep = ("--keep-alive", "prometheus") if shutil.which("prometheus") else ()
    with serving(tmp_path, tmp_path / "serve.log", *keep) as served:
        replica = load_remote(served)
        if keep:
            poll(lambda: served.child("--web.listen-address"), 60.0,
                 "Prometheus in the server's process tree")
        kids = served.children()
        url = served.post("/jsorc/actions/status", {"name": "nap"})
        assert replica in kids and url["success"]
        served.proc.send_signal(signal.SIGKILL)
        served.proc.wait(timeout=30)
        poll(lambda: not any(alive(k.pid) for k in kids), 15.0,
             "every child of the SIGKILLed server to be gone")


def test_a_restarted_server_stops_what_a_killed_one_left(tmp_path: Path) -> None:
    """The parent-death signal missed (raced, or another kernel): the state file remains."""
    port = free_port()
    replica_port = free_port()
    log = tmp_path / "leftover.log"
    # A replica as a killed server would have left it: its own session, nobody's child here
    # after the test forgets it; and a stranger whose pid the file names with another start.
    with log.open("wb") as out:
        leftover = subprocess.Popen(jsorc_server_cmd(ACTIONS, replica_port), stdout=out,
                                    stderr=subprocess.STDOUT, cwd=REPO,
                                    start_new_session=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{replica_port}", leftover, 60.0, log)
        left = ChildRecord.of(leftover.pid, kind="replica", name="nap",
                              url=f"http://127.0.0.1:{replica_port}")
        other = ChildRecord.of(stranger.pid, kind="service", name="prometheus")
        reused = ChildRecord(other.pid, other.create_time - 3600.0, other.exe, other.cmdline,
                             other.kind, other.name)
        write_state(state_path(tmp_path, "127.0.0.1", port), [left, reused])

        with serving(tmp_path, tmp_path / "serve.log", port=port) as served:
            poll(lambda: not alive(leftover.pid), 15.0, "the leftover replica to be stopped")
            assert alive(stranger.pid), "a process whose pid was reused was killed"
            assert (f"stopped 1 replica a previous server left: replica nap at "
                    f"http://127.0.0.1:{replica_port} (pid {leftover.pid})") in served.output()
            # A second server on the same address is refused before it touches anything.
            second = subprocess.run(
                [sys.executable, "-m", "jsorc_live.cli", "serve", "--port", str(port),
                 "--state-dir", str(tmp_path)], env={**os.environ, "JSORC_TOKEN": TOKEN},
                cwd=REPO, capture_output=True, text=True, timeout=60)
            assert second.returncode == 2 and "another jsorc serve" in second.stderr
            assert served.proc.poll() is None
    finally:
        for popen in (leftover, stranger):
            popen.kill()
            popen.wait(timeout=30)


def test_sigterm_with_a_hung_walker_stops_within_the_bound(tmp_path: Path) -> None:
    bound_s = 2.0
    with serving(tmp_path, tmp_path / "serve.log", "--shutdown-timeout", str(bound_s)
                 ) as served:
        replica = load_remote(served, "held")  # stays remote: stopped by the close
        served.post("/jsorc/actions/load", {"name": "nap", "mode": "module"})
        served.post("/jsorc/walker/set", {"name": "napper", "steps": [
            {"action": "nap", "function": "nap", "args": {"seconds": "seconds"}}]})
        state = state_path(tmp_path, "127.0.0.1", int(served.url.rsplit(":", 1)[1]))

        def walker() -> None:  # an hour: a call that never ends
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(served.url + "/walker_run",
                           json={"name": "napper", "ctx": {"seconds": 3600}}, timeout=120)

        threading.Thread(target=walker, daemon=True).start()
        poll(lambda: served.post("/jsorc/actions/status", {"name": "nap"})
             ["action_status"]["in_flight"] > 0, 30.0, "the walker's call to be in flight")
        began = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        served.proc.wait(timeout=120)
        took = time.monotonic() - began
        # uvicorn's drain and the close each get bound_s; the rest is slack for 2 slow cores.
        # Without a bound the server waits for the hour-long call.
        assert took < 2 * bound_s + 20.0, f"took {took:.1f} s:\n{served.output()}"
        poll(lambda: not alive(replica.pid), 15.0, "the replica to be stopped")
        assert not state.exists() or f'"pid": {replica.pid}' not in state.read_text()


def test_a_second_sigterm_forces_the_exit(tmp_path: Path) -> None:
    long_s = 60.0  # a bound the test would notice: the second signal must not wait for it
    with serving(tmp_path, tmp_path / "serve.log", "--shutdown-timeout", str(long_s)
                 ) as served:
        replica = load_remote(served, "held")
        served.post("/jsorc/actions/load", {"name": "nap", "mode": "module"})
        served.post("/jsorc/walker/set", {"name": "napper", "steps": [
            {"action": "nap", "function": "nap", "args": {"seconds": "seconds"}}]})

        def walker() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(served.url + "/walker_run",
                           json={"name": "napper", "ctx": {"seconds": 3600}}, timeout=120)

        threading.Thread(target=walker, daemon=True).start()
        poll(lambda: served.post("/jsorc/actions/status", {"name": "nap"})
             ["action_status"]["in_flight"] > 0, 30.0, "the walker's call to be in flight")
        began = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        poll(lambda: "SIGTERM: stopping" in served.output(), 30.0, "the first SIGTERM noted")
        served.proc.send_signal(signal.SIGTERM)
        served.proc.wait(timeout=2 * long_s)
        took = time.monotonic() - began
        assert took < long_s / 2, f"took {took:.1f} s:\n{served.output()}"
        poll(lambda: not alive(replica.pid), 15.0, "the replica to be stopped")
