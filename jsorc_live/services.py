"""Keep-alive services, as JSORC's MetaService: any service definition run as a process.

The META_CONFIG `keep_alive` list names the services to run: the built-ins (Prometheus,
Redis, PostgreSQL; jsorc_live.service_kinds) or those META_CONFIG `services` defines.
`MetaService` keeps each one alive: a `KeptService` starts its command bound (by the
definition) to 127.0.0.1 on a free port with its data in a folder of its own, waits
(bounded) until its health check passes, watches it in a thread, and restarts it with its
definition's backoff when it exits or stops answering. A program that is not installed is a
recorded state (MISSING, with the package to install), never a crash.

The data folder outlives the service's restarts (kill -9, a changed definition: the new
process gets the same folder and port); a `persistent` definition (PostgreSQL) keeps it in
the state folder jsorc is given, so it outlives `jsorc serve` too. A service whose
definition names a `user` runs as that user when jsorc runs as root (PostgreSQL refuses
root), through setpriv, which execs: the pid watched is the service's own.

Prometheus gets a generated scrape config listing the runtime's and every replica's /metrics;
`MetaService` rewrites it when the targets change and Prometheus re-reads it on SIGHUP. The
config is JSON, which is YAML too, so nothing here needs a YAML library.

Services are started through jsorc_live.children (a minimal environment, their own process
group, a parent-death signal, a line in the server's state file); stopping is bounded:
SIGTERM to the group, SIGKILL after `stop_grace_s`, and `MetaService.close` asks every
service to stop before it waits for any. A service that exits takes its process group with
it: PostgreSQL's backends outliving a killed postmaster would hold its shared memory and
refuse the next start.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jsorc_live.backend import free_port
from jsorc_live.children import CHILDREN, Children, child_env
from jsorc_live.service_defs import (
    Backoff,
    HealthCheck,
    HealthKind,
    ServiceDefinition,
    expand,
)
from jsorc_live.service_kinds import (
    POSTGRES_USER,
    ScrapeTarget,
    builtin_definitions,
    probe,
    prometheus_command,
    prometheus_ready,
    redis_ping,
    scrape_config,
)

log = logging.getLogger(__name__)

# The definitions and the scrape config live in service_defs and service_kinds; they are
# named here too, where the callers have always found them.
__all__ = ["Backoff", "HealthCheck", "HealthKind", "KeptService", "MetaService",
           "ScrapeTarget", "ServiceDefinition", "ServiceError", "State", "prometheus_command",
           "prometheus_ready", "redis_ping", "scrape_config"]

INIT_TIMEOUT_S = 120.0  # initdb takes ~1-3 s here; a hung one must not hold the watcher


class ServiceError(RuntimeError):
    """A service command that cannot be done (unknown or missing service, not ready)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class State(StrEnum):
    STARTING = "STARTING"  # launched, not answering yet
    READY = "READY"  # answering
    BACKOFF = "BACKOFF"  # exited or hung; waiting before the next start
    MISSING = "MISSING"  # the program (or the user it runs as) is not there
    UNKNOWN = "UNKNOWN"  # keep_alive names a service no definition has
    STOPPED = "STOPPED"


def _owner(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) to run as: the definition's user when jsorc is root, else None (as is).
    KeyError when that user does not exist."""
    if user is None or os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


#: Where root keeps a service's data when the user it runs as cannot reach the state folder.
#: Only root makes it (the stand-in exists only when jsorc runs as root and switches user),
#: and every level is checked to be root's own, never a folder (or a symlink) a local user
#: planted in a place anyone may write to, as /var/tmp is.
STAND_IN_ROOT = Path("/var/lib/jsorc/services")


def _stand_in(data_dir: Path) -> Path:
    """Where a service keeps its data when its user cannot reach `data_dir`: the same folder
    for the same `data_dir`, so a restarted server finds its database again."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return STAND_IN_ROOT / f"{digest}-{data_dir.name}"


def _safe_folder(path: Path, may_own: int | None = None) -> None:
    """Make `path` (mode 0755) unless it is there, then check that it is a real folder (not a
    symlink), owned by root (or by `may_own`: the service user the last level is given to)
    and not writable by group or others. OSError naming the level otherwise."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a real folder (a symlink or a file): refusing it; "
                      "remove it and start again")
    if st.st_uid not in (0, may_own):
        raise OSError(f"{path} is owned by uid {st.st_uid}, not root: refusing it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise OSError(f"{path} is writable by group or others (mode "
                      f"{stat.S_IMODE(st.st_mode):o}): refusing it")


def _stand_in_folder(data_dir: Path, uid: int) -> Path:
    """`_stand_in(data_dir)` made level by level from / and checked (`_safe_folder`); the
    last level is then the service user's. OSError when any level is not as it should be."""
    folder = _stand_in(data_dir)
    levels = [*reversed(folder.parents), folder]
    for level in levels[1:-1]:
        _safe_folder(level)
    _safe_folder(folder, may_own=uid)
    return folder


def _new_file(path: Path, text: str) -> None:
    """Create `path` with `text`, mode 0600: never through a symlink, never over a file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _open_log(path: Path) -> io.BufferedWriter:
    """The service's log for appending, never through a symlink (the folder is the service
    user's: root must not append to a file that user points it at)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    return os.fdopen(fd, "ab")


def _reachable(path: Path, uid: int) -> str | None:
    """Why `uid` cannot reach `path` (a parent it may not traverse), or None."""
    for parent in path.resolve().parents:
        if not parent.exists():  # made by jsorc when it prepares the folder: mode 0755
            continue
        st = parent.stat()
        if st.st_uid != uid and not st.st_mode & stat.S_IXOTH:
            return f"{parent} is mode {stat.S_IMODE(st.st_mode):o}"
    return None


# --------------------------------------------------------------------------- one service


@dataclass
class _Run:
    popen: subprocess.Popen[bytes]
    port: int
    began: float
    ready: bool = False


@dataclass
class _Flags:
    stop: bool = False
    refresh: bool = False
    reload_pending: bool = False
    wake: threading.Event = field(default_factory=threading.Event)


class KeptService:
    """One service process kept alive by a watcher thread.

    `data_dir`: where a persistent definition keeps its folder (None: a temporary one);
    `workdir` and `port`: those of the process this one replaces (a changed definition)."""

    def __init__(self, definition: ServiceDefinition, *, host: str = "127.0.0.1",
                 ready_timeout_s: float = 30.0, health_every_s: float = 2.0,
                 health_failures: int = 3, which: Callable[[str], str | None] = shutil.which,
                 config: str | None = None, stop_grace_s: float = 5.0,
                 children: Children = CHILDREN, data_dir: Path | None = None,
                 workdir: Path | None = None, port: int | None = None) -> None:
        self.definition = definition
        self.host = host
        self.backoff = definition.backoff
        self.ready_timeout_s = ready_timeout_s
        self.health_every_s = health_every_s
        self.health_failures = health_failures
        program = definition.program
        self.binary = None if program is None else (
            program if os.path.isabs(program) and os.access(program, os.X_OK)
            else None if os.path.isabs(program) else which(program))
        self.stop_grace_s = stop_grace_s
        self.children = children
        self._config = config
        self._cond = threading.Condition()
        self._flags = _Flags()
        self._state = State.STOPPED
        self._message = "not started"
        self._last_error: str | None = None
        self._run: _Run | None = None
        self._port: int | None = port
        self._thread: threading.Thread | None = None
        self._data_dir = data_dir if definition.persistent else None
        self._workdir: Path | None = workdir
        self._keep_workdir = False
        self._owner: tuple[int, int] | None = None
        self._log_from = 0
        self.restarts = 0
        self.refreshes = 0
        self.events: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- state

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def state(self) -> State:
        with self._cond:
            return self._state

    @property
    def pid(self) -> int | None:
        with self._cond:
            return self._run.popen.pid if self._run and self._run.popen.poll() is None else None

    @property
    def port(self) -> int | None:
        with self._cond:
            return self._port

    @property
    def workdir(self) -> Path | None:
        with self._cond:
            return self._workdir

    @property
    def url(self) -> str | None:
        with self._cond:
            return (f"{self.definition.scheme}://{self.host}:{self._port}" if self._port
                    else None)

    def password(self) -> str | None:
        """The password the service's `init` set (`{password_file}`), None before."""
        with self._cond:
            path = self._workdir / "password" if self._workdir else None
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as f:
                return f.read().strip()
        except OSError:
            return None

    def status(self) -> dict[str, Any]:
        with self._cond:
            run = self._run
            defn = self.definition
            return {
                "name": self.name, "state": self._state.value, "message": self._message,
                "binary": self.binary, "package": defn.package,
                "pid": run.popen.pid if run and run.popen.poll() is None else None,
                "port": self._port,
                "url": f"{defn.scheme}://{self.host}:{self._port}" if self._port else None,
                "restarts": self.restarts, "refreshes": self.refreshes,
                "last_error": self._last_error, "config_version": defn.config_version,
                "health": defn.health.kind.value, "persistent": self._data_dir is not None,
                "workdir": str(self._workdir) if self._workdir else None,
                "events": list(self.events[-10:]),
            }

    def _set(self, state: State, message: str, **event: Any) -> None:
        with self._cond:
            self._state, self._message = state, message
            self.events.append({"ts": time.time(), "state": state.value, "detail": message,
                                **event})
            del self.events[:-50]
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float
                 ) -> dict[str, Any]:
        """Wait (bounded) until `predicate(status)`; the last status either way."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                status = self.status()
                left = deadline - time.monotonic()
                if predicate(status) or left <= 0:
                    return status
                self._cond.wait(min(left, 0.2))

    # ----------------------------------------------------------------- commands

    def start(self) -> None:
        """Start watching (a missing program is recorded as MISSING and left there)."""
        with self._cond:
            if self._thread is not None:
                return
            problem = self._missing()
            if problem is None:
                try:
                    self._prepare_workdir()
                except OSError as exc:
                    problem = f"cannot prepare its folder: {exc}"
            if problem is not None:
                log.warning("keep-alive %s: %s", self.name, problem)
                self._state, self._message = State.MISSING, problem
                return
            self._flags = _Flags()
            self._thread = threading.Thread(target=self._watch, name=f"keep-alive-{self.name}",
                                            daemon=True)
            self._thread.start()

    def _missing(self) -> str | None:
        defn = self.definition
        if defn.command is None:
            return ("no command: this definition is a Kubernetes manifest, which the process "
                    "backend does not run")
        if self.binary is None:
            if defn.package:
                return (f"{defn.program} is not installed (not on PATH): install the Debian "
                        f"package {defn.package} (apt-get install {defn.package})")
            return f"{defn.program} is not found (not on PATH, or not executable)"
        try:
            self._owner = _owner(defn.user)
        except KeyError:
            return f"user {defn.user!r}, whom {self.name} runs as under root, does not exist"
        return None

    def _prepare_workdir(self) -> None:
        """The service's folder (data/, password, config, log), owned by the user it runs
        as. A persistent one the user cannot reach falls back to a temporary one, said in
        the events."""
        if self._workdir is None and self._data_dir is not None:
            why = _reachable(self._data_dir, self._owner[0]) if self._owner else None
            if why is None:
                self._data_dir.mkdir(parents=True, exist_ok=True)
                self._workdir = self._data_dir
            else:
                # A stable folder of root's, named after the one it stands in for: the data
                # survives a restart of jsorc serve too.
                assert self._owner is not None
                stand_in = _stand_in_folder(self._data_dir, self._owner[0])
                self.events.append({"ts": time.time(), "state": self._state.value,
                                    "detail": f"data in {stand_in}: {self.definition.user} "
                                    f"cannot reach {self._data_dir} ({why}); give jsorc "
                                    "serve a --state-dir it can reach to keep it there"})
                self._data_dir = self._workdir = stand_in
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"jsorc-{self.name}-"))
        data = self._workdir / "data"
        with contextlib.suppress(FileExistsError):
            os.mkdir(data, 0o700)
        if not stat.S_ISDIR(os.lstat(data).st_mode):
            raise OSError(f"{data} is not a real folder (a symlink or a file): refusing it")
        password = self._workdir / "password"
        with contextlib.suppress(FileExistsError):
            _new_file(password, secrets.token_urlsafe(24) + "\n")
        if not stat.S_ISREG(os.lstat(password).st_mode):
            raise OSError(f"{password} is not a plain file (a symlink?): refusing it")
        if self._owner is not None:
            # The folder itself is a checked stand-in, a fresh temporary one or the state
            # folder the operator named (which may be a link of theirs); what is inside it
            # the service user could swap for a link, so those are never followed.
            os.chown(self._workdir, *self._owner)
            for path in (data, password):
                os.chown(path, *self._owner, follow_symlinks=False)

    def refresh(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Restart now (no backoff) and wait until the new process answers."""
        with self._cond:
            if self._state is State.MISSING:
                raise ServiceError(f"{self.name}: {self._message}")
            if self._thread is None:
                raise ServiceError(f"{self.name} is not running", 409)
            old = self._run.popen.pid if self._run else None
            self._flags.refresh = True
            self._flags.wake.set()
        status = self.wait_for(lambda s: s["state"] == State.READY and s["pid"] is not None
                               and s["pid"] != old, timeout_s)
        if status["state"] != State.READY or status["pid"] == old:
            raise ServiceError(f"{self.name} did not come back within {timeout_s:g} s: "
                               f"{status['message']}", 504)
        return status

    def set_config(self, text: str) -> None:
        """New config text: written now, and re-read by a running service on SIGHUP (a
        starting one gets SIGHUP once it answers, when its signal handler is in place)."""
        with self._cond:
            if text == self._config:
                return
            self._config = text
            if self._workdir is None:
                return
            self._write_config()
            run = self._run
            if run is not None and run.ready and run.popen.poll() is None:
                self._hangup(run)
            elif run is not None:
                self._flags.reload_pending = True

    def stop(self, timeout_s: float = 10.0, *, keep_data: bool = False) -> None:
        """Stop the process and the watcher; remove a temporary data folder unless
        `keep_data` (a replacement takes it over) (idempotent). Bounded: the watcher is
        waited for `timeout_s` at most, the process `stop_grace_s` more."""
        self.ask_stop()
        self.finish_stop(time.monotonic() + timeout_s, keep_data=keep_data)

    def ask_stop(self) -> None:
        """The first half of `stop`, which returns at once: the watcher stops its process."""
        with self._cond:
            self._flags.stop = True
            self._flags.wake.set()

    def finish_stop(self, deadline: float, *, keep_data: bool = False) -> None:
        """The second half of `stop`: wait for the watcher until `deadline` (monotonic), then
        make sure the process is gone."""
        with self._cond:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._cond:
            run, self._run, self._thread = self._run, None, None
        if run is not None:
            self._terminate(run.popen)
        if self._workdir is not None and self._data_dir is None and not keep_data:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if self._state is not State.MISSING:
            self._set(State.STOPPED, "stopped")

    # ----------------------------------------------------------------- watcher

    def _asked(self, refresh: bool = False) -> bool:
        """Asked to stop (or to refresh too): read afresh each time, another thread sets it."""
        return self._flags.stop or (refresh and self._flags.refresh)

    def _watch(self) -> None:
        delays = self.backoff.delays()
        while not self._asked():
            began = time.monotonic()
            try:
                outcome = self._run_once()
            except Exception as exc:  # cannot launch (exec failed, disk full...): back off
                log.exception("keep-alive %s: start failed", self.name)
                outcome = f"cannot start: {type(exc).__name__}: {exc}"
            if self._asked():
                break
            if outcome is None:  # refresh: start again at once
                delays = self.backoff.delays()
                continue
            if time.monotonic() - began >= self.backoff.reset_after_s:
                delays = self.backoff.delays()
            delay = next(delays)
            with self._cond:
                self.restarts += 1
                self._last_error = outcome
            self._set(State.BACKOFF, f"{outcome}; restart {self.restarts} in {delay:g} s",
                      delay_s=delay)
            deadline = time.monotonic() + delay
            while not self._asked(refresh=True):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._flags.wake.wait(left)
                self._flags.wake.clear()
        self._flags.wake.clear()

    def _values(self) -> dict[str, str]:
        """What the definition's placeholders stand for in this run."""
        assert self._workdir is not None
        return {"host": self.host, "port": str(self._port), "data": str(self._workdir / "data"),
                "workdir": str(self._workdir), "config": str(self._workdir / "config.yml"),
                "password_file": str(self._workdir / "password")}

    def _argv(self, words: Sequence[str]) -> list[str]:
        argv = expand(tuple(words), self._values())
        if self._owner is None:
            return argv
        uid, gid = self._owner  # setpriv execs: the pid stays the service's own
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]

    def _init(self) -> str | None:
        """Run the definition's `init` while its data folder is empty; why it failed."""
        assert self._workdir is not None
        if not self.definition.init or any((self._workdir / "data").iterdir()):
            return None
        self._set(State.STARTING, "init: " + " ".join(self.definition.init[:1]))
        with _open_log(self._workdir / "service.log") as logfile:
            try:
                code = subprocess.run(self._argv(self.definition.init), stdout=logfile,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=child_env(), timeout=INIT_TIMEOUT_S,
                                      check=False).returncode
            except subprocess.TimeoutExpired:
                code = -1
        if code == 0:
            return None
        for leftover in (self._workdir / "data").iterdir():  # so the next try starts clean
            shutil.rmtree(leftover, ignore_errors=True)
        return f"init exited with {code}: {self._log_tail()}"

    def _launch(self) -> _Run:
        assert self.binary is not None and self._workdir is not None
        assert self.definition.command is not None
        with self._cond:
            self._flags.refresh = False
            self._flags.reload_pending = False
            port = self._port or free_port(self.host)
            self._port = port
            self._write_config()
            logfile = _open_log(self._workdir / "service.log")
            self._log_from = logfile.tell()  # this run's lines start here
            try:
                popen = self.children.spawn(
                    self._argv([self.binary, *self.definition.command[1:]]),
                    kind="service", name=self.name,
                    url=f"{self.definition.scheme}://{self.host}:{port}", stdout=logfile,
                    cwd=self._workdir)
            finally:
                logfile.close()
            run = _Run(popen, port, time.monotonic())
            self._run = run
        self._set(State.STARTING, f"pid {popen.pid} on {self.host}:{port}", pid=popen.pid)
        return run

    def _healthy(self, run: _Run) -> bool:
        return probe(self.definition.health, self.host, run.port, self._values(),
                     self.password())

    def _run_once(self) -> str | None:
        """One run: init if need be, launch, wait until it answers, watch it. The reason it
        ended (exited, hung, never answered), or None when asked to stop or refresh."""
        with self._cond:
            self._log_from = 0
        failed = self._init()
        if failed is not None:
            return failed
        run = self._launch()
        failures = 0
        next_check = 0.0
        while True:
            if self._asked(refresh=True):
                if not self._asked():
                    with self._cond:
                        self.refreshes += 1
                    self._set(State.STARTING, "refresh: restarting", kind="refresh")
                self._terminate(run.popen)
                return None
            code = run.popen.poll()
            if code is not None:
                self.children.forget(run.popen.pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(run.popen.pid, signal.SIGKILL)  # its children go with it
                if "address already in use" in self._log_tail().lower():
                    with self._cond:
                        self._port = None  # taken meanwhile: the next start picks another
                return f"exited with {code}: {self._log_tail()}"
            now = time.monotonic()
            if not run.ready:
                if self._healthy(run):
                    self._became_ready(run)
                elif now - run.began > self.ready_timeout_s:
                    self._terminate(run.popen)
                    return f"did not answer within {self.ready_timeout_s:g} s"
            elif now >= next_check:
                next_check = now + self.health_every_s
                failures = 0 if self._healthy(run) else failures + 1
                if failures >= self.health_failures:
                    self._terminate(run.popen)
                    return f"stopped answering ({failures} checks failed)"
            self._flags.wake.wait(0.1)
            self._flags.wake.clear()

    def _became_ready(self, run: _Run) -> None:
        with self._cond:
            run.ready = True
            if self._flags.reload_pending:
                self._flags.reload_pending = False
                self._hangup(run)
        took = time.monotonic() - run.began
        self._set(State.READY, f"pid {run.popen.pid} answering at {self.url} "
                  f"(ready in {took:.2f} s)", pid=run.popen.pid, ready_s=round(took, 3))

    def _write_config(self) -> Path:
        assert self._workdir is not None
        path = self._workdir / "config.yml"
        if self._config is not None:
            tmp = path.with_suffix(".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()  # a leftover (or a planted link): unlinked, never followed
            _new_file(tmp, self._config)
            os.replace(tmp, path)
        elif not os.path.lexists(path):
            _new_file(path, "{}\n")
        return path

    def _terminate(self, popen: subprocess.Popen[bytes]) -> None:
        self.children.stop(popen, self.stop_grace_s)

    def _hangup(self, run: _Run) -> None:
        if self.definition.reloads_on_sighup:
            with contextlib.suppress(ProcessLookupError):
                run.popen.send_signal(signal.SIGHUP)
                self.events.append({"ts": time.time(), "state": self._state.value,
                                    "detail": "config rewritten: SIGHUP", "kind": "reload"})

    def _log_tail(self, lines: int = 3) -> str:
        if self._workdir is None:
            return ""
        try:
            fd = os.open(self._workdir / "service.log", os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                f.seek(self._log_from)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------- all services


class MetaService:
    """The services `wanted()` names, kept alive; Prometheus scraping `targets()`.

    The definitions are the built-ins and `defined()` (META_CONFIG `services`). A manager
    thread re-reads all three every `poll_s`: a service newly named is started, one no
    longer named is stopped, one whose definition changed is restarted (same folder, same
    port; the others are left running), and a change of targets rewrites Prometheus'
    config (SIGHUP). `backoff` overrides the built-ins' (the tests' short delays); a user's
    service keeps its own. `state_dir`: where persistent services keep their data.
    """

    def __init__(self, wanted: Callable[[], Iterable[str]],
                 targets: Callable[[], Sequence[ScrapeTarget]] = tuple, *,
                 defined: Callable[[], Mapping[str, ServiceDefinition]] = dict,
                 builtins: Mapping[str, ServiceDefinition] | None = None,
                 host: str = "127.0.0.1", backoff: Backoff | None = None,
                 scrape_interval_s: float = 1.0, poll_s: float = 0.5,
                 ready_timeout_s: float = 30.0,
                 which: Callable[[str], str | None] = shutil.which,
                 stop_timeout_s: float = 10.0, children: Children = CHILDREN,
                 state_dir: Path | None = None) -> None:
        self._wanted = wanted
        self._targets = targets
        self._defined = defined
        builtins = builtin_definitions() if builtins is None else builtins
        self.builtins = {n: dataclasses.replace(d, backoff=backoff) if backoff else d
                         for n, d in builtins.items()}
        self.host = host
        self.scrape_interval_s = scrape_interval_s
        self.poll_s = poll_s
        self.ready_timeout_s = ready_timeout_s
        self._which = which
        self.stop_timeout_s = stop_timeout_s
        self.children = children
        self.state_dir = state_dir
        self._lock = threading.RLock()
        self._services: dict[str, KeptService] = {}
        self._unknown: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def definitions(self) -> dict[str, ServiceDefinition]:
        """Every service jsorc can keep alive now: the built-ins, then the user's."""
        return {**self.builtins, **self._defined()}

    def start(self) -> None:
        """Sync once now, then keep syncing in a thread (idempotent)."""
        if self._thread is not None or self._closed:
            return
        atexit.register(self.close)  # no orphaned Prometheus when the server dies oddly
        self.sync()
        self._thread = threading.Thread(target=self._loop, name="meta-service", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.sync()
            except Exception:  # one bad pass (a target callback raising) must not end it
                log.exception("keep-alive sync failed")

    def _new(self, definition: ServiceDefinition, old: KeptService | None = None
             ) -> KeptService:
        data_dir = self.state_dir / definition.name if self.state_dir else None
        return KeptService(definition, host=self.host, which=self._which,
                           ready_timeout_s=self.ready_timeout_s,
                           config=self._config_of(definition.name), children=self.children,
                           data_dir=data_dir, workdir=old.workdir if old else None,
                           port=old.port if old else None)

    def sync(self) -> None:
        """One pass: start the services named, restart the changed, stop the others,
        refresh scrape targets."""
        names = list(dict.fromkeys(self._wanted()))
        definitions = self.definitions()
        with self._lock:
            if self._closed:
                return
            self._unknown = [n for n in names if n not in definitions]
            changed: list[tuple[KeptService, ServiceDefinition]] = []
            for name in names:
                current = self._services.get(name)
                if name not in definitions:
                    continue
                if current is None:
                    self._services[name] = service = self._new(definitions[name])
                    service.start()
                elif current.definition != definitions[name]:
                    changed.append((current, definitions[name]))
            stopping = [s for n, s in self._services.items()
                        if n not in names or n not in definitions]
            prometheus = self._services.get("prometheus")
        for old, definition in changed:
            self._replace(old, definition)
        for service in stopping:  # listed until stopped, so status never hides a live one
            service.stop()
            with self._lock:
                if self._services.get(service.name) is service:
                    del self._services[service.name]
        if prometheus in stopping:
            return
        with self._lock:
            prometheus = self._services.get("prometheus")
        if prometheus is not None:
            prometheus.set_config(scrape_config(self._targets(), self.scrape_interval_s))

    def _replace(self, old: KeptService, definition: ServiceDefinition) -> None:
        """A changed definition: stop the old process, start the new one on its folder."""
        log.info("keep-alive %s: definition changed (config_version %r -> %r): restarting",
                 old.name, old.definition.config_version, definition.config_version)
        old.stop(keep_data=True)
        new = self._new(definition, old)
        new.restarts = old.restarts
        new.events = [*old.events, {"ts": time.time(), "state": State.STARTING.value,
                                    "detail": "definition changed: restarting",
                                    "kind": "redefined"}]
        with self._lock:
            if self._closed or self._services.get(old.name) is not old:
                new.stop()
                return
            self._services[old.name] = new
            new.start()

    def _config_of(self, name: str) -> str | None:
        if name == "prometheus":
            return scrape_config(self._targets(), self.scrape_interval_s)
        return None

    def service(self, name: str) -> KeptService:
        with self._lock:
            found = self._services.get(name)
            known = sorted(self._services)
        if found is None:
            kept = ", ".join(known) or "none"
            definitions = self.definitions()
            if name not in definitions:
                raise ServiceError(f"unknown service {name!r} (services: "
                                   f"{', '.join(definitions)})", 404)
            raise ServiceError(f"service {name!r} is not kept alive (keep_alive: {kept}); "
                               f"`jsorc config set keep_alive` first", 404)
        return found

    def refresh(self, name: str, timeout_s: float = 30.0) -> dict[str, Any]:
        return self.service(name).refresh(timeout_s)

    def status(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            services = dict(self._services)
            unknown = list(self._unknown)
        out = {name: s.status() for name, s in sorted(services.items())}
        for name in unknown:
            out[name] = {"name": name, "state": State.UNKNOWN.value,
                         "message": f"no such service (known: "
                                    f"{', '.join(self.definitions())})"}
        return out

    def url(self, name: str) -> str | None:
        """The service's URL while it answers, else None."""
        with self._lock:
            service = self._services.get(name)
        if service is None or service.state is not State.READY:
            return None
        return service.url

    def database_url(self) -> str | None:
        """The kept-alive PostgreSQL's connection URL (`postgresql://jsorc:PW@host:port/
        postgres`) while it answers; None when keep_alive does not name it or it is down."""
        with self._lock:
            service = self._services.get("postgresql")
        if service is None or service.state is not State.READY:
            return None
        password = service.password()
        if password is None or service.port is None:
            return None
        return (f"postgresql://{POSTGRES_USER}:{quote(password, safe='')}@{self.host}:"
                f"{service.port}/postgres")

    def close(self) -> None:
        """Stop the manager and every service (idempotent), within about stop_timeout_s plus
        a service's stop grace: all are asked at once, then waited for to one deadline."""
        with self._lock:
            self._closed = True
            services = list(self._services.values())
            self._services.clear()
        self._stop.set()
        deadline = time.monotonic() + self.stop_timeout_s
        for service in services:
            service.ask_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for service in services:
            service.finish_stop(deadline)
