"""A real PostgreSQL for tests: Debian's binaries, a fresh cluster in a temporary folder,
the server on a free loopback port, stopped (and the folder removed) at the end.

PostgreSQL refuses to run as root, so under root the cluster belongs to `nobody` (initdb
and postgres run as that user; the folder is created in /tmp, which nobody can reach, and
chowned). The superuser is then `nobody`, with trust authentication on loopback only. A test
skips when the binaries are absent, except in CI (CI is set), where .ci/run installs them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jsorc_live.backend import free_port

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def postgres_bin() -> Path:
    """The folder of the newest installed PostgreSQL's binaries; skip (fail in CI) if none."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:
        message = ("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/postgres: "
                   "apt-get install postgresql; .ci/run does it in CI)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found[-1].parent


@dataclass
class Postgres:
    """One running cluster: `url` connects as its superuser to database `postgres`."""

    bin: Path
    base: Path
    port: int
    user: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run_as(self) -> dict[str, object]:
        return {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid,
                "extra_groups": []} if os.geteuid() == 0 else {}

    def init(self) -> None:
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                        "-U", self.user, "--no-sync"], check=True, capture_output=True,
                       timeout=120, **self._run_as())  # type: ignore[call-overload]

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # type: ignore[call-overload]
                [str(self.bin / "postgres"), "-D", str(self.data), "-k", str(self.base),
                 "-h", "127.0.0.1", "-p", str(self.port), "-c", "fsync=off"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                **self._run_as())
        self.wait_ready()

    def wait_ready(self) -> float:
        """Poll a connection until the server answers; the seconds waited."""
        import psycopg

        start = time.monotonic()
        while time.monotonic() - start < READY_TIMEOUT_S:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"postgres exited with {self.proc.returncode}:\n"
                                     + self.log.read_text(errors="replace"))
            with contextlib.suppress(psycopg.OperationalError):
                psycopg.connect(self.url, connect_timeout=1).close()
                return time.monotonic() - start
            time.sleep(0.1)
        raise AssertionError(f"postgres on port {self.port} not ready after "
                             f"{READY_TIMEOUT_S} s:\n" + self.log.read_text(errors="replace"))

    def stop(self) -> None:
        """A fast shutdown (SIGINT: clients are disconnected), SIGKILL after the bound."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A fresh cluster, serving until the block ends; then stopped and removed."""
    binaries = postgres_bin()
    user = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    base = Path(tempfile.mkdtemp(prefix="jsorc-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    server = Postgres(binaries, base, free_port(), user)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
