"""`jsorc devcluster` as a user runs it: a subprocess that writes the kubeconfig, serves
kubectl, runs pods, and on SIGTERM stops every pod process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from kubernetes import client, config

from tests.conftest import REPO
from tests.jsorc_live.devcluster.helpers import action_deployment, kubectl, wait_for


def test_devcluster_command_serves_until_sigterm(tmp_path: Path, kubectl_bin: str) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    out = (tmp_path / "out.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "jsorc_live.cli", "devcluster",
                             "--kubeconfig", str(kubeconfig), "--namespace", "demo"],
                            cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for("the kubeconfig", kubeconfig.exists, timeout_s=20)
        namespaces = kubectl(kubectl_bin, kubeconfig, "get", "ns").stdout
        assert "demo" in namespaces and "default" in namespaces
        configuration = client.Configuration()
        config.load_kube_config(str(kubeconfig), client_configuration=configuration)
        with client.ApiClient(configuration) as api:
            client.AppsV1Api(api).create_namespaced_deployment("demo", action_deployment("c"))
            core = client.CoreV1Api(api)

            def running_pid() -> int | None:
                pods = core.list_namespaced_pod("demo").items
                statuses = [s for p in pods for s in p.status.container_statuses or []]
                ids = [s.container_id for s in statuses if s.ready and s.container_id]
                return int(ids[0].removeprefix("devcluster://")) if ids else None

            pid = wait_for("a ready pod", running_pid, timeout_s=30)
        assert psutil.pid_exists(pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
    text = (tmp_path / "out.log").read_text()
    assert "API at http://127.0.0.1:" in text and "kubectl --kubeconfig" in text
    assert "stopped on SIGTERM" in text
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_without_kmock_one_line_names_the_extra(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['kmock'] = None\n"
            "from jsorc_live.cli import main\n"
            f"sys.exit(main(['devcluster', '--kubeconfig', {str(tmp_path / 'k')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=60, env={**os.environ})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "jsorc: devcluster needs kmock: pip install -e '.[devcluster]'"]
