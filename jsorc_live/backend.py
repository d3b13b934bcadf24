"""Where remote replicas come from: the process backend (Kubernetes: jsorc_live/kube).

A replica is an action server, `python -m jsorc_live.actions.server MODULE --host 127.0.0.1
--port P`, on a free loopback port. It is ready when its spec endpoint
(`GET /jaseci_actions_spec/`) answers 200, polled with a bounded wait. A monitor thread
notices a replica whose process has exited without being asked to, and tells the runtime
(`on_dead`), which takes it out of rotation and asks for a replacement. `shutdown` stops
every process this backend started, and runs at interpreter exit too.

Replicas are started through jsorc_live.children: a minimal environment (never the admin
token), their own process group, a parent-death signal, and a line in the server's state file.
Stopping SIGTERMs the group and SIGKILLs it after `stop_grace_s`; `shutdown` stops them all
against one deadline, so it is bounded however many there are.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from jsorc_live.actions.client import SPEC_PATH, spec_answers
from jsorc_live.children import CHILDREN, Children
from jsorc_live.runtime import ActionInfo, Replica

log = logging.getLogger(__name__)



class ReplicaStartError(RuntimeError):
    """A replica that exited or did not answer its spec in time (names the log's tail)."""


class Backend(Protocol):
    """Starts and stops remote replicas of actions."""

    def start_replica(self, info: ActionInfo) -> Replica: ...

    def stop_replica(self, replica: Replica) -> None: ...

    def replicas(self, action: str) -> list[Replica]: ...

    def healthy(self, replica: Replica) -> bool: ...

    def shutdown(self) -> None: ...


@runtime_checkable
class PersistentBackend(Backend, Protocol):
    """A backend whose replicas can outlive this process (the kube backend's Deployments):
    a restarted jsorc finds them (`adopted`: action -> replicas nobody holds yet), and at
    shutdown `detach` (before the runtime unloads) says whether they are kept."""

    def adopted(self) -> dict[str, int]: ...

    def detach(self) -> bool: ...

    def describe(self, action: str) -> dict[str, Any]: ...


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (another process may take it before we do: the
    caller retries on a new port when the server fails to bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def server_command(info: ActionInfo, host: str, port: int) -> list[str]:
    """`python -m jsorc_live.actions.server MODULE --host H --port P [--setup JSON]`."""
    command = [sys.executable, "-m", "jsorc_live.actions.server", info.module, "--host", host,
               "--port", str(port)]
    if info.setup:
        command += ["--setup", json.dumps(dict(info.setup), sort_keys=True)]
    return command


class _Process:
    def __init__(self, replica: Replica, popen: subprocess.Popen[bytes], log_path: Path,
                 log_file: IO[bytes]) -> None:
        self.replica = replica
        self.popen = popen
        self.log_path = log_path
        self.log_file = log_file
        self.stopping = False


class ProcessBackend:
    """Action-server processes on free 127.0.0.1 ports."""

    def __init__(self, *, host: str = "127.0.0.1", start_timeout_s: float = 60.0,
                 check_every_s: float = 0.5, log_dir: str | Path | None = None,
                 command: Callable[[ActionInfo, str, int], list[str]] = server_command,
                 on_dead: Callable[[Replica], None] | None = None,
                 env: dict[str, str] | None = None, stop_grace_s: float = 5.0,
                 children: Children = CHILDREN) -> None:
        """`env`: variables a replica gets besides the allow-listed ones of children.child_env
        (the server's own environment is never passed whole)."""
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.check_every_s = check_every_s
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="jsorc-"))
        self.command = command
        self.on_dead = on_dead
        self.env = dict(env or {})
        self.stop_grace_s = stop_grace_s
        self.children = children
        self._procs: dict[Replica, _Process] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._closed = False
        atexit.register(self.shutdown)

    # ----------------------------------------------------------------- Backend

    def start_replica(self, info: ActionInfo) -> Replica:
        """Launch a server for the action's module and return it once its spec answers."""
        errors = []
        for _ in range(3):  # a port taken between free_port and bind: try another
            if self._closed:
                raise ReplicaStartError("the backend is shut down")
            try:
                return self._start_once(info)
            except ReplicaStartError as exc:
                errors.append(str(exc))
                if "address already in use" not in str(exc).lower():
                    break
        raise ReplicaStartError(errors[-1])

    def stop_replica(self, replica: Replica) -> None:
        with self._lock:
            proc = self._procs.pop(replica, None)
            if proc is not None:
                proc.stopping = True
        if proc is not None:
            self._terminate(proc)

    def replicas(self, action: str) -> list[Replica]:
        with self._lock:
            return [r for r, p in self._procs.items() if r.action == action and not p.stopping]

    def healthy(self, replica: Replica) -> bool:
        with self._lock:
            proc = self._procs.get(replica)
        # A short timeout: a frozen process accepts connections but never answers, and the
        # router's health checks must tell so quickly (it acts after a few in a row).
        return (proc is not None and proc.popen.poll() is None
                and spec_answers(replica.url, timeout_s=1.0))

    def capacity(self, info: ActionInfo) -> int | None:
        """How many replicas of the action this machine can hold: those running, plus what
        its available memory fits at the action's `remote_memory_mb` (None when that is 0:
        no size to divide by)."""
        if info.remote_memory_mb <= 0:
            return None
        import psutil

        available_mb = psutil.virtual_memory().available / 2**20
        return len(self.replicas(info.name)) + int(available_mb // info.remote_memory_mb)

    def shutdown(self) -> None:
        """Stop every process this backend started (idempotent)."""
        self._closed = True
        self._stop.set()
        with self._lock:
            procs = list(self._procs.values())
            self._procs.clear()
            for proc in procs:
                proc.stopping = True
        self.children.stop_all([p.popen for p in procs], self.stop_grace_s)
        for proc in procs:
            self._close_log(proc)
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=2.0)

    # ----------------------------------------------------------------- internals

    def _start_once(self, info: ActionInfo) -> Replica:
        action, module = info.name, info.module
        port = free_port(self.host)
        url = f"http://{self.host}:{port}"
        log_path = self.log_dir / f"{action}-{port}.log"
        log_file = log_path.open("wb")
        try:
            popen = self.children.spawn(self.command(info, self.host, port), kind="replica",
                                        name=action, url=url, env=self.env, stdout=log_file)
        except OSError:
            log_file.close()
            raise
        replica = Replica(action, url, popen.pid)
        proc = _Process(replica, popen, log_path, log_file)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if popen.poll() is not None:
                self.children.forget(popen.pid)
                self._close_log(proc)
                raise ReplicaStartError(f"replica of {action} ({module}) exited with "
                                        f"{popen.returncode}: {_tail(log_path)}")
            if spec_answers(url, timeout_s=1.0):
                break
            if time.monotonic() > deadline:
                self._terminate(proc)
                raise ReplicaStartError(f"replica of {action} ({module}) did not answer "
                                        f"{SPEC_PATH} within {self.start_timeout_s:g} s: "
                                        f"{_tail(log_path)}")
            time.sleep(0.1)
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                self._procs[replica] = proc
                self._ensure_monitor()
        if closed:
            self._terminate(proc)
            raise ReplicaStartError("the backend shut down while the replica started")
        log.info("replica of %s ready at %s (pid %d)", action, url, popen.pid)
        return replica

    def _ensure_monitor(self) -> None:
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._watch, name="replica-monitor",
                                             daemon=True)
            self._monitor.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.check_every_s):
            with self._lock:
                dead = [p for p in self._procs.values()
                        if not p.stopping and p.popen.poll() is not None]
                for proc in dead:
                    del self._procs[proc.replica]
            for proc in dead:
                self.children.forget(proc.popen.pid)
                self._close_log(proc)
                log.warning("replica %s exited with %s", proc.replica.url, proc.popen.returncode)
                if self.on_dead is not None:
                    try:
                        self.on_dead(proc.replica)
                    except Exception:  # the runtime's handler must not kill the monitor
                        log.exception("on_dead handler failed for %s", proc.replica)

    def _terminate(self, proc: _Process) -> None:
        self.children.stop(proc.popen, self.stop_grace_s)
        self._close_log(proc)

    @staticmethod
    def _close_log(proc: _Process) -> None:
        with contextlib.suppress(OSError):
            proc.log_file.close()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
