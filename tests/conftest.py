"""Shared fixtures. Real traces live in ../shared/traces beside the clone (or $JSORC_TRACES)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def traces_path() -> Path:
    return Path(os.environ.get("JSORC_TRACES", REPO.parent / "shared" / "traces"))


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    path = traces_path()
    if not path.is_dir():
        pytest.fail(f"real traces not found at {path}: set JSORC_TRACES or put ../shared "
                    "beside the clone")
    return path
