"""`jsorc serve --backend kube --kubeconfig F` end to end: a subprocess on the dev cluster,
driven by `jsorc actions config / load -mode remote / status / unload` and a walker run."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from jsorc_live import cli
from tests.jsorc_live.kube.conftest import Kube, wait_for
from tests.jsorc_live.kube.light_config import LIGHT
from tests.jsorc_live.servers import jsorc_serving

TOKEN = "kube-token"
CONFIG = "tests.jsorc_live.kube.light_config"


def jsorc(url: str, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = cli.main([*argv, "--server", url, "--token", TOKEN, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err.strip())


def test_serve_with_the_kube_backend_through_the_cli(
        cluster: Any, kube: Kube, capsys: pytest.CaptureFixture[str]) -> None:
    with jsorc_serving(TOKEN, "--backend", "kube", "--kubeconfig", str(cluster.kubeconfig),
                       "--namespace", cluster.namespace, "--config", CONFIG) as url:
        code, answer = jsorc(url, "config", "get", "kubernetes", capsys=capsys)
        assert code == 0 and answer["value"]["config"] == str(cluster.kubeconfig)
        same = json.dumps(answer["value"])
        assert jsorc(url, "config", "set", "kubernetes", same, capsys=capsys)[0] == 0
        code, err = jsorc(url, "config", "set", "kubernetes", "false", capsys=capsys)
        assert code == 2 and "restart" in err
        code, err = jsorc(url, "config", "set", "namespace", "other", capsys=capsys)
        assert code == 2 and "chosen at start" in err

        code, answer = jsorc(url, "actions", "config", LIGHT, CONFIG, capsys=capsys)
        assert code == 0 and answer["action_status"]["mode"] == "unloaded"
        code, answer = jsorc(url, "actions", "load", LIGHT, "-mode", "remote", "--replicas",
                             "2", capsys=capsys)
        assert code == 0 and answer["action_status"]["mode"] == "remote"

        def ready() -> Any:
            status = jsorc(url, "actions", "status", LIGHT, capsys=capsys)[1]["action_status"]
            remote = status.get("remote") or {}
            return status if remote.get("status") == "READY" and len(
                remote.get("replicas", [])) == 2 else None

        status = wait_for("two ready replicas", ready, 40)
        pod_ips = {p.status.pod_ip for p in kube.pods()}
        assert {u.split("//")[1].split(":")[0] for u in status["remote"]["replicas"]} == pod_ips
        assert status["kubernetes"]["deployment"] == "jsorc-light-act"
        assert status["kubernetes"]["ready"] == 2

        headers = {"Authorization": f"token {TOKEN}"}
        httpx.post(url + "/jsorc/walker/set", headers=headers, timeout=10, json={
            "name": "twice", "steps": [{"action": LIGHT, "function": "double",
                                        "args": {"x": "x"}}]}).raise_for_status()
        code, answer = jsorc(url, "walker", "run", "twice", "--ctx", '{"x": 4}', capsys=capsys)
        assert code == 0 and answer["report"] == [8]

        code, answer = jsorc(url, "actions", "unload", LIGHT, capsys=capsys)
        assert code == 0
        wait_for("everything deleted", lambda: not kube.deployments() and not kube.services()
                 and not kube.pods(running=False), 30)
        # Loaded again and left loaded: the server's exit deletes what it owns.
        assert jsorc(url, "actions", "load", LIGHT, "-mode", "remote", capsys=capsys)[0] == 0
        wait_for("one ready replica", lambda: len(kube.pods()) == 1, 30)
    deadline = time.monotonic() + 30
    while kube.deployments() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not kube.deployments() and not kube.services()
