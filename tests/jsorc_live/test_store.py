"""The runtime's state across restarts (jsorc_live.store): the file and PostgreSQL stores
on their own, then real `jsorc serve` processes stopped and started again over each.

The PostgreSQL is a real server on loopback (tests/jsorc_live/postgres.py). The live tests
set the state through the `jsorc` CLI, stop the server with SIGTERM (its clean shutdown),
start a new one on the same address and read the state back through the CLI.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from jsorc_live import cli
from jsorc_live.backend import free_port
from jsorc_live.runtime import CALL_COLUMNS
from jsorc_live.store import (
    SNAPSHOT_VERSION,
    CorruptState,
    FileStore,
    PostgresStore,
    Snapshot,
    StateKeeper,
    state_file,
)
from tests.conftest import REPO
from tests.jsorc_live.postgres import Postgres, running_postgres

TOKEN = "store-token"
CONFIG = "jsorc_live.actions.config"


def snapshot(**sections: Any) -> Snapshot:
    return Snapshot(version=SNAPSHOT_VERSION, saved_at=1_700_000_000.5, **sections)


SAMPLE = snapshot(
    action_configs={"text_seg": {"config": CONFIG, "mode": "local", "replicas": 0,
                                 "url": None}},
    policy={"name": "all_remote", "ref": "all_remote", "params": {"replicas": 3}},
    settings={"automation": False, "backoff_interval": 2.5, "max_replicas": 5},
    trackact={"active": True, "calls": 1, "columns": list(CALL_COLUMNS),
              "rows": [[1.0, 7, "app", "text_seg", "local", None, 0.1, 2.0, None, 2.2,
                        True, False, None]], "clock_origin": 1.7e9})


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def pg_url(postgres: Postgres) -> Iterator[str]:
    """The server's URL, its jsorc_state table dropped before each test."""
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS jsorc_state")
    yield postgres.url


# --------------------------------------------------------------------------- the stores


def test_file_store_round_trip_is_atomic(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "sub" / "s.json")
    assert store.load() is None  # nothing saved yet
    store.save(SAMPLE)
    assert store.load() == SAMPLE
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["s.json"]  # no temp left
    doc = json.loads(store.path.read_text())
    assert doc["format"] == "jsorc-state" and doc["version"] == SNAPSHOT_VERSION


@pytest.mark.parametrize(("content", "words"), [
    (b"{\"format\": \"jsorc-state\", \"version\": 1, \"sav", "not JSON"),
    (b"\xff\xfe garbage", "not JSON"),
    (b"{\"hello\": \"from another program\"}", "not a jsorc state"),
    (b"[1, 2, 3]", "not a jsorc state"),
    (b"{\"format\": \"jsorc-state\", \"version\": 0, \"saved_at\": 1}", "version"),
    (b"{\"format\": \"jsorc-state\", \"version\": 1, \"saved_at\": 1, \"policy\": []}",
     "policy must be an object"),
])
def test_a_corrupt_or_foreign_file_is_set_aside_never_overwritten(
        tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(content)
    with pytest.raises(CorruptState, match=words) as caught:
        FileStore(path).load()
    assert str(path) in str(caught.value)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("s.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == content
    assert str(aside[0]) in str(caught.value) and not path.exists()


def test_a_newer_version_is_read_as_far_as_it_goes(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    doc = json.loads(SAMPLE.to_json()) | {"version": SNAPSHOT_VERSION + 1, "future": [1]}
    path.write_text(json.dumps(doc))
    loaded = FileStore(path).load()
    assert loaded is not None and loaded.version == SNAPSHOT_VERSION + 1
    assert loaded.settings == SAMPLE.settings


def test_postgres_store_round_trip_and_a_transaction_per_save(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        assert store.load() is None  # the table is created, empty
        store.save(SAMPLE)
        assert store.load() == SAMPLE
        with psycopg.connect(pg_url) as conn:
            before = dict(conn.execute("SELECT key, updated_at FROM jsorc_state").fetchall())
        assert sorted(before) == ["action_configs", "meta", "policy", "settings", "trackact"]
        changed = Snapshot(**{**SAMPLE.__dict__, "settings": {"backoff_interval": 9.0}})
        store.save(changed)
        with psycopg.connect(pg_url) as conn:
            after = dict(conn.execute("SELECT key, updated_at FROM jsorc_state").fetchall())
        # Only the changed section and meta were written; both in one transaction (now()).
        assert after["settings"] > before["settings"] and after["meta"] == after["settings"]
        assert after["policy"] == before["policy"]
        assert store.load() == changed
        assert "@127.0.0.1:" in store.describe()
    finally:
        store.close()


def test_postgres_store_reconnects_when_the_server_restarts(postgres: Postgres,
                                                            pg_url: str) -> None:
    store = PostgresStore(pg_url, retries=20, retry_wait_s=0.25)
    try:
        store.save(SAMPLE)
        postgres.restart()
        later = Snapshot(**{**SAMPLE.__dict__, "saved_at": SAMPLE.saved_at + 1})
        store.save(later)
        assert PostgresStore(pg_url).load() == later
    finally:
        store.close()


def test_foreign_rows_are_set_aside(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE jsorc_state (key text primary key, value jsonb, "
                     "updated_at timestamptz)")
        conn.execute("INSERT INTO jsorc_state VALUES ('meta', '{\"app\": \"other\"}', now())")
    store = PostgresStore(pg_url)
    try:
        with pytest.raises(CorruptState, match="not a jsorc state"):
            store.load()
        assert store.load() is None  # fresh
        with psycopg.connect(pg_url) as conn:
            keys = [k for (k,) in conn.execute("SELECT key FROM jsorc_state").fetchall()]
        assert len(keys) == 1 and keys[0].startswith("corrupt-") and keys[0].endswith(":meta")
    finally:
        store.close()


def test_the_keeper_saves_only_after_a_load_and_on_change(tmp_path: Path) -> None:
    state = {"n": 0}

    def capture(rows: bool) -> Snapshot:
        return snapshot(settings={"n": state["n"]}, trackact={"calls": 0})

    restored: list[Snapshot] = []
    store = FileStore(tmp_path / "s.json")
    store.save(snapshot(settings={"n": 41}))
    keeper = StateKeeper(lambda: store, capture, lambda s: restored.append(s) or [],
                         interval_s=3600)
    keeper.start()
    assert [s.settings for s in restored] == [{"n": 41}]
    assert keeper.save_if_changed() and not keeper.save_if_changed()  # first, then no change
    state["n"] = 2
    assert keeper.save_if_changed()
    keeper.close()
    loaded = store.load()
    assert loaded is not None and loaded.settings == {"n": 2}
    assert keeper.status()["store"] == "file" and keeper.status()["saves"] == 3


# --------------------------------------------------------------------------- live restarts


@contextlib.contextmanager
def serving(port: int, *extra: str, log: Path) -> Iterator[str]:
    """`jsorc serve` on 127.0.0.1:port until the block ends (SIGTERM: a clean shutdown)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jsorc_live.cli", "serve", "--port", str(port),
             "--log-level", "info", *extra],
            env={**os.environ, "JSORC_TOKEN": TOKEN}, cwd=REPO, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"jsorc serve exited:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} not ready:\n{log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=30) == 0, log.read_text()
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise


def jsorc(url: str, *argv: str, capsys: pytest.CaptureFixture[str]) -> Any:
    code = cli.main([*argv, "--server", url, "--token", TOKEN, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def set_state(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """What an operator sets: two actions in the module, a policy with a parameter, two
    settings, a trackact session with the calls of one walker run."""
    for name in ("text_seg", "use_qa"):
        jsorc(url, "actions", "config", name, CONFIG, capsys=capsys)
        jsorc(url, "actions", "load", name, "-mode", "module", capsys=capsys)
    jsorc(url, "actionpolicy", "set", "all_remote", "replicas=3", capsys=capsys)
    jsorc(url, "config", "set", "backoff_interval", "2.5", capsys=capsys)
    jsorc(url, "config", "set", "max_replicas", "5", capsys=capsys)
    jsorc(url, "trackact", "start", capsys=capsys)
    report = jsorc(url, "walker", "run", "zeroshot_faq_bot", "--ctx", "{}", capsys=capsys)
    assert report.get("success", True) is not False


def check_restored(url: str, capsys: pytest.CaptureFixture[str], store: str) -> None:
    status = jsorc(url, "status", capsys=capsys)
    assert {n: a["mode"] for n, a in status["actions"].items()} == \
        {"text_seg": "module", "use_qa": "module"}
    assert status["config"]["backoff_interval"] == 2.5
    assert status["config"]["max_replicas"] == 5
    assert status["config"]["automation"] is False
    policy = jsorc(url, "actionpolicy", "get", capsys=capsys)
    assert policy["policy"] == "all_remote" and policy["params"]["replicas"] == 3
    state = status["state"]
    assert state["store"] == store and state["restored"] is not None, state
    assert state["problems"] == [], state
    jsorc(url, "walker", "run", "zeroshot_faq_bot", "--ctx", "{}", capsys=capsys)
    calls = jsorc(url, "trackact", "stop", capsys=capsys)["calls"]
    # The session went on across the restart: the walker's two calls from before it, then
    # the two of the run after it, on one clock (this server's: the old calls happened
    # before it started, so at negative times) and with one request id per walker run.
    assert [c["action"] for c in calls] == ["text_seg", "use_qa"] * 2
    ts = [c["ts"] for c in calls]
    assert ts == sorted(ts) and ts[1] < 0 <= ts[2]
    ids = [c["request_id"] for c in calls]
    assert ids[0] == ids[1] != ids[2] == ids[3]


def test_a_restart_restores_state_from_the_database(pg_url: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    args = ("--database", pg_url, "--state-dir", str(tmp_path))
    with serving(port, *args, log=tmp_path / "serve.log") as url:
        set_state(url, capsys)
    with psycopg.connect(pg_url) as conn:
        settings = conn.execute("SELECT value FROM jsorc_state WHERE key = 'settings'"
                                ).fetchone()
    assert settings is not None and settings[0]["backoff_interval"] == 2.5
    assert not state_file(tmp_path, "127.0.0.1", port).exists()  # the database, not a file
    # Another port: the database names no address, unlike the file.
    with serving(free_port(), *args, log=tmp_path / "serve.log") as url:
        check_restored(url, capsys, "postgresql")


def test_a_restart_restores_state_from_the_local_file(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    port = free_port()
    args = ("--state-dir", str(tmp_path))
    with serving(port, *args, log=tmp_path / "serve.log") as url:
        set_state(url, capsys)
    saved = json.loads(state_file(tmp_path, "127.0.0.1", port).read_text())
    assert saved["policy"]["params"] == {"replicas": "3"}  # as given; the policy coerces it
    with serving(port, *args, log=tmp_path / "serve.log") as url:
        check_restored(url, capsys, "file")


def test_a_corrupt_file_is_set_aside_and_reported(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    path = state_file(tmp_path, "127.0.0.1", port)
    path.write_bytes(b"{not json")
    with serving(port, "--state-dir", str(tmp_path), log=tmp_path / "serve.log") as url:
        state = jsorc(url, "status", capsys=capsys)["state"]
        jsorc(url, "config", "set", "backoff_interval", "4", capsys=capsys)
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == b"{not json"
    assert len(state["problems"]) == 1 and str(path) in state["problems"][0]
    assert str(aside[0]) in state["problems"][0]
    assert json.loads(path.read_text())["settings"]["backoff_interval"] == 4  # fresh state


def test_an_unknown_action_and_a_newer_version_are_reported_the_rest_restored(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    doc = json.loads(SAMPLE.to_json())
    doc["version"] = SNAPSHOT_VERSION + 1
    doc["action_configs"]["no_such_action"] = {"config": CONFIG, "mode": "local"}
    doc["settings"]["from_the_future"] = 1
    state_file(tmp_path, "127.0.0.1", port).write_text(json.dumps(doc))
    with serving(port, "--state-dir", str(tmp_path), log=tmp_path / "serve.log") as url:
        status = jsorc(url, "status", capsys=capsys)
        calls = jsorc(url, "trackact", "stop", capsys=capsys)["calls"]
    problems = status["state"]["problems"]
    assert len(problems) == 3, problems
    assert any("newer" in p and str(SNAPSHOT_VERSION + 1) in p for p in problems)
    assert any("no_such_action" in p for p in problems)
    assert any("from_the_future" in p for p in problems)
    assert status["actions"]["text_seg"]["mode"] == "module"
    assert status["config"]["backoff_interval"] == 2.5 and status["policy"] == "all_remote"
    row = SAMPLE.trackact["rows"][0]
    assert len(calls) == 1 and calls[0]["request_id"] == row[1]
    assert calls[0]["network_ms"] is None or math.isnan(calls[0]["network_ms"])


def test_a_restart_restores_state_from_the_kept_alive_database(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No --database: with keep_alive naming postgresql, the server keeps its state in the
    PostgreSQL it keeps alive, and a restarted server finds it there again."""
    from jsorc_live.service_kinds import postgres_bindir
    from jsorc_live.services import STAND_IN_ROOT, _stand_in

    if postgres_bindir() is None:
        pytest.skip("Debian's postgresql is not installed (.ci/run installs it)")
    state_dir = tmp_path / "state"  # under pytest's tmp: a folder nobody may not reach
    port = free_port()
    args = ("--keep-alive", "postgresql", "--state-dir", str(state_dir))
    with serving(port, *args, log=tmp_path / "serve.log") as url:
        status = jsorc(url, "status", capsys=capsys)
        assert status["state"]["store"] == "postgresql", status["state"]
        set_state(url, capsys)
    assert not state_file(state_dir, "127.0.0.1", port).exists()  # the database, not a file
    data = state_dir / f"127.0.0.1-{port}.services" / "postgresql"
    stand_in = _stand_in(data)  # pytest's tmp is 0700: the data went to a stable stand-in
    try:
        # root's own place, never a folder under /var/tmp a local user could plant
        assert stand_in.parent == STAND_IN_ROOT == Path("/var/lib/jsorc/services")
        assert not stand_in.is_symlink() and os.lstat(STAND_IN_ROOT).st_uid == 0
        assert (stand_in / "data" / "PG_VERSION").is_file()
        with serving(port, *args, log=tmp_path / "serve.log") as url:
            check_restored(url, capsys, "postgresql")
    finally:
        shutil.rmtree(stand_in, ignore_errors=True)  # its own folder; the parent stays
    assert not stand_in.exists()


# --------------------------------------------------------------------------- review fixes


def test_a_deeply_nested_file_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(b"[" * 200_000)
    with pytest.raises(CorruptState, match="nested too deeply"):
        FileStore(path).load()
    assert not path.exists() and len(list(tmp_path.glob("s.json.corrupt-*"))) == 1


def test_deeply_nested_rows_are_set_aside(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        assert store.load() is None  # creates the table
        with psycopg.connect(pg_url, autocommit=True) as conn:  # deeper than json.loads goes
            conn.execute("INSERT INTO jsorc_state (key, value) VALUES ('settings', %s::jsonb)",
                         ("[" * 5000 + "]" * 5000,))
        with pytest.raises(CorruptState, match="nested too deeply"):
            store.load()
        assert store.load() is None
    finally:
        store.close()


def test_postgres_store_writes_every_section_again_after_a_reconnect(pg_url: str) -> None:
    store = PostgresStore(pg_url, retries=5, retry_wait_s=0.1)
    try:
        store.save(SAMPLE)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("DELETE FROM jsorc_state")  # as a server that lost its data would
            killed = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'").fetchone()
        assert killed is not None and killed[0] >= 1  # the store's connection was cut
        changed = Snapshot(**{**SAMPLE.__dict__, "settings": {"backoff_interval": 9.0}})
        store.save(changed)  # only settings differ from what this store wrote before
        with psycopg.connect(pg_url) as conn:
            keys = sorted(k for (k,) in conn.execute("SELECT key FROM jsorc_state"))
        assert keys == ["action_configs", "meta", "policy", "settings", "trackact"]
        assert PostgresStore(pg_url).load() == changed
    finally:
        store.close()


class HeldFileStore(FileStore):
    """A file store whose saves wait until `release` is set (a database that is slow to
    answer), to see what the keeper does meanwhile."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.saving, self.release = threading.Event(), threading.Event()

    def save(self, snapshot: Snapshot) -> None:
        self.saving.set()
        assert self.release.wait(30)
        super().save(snapshot)


def test_status_answers_while_a_save_waits_on_the_store(tmp_path: Path) -> None:
    store = HeldFileStore(tmp_path / "s.json")
    keeper = StateKeeper(lambda: store, lambda rows: snapshot(trackact={"calls": 0}),
                         lambda s: [], interval_s=3600)
    keeper.start()
    saver = threading.Thread(target=keeper.save_if_changed)
    saver.start()
    try:
        assert store.saving.wait(10)
        began = time.monotonic()
        status = keeper.status()
        took = time.monotonic() - began
        assert took < 0.5 and status["store"] == "file" and status["saves"] == 0
    finally:
        store.release.set()
        saver.join(30)
    assert keeper.status()["saves"] == 1
    keeper.close()


def late_store(tmp_path: Path) -> tuple[FileStore, Path]:
    """A file store that cannot be read at start (its path is a folder): the state file
    appears only later, holding an older server's snapshot."""
    path = tmp_path / "s.json"
    path.mkdir()
    return FileStore(path), path


def test_a_late_load_restores_nothing_and_keeps_the_old_snapshot_until_a_change(
        tmp_path: Path) -> None:
    store, path = late_store(tmp_path)
    live = {"n": 0}
    restored: list[Snapshot] = []
    keeper = StateKeeper(lambda: store,
                         lambda rows: snapshot(settings=dict(live), trackact={"calls": 0}),
                         lambda s: restored.append(s) or [], interval_s=3600)
    keeper.start()
    assert keeper.status()["last_error"] and "cannot read" in keeper.status()["last_error"]
    live["n"] = 7  # the operator works on the fresh state ...
    path.rmdir()
    old = snapshot(settings={"n": 41})
    FileStore(path).save(old)  # ... and then the store answers with an older snapshot
    live["n"] = 0  # back to the start state: nothing changed since the start
    assert not keeper.save_if_changed(force=True)
    assert restored == []  # never restored over the live state
    problems = keeper.status()["problems"]
    assert len(problems) == 1 and "not restored" in problems[0] and str(path) in problems[0]
    keeper.close()  # the last save is held too
    assert store.load() == old
    assert keeper.status()["saves"] == 0


def test_after_a_late_load_the_first_change_is_saved(tmp_path: Path) -> None:
    store, path = late_store(tmp_path)
    live = {"n": 0}
    keeper = StateKeeper(lambda: store,
                         lambda rows: snapshot(settings=dict(live), trackact={"calls": 0}),
                         lambda s: [], interval_s=3600)
    keeper.start()
    path.rmdir()
    FileStore(path).save(snapshot(settings={"n": 41}))
    assert not keeper.save_if_changed()
    live["n"] = 3
    assert keeper.save_if_changed()
    loaded = store.load()
    assert loaded is not None and loaded.settings == {"n": 3}
    keeper.close()


@pytest.fixture
def service() -> Iterator[Any]:
    from jsorc_live.api import build_service

    made: list[Any] = []

    def make(**options: Any) -> Any:
        svc, _ = build_service(TOKEN, **options)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.close()


def test_start_up_flags_win_unless_the_api_changed_the_value(
        tmp_path: Path, service: Any) -> None:
    store = FileStore(tmp_path / "s.json")
    first = service()
    keeper = StateKeeper.for_service(first, lambda: store)
    keeper.start()
    first.config_set("max_replicas", 5)
    assert keeper.save_if_changed()
    keeper.close()
    saved = store.load()
    assert saved is not None
    assert saved.settings == {"max_replicas": 5}  # what the API changed, no defaults
    assert saved.policy == {}  # never set through the API

    # Started again with flags: --policy all_remote --max-replicas 4 --keep-alive redis.
    second = service(policy="all_remote", max_replicas=4)
    second.settings.set("keep_alive", "redis")
    keeper = StateKeeper.for_service(second, lambda: store,
                                     explicit={"policy", "max_replicas", "keep_alive"})
    keeper.start()
    assert second.policy_name == "all_remote" and second.settings.keep_alive == ("redis",)
    assert second.settings.max_replicas == 5  # the API's value wins the conflict ...
    problems = keeper.status()["problems"]
    assert len(problems) == 1, problems  # ... and the operator is told
    assert "max_replicas" in problems[0] and "4" in problems[0] and "5" in problems[0]
    assert keeper.save_if_changed(force=True)
    keeper.close()
    saved = store.load()
    assert saved is not None and saved.settings == {"max_replicas": 5} and saved.policy == {}

    # A flag equal to the API's value, then a restart without it: the API's value stays.
    third = service(max_replicas=5)
    keeper = StateKeeper.for_service(third, lambda: store, explicit={"max_replicas"})
    keeper.start()
    keeper.close()
    saved = store.load()
    assert saved is not None and saved.settings == {"max_replicas": 5}
    assert keeper.status()["problems"] == []


def test_the_dropped_trackact_rows_are_reported(tmp_path: Path, service: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from jsorc_live import store as store_module

    monkeypatch.setattr(store_module, "TRACK_ROWS_KEPT", 2)
    svc = service()
    store = FileStore(tmp_path / "s.json")
    keeper = StateKeeper.for_service(svc, lambda: store)
    keeper.start()
    row = [1.0, 7, "app", "text_seg", "local", None, 0.1, 2.0, None, 2.2, True, False, None]
    svc.runtime.track_resume([tuple([i, *row[1:]]) for i in range(5)])
    assert keeper.save_if_changed()
    saved = store.load()
    assert saved is not None and [r[0] for r in saved.trackact["rows"]] == [3, 4]
    status = keeper.status()
    assert status["trackact_rows_dropped"] == 3
    assert any("3" in p and "trackact" in p for p in status["problems"]), status["problems"]
    keeper.close()


def test_flags_given_at_start_meet_the_saved_state(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The reviewer's case end to end: a restart on the same address with flags."""
    port = free_port()
    args = ("--state-dir", str(tmp_path))
    with serving(port, *args, log=tmp_path / "serve.log") as url:
        jsorc(url, "config", "set", "backoff_interval", "2.5", capsys=capsys)
    with serving(port, *args, "--policy", "all_remote", "--max-replicas", "4",
                 log=tmp_path / "serve.log") as url:
        status = jsorc(url, "status", capsys=capsys)
        jsorc(url, "config", "set", "max_replicas", "6", capsys=capsys)
    assert status["policy"] == "all_remote" and status["config"]["max_replicas"] == 4
    assert status["config"]["backoff_interval"] == 2.5 and status["state"]["problems"] == []
    with serving(port, *args, "--max-replicas", "3", log=tmp_path / "serve.log") as url:
        status = jsorc(url, "status", capsys=capsys)
    assert status["config"]["max_replicas"] == 6 and status["policy"] == "default"
    problems = status["state"]["problems"]
    assert len(problems) == 1 and "max_replicas" in problems[0], problems
