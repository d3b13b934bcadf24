"""The Debian servers the keep-alive tests run (prometheus, redis-server).

A test that needs one skips when it is absent, except in CI (the environment variable CI is
set), where .ci/run installs them: there an absent binary fails the test.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def need(binary: str) -> str:
    """The binary's path; skip (fail in CI) when it is not installed."""
    path = shutil.which(binary)
    if path is None:
        message = (f"{binary} is not installed (apt-get install prometheus redis-server; "
                   ".ci/run does it in CI)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def poll(probe: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 0.1
         ) -> T:
    """Call `probe` until it returns something other than None/False; fail after the bound."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last is not None and last is not False:
            return last
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")
