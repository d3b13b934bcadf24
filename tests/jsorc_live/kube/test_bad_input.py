"""What the kube backend says when it cannot work: one line naming what is missing, at start
(`KubeError`; `jsorc serve --backend kube` exits 2 with it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from jsorc_live.kube import KubeBackend, KubeError, KubeSettings
from tests.conftest import REPO
from tests.jsorc_live.kube.conftest import TUNING, kubeconfig_text, settings_of
from tests.jsorc_live.servers import free_port


def connect(settings: KubeSettings, namespace: str = "jsorc") -> KubeBackend:
    return KubeBackend.connect(settings, namespace, **TUNING)


def one_line(exc: pytest.ExceptionInfo[KubeError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and message, message
    return message


def test_a_missing_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(KubeError) as exc:
        connect(KubeSettings(config=str(tmp_path / "nope")))
    assert one_line(exc) == f"kubeconfig {tmp_path / 'nope'} does not exist"


@pytest.mark.parametrize(("text", "words"), [
    (": : not yaml [", "is not YAML"),
    ("just a string", "is not a kubeconfig"),
    ("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n", "names no current-context"),
])
def test_an_invalid_kubeconfig(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    with pytest.raises(KubeError) as exc:
        connect(KubeSettings(config=str(path)))
    assert words in one_line(exc) and str(path) in one_line(exc)


def test_a_context_that_is_not_in_the_kubeconfig(cluster: Any) -> None:
    with pytest.raises(KubeError) as exc:
        connect(KubeSettings(config=str(cluster.kubeconfig), context="prod"))
    assert "context 'prod' is not in kubeconfig" in one_line(exc)
    assert "jsorc-dev" in one_line(exc)  # it names the contexts it has


def unreachable_kubeconfig(cluster: Any, tmp_path: Path) -> Path:
    doc = yaml.safe_load(kubeconfig_text(cluster))
    for entry in doc["clusters"]:
        entry["cluster"]["server"] = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "unreachable"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_an_unreachable_api_server(cluster: Any, tmp_path: Path) -> None:
    with pytest.raises(KubeError) as exc:
        connect(KubeSettings(config=str(unreachable_kubeconfig(cluster, tmp_path))))
    assert "cannot reach http://127.0.0.1:" in one_line(exc)


def test_a_namespace_that_does_not_exist(cluster: Any) -> None:
    with pytest.raises(KubeError) as exc:
        connect(settings_of(cluster), namespace="nowhere")
    assert "namespace 'nowhere' does not exist" in one_line(exc)


def test_forbidden(cluster: Any) -> None:
    cluster.faults.inject("GET", r"/namespaces/jsorc/deployments$", status=403)
    try:
        with pytest.raises(KubeError) as exc:
            connect(settings_of(cluster))
    finally:
        cluster.faults.clear()
    assert "forbidden" in one_line(exc) and "list deployments" in one_line(exc)


def test_an_inline_kubeconfig_works(cluster: Any) -> None:
    backend = connect(KubeSettings(config=kubeconfig_text(cluster)))
    try:
        assert backend.adopted() == {}
    finally:
        backend.shutdown()


@pytest.mark.parametrize("case", ["missing", "invalid", "unreachable", "namespace"])
def test_jsorc_serve_exits_2_with_one_line(cluster: Any, tmp_path: Path, case: str) -> None:
    args = ["--kubeconfig", str(tmp_path / "missing")]
    if case == "invalid":
        (tmp_path / "bad").write_text("clusters: 3\n")
        args = ["--kubeconfig", str(tmp_path / "bad")]
    elif case == "unreachable":
        args = ["--kubeconfig", str(unreachable_kubeconfig(cluster, tmp_path))]
    elif case == "namespace":
        args = ["--kubeconfig", str(cluster.kubeconfig), "--namespace", "nowhere"]
    done = subprocess.run([sys.executable, "-m", "jsorc_live.cli", "serve", "--backend", "kube",
                           "--token", "t", "--port", str(free_port()), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("jsorc: cannot start: "), lines
    words = {"missing": "does not exist", "invalid": "is not a kubeconfig",
             "unreachable": "cannot reach", "namespace": "namespace 'nowhere' does not exist"}
    assert words[case] in lines[0]


def test_in_cluster_outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeError) as exc:
        connect(KubeSettings(in_cluster=True))
    assert "not running in a Kubernetes pod" in one_line(exc)


def test_in_a_pod_without_a_kubeconfig_the_service_account_is_the_default(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from jsorc_live.kube.client import resolved

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert resolved(KubeSettings()) == KubeSettings()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert resolved(KubeSettings()) == KubeSettings(in_cluster=True)
    assert resolved(KubeSettings(config="/k")) == KubeSettings(config="/k")
