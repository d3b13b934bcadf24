"""The JSORC API and the `jsorc` CLI over real HTTP on 127.0.0.1.

`jsorc serve` runs as a subprocess with a token for the admin commands and the refusals;
the moves-under-load loop runs the same app in-process on a real port with stand-in action
modules and replicas (so it needs no model code), driven through `jsorc` commands.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from jsorc_live import cli
from jsorc_live.api import JsorcService, make_app
from jsorc_live.inproc import app_in_thread
from jsorc_live.runtime import (
    ActionInfo,
    CallTiming,
    Invoker,
    Replica,
    Runtime,
    RuntimeRefusal,
    Step,
    Walker,
)
from tests.jsorc_live.servers import jsorc_serving

TOKEN = "s3cret-token"
REPO = Path(__file__).resolve().parents[2]


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read() if proc.stderr else ''!r}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready")


def jsorc(url: str, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    """Run `jsorc ARGV --json` in-process; (exit code, parsed answer or the error line)."""
    code = cli.main([*argv, "--server", url, "--token", TOKEN, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err.strip())


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    with jsorc_serving(TOKEN) as url:
        yield url


def test_admin_commands_through_the_cli(served: str, capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    url = served
    code, answer = jsorc(url, "config", "get", capsys=capsys)
    assert code == 0 and answer["config"]["automation"] is False
    assert set(answer["config"]) == {"automation", "backoff_interval", "namespace",
                                     "keep_alive", "kubernetes", "max_replicas", "services"}
    assert jsorc(url, "config", "set", "backoff_interval", "2.5", capsys=capsys)[1]["value"] == 2.5
    code, err = jsorc(url, "config", "set", "backoff_interval", "-1", capsys=capsys)
    assert code == 2 and "backoff_interval" in err and "\n" not in err
    assert jsorc(url, "config", "set", "nope", "1", capsys=capsys)[0] == 2

    code, answer = jsorc(url, "actionpolicy", "set", "all_remote", "replicas=2", capsys=capsys)
    assert code == 0 and answer["policy"] == "all_remote" and answer["params"]["replicas"] == 2
    code, answer = jsorc(url, "actionpolicy", "get", capsys=capsys)
    assert answer["policy"] == "all_remote"
    code, err = jsorc(url, "actionpolicy", "set", "all_remote", "replicas=zero", capsys=capsys)
    assert code == 2 and "replicas" in err
    assert jsorc(url, "actionpolicy", "set", "no_such_policy", capsys=capsys)[0] == 2
    assert jsorc(url, "actionpolicy", "set", "default", capsys=capsys)[0] == 0

    code, answer = jsorc(url, "actions", "config", "text_seg", "jsorc_live.actions.config",
                         capsys=capsys)
    assert code == 0 and answer["action_status"]["mode"] == "unloaded"
    code, answer = jsorc(url, "actions", "status", "text_seg", capsys=capsys)
    assert answer["action_status"]["module"] == "jsorc_live.actions.examples.text_seg"

    assert jsorc(url, "benchmark", "report", capsys=capsys)[0] == 2  # never started
    assert jsorc(url, "benchmark", "start", capsys=capsys)[0] == 0
    assert jsorc(url, "trackact", "start", capsys=capsys)[0] == 0
    code, answer = jsorc(url, "benchmark", "report", capsys=capsys)
    assert answer["report"]["walker_run"]["all"]["throughput"] == 0
    out = tmp_path / "calls.csv"
    code, answer = jsorc(url, "trackact", "stop", "--out", str(out), capsys=capsys)
    assert code == 0 and answer["calls"] == []
    assert list(pd.read_csv(out).columns)[:3] == ["ts", "request_id", "app"]
    assert jsorc(url, "benchmark", "stop", capsys=capsys)[0] == 0

    assert cli.main(["status", "--server", url, "--token", TOKEN]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["action", "mode", "placement"]
    assert "text_seg" in table


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/jsorc/actions/status", {"name": "nope"}, 404, "unknown action"),
    ("/jsorc/actions/load", {"name": "nope", "mode": "module"}, 404, "unknown action"),
    ("/jsorc/actions/config", {"name": "x", "config": "no.such.module"}, 400, "not trusted"),
    ("/jsorc/actions/config", {"name": "x", "config": "os; rm"}, 400, "module name"),
    ("/jsorc/actions/config", {"name": "nope", "config": "jsorc_live.actions.config"}, 404,
     "no action"),
    ("/jsorc/actions/load", {"name": "bi_enc", "mode": "sideways"}, 400, "load mode"),
    ("/jsorc/actions/unload", {"name": "bi_enc", "mode": "auto"}, 409, "not loaded"),
    ("/jsorc/actions/unload", {"name": "bi_enc", "mode": "weird"}, 400, "unload mode"),
    ("/jsorc/actions/load", {"name": "bi_enc"}, 400, "missing field 'mode'"),
    ("/jsorc/config/set", {"name": "automation", "value": "maybe"}, 400, "true or false"),
    ("/walker_run", {"name": "nobody"}, 404, "unknown walker"),
    ("/walker_run", {"name": "flow_analysis", "ctx": []}, 400, "ctx"),
])
def test_bad_input_is_a_clear_4xx(served: str, path: str, body: dict[str, Any], status: int,
                                  words: str) -> None:
    headers = {"Authorization": f"token {TOKEN}"}
    httpx.post(served + "/jsorc/actions/config", headers=headers,
               json={"name": "bi_enc", "config": "jsorc_live.actions.config"})
    response = httpx.post(served + path, json=body, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["success"] is False and words in answer["message"]
    # The runtime is unharmed.
    assert httpx.post(served + "/jsorc/status", headers=headers).json()["success"] is True


def test_tokens_and_malformed_json(served: str) -> None:
    url = served + "/jsorc/config/get"
    assert httpx.post(url, json={}).status_code == 401
    assert httpx.post(url, json={}, headers={"Authorization": "token wrong"}).status_code == 403
    assert httpx.post(url, json={}, headers={"Authorization": f"Bearer {TOKEN}"}).status_code \
        == 200
    bad = httpx.post(url, content=b"{not json", headers={"Authorization": f"token {TOKEN}"})
    assert bad.status_code == 400 and "malformed JSON" in bad.json()["message"]
    assert httpx.get(served + "/metrics").text.startswith("# HELP")
    # The CLI: a missing token and a refused token are one line and exit code 2.
    assert cli.main(["config", "get", "--server", served, "--token", "wrong"]) == 2
    assert cli.main(["config", "get", "--server", "http://127.0.0.1:9"]) in (2,)


# --------------------------------------------------------------------------- in-process


class StandIn:
    """A local module: calls take a millisecond; unloading with a call running is a bug."""

    memory_mb = 3.0

    def __init__(self) -> None:
        self.running = 0
        self.unloaded = False
        self.lock = threading.Lock()

    def call(self, name: str, kwargs: dict[str, Any]) -> Any:
        assert not self.unloaded
        with self.lock:
            self.running += 1
        time.sleep(0.001)
        with self.lock:
            self.running -= 1
        return {"where": "local", **kwargs}

    def unload(self) -> None:
        assert self.running == 0, "unloaded with calls in flight"
        self.unloaded = True


class StandInReplicas:
    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.running: set[Replica] = set()

    def start_replica(self, info: ActionInfo) -> Replica:
        time.sleep(0.1)
        n = next(self.ids)
        replica = Replica(info.name, f"http://stand-in/{n}", n)
        self.running.add(replica)
        return replica

    def stop_replica(self, replica: Replica) -> None:
        self.running.discard(replica)

    def replicas(self, action: str) -> list[Replica]:
        return [r for r in self.running if r.action == action]

    def healthy(self, replica: Replica) -> bool:
        return replica in self.running

    def shutdown(self) -> None:
        self.running.clear()

    def connect(self, replica: Replica) -> Invoker:
        def invoke(name: str, kwargs: dict[str, Any], timeout_s: float
                   ) -> tuple[Any, CallTiming]:
            assert replica in self.running, "a call reached a stopped replica"
            time.sleep(0.002)
            return {"where": replica.url}, CallTiming(2.0, 0.2)
        return invoke


@pytest.fixture()
def in_process() -> Iterator[tuple[str, StandInReplicas]]:
    replicas = StandInReplicas()
    runtime = Runtime(load_local=lambda info: StandIn(), connect=replicas.connect,
                      replicas=replicas,
                      walkers=[Walker("flow", (Step("a", "f", {"text": "text"}),
                                               Step("b", "f")))])

    def load_config(module: str, name: str) -> ActionInfo:
        if module != "stand.in":
            raise RuntimeRefusal(f"config {module!r} is not trusted")
        return ActionInfo(name, f"stand_in_{name}")

    service = JsorcService(runtime, replicas, load_config=load_config)
    try:
        with app_in_thread(make_app(service, TOKEN)) as url:
            yield url, replicas
    finally:
        service.close()


def test_walker_runs_never_fail_while_an_action_moves(
        in_process: tuple[str, StandInReplicas], capsys: pytest.CaptureFixture[str]) -> None:
    url, replicas = in_process
    for name in ("a", "b"):
        assert jsorc(url, "actions", "config", name, "stand.in", capsys=capsys)[0] == 0
    assert jsorc(url, "actions", "load", "a", "-mode", "module", capsys=capsys)[0] == 0
    assert jsorc(url, "actions", "load", "b", "--mode", "module", capsys=capsys)[0] == 0
    # Loading it the same way again answers its status (JSORC's idempotent load).
    code, answer = jsorc(url, "actions", "load", "a", "-mode", "module", capsys=capsys)
    assert code == 0 and answer["action_status"]["mode"] == "module"
    assert jsorc(url, "benchmark", "start", capsys=capsys)[0] == 0
    assert jsorc(url, "trackact", "start", capsys=capsys)[0] == 0
    stop = threading.Event()

    def client() -> tuple[int, int]:
        runs = failed = 0
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                r = http.post("/walker_run", json={"name": "flow", "ctx": {"text": "hi"}})
                runs += 1
                failed += r.status_code != 200 or not r.json()["success"]
        return runs, failed

    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client) for _ in range(4)]
        for _ in range(3):
            code, answer = jsorc(url, "actions", "load", "a", "-mode", "remote", capsys=capsys)
            assert code == 0 and answer["action_status"]["remote"]["status"] in ("STARTING",
                                                                                "READY")
            wait_for(url, "a", "remote:1", capsys)
            code, answer = jsorc(url, "actions", "status", "a", capsys=capsys)
            assert answer["action_status"]["remote"]["status"] == "READY"
            assert answer["action_status"]["remote"]["url"].startswith("http://stand-in/")
            assert jsorc(url, "actions", "load", "a", "-mode", "module", capsys=capsys)[0] == 0
            wait_for(url, "a", "local", capsys)
        stop.set()
        results = [c.result() for c in clients]
    assert sum(r for r, _ in results) > 50
    assert sum(f for _, f in results) == 0
    code, answer = jsorc(url, "trackact", "stop", capsys=capsys)
    calls = answer["calls"]
    assert calls and all(c["ok"] for c in calls)
    assert {c["placement"] for c in calls if c["action"] == "a"} == {"local", "remote"}
    code, answer = jsorc(url, "benchmark", "stop", capsys=capsys)
    assert answer["report"]["walker_run"]["flow"]["throughput"] > 0
    assert not replicas.replicas("a")  # every replica of the remote spells was stopped
    code, err = jsorc(url, "actions", "unload", "a", "-mode", "remote", capsys=capsys)
    assert code == 2 and "loaded as module, not remote" in err
    code, answer = jsorc(url, "actions", "unload", "a", "-mode", "auto", capsys=capsys)
    assert code == 0 and answer["action_status"]["mode"] == "unloaded"
    # Automation on: the policy places actions; manual loads are refused meanwhile.
    assert jsorc(url, "actionpolicy", "set", "all_remote", capsys=capsys)[0] == 0
    assert jsorc(url, "config", "set", "backoff_interval", "0.2", capsys=capsys)[0] == 0
    assert jsorc(url, "config", "set", "automation", "true", capsys=capsys)[0] == 0
    assert jsorc(url, "actions", "load", "a", "-mode", "module", capsys=capsys)[0] == 2
    wait_for(url, "b", "remote:1", capsys)
    wait_for(url, "a", "remote:1", capsys)
    code, answer = jsorc(url, "actionpolicy", "get", capsys=capsys)
    assert {d["action"] for d in answer["decisions"] if d["action"]} == {"a", "b"}


def wait_for(url: str, action: str, placement: str, capsys: pytest.CaptureFixture[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = jsorc(url, "actions", "status", action, capsys=capsys)[1]["action_status"]
        if answer["placement"] == placement and not answer["transition"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"{action} did not reach {placement}: {answer}")


def test_a_bad_trackact_out_is_refused_before_the_stop_so_the_session_survives(
        served: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine.csv"
    mine.write_text("my own file\n")
    assert jsorc(served, "trackact", "start", capsys=capsys)[0] == 0
    for out, message in ((tmp_path / "x.txt", "must end in .parquet or .csv"),
                         (tmp_path / "nodir" / "x.csv", "no folder"),
                         (mine, "exists: give a new file")):
        code, error = jsorc(served, "trackact", "stop", "--out", str(out), capsys=capsys)
        assert code == 2 and message in error
        assert out == mine or not out.exists()
    assert mine.read_text() == "my own file\n"
    good = tmp_path / "calls.parquet"
    code, answer = jsorc(served, "trackact", "stop", "--out", str(good), capsys=capsys)
    assert code == 0 and answer["written"] == str(good) and good.exists()  # still running


@pytest.mark.parametrize("ctx", ['{"x": NaN}', '{"x": 1e999}', "Infinity", "{"])
def test_a_ctx_the_server_could_not_read_is_refused_naming_it(
        served: str, ctx: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, error = jsorc(served, "walker", "run", "anything", "--ctx", ctx, capsys=capsys)
    assert code == 2 and "--ctx is not JSON" in error


@pytest.mark.parametrize("argv,message", [
    (["serve", "--port", "99999"], "must be a port, 0 to 65535, got '99999'"),
    (["serve", "--log-level", "bogus"], "invalid choice: 'bogus'"),
    (["status", "--timeout", "nan"], "expected a positive number of seconds, got 'nan'"),
])
def test_bad_flags_are_refused_by_the_parser(argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_reader_that_leaves_early_gets_no_traceback(served: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "jsorc_live.cli", "status", "--json", "--server", served,
         "--token", TOKEN], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head -0`: gone before the answer is printed
    code = proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    assert code == 141 and "Traceback" not in err, err
