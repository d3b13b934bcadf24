"""Keep-alive services, as JSORC's MetaService: Prometheus and Redis as plain processes.

The META_CONFIG `keep_alive` list names the services to run. `MetaService` keeps each one
alive: a `KeptService` starts the Debian binary bound to 127.0.0.1 on a free port with its
data in a temporary folder, waits (bounded) until it answers, watches it in a thread, and
restarts it with exponential backoff when it exits or stops answering. A binary that is not
installed is a recorded state (MISSING, with the package to install), never a crash.

Prometheus gets a generated scrape config listing the runtime's and every replica's /metrics;
`MetaService` rewrites it when the targets change and Prometheus re-reads it on SIGHUP. The
config is JSON, which is YAML too, so nothing here needs a YAML library.

Services are started through jsorc_live.children (a minimal environment, their own process
group, a parent-death signal, a line in the server's state file); stopping is bounded:
SIGTERM to the group, SIGKILL after `stop_grace_s`, and `MetaService.close` asks every
service to stop before it waits for any.

`Backoff.delays` is pure; what each kind of service is, and the scrape config, are the pure
half in jsorc_live.service_kinds.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from jsorc_live.backend import free_port
from jsorc_live.children import CHILDREN, Children
from jsorc_live.service_kinds import (
    KINDS,
    ScrapeTarget,
    ServiceKind,
    prometheus_command,
    prometheus_ready,
    redis_command,
    redis_ping,
    scrape_config,
)

log = logging.getLogger(__name__)

# The kinds and the scrape config live in service_kinds; they are named here too, where the
# callers have always found them.
__all__ = ["KINDS", "Backoff", "KeptService", "MetaService", "ScrapeTarget", "ServiceError",
           "ServiceKind", "State", "prometheus_command", "prometheus_ready", "redis_command",
           "redis_ping", "scrape_config"]


class ServiceError(RuntimeError):
    """A service command that cannot be done (unknown or missing service, not ready)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class State(StrEnum):
    STARTING = "STARTING"  # launched, not answering yet
    READY = "READY"  # answering
    BACKOFF = "BACKOFF"  # exited or hung; waiting before the next start
    MISSING = "MISSING"  # the binary is not installed
    UNKNOWN = "UNKNOWN"  # keep_alive names a service jsorc does not know
    STOPPED = "STOPPED"


@dataclass(frozen=True)
class Backoff:
    """Restart delays: `initial_s`, times `factor` after each failed run, at most `max_s`;
    a run that stayed up `reset_after_s` starts the sequence again."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    reset_after_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"Backoff needs 0 < initial_s <= max_s, got initial_s="
                             f"{self.initial_s}, max_s={self.max_s}")
        if self.factor < 1:
            raise ValueError(f"Backoff factor must be >= 1, got {self.factor}")

    def delays(self) -> Iterator[float]:
        """0.5, 1, 2, 4, ... capped at max_s (pure)."""
        delay = self.initial_s
        while True:
            yield delay
            delay = min(delay * self.factor, self.max_s)


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
    """One service process kept alive by a watcher thread."""

    def __init__(self, kind: ServiceKind, *, host: str = "127.0.0.1",
                 backoff: Backoff | None = None, ready_timeout_s: float = 30.0,
                 health_every_s: float = 2.0, health_failures: int = 3,
                 which: Callable[[str], str | None] = shutil.which,
                 config: str | None = None, stop_grace_s: float = 5.0,
                 children: Children = CHILDREN) -> None:
        self.kind = kind
        self.host = host
        self.backoff = backoff or Backoff()
        self.ready_timeout_s = ready_timeout_s
        self.health_every_s = health_every_s
        self.health_failures = health_failures
        self.binary = which(kind.binary)
        self.stop_grace_s = stop_grace_s
        self.children = children
        self._config = config
        self._cond = threading.Condition()
        self._flags = _Flags()
        self._state = State.STOPPED
        self._message = "not started"
        self._run: _Run | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._workdir: Path | None = None
        self._log_from = 0
        self.restarts = 0
        self.refreshes = 0
        self.events: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- state

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def state(self) -> State:
        with self._cond:
            return self._state

    @property
    def pid(self) -> int | None:
        with self._cond:
            return self._run.popen.pid if self._run and self._run.popen.poll() is None else None

    @property
    def url(self) -> str | None:
        with self._cond:
            return f"{self.kind.scheme}://{self.host}:{self._port}" if self._port else None

    def status(self) -> dict[str, Any]:
        with self._cond:
            run = self._run
            return {
                "name": self.name, "state": self._state.value, "message": self._message,
                "binary": self.binary, "package": self.kind.package,
                "pid": run.popen.pid if run and run.popen.poll() is None else None,
                "port": self._port,
                "url": f"{self.kind.scheme}://{self.host}:{self._port}" if self._port else None,
                "restarts": self.restarts, "refreshes": self.refreshes,
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
        """Start watching (a missing binary is recorded as MISSING and left there)."""
        with self._cond:
            if self._thread is not None:
                return
            if self.binary is None:
                message = (f"{self.kind.binary} is not installed (not on PATH): install the "
                           f"Debian package {self.kind.package} (apt-get install "
                           f"{self.kind.package})")
                log.warning("keep-alive %s: %s", self.name, message)
                self._state, self._message = State.MISSING, message
                return
            self._workdir = Path(tempfile.mkdtemp(prefix=f"jsorc-{self.name}-"))
            (self._workdir / "data").mkdir()
            self._flags = _Flags()
            self._thread = threading.Thread(target=self._watch, name=f"keep-alive-{self.name}",
                                            daemon=True)
            self._thread.start()

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

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the process and the watcher; remove the data folder (idempotent). Bounded:
        the watcher is waited for `timeout_s` at most, the process `stop_grace_s` more."""
        self.ask_stop()
        self.finish_stop(time.monotonic() + timeout_s)

    def ask_stop(self) -> None:
        """The first half of `stop`, which returns at once: the watcher stops its process."""
        with self._cond:
            self._flags.stop = True
            self._flags.wake.set()

    def finish_stop(self, deadline: float) -> None:
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
        if self._workdir is not None:
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

    def _launch(self) -> _Run:
        assert self.binary is not None and self._workdir is not None
        with self._cond:
            self._flags.refresh = False
            self._flags.reload_pending = False
            port = self._port or free_port(self.host)
            self._port = port
            config = self._write_config()
            logfile = (self._workdir / "service.log").open("ab")
            self._log_from = logfile.tell()  # this run's lines start here
            try:
                popen = self.children.spawn(
                    self.kind.command(self.binary, self.host, port, self._workdir / "data",
                                      config),
                    kind="service", name=self.name,
                    url=f"{self.kind.scheme}://{self.host}:{port}", stdout=logfile)
            finally:
                logfile.close()
            run = _Run(popen, port, time.monotonic())
            self._run = run
        self._set(State.STARTING, f"pid {popen.pid} on {self.host}:{port}", pid=popen.pid)
        return run

    def _run_once(self) -> str | None:
        """One run: launch, wait until it answers, watch it. The reason it ended (exited,
        hung, never answered), or None when asked to stop or refresh."""
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
                if "address already in use" in self._log_tail().lower():
                    with self._cond:
                        self._port = None  # taken meanwhile: the next start picks another
                return f"exited with {code}: {self._log_tail()}"
            now = time.monotonic()
            if not run.ready:
                if self.kind.ready(self.host, run.port):
                    self._became_ready(run)
                elif now - run.began > self.ready_timeout_s:
                    self._terminate(run.popen)
                    return f"did not answer within {self.ready_timeout_s:g} s"
            elif now >= next_check:
                next_check = now + self.health_every_s
                failures = 0 if self.kind.ready(self.host, run.port) else failures + 1
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
            tmp.write_text(self._config)
            os.replace(tmp, path)
        elif not path.exists():
            path.write_text("{}\n")
        return path

    def _terminate(self, popen: subprocess.Popen[bytes]) -> None:
        self.children.stop(popen, self.stop_grace_s)

    def _hangup(self, run: _Run) -> None:
        if self.kind.reloads_on_sighup:
            with contextlib.suppress(ProcessLookupError):
                run.popen.send_signal(signal.SIGHUP)
                self.events.append({"ts": time.time(), "state": self._state.value,
                                    "detail": "config rewritten: SIGHUP", "kind": "reload"})

    def _log_tail(self, lines: int = 3) -> str:
        if self._workdir is None:
            return ""
        try:
            with (self._workdir / "service.log").open("rb") as f:
                f.seek(self._log_from)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------- all services


class MetaService:
    """The services `wanted()` names, kept alive; Prometheus scraping `targets()`.

    A manager thread re-reads both every `poll_s`: a service newly named is started, one no
    longer named is stopped, and a change of targets rewrites Prometheus' config (SIGHUP).
    """

    def __init__(self, wanted: Callable[[], Iterable[str]],
                 targets: Callable[[], Sequence[ScrapeTarget]] = tuple, *,
                 kinds: Mapping[str, ServiceKind] = KINDS, host: str = "127.0.0.1",
                 backoff: Backoff | None = None, scrape_interval_s: float = 1.0,
                 poll_s: float = 0.5, ready_timeout_s: float = 30.0,
                 which: Callable[[str], str | None] = shutil.which,
                 stop_timeout_s: float = 10.0, children: Children = CHILDREN) -> None:
        self._wanted = wanted
        self._targets = targets
        self.kinds = kinds
        self.host = host
        self.backoff = backoff or Backoff()
        self.scrape_interval_s = scrape_interval_s
        self.poll_s = poll_s
        self.ready_timeout_s = ready_timeout_s
        self._which = which
        self.stop_timeout_s = stop_timeout_s
        self.children = children
        self._lock = threading.RLock()
        self._services: dict[str, KeptService] = {}
        self._unknown: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

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

    def sync(self) -> None:
        """One pass: start the services named, stop the others, refresh scrape targets."""
        names = list(dict.fromkeys(self._wanted()))
        with self._lock:
            if self._closed:
                return
            self._unknown = [n for n in names if n not in self.kinds]
            for name in names:
                if name in self.kinds and name not in self._services:
                    service = KeptService(self.kinds[name], host=self.host,
                                          backoff=self.backoff, which=self._which,
                                          ready_timeout_s=self.ready_timeout_s,
                                          config=self._config_of(name),
                                          children=self.children)
                    self._services[name] = service
                    service.start()
            stopping = [s for n, s in self._services.items() if n not in names]
            prometheus = self._services.get("prometheus")
        for service in stopping:  # listed until stopped, so status never hides a live one
            service.stop()
            with self._lock:
                if self._services.get(service.name) is service:
                    del self._services[service.name]
        if prometheus in stopping:
            return
        if prometheus is not None:
            prometheus.set_config(scrape_config(self._targets(), self.scrape_interval_s))

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
            if name not in self.kinds:
                raise ServiceError(f"unknown service {name!r} (services: "
                                   f"{', '.join(self.kinds)})", 404)
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
                         "message": f"no such service (known: {', '.join(self.kinds)})"}
        return out

    def url(self, name: str) -> str | None:
        """The service's URL while it answers, else None."""
        with self._lock:
            service = self._services.get(name)
        if service is None or service.state is not State.READY:
            return None
        return service.url

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
