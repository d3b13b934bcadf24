"""PostgreSQL kept alive (Debian's binaries as a plain process on 127.0.0.1): a table written
before `kill -9` of the postmaster is there, with its rows, once the service is back; its data
folder outlives a restart of jsorc's MetaService when it is given a state folder; and its
database URL is the one the runtime's store is handed. Every wait is bounded; every process
is killed in `finally`.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from jsorc_live.service_kinds import postgres_bindir
from jsorc_live.services import Backoff, MetaService
from tests.jsorc_live.test_services import alive, kill_all, ready


def need_postgres() -> Path:
    bindir = postgres_bindir()
    if bindir is None:
        message = "postgresql is not installed (apt-get install postgresql; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return bindir


def rows(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return [(int(r[0]), str(r[1])) for r in
                conn.execute("SELECT id, name FROM placements ORDER BY id").fetchall()]


@pytest.fixture()
def state_dir() -> Iterator[Path]:
    """A state folder the service's user (nobody, under root) can reach: pytest's tmp_path
    sits in a 0700 folder."""
    folder = Path(tempfile.mkdtemp(prefix="jsorc-pg-test-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_postgresql_comes_back_after_kill_9_with_its_table_intact(state_dir: Path) -> None:
    need_postgres()
    tmp_path = state_dir
    names = ["postgresql"]
    meta = MetaService(lambda: names, poll_s=0.1, backoff=Backoff(initial_s=0.2),
                       ready_timeout_s=60, state_dir=tmp_path)
    pids: set[int] = set()
    try:
        assert meta.database_url() is None  # nothing kept alive yet
        meta.start()
        pg = meta.service("postgresql")
        began = time.monotonic()
        first = pg.wait_for(ready(), 90)
        assert first["state"] == "READY", first
        first_ready = time.monotonic() - began
        pids.add(first["pid"])
        url = meta.database_url()
        assert url is not None and url.startswith("postgresql://jsorc:")
        assert f"@127.0.0.1:{first['port']}/postgres" in url
        # The password is asked for: no password, no connection.
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host="127.0.0.1", port=first["port"], user="jsorc",
                            dbname="postgres", password="wrong", connect_timeout=5).close()
        written = [(i, f"action-{i}") for i in range(1, 51)]
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("CREATE TABLE placements (id int PRIMARY KEY, name text)")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO placements VALUES (%s, %s)", written)
        # The pid watched is the postmaster's own (setpriv execs, no runuser in between).
        with open(f"/proc/{first['pid']}/cmdline", "rb") as f:
            assert Path(f.read().split(b"\0")[0].decode()).name == "postgres"

        killed = time.monotonic()
        os.kill(first["pid"], signal.SIGKILL)
        again = pg.wait_for(ready(first["pid"]), 90)
        back = time.monotonic() - killed
        assert again["state"] == "READY", again
        pids.add(again["pid"])
        assert again["restarts"] == 1 and again["port"] == first["port"]
        assert "exited with -9" in (again["last_error"] or "")
        assert meta.database_url() == url
        assert rows(url) == written

        # A new MetaService on the same state folder (jsorc serve restarted): same data, no
        # second initdb.
        meta.close()
        assert not alive(again["pid"])
        meta = MetaService(lambda: names, poll_s=0.1, ready_timeout_s=60, state_dir=tmp_path)
        meta.start()
        third = meta.service("postgresql").wait_for(ready(), 90)
        assert third["state"] == "READY", third
        pids.add(third["pid"])
        url3 = meta.database_url()
        assert url3 is not None and rows(url3) == written
        print(f"postgresql: first ready in {first_ready:.1f} s (initdb included); back "
              f"{back:.1f} s after kill -9 with {len(written)} rows; restarted on its folder")
    finally:
        meta.close()
        kill_all(pids)
