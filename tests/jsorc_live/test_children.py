"""jsorc_live.children with real processes: a child's environment holds only the allow-list
and its extras; a child outlives the short-lived thread that asked for it but not its parent
process; stopping is bounded for children that ignore SIGTERM or are frozen; the state file
lets the next owner stop what a killed one left, and never a process whose pid was reused.

Every process a test starts is killed in `finally`; every wait has a generous bound.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from jsorc_live.children import (
    ChildRecord,
    Children,
    StateFileBusy,
    child_env,
    state_path,
    write_state,
)
from tests.jsorc_live.binaries import poll

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
# Ignores SIGTERM, as a replica stuck in a call may in effect do.
STUBBORN = [sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(600)"]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def kill(*pids: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture()
def children() -> Iterator[Children]:
    owner = Children()
    try:
        yield owner
    finally:
        owner.kill_all()
        owner.release_state_file()


def test_the_environment_is_the_allow_list_plus_extras() -> None:
    server = {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "JSORC_TOKEN": "secret",
              "JSORC_ADMIN_PASSWORD": "pw", "AWS_SECRET_ACCESS_KEY": "k",
              "JSORC_ACTION_SCALE": "0.1", "PYTHONPATH": "/src"}
    assert child_env({"EXTRA": "1"}, server) == {
        "PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "JSORC_ACTION_SCALE": "0.1",
        "PYTHONPATH": "/src", "EXTRA": "1"}


def test_a_child_never_sees_the_token(children: Children, monkeypatch: pytest.MonkeyPatch
                                      ) -> None:
    monkeypatch.setenv("JSORC_TOKEN", "the-admin-token")
    monkeypatch.setenv("JSORC_ADMIN_PASSWORD", "the-password")
    popen = children.spawn(SLEEPER, kind="replica", name="a", env={"GIVEN": "yes"})
    env = environ_of(popen.pid)
    assert "JSORC_TOKEN" not in env and "JSORC_ADMIN_PASSWORD" not in env
    assert env["GIVEN"] == "yes" and env["PATH"] == os.environ["PATH"]
    assert "the-admin-token" not in Path(f"/proc/{popen.pid}/environ").read_text()
    assert os.getpgid(popen.pid) == popen.pid  # it leads its own group
    children.stop(popen)
    assert popen.returncode is not None and children.records() == []


def test_a_child_outlives_the_thread_that_started_it(children: Children) -> None:
    started: list[subprocess.Popen[bytes]] = []
    thread = threading.Thread(target=lambda: started.append(
        children.spawn(SLEEPER, kind="replica", name="a")))
    thread.start()
    thread.join()
    time.sleep(1.0)  # the parent-death signal would have come at once
    assert alive(started[0].pid), "the child died with the (short-lived) thread"
    children.stop(started[0])


PARENT = """
import sys, threading, time
from jsorc_live.children import Children
children = Children(die_with_parent=sys.argv[1] == "1")
out = []
# From a thread that ends at once, as the router's pool threads do.
thread = threading.Thread(target=lambda: out.append(children.spawn(
    [sys.executable, "-c", "import time; time.sleep(600)"], kind="replica", name="a")))
thread.start(); thread.join()
print(out[0].pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("die_with_parent", [True, False])
def test_children_die_with_a_killed_parent(die_with_parent: bool) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, "1" if die_with_parent else "0"],
                              stdout=subprocess.PIPE)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()
        parent.wait(timeout=10)
        if die_with_parent:
            poll(lambda: not alive(child), 10.0, "the child of a SIGKILLed parent to die")
        else:  # the mechanism is what kills it: without it the child is orphaned
            time.sleep(1.0)
            assert alive(child)
    finally:
        kill(parent.pid, *([child] if child else []))


def test_stopping_is_bounded_for_stubborn_and_frozen_children(children: Children) -> None:
    popens = [children.spawn(STUBBORN, kind="replica", name=f"s{i}", stdout=subprocess.PIPE)
              for i in range(4)]
    for popen in popens:
        assert popen.stdout is not None and popen.stdout.readline() == b"ready\n"
    frozen = children.spawn(SLEEPER, kind="service", name="frozen")
    os.kill(frozen.pid, signal.SIGSTOP)
    began = time.monotonic()
    children.stop_all([*popens, frozen], grace_s=2.0, kill_wait_s=2.0)
    took = time.monotonic() - began
    assert all(p.returncode is not None for p in [*popens, frozen])
    assert [p.returncode for p in popens] == [-signal.SIGKILL] * 4
    # One deadline for all (about 2 s): one after another it would be at least 5 x 2 s.
    assert took < 7.0, f"stop_all took {took:.1f} s"
    assert children.records() == []


def test_the_next_owner_stops_leftovers_and_never_a_reused_pid(tmp_path: Path) -> None:
    path = state_path(tmp_path, "127.0.0.1", 8123)
    leftover = subprocess.Popen(SLEEPER, start_new_session=True)
    stranger = subprocess.Popen(SLEEPER, start_new_session=True)
    gone = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        left = ChildRecord.of(leftover.pid, kind="replica", name="a",
                              url="http://127.0.0.1:9", cmdline=SLEEPER)
        # The stranger holds a pid the state file names, but it started at another time.
        reused = ChildRecord.of(stranger.pid, kind="replica", name="b", cmdline=SLEEPER)
        reused = ChildRecord(reused.pid, reused.create_time - 1000.0, reused.exe,
                             reused.cmdline, "replica", "b")
        dead = ChildRecord.of(gone.pid, kind="service", name="prometheus")
        gone.kill()
        gone.wait()
        write_state(path, [left, reused, dead])

        owner = Children()
        try:
            stopped = owner.use_state_file(path, grace_s=2.0)
            assert stopped == [left]
            # psutil reaped it (here it is the test's child), so no exit code to read.
            poll(lambda: not alive(leftover.pid), 10.0, "the leftover to be gone")
            assert alive(stranger.pid), "a process with a reused pid was killed"
            with pytest.raises(StateFileBusy, match="same address"):
                Children().use_state_file(path)
        finally:
            owner.release_state_file()
        assert not path.exists()  # no child left: nothing for the next owner
        assert not path.with_suffix(".lock").exists()
        successor = Children()
        assert successor.use_state_file(path) == []  # the lock was released
        successor.release_state_file()
    finally:
        kill(leftover.pid, stranger.pid)
        for popen in (leftover, stranger):
            popen.wait(timeout=10)


def test_the_state_file_lists_the_children_while_they_run(tmp_path: Path,
                                                          children: Children) -> None:
    path = state_path(tmp_path, "127.0.0.1", 8124)
    assert children.use_state_file(path) == []
    popen = children.spawn(SLEEPER, kind="replica", name="a", url="http://127.0.0.1:9")
    listed = path.read_text()
    assert f'"pid": {popen.pid}' in listed and '"url": "http://127.0.0.1:9"' in listed
    children.stop(popen)
    assert f'"pid": {popen.pid}' not in path.read_text()
