"""The runtime's state that survives a restart of `jsorc serve`, in PostgreSQL or a file.

A `Snapshot` holds what an operator set and expects back after a restart: each action's
config module and placement (`actions config/load`), the policy (`actionpolicy set`: the
name as given, its parameters, the reference it resolved to), the settings (`config set`)
and the trackact session (whether it runs, the calls it recorded). It is plain JSON.

Two stores keep it (`StateStore`): `FileStore(path)` writes the whole document atomically
(a temporary file, fsync, os.replace, fsync of the folder), and `PostgresStore(url)` keeps a
row per section in `jsorc_state(key text primary key, value jsonb, updated_at timestamptz)`,
writing the changed sections and `meta` in one transaction. A file or a row set that is not
a jsorc state (corrupt JSON, another program's) is never overwritten: it is moved aside
(`<file>.corrupt-<ts>`, or keys `corrupt-<ts>:<key>`), reported, and the state starts fresh.

`StateKeeper` runs one store for a JsorcService: at start it loads and restores (before the
app serves), then saves within `interval_s` of any change (a thread compares snapshots; the
call rows of a running trackact session are rewritten at most every `rows_every_s`), and
`close` saves a last time. `capture` and `restore_into` map a service to and from a snapshot.
Only the start restores: a store that answers later (a kept-alive PostgreSQL slower than the
start's wait) has its snapshot reported in `problems`, not restored over what the operator
did meanwhile, and kept until the live state first changes (then the live state is saved).

Start-up flags and the snapshot (`StartValues`, `Changes`): a snapshot keeps only what was
changed through the API, the settings that differ from the values the server started with and
the policy when it differs from the start-up one (plus what a restore brought back, while it
keeps that value, so a flag that happened to give the same value does not erase it). On a
restart a start-up flag (`--policy`, `--max-replicas`, `--keep-alive`) therefore wins for
everything the snapshot did not change; where a flag given now differs from a value changed
through the API before the restart, the API's value wins and the conflict is listed in
`state.problems` (`jsorc config set` / `actionpolicy set` changes it, and then it is saved).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from jsorc_live.api_models import plain
from jsorc_live.runtime import CALL_COLUMNS, RuntimeRefusal
from policies import Mode

if TYPE_CHECKING:
    import psycopg

    from jsorc_live.api import JsorcService

log = logging.getLogger(__name__)

__all__ = ["SNAPSHOT_VERSION", "Changes", "CorruptState", "FileStore", "PostgresStore",
           "Snapshot", "StartValues", "StateKeeper", "StateStore", "StoreError", "capture",
           "restore_into", "serve_store", "state_file"]

FORMAT = "jsorc-state"
SNAPSHOT_VERSION = 1
SECTIONS = ("action_configs", "policy", "settings", "trackact")
# The newest call rows a trackact session keeps across a restart (RowLog keeps 1M in memory;
# a snapshot of that size would take seconds to write).
TRACK_ROWS_KEPT = 100_000
# Settings chosen by `jsorc serve`'s flags that `config set` cannot change: never restored.
START_SETTINGS = ("kubernetes", "namespace")


class StoreError(Exception):
    """The store cannot be read or written (a database that does not answer, a full disk)."""


class CorruptState(StoreError):
    """What the store holds is not a jsorc state; it was moved aside (the message says
    where) and the state starts fresh."""


@dataclass(frozen=True)
class Snapshot:
    """One saved state. The sections are plain JSON values (finite numbers, no NaN);
    treat them as read-only."""

    version: int
    saved_at: float  # Unix seconds
    action_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    trackact: dict[str, Any] = field(default_factory=dict)

    def sections(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SECTIONS}

    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": self.version, "saved_at": self.saved_at}

    def to_json(self) -> str:
        return json.dumps({**self.meta(), **self.sections()}, allow_nan=False,
                          separators=(",", ":"))

    @classmethod
    def from_document(cls, doc: Any, source: str) -> Snapshot:
        """The snapshot in a parsed document; CorruptState naming `source` when it is not
        one. A newer version is read as far as its sections have this version's shape."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            head = type(doc).__name__ if not isinstance(doc, dict) else \
                f"keys {sorted(doc)[:6]}"
            raise CorruptState(f"{source} is not a jsorc state (no \"format\": \"{FORMAT}\"; "
                               f"found {head})")
        version, saved_at = doc.get("version"), doc.get("saved_at")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise CorruptState(f"{source}: version must be an int >= 1, got {version!r:.40}")
        if isinstance(saved_at, bool) or not isinstance(saved_at, int | float) \
                or not math.isfinite(saved_at):
            raise CorruptState(f"{source}: saved_at must be a number, got {saved_at!r:.40}")
        sections: dict[str, Any] = {}
        for name in SECTIONS:
            value = doc.get(name, {})
            if not isinstance(value, dict):
                raise CorruptState(f"{source}: {name} must be an object, got "
                                   f"{type(value).__name__}")
            sections[name] = value
        return cls(version=version, saved_at=float(saved_at), **sections)


class StateStore(Protocol):
    """Where snapshots are kept. `load` is None when nothing was saved yet; both raise
    StoreError (CorruptState when what is there is not a jsorc state)."""

    kind: str

    def describe(self) -> str: ...

    def load(self) -> Snapshot | None: ...

    def save(self, snapshot: Snapshot) -> None: ...

    def close(self) -> None: ...


def _stamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")


# --------------------------------------------------------------------------- a local file


class FileStore:
    """The snapshot as one JSON file, replaced atomically at each save."""

    kind = "file"

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock

    def describe(self) -> str:
        return f"file {self.path}"

    def load(self) -> Snapshot | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from None
        try:
            return Snapshot.from_document(json.loads(raw), str(self.path))
        # UnicodeError and JSON errors are ValueErrors; `[[[[...` deeper than Python's
        # recursion limit is a RecursionError, and no state is nested that deep.
        except (ValueError, RecursionError, CorruptState) as exc:
            why = str(exc) if isinstance(exc, CorruptState) else \
                f"{self.path} is nested too deeply to be a jsorc state" \
                if isinstance(exc, RecursionError) else \
                f"{self.path} is not JSON ({type(exc).__name__}: {exc})"
            aside = self.path.with_name(f"{self.path.name}.corrupt-{_stamp(self._clock())}")
            try:
                os.replace(self.path, aside)
            except OSError as move:
                raise StoreError(f"{why}; cannot move it aside ({move}): refusing to "
                                 "overwrite it") from None
            raise CorruptState(f"{why}; kept aside as {aside}, starting fresh") from None

    def save(self, snapshot: Snapshot) -> None:
        text = snapshot.to_json().encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            # The rename itself is durable only once the folder is synced.
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {self.path}: {exc}") from None

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- PostgreSQL


TABLE = """CREATE TABLE IF NOT EXISTS jsorc_state (
    key text PRIMARY KEY, value jsonb NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"""
UPSERT = """INSERT INTO jsorc_state (key, value, updated_at) VALUES (%s, %s, now())
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()"""


class PostgresStore:
    """A row per section (and `meta`) in table jsorc_state, created if missing. A save
    writes the sections that changed since the last one, and `meta`, in one transaction.
    A lost connection (the server restarted) is opened again: `retries` times, `retry_wait_s`
    apart, before StoreError."""

    kind = "postgresql"

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0, retries: int = 5,
                 retry_wait_s: float = 1.0, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not url.startswith(("postgresql://", "postgres://")) and "=" not in url:
            raise StoreError(f"a database URL is postgresql://user@host:port/dbname, "
                             f"got {url!r}")
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.retries = retries
        self.retry_wait_s = retry_wait_s
        self._clock = clock
        self._sleep = sleep
        self._conn: psycopg.Connection[Any] | None = None
        self._written: dict[str, str] = {}  # key -> JSON last written on this connection
        self._lock = threading.Lock()

    def describe(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        try:
            parts = conninfo_to_dict(self.url)
        except Exception:
            return "postgresql (unparsable URL)"
        # Never the password: this line is shown by `jsorc status`.
        return (f"postgresql://{parts.get('user') or ''}@{parts.get('host') or 'localhost'}:"
                f"{parts.get('port') or 5432}/{parts.get('dbname') or ''}")

    def _connection(self) -> psycopg.Connection[Any]:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=True,
                                         connect_timeout=max(1, round(self.connect_timeout_s)))
            self._conn.execute(TABLE)
            self._written = {}  # a new server may have lost rows: write every section again
        return self._conn

    def _run(self, what: str, work: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        import psycopg

        with self._lock:
            for attempt in range(self.retries + 1):
                try:
                    conn = self._connection()
                    with conn.transaction():
                        return work(conn)
                except psycopg.OperationalError as exc:
                    self._drop()
                    if attempt == self.retries:
                        raise StoreError(f"{what} {self.describe()}: {exc}".strip()) from None
                    self._sleep(self.retry_wait_s)
                except psycopg.Error as exc:  # refused data (a NUL in a string): no retry
                    raise StoreError(f"{what} {self.describe()}: {type(exc).__name__}: "
                                     f"{exc}") from None
            raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a connection already broken
                self._conn.close()
        self._conn = None

    def load(self) -> Snapshot | None:
        source = f"table jsorc_state of {self.describe()}"
        deep = False
        try:
            rows = self._run("cannot read", lambda conn: conn.execute(
                "SELECT key, value FROM jsorc_state WHERE key NOT LIKE 'corrupt-%'").fetchall())
        except RecursionError:  # a jsonb value nested deeper than psycopg's json.loads goes
            rows, deep = [], True
        doc = {str(k): v for k, v in rows}
        if not doc and not deep:
            return None
        meta = doc.get("meta")
        try:
            if deep:
                raise CorruptState(f"{source} holds a value nested too deeply to be a jsorc "
                                   "state")
            if not isinstance(meta, dict):
                raise CorruptState(f"{source} has no jsorc meta row (keys: "
                                   f"{', '.join(sorted(doc)[:6])})")
            return Snapshot.from_document(
                {**meta, **{k: v for k, v in doc.items() if k != "meta"}}, source)
        except CorruptState as exc:
            prefix = f"corrupt-{_stamp(self._clock())}:"

            def move(conn: psycopg.Connection[Any]) -> None:
                conn.execute("UPDATE jsorc_state SET key = %s || key "
                             "WHERE key NOT LIKE 'corrupt-%%'", (prefix,))

            self._run("cannot set aside the rows of", move)
            self._written = {}
            raise CorruptState(f"{exc}; kept aside as keys {prefix}<key>, starting "
                               "fresh") from None

    def save(self, snapshot: Snapshot) -> None:
        from psycopg.types.json import Jsonb

        texts = {key: json.dumps(value, allow_nan=False, sort_keys=True)
                 for key, value in snapshot.sections().items()}

        def write(conn: psycopg.Connection[Any]) -> None:
            # Here, not before `_run`: a reconnect inside it empties `_written`, and then
            # every section is written again (the server may have lost its rows).
            changed = [k for k, t in texts.items() if self._written.get(k) != t]
            with conn.cursor() as cur:
                for key in changed:
                    cur.execute(UPSERT, (key, Jsonb(getattr(snapshot, key))))
                cur.execute(UPSERT, ("meta", Jsonb(snapshot.meta())))

        self._run("cannot write", write)
        self._written = texts

    def close(self) -> None:
        with self._lock:
            self._drop()


# --------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class StartValues:
    """What a server started with, before any restore: its settings (as JSON values), its
    policy (name, resolved reference, parameters as given) and which of them a start-up flag
    given now chose (`explicit`: setting names, and "policy")."""

    settings: dict[str, Any]
    policy: dict[str, Any]
    explicit: frozenset[str] = frozenset()

    @classmethod
    def of(cls, service: JsorcService, explicit: Collection[str] = ()) -> StartValues:
        return cls(settings=plain(service.settings.as_dict()), policy=_policy_of(service),
                   explicit=frozenset(explicit))


def _policy_of(service: JsorcService) -> dict[str, Any]:
    ref, params = service.policy_choice()
    return dict(plain({"name": service.policy_name, "ref": ref, "params": params}))


def _same_policy(a: dict[str, Any], b: dict[str, Any]) -> bool:
    # The name as given and its parameters: the reference of a file policy is its path here.
    return (a.get("name"), a.get("params") or {}) == (b.get("name"), b.get("params") or {})


class Changes:
    """Which settings and which policy a snapshot keeps: those changed through the API.

    A value counts as changed while it differs from the start-up one, or while it is the
    value a restore brought back (an API change from before the restart: a flag that happens
    to give the same value must not erase it from the next snapshot)."""

    def __init__(self, start: StartValues) -> None:
        self.start = start
        self.restored_settings: dict[str, Any] = {}
        self.restored_policy: dict[str, Any] | None = None

    def settings(self, now: dict[str, Any]) -> dict[str, Any]:
        start, back = self.start.settings, self.restored_settings
        return {name: value for name, value in now.items()
                if name not in start or value != start[name]
                or (name in back and back[name] == value)}

    def policy(self, now: dict[str, Any]) -> dict[str, Any]:
        back = self.restored_policy
        changed = not _same_policy(now, self.start.policy)
        return now if changed or (back is not None and _same_policy(now, back)) else {}


def capture(service: JsorcService, *, rows: bool = True,
            changes: Changes | None = None) -> Snapshot:
    """The service's state now (pure reading). Without `rows`, the trackact section says
    how many calls the session holds but not the calls (a cheap comparison). With `changes`,
    only the settings and policy changed through the API (else all of them)."""
    configs: dict[str, dict[str, Any]] = {}
    for name, module in sorted(service.action_configs.items()):
        router = service.runtime.routers.get(name)
        if router is None:
            continue
        desired = router.desired
        remote = router.status().get("remote") or {}
        configs[name] = {"config": module, "mode": desired.mode.value,
                         "replicas": desired.replicas,
                         "url": remote.get("url") if remote.get("attached") else None}
    settings, policy = plain(service.settings.as_dict()), _policy_of(service)
    if changes is not None:
        settings, policy = changes.settings(settings), changes.policy(policy)
    active, calls = service.runtime.track_session()
    track: dict[str, Any] = {"active": active, "calls": len(calls)}
    if rows:
        track["columns"] = list(CALL_COLUMNS)
        track["rows"] = plain(calls[-TRACK_ROWS_KEPT:])
        track["dropped"] = max(0, len(calls) - TRACK_ROWS_KEPT)
        track["clock_origin"] = service.runtime.clock_origin()
    return Snapshot(version=SNAPSHOT_VERSION, saved_at=time.time(), action_configs=configs,
                    policy=policy, settings=settings, trackact=track)


def restore_into(service: JsorcService, snapshot: Snapshot,
                 changes: Changes | None = None) -> list[str]:
    """Apply `snapshot` to a service that has just started; what the operator should know,
    one line each: what could not be restored (the rest is), and each value changed through
    the API before the restart that won over a different start-up flag given now (`changes`
    says which flags were given, and learns what was restored). Order matters: placements
    before automation (a placing policy refuses manual loads), the policy before automation
    turns it on."""
    problems: list[str] = []
    start = changes.start if changes is not None else None

    def attempt(what: str, step: Callable[[], object]) -> bool:
        try:
            step()
        except (RuntimeRefusal, ValueError, TypeError, KeyError) as exc:
            problems.append(f"not restored: {what}: {exc}")
            return False
        return True

    def setting(name: str, value: Any) -> None:
        if not attempt(f"setting {name}", functools.partial(service.config_set, name, value)):
            return
        now = plain(service.settings.as_dict()[name])
        if changes is not None:
            changes.restored_settings[name] = now
        if start is not None and name in start.explicit and now != start.settings.get(name):
            problems.append(f"setting {name}: the start-up flag gave {start.settings.get(name)!r}"
                            f", but {now!r} was set through the API before the restart and is "
                            f"kept (`jsorc config set {name}` changes it)")

    if snapshot.version > SNAPSHOT_VERSION:
        problems.append(f"snapshot version {snapshot.version} is newer than this jsorc's "
                        f"({SNAPSHOT_VERSION}): restoring what this version understands")
    settings, known = snapshot.settings, service.settings.as_dict()
    for name, value in settings.items():
        if name not in known:
            problems.append(f"not restored: setting {name!r}: unknown to this jsorc, ignored")
        elif name in START_SETTINGS:
            if value != plain(known[name]):
                problems.append(f"not restored: setting {name}: chosen at start "
                                f"({known[name]!r}), the saved {value!r} is not restored")
        elif name != "automation":
            setting(name, value)
    for name, entry in snapshot.action_configs.items():
        attempt(f"action {name}", functools.partial(_restore_action, service, name, entry))
    policy = snapshot.policy
    if policy.get("name") and attempt(f"policy {policy.get('name')}", lambda: (
            service.actionpolicy_set(policy["name"], dict(policy.get("params") or {})))):
        now = _policy_of(service)
        if changes is not None:
            changes.restored_policy = now
        if start is not None and "policy" in start.explicit \
                and not _same_policy(now, start.policy):
            problems.append(f"policy: the start-up flag gave {start.policy.get('name')}, but "
                            f"{now['name']} {now.get('params') or {}} was set through the API "
                            "before the restart and is kept (`jsorc actionpolicy set` changes "
                            "it)")
    if "automation" in settings:
        setting("automation", settings["automation"])
    track = snapshot.trackact
    if track.get("active"):
        origin = track.get("clock_origin")
        if not isinstance(origin, int | float) or isinstance(origin, bool):
            origin = None
            problems.append("trackact: the saved session has no clock origin (an older "
                            "save): its calls keep the previous server's ts")
        attempt("trackact session", lambda: service.runtime.track_resume(
            _rows(track.get("columns"), track.get("rows")), clock_origin=origin))
    return problems


def _restore_action(service: JsorcService, name: str, entry: Any) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), str):
        raise ValueError(f"saved entry {entry!r:.80} has no config module")
    service.actions_config(name, entry["config"])
    mode = entry.get("mode")
    router = service.runtime.router(name)
    if mode in (Mode.LOCAL.value, Mode.REMOTE.value) and router.desired.mode is Mode.UNLOADED:
        if mode == Mode.LOCAL.value:
            service.actions_load(name, "module")
            return
        url = entry.get("url")
        service.actions_load(name, "remote", url=url if isinstance(url, str) else None,
                             replicas=None if url else entry.get("replicas"))


def _rows(columns: Any, rows: Any) -> list[tuple[Any, ...]]:
    if columns != list(CALL_COLUMNS) or not isinstance(rows, list):
        raise ValueError(f"saved call rows have columns {columns!r:.120}, this jsorc "
                         f"records {list(CALL_COLUMNS)}")
    return [tuple(nan_for_none(v) for v in row) for row in rows
            if isinstance(row, list) and len(row) == len(CALL_COLUMNS)]


def nan_for_none(value: Any) -> Any:
    # A call row's unmeasured times are NaN in memory and null in JSON.
    return math.nan if value is None else value


# --------------------------------------------------------------------------- the keeper


class StateKeeper:
    """Loads, restores and keeps saving one service's state.

    `open_store` gives the store, or None while it is not there yet (a kept-alive
    PostgreSQL still starting); until a load succeeds nothing is saved, so a state that
    could not be read is never overwritten by a fresh one. Only `start` restores: a load
    that succeeds later reports the snapshot it found and leaves it in the store until the
    live state differs from the one the server started with.

    Two locks: `_io` makes loads and saves one at a time and is held through the store's
    I/O (a database's retries take seconds); `_lock` guards only the fields `status` reads,
    so `jsorc status` never waits on the database."""

    def __init__(self, open_store: Callable[[], StateStore | None],
                 capture: Callable[[bool], Snapshot], restore: Callable[[Snapshot], list[str]],
                 *, interval_s: float = 0.5, rows_every_s: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._open_store = open_store
        self._capture = capture
        self._restore = restore
        self.interval_s = interval_s
        self.rows_every_s = rows_every_s
        self._clock = clock
        self.store: StateStore | None = None
        self._loaded = False
        self._started = False
        self._last: dict[str, Any] | None = None  # the light sections last saved
        self._last_full = 0.0
        # The light state of a start that loaded nothing, and after a late load the state
        # in which nothing is saved (so the store's snapshot is not replaced by a fresh one).
        self._fresh: dict[str, Any] | None = None
        self._hold: dict[str, Any] | None = None
        self.last_saved: float | None = None
        self.last_error: str | None = None
        self.saves = 0
        self.rows_dropped = 0  # trackact calls beyond TRACK_ROWS_KEPT, not in the last save
        self.restored: dict[str, Any] | None = None
        self.problems: list[str] = []
        self._io = threading.Lock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_service(cls, service: JsorcService, open_store: Callable[[], StateStore | None],
                    *, explicit: Collection[str] = (), **options: Any) -> StateKeeper:
        """The keeper of `service`, whose values now are its start-up ones; `explicit`
        names the settings (and "policy") that a start-up flag given now chose."""
        changes = Changes(StartValues.of(service, explicit))
        return cls(open_store, lambda rows: capture(service, rows=rows, changes=changes),
                   lambda snap: restore_into(service, snap, changes), **options)

    def start(self, wait_s: float = 30.0) -> None:
        """Load and restore now (before the app serves), waiting up to `wait_s` for a store
        that is not there yet; then save in a thread (which also retries a failed load)."""
        deadline = self._clock() + wait_s
        with self._io:
            self._load(restore=True)
            while self.store is None and self._clock() < deadline:
                time.sleep(0.2)
                self._load(restore=True)
            if not self._loaded:
                self._fresh = self._light()
            self._started = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="state-keeper",
                                            daemon=True)
            self._thread.start()

    def _light(self) -> dict[str, Any]:
        sections = self._capture(False).sections()
        calls = sections["trackact"].pop("calls", 0)
        return {"sections": sections, "calls": calls}

    def _load(self, *, restore: bool) -> None:
        store = self.store
        if store is None:
            try:
                store = self._open_store()
            except StoreError as exc:
                with self._lock:
                    self.last_error = str(exc)
                return
            if store is None:
                return
            with self._lock:
                self.store = store
        try:
            snapshot = store.load()
        except CorruptState as exc:
            self._report(str(exc))
            snapshot = None
        except StoreError as exc:
            with self._lock:
                self.last_error = str(exc)
            log.error("state not loaded (retrying; nothing is saved until it loads): %s", exc)
            return
        self._loaded = True
        with self._lock:
            self.last_error = None
        if snapshot is None:
            return
        saved = _iso(snapshot.saved_at)
        if not restore:
            self._hold = self._fresh if self._fresh is not None else self._light()
            kept = ("it stays there until the state here first changes" if self._light()
                    == self._hold else "the live state, changed since the start, replaces it")
            self._report(f"{store.describe()} answered only after the start: its state "
                         f"(saved {saved}) was not restored over the live one; {kept}")
            return
        for problem in self._restore(snapshot):
            self._report(problem)
        with self._lock:
            self.restored = {"saved_at": saved, "version": snapshot.version,
                             "actions": sorted(snapshot.action_configs)}
        log.warning("state restored from %s (saved %s)", store.describe(), saved)

    def _report(self, problem: str) -> None:
        log.error("state: %s", problem)
        with self._lock:
            self.problems.append(problem)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.save_if_changed()
            except Exception:  # one bad pass must not end the saving
                log.exception("saving the state failed")

    def save_if_changed(self, force: bool = False) -> bool:
        """Save when the state changed (the trackact rows at most every rows_every_s) or
        when `force`; whether it saved. After a late load nothing is saved, even forced,
        until the state differs from the one the server started with."""
        with self._io:
            if not self._loaded:
                self._load(restore=not self._started)
                if not self._loaded:
                    return False
            store = self.store
            assert store is not None
            now = self._light()
            if self._hold is not None:
                if now == self._hold:
                    return False
                self._hold, force = None, True
            last = self._last or {}
            rows_due = now["calls"] != last.get("calls") and \
                self._clock() - self._last_full >= self.rows_every_s
            if not force and self._last is not None and now["sections"] == last.get("sections") \
                    and not rows_due:
                return False
            snapshot = self._capture(True)
            try:
                store.save(replace(snapshot, saved_at=self._clock()))
            except StoreError as exc:
                with self._lock:
                    if exc.args[0] != self.last_error:
                        log.error("state not saved: %s", exc)
                    self.last_error = str(exc)
                return False
            self._last, self._last_full = now, self._clock()
            dropped = snapshot.trackact.get("dropped")
            with self._lock:
                self.last_saved = self._last_full
                self.last_error, self.saves = None, self.saves + 1
                self.rows_dropped = dropped if isinstance(dropped, int) else 0
            return True

    def close(self) -> None:
        """Stop the thread, save a last time, close the store (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
        try:
            self.save_if_changed(force=True)
        finally:
            if self.store is not None:
                self.store.close()

    def status(self) -> dict[str, Any]:
        """For `jsorc status`: which store, when it last saved, what a restore reported,
        and how many trackact calls the last save left out. Never waits on the store."""
        with self._lock:
            store, last_saved, saves = self.store, self.last_saved, self.saves
            error, restored, problems = self.last_error, self.restored, list(self.problems)
            dropped = self.rows_dropped
        if dropped:
            problems.append(f"trackact: the session holds more calls than a restart keeps; "
                            f"the oldest {dropped} are not saved (the newest "
                            f"{TRACK_ROWS_KEPT} are)")
        return {"store": store.kind if store else None,
                "where": store.describe() if store else "not open yet",
                "last_saved": _iso(last_saved) if last_saved else None,
                "saves": saves, "last_error": error, "restored": restored,
                "problems": problems, "trackact_rows_dropped": dropped}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def state_file(state_dir: str | Path, host: str, port: int) -> Path:
    """The local file of the server on host:port (beside its children's state file):
    two servers sharing a state folder keep separate states."""
    safe = host.replace(":", "_").replace("/", "_") or "all"
    return Path(state_dir) / f"{safe}-{port}.state.json"



def serve_store(database_url: str | None, state_path: Path, *,
                keeps_database: Callable[[], bool] = lambda: False,
                kept_url: Callable[[], str | None] = lambda: None
                ) -> Callable[[], StateStore | None]:
    """`jsorc serve`'s choice: the database at `database_url` (--database,
    JSORC_DATABASE_URL); else, when keep_alive runs PostgreSQL (`keeps_database`), the
    kept-alive one once it answers (`kept_url`: None until then); else the local file."""
    chosen = PostgresStore(database_url) if database_url else None  # a bad URL: at once

    def open_store() -> StateStore | None:
        if chosen is not None:
            return chosen
        if keeps_database():
            url = kept_url()
            return PostgresStore(url) if url else None
        return FileStore(state_path)

    return open_store
