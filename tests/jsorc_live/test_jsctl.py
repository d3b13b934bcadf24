"""Jaseci 1.4's own `jsctl` and JSORC's own tests drive `jsorc serve` (a subprocess on a free
127.0.0.1 port, started with the admin's email and password).

`jsctl` is Jaseci 1.4.2.6's (.jaseci-venv, `make jaseci-env`): the console script logs in
(`jsctl -f SESSION login URL -u EMAIL --password PW` writes its session file), then
tests/jsorc_live/jsctl_driver.py runs the seed's commands through the same click commands in
one process (importing jsctl costs seconds; `jsctl script` runs commands the same way). The
second half ports jaseci_serv/jsorc/tests/test_jsorc_api_kube.py: its payloads posted to
`/js_admin/<op>`, its assertions kept (example_module/jac_misc become use_enc and jsorc's
example config; a pod is a replica process; the 20 s wait is a few control intervals).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.jsorc_live.binaries import poll
from tests.jsorc_live.servers import JASECI_PYTHON, JASECI_VENV, jsorc_serving

pytestmark = pytest.mark.skipif(not JASECI_PYTHON.exists(),
                                reason=".jaseci-venv missing: run `make jaseci-env`")

TOKEN = "jsctl-admin-token"
EMAIL, PASSWORD = "admin@example.com", "correct horse"
ADMIN = {"Authorization": f"token {TOKEN}"}
DRIVER = Path(__file__).with_name("jsctl_driver.py")
JSCTL = JASECI_VENV / "bin" / "jsctl"
CONFIG = "jsorc_live.actions.config"
MODULE = "jsorc_live.actions.examples.use_enc"
# A walker over the light action: use_enc's weights are 4 MB at this scale.
ENCODE = {"name": "encode_text", "steps": [{"action": "use_enc", "function": "encode",
                                            "args": {"text": "text"},
                                            "defaults": {"text": "hello"}}]}


def serve_env() -> dict[str, str]:
    return {**os.environ, "JSORC_ADMIN_EMAIL": EMAIL, "JSORC_ADMIN_PASSWORD": PASSWORD,
            "JSORC_ACTION_SCALE": "0.001"}


def jaseci_env(home: Path) -> dict[str, str]:
    """jsctl's environment: a scratch HOME and no PYTHONPATH of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return {**env, "HOME": str(home)}


@dataclass
class Out:
    """One jsctl command's result: exit code and what it printed."""

    exit_code: int
    stdout: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def refused(self) -> int | None:
        """The HTTP status jsctl reports for a refusal ("Status Code Error 409")."""
        first = self.stdout.splitlines()[0] if self.stdout else ""
        return int(first.split()[-1]) if first.startswith("Status Code Error") else None


class Jsctl:
    """jsctl commands in one Jaseci process (jsctl_driver.py), sharing the session file."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.session = workdir / "js.session"
        self.proc = subprocess.Popen(
            [str(JASECI_PYTHON), str(DRIVER), str(self.session)], cwd=workdir,
            env=jaseci_env(workdir), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def _line(self, timeout_s: float) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = json.loads(self.lines.get(timeout=timeout_s))
        except queue.Empty:
            raise AssertionError(f"jsctl driver silent for {timeout_s} s "
                                 f"(exit {self.proc.poll()})") from None
        return answer

    def __call__(self, *argv: str) -> Out:
        if not self.ready:
            assert self._line(60)["ready"]
            self.ready = True
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(list(argv)) + "\n")
        self.proc.stdin.flush()
        answer = self._line(120)
        assert answer["exception"] is None, answer
        return Out(answer["exit_code"], answer["stdout"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture()
def jsctl(tmp_path: Path) -> Iterator[Jsctl]:
    """Started first, so Jaseci's slow import overlaps the server's start."""
    driver = Jsctl(tmp_path)
    try:
        yield driver
    finally:
        driver.close()


@pytest.fixture()
def served() -> Iterator[str]:
    with jsorc_serving(TOKEN, env=serve_env()) as url:
        yield url


def admin(url: str, path: str, body: dict[str, Any]) -> Any:
    answer = httpx.post(url + path, json=body, headers=ADMIN, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def console_login(workdir: Path, url: str, password: str) -> str:
    """The console script itself: `jsctl -f SESSION login URL -u EMAIL --password PW`."""
    done = subprocess.run([str(JSCTL), "-f", str(workdir / "js.session"), "login", url,
                           "-u", EMAIL, "--password", password], cwd=workdir,
                          env=jaseci_env(workdir), capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_jsctl_drives_jsorc_serve_from_login_to_unload(jsctl: Jsctl, served: str,
                                                       tmp_path: Path) -> None:
    url = served
    out = console_login(tmp_path, url, PASSWORD)
    assert f"Token: {TOKEN}" in out and "Login successful!" in out
    assert "Login failed!" in jsctl("login", url, "-u", EMAIL, "--password", "wrong").stdout

    # The seed's commands, verbatim (jsorc's example config instead of jaseci_ai_kit's).
    answer = jsctl("jsorc", "actions", "config", "use_enc", CONFIG).json()
    assert answer["success"] is True
    answer = jsctl("jsorc", "actions", "load", "use_enc", "-mode", "module").json()
    assert answer["action_status"]["mode"] == "module"
    assert answer["action_status"]["module"]["name"] == MODULE
    again = jsctl("jsorc", "actions", "load", "use_enc", "-mode", "module")
    assert again.exit_code == 0 and again.json()["action_status"]["mode"] == "module"
    status = jsctl("jsorc", "actions", "status", "use_enc").json()["action_status"]
    assert status["placement"] == "local"

    def remote_ready() -> dict[str, Any] | None:
        st = jsctl("jsorc", "actions", "load", "use_enc", "-mode", "remote").json()
        return st if st["action_status"]["remote"]["status"] == "READY" else None

    answer = poll(remote_ready, 30, "use_enc remote READY", every_s=0.2)
    assert answer["action_status"]["mode"] == "remote"
    status = jsctl("jsorc", "actions", "status", "use_enc").json()["action_status"]
    assert status["remote"]["url"].startswith("http://127.0.0.1:")

    assert jsctl("jsorc", "actionpolicy", "set", "-policy_name", "Evaluation").json()[
        "success"] is True
    assert jsctl("jsorc", "actionpolicy", "get").json()["policy"] == "Evaluation"
    jsctl("jsorc", "actionpolicy", "set", "-policy_name", "Default")

    admin(url, "/jsorc/walker/set", ENCODE)
    assert jsctl("jsorc", "trackact", "start").json()["success"] is True
    run = jsctl("walker", "run", "encode_text", "-ctx", '{"text": "hi there"}').json()
    assert run["success"] is True and len(run["report"]) == 1
    tracked = jsctl("jsorc", "trackact", "stop").json()
    assert tracked[0]["actions_calls"] == {"use_enc.encode": 1}
    assert [c["placement"] for c in tracked[0]["calls"]] == ["remote"]

    assert jsctl("jsorc", "benchmark", "start").json()["success"] is True
    jsctl("walker", "run", "encode_text")
    report = jsctl("jsorc", "benchmark", "stop").json()
    assert "encode_text" in report["walker_run"]

    assert jsctl("jsorc", "tracksys", "start").json()["success"] is True
    answer = jsctl("jsorc", "tracksys", "stop").json()
    assert len(answer["states"]) >= 2
    assert all("prometheus" in s and "actions" in s for s in answer["states"])
    assert all(s["prometheus"] is not None or s["prometheus_reason"] for s in answer["states"])
    assert answer["states"][-1]["actions"]["use_enc"]["placement"] == "remote:1"
    assert {p["role"] for p in answer["report"]["processes"]} == {"runtime", "replica"}

    # JSORC's load test: the app's actions all local, one client for a second.
    answer = jsctl("jsorc", "loadtest", "-test", "synthetic_apps", "-experiment",
                   "discussion_analysis", "-policy", "all_local", "-experiment_duration",
                   "1").json()
    result = answer["discussion_analysis"]["all_local"]
    assert result["walker_level"]["walker_run"]["discussion_analysis"]["throughput"] > 0
    assert result["action_level"][0]["actions_calls"] == {"bi_enc.cos_sim_score": 1,
                                                          "cl_summer.summarize": 1}
    assert {c["placement"] for run in result["action_level"] for c in run["calls"]} \
        == {"local"}

    # META_CONFIG: refused when malformed (nothing changed), then automation on.
    before = jsctl("config", "get", "META_CONFIG").json()
    assert before["automation"] is False
    bad = jsctl("config", "set", "META_CONFIG", "-value", '{"automation": "yes", "x": 1}')
    assert bad.refused == 400 and "automation" in bad.stdout and "x: unknown key" in bad.stdout
    assert jsctl("config", "get", "META_CONFIG").json() == before

    answer = jsctl("jsorc", "actions", "unload", "use_enc", "-mode", "auto").json()
    assert answer["success"] is True and answer["action_status"]["mode"] == "unloaded"

    jsctl("jsorc", "actionpolicy", "set", "-policy_name", "all_local")
    doc = {**before, "automation": True, "backoff_interval": 0.2}
    assert "set!" in jsctl("config", "set", "META_CONFIG", "-value", json.dumps(doc)).json()[0]
    assert jsctl("service", "info", "meta").json()["pending"]["automation"] is True
    assert jsctl("service", "refresh", "meta").json()["success"] is True
    assert jsctl("config", "get", "JSORC_CONFIG").json()["automation"] is True

    def placed_locally() -> bool:
        st = jsctl("jsorc", "actions", "status", "use_enc").json()["action_status"]
        return bool(st["placement"] == "local")

    poll(placed_locally, 20, "automation placing use_enc locally")  # the policy did it
    manual = jsctl("jsorc", "actions", "load", "use_enc", "-mode", "remote")
    assert manual.refused == 409 and "automation is on" in manual.stdout

    # A wrong token: refused, nothing changed.
    wrong = httpx.post(url + "/js_admin/jsorc_actionpolicy_set", timeout=10,
                       json={"policy_name": "Default"}, headers={"Authorization": "token x"})
    assert wrong.status_code == 403
    assert jsctl("jsorc", "actionpolicy", "get").json()["policy"] == "all_local"


# --------------------------------------------------------------------------- JSORC's tests


def post(url: str, payload: dict[str, Any]) -> httpx.Response:
    """JSORC's tests' `self.client.post(reverse(f'jac_api:{op}'), payload, format="json")`."""
    prefix = "js" if payload["op"] == "walker_run" else "js_admin"
    return httpx.post(f"{url}/{prefix}/{payload['op']}", json=payload, headers=ADMIN,
                      timeout=60)


@pytest.fixture(scope="module")
def jsorc_on() -> Iterator[str]:
    with jsorc_serving(TOKEN, env=serve_env()) as url:
        admin(url, "/jsorc/walker/set", {**ENCODE, "name": "test_actions_tracking"})
        admin(url, "/jsorc/walker/set", {**ENCODE, "name": "test_benchmark"})
        yield url


@pytest.fixture()
def kube(jsorc_on: str) -> str:
    """JSORC's setUp, `enable_jsorc`: META_CONFIG with automation on and promon kept alive,
    then `service_refresh meta` (the control interval short, to stand in for the 20 s wait);
    and what its fresh database gave each test: the Default policy, use_enc unloaded."""
    url = jsorc_on
    res = post(url, {"op": "config_get", "name": "META_CONFIG", "do_check": False})
    meta_config = json.loads(res.json())
    meta_config["automation"] = True
    meta_config["keep_alive"] = ["promon"]
    meta_config["backoff_interval"] = 0.3
    res = post(url, {"op": "config_set", "name": "META_CONFIG", "value": meta_config,
                     "do_check": False})
    assert res.status_code == 200, res.text
    assert post(url, {"op": "service_refresh", "name": "meta"}).status_code == 200
    post(url, {"op": "jsorc_actionpolicy_set", "policy_name": "Default"})
    status = httpx.post(url + "/jsorc/status", json={}, headers=ADMIN).json()["actions"]
    if status.get("use_enc", {}).get("mode", "unloaded") != "unloaded":
        post(url, {"op": "jsorc_actions_unload", "name": "use_enc", "mode": "auto"})
        poll(lambda: placement(url) == "unloaded", 10, "use_enc unloaded")
    return url


def config_use_enc(url: str) -> None:
    res = post(url, {"op": "jsorc_actions_config", "name": "use_enc", "config": CONFIG})
    assert res.status_code == 200, res.text


def load_remote_until_ready(url: str) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        res = post(url, {"op": "jsorc_actions_load", "name": "use_enc", "mode": "remote"})
        assert res.status_code == 200, res.text
        if res.json()["action_status"]["remote"]["status"] == "READY":
            return res
        assert time.monotonic() < deadline, res.json()
        time.sleep(0.1)


def walker_runs_on(url: str, placement: str) -> None:
    """JSORC's `"example_module.call" in master.actions_list()`: the action answers calls."""
    admin(url, "/jsorc/trackact/start", {})
    run = post(url, {"op": "walker_run", "name": "test_actions_tracking"})
    calls = admin(url, "/jsorc/trackact/stop", {})["calls"]
    assert run.json()["success"] is True
    assert [(c["action"], c["placement"]) for c in calls] == [("use_enc", placement)]


def placement(url: str) -> str:
    res = post(url, {"op": "jsorc_actions_status", "name": "use_enc"})
    return str(res.json()["action_status"]["placement"])


def test_actions_tracking(kube: str) -> None:
    url = kube
    post(url, {"op": "jsorc_trackact_start"})
    config_use_enc(url)
    post(url, {"op": "jsorc_actions_load", "name": "use_enc", "mode": "module"})
    post(url, {"op": "walker_run", "name": "test_actions_tracking"})
    res = post(url, {"op": "jsorc_trackact_stop"})
    assert "actions_calls" in res.json()[0]
    assert "use_enc.encode" in res.json()[0]["actions_calls"]


def test_benchmark(kube: str) -> None:
    url = kube
    config_use_enc(url)
    post(url, {"op": "jsorc_benchmark_start"})
    post(url, {"op": "walker_run", "name": "test_benchmark"})
    res = post(url, {"op": "jsorc_benchmark_stop", "report": True})
    # (JSORC's first assertion, "sentinel_register" in res.data, needs Jaseci's graph API.)
    assert "walker_run" in res.json()
    assert "test_benchmark" in res.json()["walker_run"]


def test_system_tracking(kube: str) -> None:
    url = kube
    promon = shutil.which("prometheus") is not None
    if promon:  # kept alive by enable_jsorc (promon): wait until it answers
        poll(lambda: post(url, {"op": "service_info", "name": "promon"}).json()["state"]
             == "READY", 30, "Prometheus READY")
    post(url, {"op": "jsorc_tracksys_start"})
    time.sleep(1.0)  # a few control intervals (JSORC: 20 s of 10 s ones)
    res = post(url, {"op": "jsorc_tracksys_stop"})
    assert all("prometheus" in state for state in res.json()["states"])
    assert all("actions" in state for state in res.json()["states"])
    states = res.json()["states"]
    assert len(states) >= 3
    # Prometheus' readings of every interval after the first (the runtime's row among them),
    # or, without Prometheus, null and the reason.
    for state in states[1:]:
        if promon:
            assert "runtime" in {row["role"] for row in state["prometheus"]}, state
        else:
            assert state["prometheus"] is None and "Prometheus" in state["prometheus_reason"]


def test_set_action_policy(kube: str) -> None:
    url = kube
    post(url, {"op": "jsorc_actionpolicy_set", "policy_name": "Evaluation"})
    res = post(url, {"op": "jsorc_actionpolicy_get"})
    assert res.json()["policy"] == "Evaluation"


def test_jsorc_actions_load_module(kube: str) -> None:
    url = kube
    config_use_enc(url)
    res = post(url, {"op": "jsorc_actions_load", "name": "use_enc", "mode": "module"})
    assert res.status_code == 200
    assert res.json()["action_status"]["mode"] == "module"
    assert res.json()["action_status"]["module"]["name"] == MODULE
    walker_runs_on(url, "local")


def test_jsorc_actions_unload_auto(kube: str) -> None:
    url = kube
    config_use_enc(url)
    post(url, {"op": "jsorc_actions_load", "name": "use_enc", "mode": "module"})
    walker_runs_on(url, "local")
    res = post(url, {"op": "jsorc_actions_unload", "name": "use_enc", "mode": "auto"})
    assert res.json()["success"] is True
    assert res.json()["action_status"]["mode"] == "unloaded"
    # JSORC's "not in actions_list": the module goes once its calls have drained.
    poll(lambda: placement(url) == "unloaded", 10, "use_enc unloaded")


def test_jsorc_actions_load_remote(kube: str) -> None:
    url = kube
    config_use_enc(url)
    res = post(url, {"op": "jsorc_actions_load", "name": "use_enc", "mode": "remote"})
    assert res.status_code == 200
    res = load_remote_until_ready(url)
    assert res.json()["action_status"]["mode"] == "remote"
    walker_runs_on(url, "remote")


def test_jsorc_actions_unload_remote_and_retire_pod(kube: str) -> None:
    url = kube
    config_use_enc(url)
    res = load_remote_until_ready(url)
    replica = res.json()["action_status"]["remote"]["url"]
    assert httpx.get(replica + "/jaseci_actions_spec/", timeout=5).status_code == 200
    res = post(url, {"op": "jsorc_actions_unload", "name": "use_enc", "mode": "remote"})
    assert res.json()["success"] is True
    assert res.json()["action_status"]["mode"] == "unloaded"

    def retired() -> bool:
        try:
            httpx.get(replica + "/jaseci_actions_spec/", timeout=1)
        except httpx.HTTPError:
            return True
        return False

    poll(retired, 15, f"replica {replica} stopped")
