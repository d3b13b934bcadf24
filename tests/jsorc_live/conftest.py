"""Fixtures of the live actions tests: one action server of sample_actions.py per session
(each xdist worker has its own), stopped at the end whatever happens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.jsorc_live.servers import SAMPLE, Server, free_port, jsorc_server_cmd, running


@pytest.fixture(scope="session")
def sample_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``python -m jsorc_live.actions.server tests/jsorc_live/sample_actions.py``."""
    port = free_port()
    log = tmp_path_factory.mktemp("sample_server") / "server.log"
    with running(jsorc_server_cmd(SAMPLE, port), port, log) as server:
        yield server
