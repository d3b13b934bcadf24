"""The fault suite's harness: a real `jsorc serve` subprocess on 127.0.0.1 (its admin API,
its children) and an operator timing admin calls while a row runs.

Nothing here sleeps to wait for a state: every wait polls with a bound (:func:`wait_for`).
Every process the server started is remembered (psutil, with its create time) and killed at
teardown if still alive, so a fault that orphans children cannot leak them onto the machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from jsorc_live.backend import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG_MODULE = "tests.reliability.fault_config"
POLICY_MODULE = "tests.reliability.fault_policies"
#: SIGTERM of a server must end it within this (else it is SIGKILLed and the row says so).
STOP_BOUND_S = 15.0
READY_TIMEOUT_S = 60.0


def wait_for(check: Callable[[], bool], timeout_s: float, every_s: float = 0.1) -> float | None:
    """Seconds until ``check()`` is true (polled), or None if it never was within the bound.
    An exception in ``check`` counts as not yet."""
    start = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            return None
        time.sleep(every_s)


_serve_options: set[str] | None = None


def serve_options() -> set[str]:
    """The options this checkout's `jsorc serve` accepts (read once from its --help)."""
    global _serve_options
    if _serve_options is None:
        out = subprocess.run([sys.executable, "-m", "jsorc_live.cli", "serve", "--help"],
                             cwd=REPO, capture_output=True, text=True, timeout=60).stdout
        _serve_options = {w.strip("[],") for w in out.split() if w.startswith(("--", "[--"))}
    return _serve_options


@dataclass
class Tracked:
    """A process the server started, identified by pid and create time (pids recycle)."""

    pid: int
    created: float
    name: str
    cmdline: str

    def alive(self) -> bool:
        try:
            p = psutil.Process(self.pid)
            return bool(p.create_time() == self.created and p.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(psutil.Error, OSError):
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGKILL)


class Server:
    """A `jsorc serve` subprocess with the suite's config, on a port of its own."""

    def __init__(self, workdir: Path, args: Sequence[str] = (), *, port: int | None = None,
                 token: str | None = None) -> None:
        self.workdir = workdir
        self.args = tuple(args)
        self.port = port or free_port()
        self.token = token or secrets.token_hex(12)
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = workdir / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.tracked: dict[tuple[int, float], Tracked] = {}
        self.log = workdir / "server.log"
        self._http = httpx.Client(timeout=30.0)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "jsorc_live.cli", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--token", self.token, "--config", CONFIG_MODULE,
               *self.args]
        if "--state-dir" in serve_options():
            cmd += ["--state-dir", str(self.state_dir)]
        return cmd

    def start(self) -> float:
        """Start it and wait (bounded) until /healthz answers; the seconds it took."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)
        # XDG_* too, so a default state-file location lands in this row's folder.
        env = {**os.environ, "XDG_STATE_HOME": str(self.state_dir),
               "XDG_RUNTIME_DIR": str(self.state_dir), "PYTHONUNBUFFERED": "1"}
        env.pop("JSORC_TOKEN", None)
        with self.log.open("ab") as out:
            out.write(f"\n--- {' '.join(self.command())}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.command(), cwd=REPO, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        start = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise HarnessError(f"jsorc serve exited with {self.proc.returncode} at start: "
                                   f"{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if self._http.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return time.monotonic() - start
            if time.monotonic() - start > READY_TIMEOUT_S:
                raise HarnessError(f"jsorc serve not ready within {READY_TIMEOUT_S:g} s: "
                                   f"{self.log_tail()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    # ----------------------------------------------------------------- admin API

    def admin(self, path: str, body: Mapping[str, Any] | None = None,
              timeout_s: float = 30.0) -> dict[str, Any]:
        """POST an admin call; its JSON answer, or HarnessError naming the refusal."""
        try:
            r = self._http.post(self.url + path, json=dict(body or {}), timeout=timeout_s,
                                headers={"Authorization": f"token {self.token}"})
        except httpx.HTTPError as exc:
            raise HarnessError(f"{path}: no answer: {type(exc).__name__}: {exc}") from None
        try:
            answer = r.json()
        except ValueError:
            raise HarnessError(f"{path}: HTTP {r.status_code}: {r.text[:200]}") from None
        if r.status_code >= 400 or not isinstance(answer, dict) or not answer.get("success"):
            raise HarnessError(f"{path} {dict(body or {})} refused: HTTP {r.status_code}: "
                               f"{answer}")
        return answer

    def status(self, action: str) -> dict[str, Any]:
        status: dict[str, Any] = self.admin("/jsorc/actions/status", {"name": action},
                                            timeout_s=10.0)["action_status"]
        return status

    def define_walkers(self) -> None:
        """One walker per action of fault_config, each calling its sleep with the ctx's
        ``seconds`` (a few ms unless the ctx says otherwise)."""
        for action in ("fast", "hang", "slow"):
            step = {"action": action, "function": "sleep", "args": {"seconds": "seconds"},
                    "defaults": {"seconds": 0.005}}
            self.admin("/jsorc/walker/set", {"name": f"{action}_walk", "steps": [step]})

    def load(self, action: str, placement: str, timeout_s: float = 90.0) -> float:
        """Load/move/scale ``action`` to ``local`` or ``remote:N`` and wait until the router
        reports it settled there; the seconds that took (HarnessError if it never did)."""
        mode, _, n = placement.partition(":")
        body: dict[str, Any] = {"name": action, "mode": "module" if mode == "local" else mode}
        if mode == "remote":
            body["replicas"] = int(n or 1)
        start = time.monotonic()
        self.admin("/jsorc/actions/load", body, timeout_s=timeout_s)
        left = timeout_s - (time.monotonic() - start)
        took = wait_for(lambda: self.settled(action, placement), left, every_s=0.05)
        if took is None:
            raise HarnessError(f"{action} not settled at {placement} within {timeout_s:g} s: "
                               f"{self.status(action)}")
        return time.monotonic() - start

    def settled(self, action: str, placement: str) -> bool:
        st = self.status(action)
        want = "local" if placement == "local" else placement if ":" in placement \
            else f"{placement}:1"
        if st["placement"] != want or st["desired"] != want or st["transition"]:
            return False
        if want.startswith("remote"):
            remote = st.get("remote") or {}
            return bool(remote.get("status") == "READY"
                        and len(remote.get("replicas", [])) == int(want.split(":")[1]))
        return True

    # ----------------------------------------------------------------- processes

    def children(self) -> list[Tracked]:
        """The server's descendants now; each is remembered for the teardown sweep."""
        found = []
        with contextlib.suppress(psutil.Error):
            for p in psutil.Process(self.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    t = Tracked(p.pid, p.create_time(), p.name(), " ".join(p.cmdline()))
                    self.tracked[(t.pid, t.created)] = t
                    found.append(t)
        return found

    def replica_pid(self, url: str) -> Tracked:
        """The process of the replica serving ``url`` (found by its --port)."""
        port = url.rsplit(":", 1)[1].strip("/")
        for child in self.children():
            if "jsorc_live.actions.server" in child.cmdline and f"--port {port}" in child.cmdline:
                return child
        raise HarnessError(f"no replica process listening on {url} among the server's children")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.children()  # remember who was there before the fault
        self.proc.send_signal(sig)

    def rss_mb(self) -> float:
        return float(psutil.Process(self.pid).memory_info().rss) / 2**20

    def stop(self) -> float | None:
        """SIGTERM and wait; the seconds to exit, None if it had to be SIGKILLed after
        :data:`STOP_BOUND_S`."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        self.children()
        start = time.monotonic()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_BOUND_S)
            return time.monotonic() - start
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None

    def survivors(self, grace_s: float = 3.0) -> list[Tracked]:
        """Remembered children still alive ``grace_s`` after the server ended."""
        wait_for(lambda: not any(t.alive() for t in self.tracked.values()), grace_s)
        return [t for t in self.tracked.values() if t.alive()]

    def sweep(self) -> None:
        """Kill whatever remembered child is still alive (CONT first: some were STOPped)."""
        for t in self.tracked.values():
            t.kill()
        self._http.close()


class HarnessError(RuntimeError):
    """The suite could not set a row up (a refused admin call, a server that did not start)."""


# --------------------------------------------------------------------------- load


# --------------------------------------------------------------------------- operator


class Operator:
    """An operator working while the row runs: admin calls in a loop, each timed."""

    def __init__(self, server: Server, calls: Sequence[tuple[str, dict[str, Any]]] = (
            ("/jsorc/status", {}),), every_s: float = 0.5) -> None:
        self.server = server
        self.calls = list(calls)
        self.every_s = every_s
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="operator")

    def __enter__(self) -> Operator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=40)

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(self.every_s):
            path, body = self.calls[i % len(self.calls)]
            i += 1
            start = time.monotonic()
            try:
                self.server.admin(path, body, timeout_s=30.0)
            except HarnessError as exc:
                if not self._stop.is_set():
                    self.errors.append(f"{path}: {type(exc).__name__}: {str(exc)[:160]}")
            self.latencies.append(time.monotonic() - start)

    @property
    def max_latency(self) -> float | None:
        return max(self.latencies) if self.latencies else None
