"""The one place jsorc starts child processes: replicas and kept-alive services.

Three guarantees, each for a fault found by driving `jsorc serve` (issue #10):

- **A minimal environment.** A child gets an allow-list of the server's variables (what
  Python, the action modules and the Debian servers need) plus what its caller passes, never
  the admin token, the admin password or anything else the server holds.
- **It dies with the server.** A child leads its own process group (stopping it stops what
  it started; a ^C to the terminal reaches the server first) and gets a parent-death signal
  (Linux prctl PR_SET_PDEATHSIG), so even a SIGKILLed server takes its children along.
- **A server that died anyway is cleaned up after.** Each child is written to a state file
  (pid, start time, executable, command line); the next server on the same address stops
  every one that is still that very process. A pid that was reused by another process has
  another start time and is never touched.

PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process, and
replicas are started from short-lived pool threads: so every fork runs on one spawner thread
that lives as long as the process.

`child_env` and `ChildRecord.matches` are pure.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil

log = logging.getLogger(__name__)

__all__ = ["CHILDREN", "ChildRecord", "Children", "StateFileBusy", "child_env",
           "default_state_dir", "state_path", "stop_leftovers", "write_state"]

T = TypeVar("T")

# What a child may see of the server's environment. Names, not prefixes, except LC_*: each
# one is here for a reason, and a new secret the server is given stays out by default.
ENV_ALLOWED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    # Python: where the project and its dependencies are (an editable install finds itself
    # through the venv; a plain checkout needs PYTHONPATH), and how it should run.
    "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
    "PYTHONHASHSEED", "PYTHONWARNINGS",
    # The example actions' model sizes (jsorc_live.actions.config.action_scale).
    "JSORC_ACTION_SCALE",
    # Model caches and thread counts of real model actions.
    "XDG_CACHE_HOME", "HF_HOME", "TRANSFORMERS_CACHE", "TORCH_HOME", "OMP_NUM_THREADS",
    "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
})
ENV_ALLOWED_PREFIXES = ("LC_",)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def child_env(extra: Mapping[str, str] | None = None,
              environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of `environ` (default os.environ), then `extra` over it (pure
    given `environ`)."""
    source = os.environ if environ is None else environ
    env = {k: v for k, v in source.items()
           if k in ENV_ALLOWED or k.startswith(ENV_ALLOWED_PREFIXES)}
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ChildRecord:
    """One child as the state file lists it. `exe` (from /proc/PID/exe) is what identity is
    checked on besides pid and start time: a process may rewrite its command line
    (redis-server sets its title), not its executable."""

    pid: int
    create_time: float  # psutil's, seconds since the epoch
    exe: str
    cmdline: tuple[str, ...]
    kind: str  # "replica" | "service"
    name: str  # the action, or the service
    url: str | None = None

    @classmethod
    def of(cls, pid: int, *, kind: str, name: str, url: str | None = None,
           cmdline: Sequence[str] = ()) -> ChildRecord:
        """The record of a running process (raises psutil.Error when it is gone)."""
        proc = psutil.Process(pid)
        with proc.oneshot():
            return cls(pid, proc.create_time(), proc.exe(), tuple(cmdline or proc.cmdline()),
                       kind, name, url)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "cmdline": list(self.cmdline)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ChildRecord:
        return cls(int(doc["pid"]), float(doc["create_time"]), str(doc["exe"]),
                   tuple(str(a) for a in doc.get("cmdline", ())), str(doc["kind"]),
                   str(doc["name"]), None if doc.get("url") is None else str(doc["url"]))

    def matches(self, create_time: float, exe: str) -> bool:
        """Same process (pure): psutil derives the start time from clock ticks since boot,
        so the same process reads the same value; 10 ms absorbs float rounding only."""
        return abs(create_time - self.create_time) < 0.01 and exe == self.exe

    def describe(self) -> str:
        where = f" at {self.url}" if self.url else ""
        return f"{self.kind} {self.name}{where} (pid {self.pid})"


def _same_process(record: ChildRecord) -> psutil.Process | None:
    """The live process `record` names, or None (gone, a zombie, or a reused pid)."""
    try:
        proc = psutil.Process(record.pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            same = record.matches(proc.create_time(), proc.exe())
    except psutil.Error:
        return None
    return proc if same else None


class StateFileBusy(RuntimeError):
    """Another live server holds this state file (it serves on the same address)."""


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$XDG_STATE_HOME/jsorc, else ~/.local/state/jsorc."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home())
                                             / ".local" / "state")
    return Path(base) / "jsorc"


def state_path(state_dir: str | Path, host: str, port: int) -> Path:
    """One state file per address: two servers cannot serve on one, so it names a server."""
    safe = host.replace(":", "_").replace("/", "_") or "all"
    return Path(state_dir) / f"{safe}-{port}.json"


# --------------------------------------------------------------------------- spawning


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


# Resolved before any fork: the child between fork and exec must not load libraries.
_PRCTL = _load_prctl()


def _die_with(parent: int) -> Callable[[], None]:
    """preexec_fn: SIGKILL this child when the forking thread ends; and exit now if the
    parent already died between fork and prctl (then no signal would ever come)."""
    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return preexec


class _Spawner:
    """One daemon thread that runs every fork, so a child's parent-death signal is tied to
    a thread that ends only with the process."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = \
            queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, job: Callable[[], T]) -> T:
        if threading.current_thread() is self._thread:
            return job()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="child-spawner",
                                                daemon=True)
                self._thread.start()
        done: Future[T] = Future()
        self._jobs.put((job, done))
        return done.result()

    def _loop(self) -> None:
        while True:
            job, done = self._jobs.get()
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(job())
            except BaseException as exc:  # handed to the caller, who raises it
                done.set_exception(exc)


# --------------------------------------------------------------------------- children


class Children:
    """The child processes of this server: started, recorded, stopped.

    One instance per process (`CHILDREN`) is what the backends use: the spawner thread and
    the state file belong to the process. `die_with_parent=False` turns the parent-death
    signal off (the state file alone then covers a killed server: tests use it).
    """

    def __init__(self, *, die_with_parent: bool = True) -> None:
        self.die_with_parent = die_with_parent
        self._spawner = _Spawner()
        self._lock = threading.Lock()
        self._records: dict[int, ChildRecord] = {}
        self._path: Path | None = None
        self._lock_file: IO[bytes] | None = None

    # ----------------------------------------------------------------- starting

    def spawn(self, argv: Sequence[str], *, kind: str, name: str, url: str | None = None,
              env: Mapping[str, str] | None = None, stdout: IO[bytes] | int | None = None,
              cwd: str | Path | None = None) -> subprocess.Popen[bytes]:
        """Start `argv` in its own process group with `child_env(env)`; record it."""
        parent = os.getpid()
        preexec = _die_with(parent) if self.die_with_parent else None

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(list(argv), stdout=stdout, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=child_env(env), cwd=cwd,
                                    start_new_session=True, preexec_fn=preexec)

        popen = self._spawner.run(start)
        try:
            record = ChildRecord.of(popen.pid, kind=kind, name=name, url=url, cmdline=argv)
        except psutil.Error:  # it exited at once: nothing left to record
            return popen
        with self._lock:
            self._records[popen.pid] = record
            self._write()
        return popen

    def forget(self, pid: int) -> None:
        """The child exited or was stopped: off the state file."""
        with self._lock:
            if self._records.pop(pid, None) is not None:
                self._write()

    def records(self) -> list[ChildRecord]:
        with self._lock:
            return list(self._records.values())

    # ----------------------------------------------------------------- stopping

    def stop(self, popen: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
        self.stop_all([popen], grace_s)

    def stop_all(self, popens: Iterable[subprocess.Popen[bytes]], grace_s: float = 5.0,
                 kill_wait_s: float = 2.0) -> None:
        """SIGTERM every child's group at once, wait for them all until one deadline, then
        SIGKILL the groups still there: bounded by grace_s + kill_wait_s however many."""
        popens = list(popens)
        live = [p for p in popens if p.poll() is None]
        for popen in live:
            _signal_group(popen.pid, signal.SIGTERM)
            _signal_group(popen.pid, signal.SIGCONT)  # a frozen child handles it too
        deadline = time.monotonic() + grace_s
        for popen in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [p for p in live if p.poll() is None]
        for popen in stuck:
            log.warning("child %d did not stop within %g s of SIGTERM: SIGKILL", popen.pid,
                        grace_s)
            _signal_group(popen.pid, signal.SIGKILL)
        deadline = time.monotonic() + kill_wait_s
        for popen in stuck:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        for popen in popens:
            if popen.poll() is not None:
                self.forget(popen.pid)

    def kill_all(self) -> None:
        """SIGKILL every recorded child's group, now (a forced exit)."""
        for record in self.records():
            if _same_process(record) is not None:
                _signal_group(record.pid, signal.SIGKILL)

    # ----------------------------------------------------------------- the state file

    def use_state_file(self, path: str | Path, grace_s: float = 5.0) -> list[ChildRecord]:
        """Own `path` (refused with StateFileBusy while another live server does), stop the
        children a previous server listed there that still run, then record ours there.
        Returns the children stopped."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = _lock(path.with_suffix(".lock"))
        try:
            left = _read_state(path)
            stopped = stop_leftovers(left, grace_s)
        except BaseException:
            _unlock(lock_file)
            raise
        with self._lock:
            self._path, self._lock_file = path, lock_file
            self._write()
        if stopped:
            log.warning("stopped %s a previous server left: %s", _count(stopped),
                        "; ".join(r.describe() for r in stopped))
        return stopped

    def release_state_file(self) -> None:
        """At a clean exit: the file goes when no child is left (else the next server stops
        the rest), and the address is free for the next server."""
        with self._lock:
            path, lock_file = self._path, self._lock_file
            self._path, self._lock_file = None, None
            if path is not None and not self._records:
                with contextlib.suppress(OSError):
                    path.unlink()
        if lock_file is not None:
            _unlock(lock_file)

    def _write(self) -> None:
        """Called with the lock held; a failed write is logged, never fatal to a start."""
        if self._path is None:
            return
        try:
            write_state(self._path, self._records.values())
        except OSError:
            log.exception("cannot write the state file %s", self._path)


def _count(records: Sequence[ChildRecord]) -> str:
    """'2 replicas and 1 service' (pure)."""
    kinds: dict[str, int] = {}
    for record in records:
        kinds[record.kind] = kinds.get(record.kind, 0) + 1
    return " and ".join(f"{n} {kind}{'' if n == 1 else 's'}"
                        for kind, n in sorted(kinds.items()))


def _signal_group(pid: int, sig: int) -> None:
    """Signal the group `pid` leads (every child leads one); only the process if it does
    not, so a group that is not ours is never signalled."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _lock(path: Path) -> IO[bytes]:
    """An exclusive flock on `path`, held while the file stays open (the kernel drops it
    when this process dies, however it dies). The holder unlinks the file when it is done
    (`_unlock`), so a lock won on a file that is no longer `path` is retried on the new one:
    two servers never hold locks on two files of one name."""
    while True:
        lock_file = path.open("ab")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise StateFileBusy(f"another jsorc serve is running with the state file "
                                f"{path.with_suffix('.json')} (it serves on the same address; "
                                f"stop it or pick another --port or --state-dir)") from None
        try:
            if os.stat(path).st_ino == os.fstat(lock_file.fileno()).st_ino:
                return lock_file
        except FileNotFoundError:
            pass
        lock_file.close()


def _unlock(lock_file: IO[bytes]) -> None:
    """Unlink while still holding the lock (see `_lock`), then drop it."""
    with contextlib.suppress(OSError):
        os.unlink(lock_file.name)
    lock_file.close()


def write_state(path: Path, records: Iterable[ChildRecord]) -> None:
    """The state file listing `records`, written atomically (rename over): a server killed
    mid-write leaves the old list whole. No fsync: the file must outlive a killed process,
    not a machine crash (after which no child is left either)."""
    doc = {"version": 1, "server": {"pid": os.getpid(), "written": time.time()},
           "children": [r.to_json() for r in records]}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_state(path: Path) -> list[ChildRecord]:
    try:
        doc = json.loads(path.read_text())
        return [ChildRecord.from_json(c) for c in doc.get("children", [])]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring the unreadable state file %s: %s", path, exc)
        return []


def stop_leftovers(records: Iterable[ChildRecord], grace_s: float = 5.0
                   ) -> list[ChildRecord]:
    """Stop each recorded process that is still the same process (pid, start time and
    executable): SIGTERM its group, SIGKILL after `grace_s`. They are not our children
    (reparented when their server died), so their end is polled for. The ones stopped."""
    found = [(r, p) for r in records if (p := _same_process(r)) is not None]
    for record, _ in found:
        _signal_group(record.pid, signal.SIGTERM)
        _signal_group(record.pid, signal.SIGCONT)
    alive = _wait_gone([p for _, p in found], grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            if proc.is_running():  # psutil checks the start time too
                _signal_group(proc.pid, signal.SIGKILL)
    still = {p.pid for p in _wait_gone(alive, 2.0)}
    for pid in still:
        log.error("leftover child %d did not stop even on SIGKILL", pid)
    return [r for r, _ in found if r.pid not in still]


def _wait_gone(procs: Sequence[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Poll until each process is gone or a zombie (a container's init may never reap the
    orphans it inherits); the ones still running at the bound."""
    deadline = time.monotonic() + timeout_s
    left = list(procs)
    while left:
        left = [p for p in left if _running(p)]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return left


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


CHILDREN = Children()
