"""jsorc's router calls a real Jaseci 1.4 action server attached with `jsorc actions load
NAME -mode remote --url URL`: a walker run through `jsorc serve` reaches Jaseci's server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jsorc_live import cli
from tests.jsorc_live.servers import JASECI_PYTHON, Server, jsorc_serving
from tests.jsorc_live.test_api_cli import REPO, TOKEN
from tests.jsorc_live.test_jaseci_interop import jaseci_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(not JASECI_PYTHON.exists(),
                                reason=".jaseci-venv missing: run `make jaseci-env`")

CONFIG = '''
from jsorc_live.actions.config import ActionConfig

# An action only served by an attached (Jaseci) server: its module is never loaded here.
ACTION_CONFIGS = {"demo": ActionConfig(name="demo", module="sample_actions",
                                       local_memory_mb=1, remote_memory_mb=1)}
'''


@pytest.fixture()
def serve_with_config(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "demo_config.py").write_text(CONFIG)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    with jsorc_serving(TOKEN, "--config", "demo_config", env=env) as url:
        yield url


def admin(url: str, path: str, body: dict[str, object]) -> dict[str, object]:
    answer = httpx.post(url + path, json=body, headers={"Authorization": f"token {TOKEN}"},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


def test_the_router_calls_an_attached_jaseci_action_server(
        serve_with_config: str, jaseci_server: Server,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    url = serve_with_config
    argv = ["--server", url, "--token", TOKEN]
    assert cli.main(["actions", "config", "demo", "demo_config", *argv]) == 0
    assert cli.main(["actions", "load", "demo", "-mode", "remote", "--url",
                     jaseci_server.url, *argv]) == 0
    status = admin(url, "/jsorc/actions/status", {"name": "demo"})["action_status"]
    assert status["remote"]["attached"] is True  # type: ignore[index]
    admin(url, "/jsorc/walker/set", {"name": "twice", "steps": [
        {"action": "demo", "function": "double", "args": {"x": "x"}}]})
    run = httpx.post(url + "/walker_run", json={"name": "twice", "ctx": {"x": 21}}, timeout=30)
    assert run.status_code == 200, run.text
    assert 42 in run.json()["report"], run.json()
    # The call went over the wire to Jaseci's server, as the call log says.
    admin(url, "/jsorc/trackact/start", {})
    httpx.post(url + "/walker_run", json={"name": "twice", "ctx": {"x": 5}}, timeout=30)
    calls = admin(url, "/jsorc/trackact/stop", {})["calls"]
    assert [(c["action"], c["placement"], c["ok"]) for c in calls] == [  # type: ignore[union-attr, index]
        ("demo", "remote", True)]
    # Jaseci's server does not say how long the action worked: no split of the round trip.
    service = calls[0]["service_ms"]  # type: ignore[index]
    assert service is None or service != service, service  # JSON null, or NaN
