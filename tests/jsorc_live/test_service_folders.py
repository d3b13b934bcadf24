"""The folders root prepares for a service that runs as another user: nothing a local user
planted (a symlink, a folder of theirs, a writable one) is followed, chowned or used.

These run as root only (the stand-in exists only when jsorc runs as root and switches user);
each test removes its own folder under /var/lib/jsorc/services and keeps the parent.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jsorc_live.services import (
    STAND_IN_ROOT,
    HealthCheck,
    HealthKind,
    KeptService,
    ServiceDefinition,
    State,
    _safe_folder,
    _stand_in,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root prepares these folders")
NOBODY = pwd.getpwnam("nobody").pw_uid


def sleeper(user: str | None = "nobody") -> ServiceDefinition:
    return ServiceDefinition("sleeper", ("sleep", "30"), HealthCheck(
        HealthKind.COMMAND, command=("true",)), user=user, persistent=True)


def refused(service: KeptService) -> str:
    service.start()
    try:
        status = service.status()
        assert status["state"] == State.MISSING.value, status  # a refused start, said so
        return str(status["message"])
    finally:
        service.stop()


@pytest.fixture()
def unreachable(tmp_path: Path) -> Iterator[Path]:
    """A state folder nobody may not reach (under pytest's 0700 tmp); its stand-in is
    removed afterwards, the parents under /var/lib/jsorc are kept."""
    os.chmod(tmp_path, 0o700)
    data = tmp_path / "state" / "sleeper"
    yield data
    stand_in = _stand_in(data)
    if stand_in.is_symlink() or stand_in.is_file():
        stand_in.unlink()
    else:
        shutil.rmtree(stand_in, ignore_errors=True)


def test_safe_folder_refuses_a_symlink_a_stranger_s_folder_and_a_writable_one(
        tmp_path: Path) -> None:
    real = tmp_path / "real"
    _safe_folder(real)  # made, root's, 0755: accepted
    assert stat.S_ISDIR(os.lstat(real).st_mode) and os.lstat(real).st_uid == 0
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(OSError, match="not a real folder"):
        _safe_folder(link)
    theirs = tmp_path / "theirs"
    theirs.mkdir(0o755)
    os.chown(theirs, NOBODY, -1)
    with pytest.raises(OSError, match=f"owned by uid {NOBODY}"):
        _safe_folder(theirs)
    _safe_folder(theirs, may_own=NOBODY)  # the last level is the service user's
    open_ = tmp_path / "open"
    open_.mkdir()
    os.chmod(open_, 0o777)
    with pytest.raises(OSError, match="writable by group or others"):
        _safe_folder(open_)


def test_the_stand_in_is_root_s_own_place_and_the_last_level_the_user_s(
        unreachable: Path) -> None:
    assert Path("/var/lib/jsorc/services") == STAND_IN_ROOT
    service = KeptService(sleeper(), data_dir=unreachable)
    service.start()
    try:
        workdir = service.workdir
        assert workdir == _stand_in(unreachable) and workdir.parent == STAND_IN_ROOT
        for level in (STAND_IN_ROOT.parent, STAND_IN_ROOT):
            st = os.lstat(level)
            assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0
            assert not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        for path in (workdir, workdir / "data", workdir / "password"):
            assert os.lstat(path).st_uid == NOBODY, path
        assert stat.S_IMODE(os.lstat(workdir / "password").st_mode) == 0o600
    finally:
        service.stop()


def test_a_planted_symlink_at_the_stand_in_is_refused_and_not_followed(
        unreachable: Path, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.mkdir()
    STAND_IN_ROOT.mkdir(parents=True, exist_ok=True)
    _stand_in(unreachable).symlink_to(target)
    message = refused(KeptService(sleeper(), data_dir=unreachable))
    assert "not a real folder" in message and str(_stand_in(unreachable)) in message
    assert os.lstat(target).st_uid == 0 and not any(target.iterdir())  # untouched


def test_a_stand_in_writable_by_others_is_refused(unreachable: Path) -> None:
    stand_in = _stand_in(unreachable)
    STAND_IN_ROOT.mkdir(parents=True, exist_ok=True)
    stand_in.mkdir()
    os.chown(stand_in, NOBODY, -1)
    os.chmod(stand_in, 0o777)
    message = refused(KeptService(sleeper(), data_dir=unreachable))
    assert "writable by group or others" in message and "777" in message


def test_links_the_service_user_plants_in_its_folder_are_never_followed() -> None:
    """The service user owns its folder, so it may swap `password` or `data` for a link:
    root neither chowns nor writes what they point at."""
    base = Path(tempfile.mkdtemp(prefix="jsorc-folder-"))  # under /tmp: nobody reaches it
    try:
        os.chmod(base, 0o755)
        victim = base / "victim"
        victim.write_text("root's\n")
        for planted in ("password", "data"):
            workdir = base / planted / "sleeper"
            workdir.mkdir(parents=True)
            os.chmod(workdir.parent, 0o755)
            (workdir / planted).symlink_to(victim)
            message = refused(KeptService(sleeper(), data_dir=workdir))
            assert planted in message and ("symlink" in message or "real folder" in message)
            st = os.lstat(victim)
            assert st.st_uid == 0 and victim.read_text() == "root's\n", planted
    finally:
        shutil.rmtree(base)
