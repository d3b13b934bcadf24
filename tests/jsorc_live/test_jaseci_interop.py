"""Interoperability with real Jaseci 1.4 (jaseci==1.4.2.6 in .jaseci-venv, made by
`make jaseci-env`; `make test` depends on it). No mocks: Jaseci's own client loads and calls a
jsorc action server, jsorc's client calls an action server made with Jaseci's ``jaseci_action``
decorator, and the protocol table runs against both servers.

Jaseci's twin of sample_actions.py has the same functions, so the two servers' specs must be
equal and their answers alike (status, content type, JSON, error locations).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jsorc_live.actions.client import ActionArgumentError, ActionCallError, RemoteActions
from tests.jsorc_live.protocol_cases import CASES, EMPTY_BODY, Case
from tests.jsorc_live.servers import (
    JASECI_PYTHON,
    JASECI_VENV,
    Server,
    free_port,
    jaseci_server_cmd,
    jsorc_server_cmd,
    running,
)
from tests.jsorc_live.test_registry import SAMPLE_SPEC
from tests.jsorc_live.test_server_protocol import check, send

if not JASECI_PYTHON.exists():
    pytest.skip(
        f"Jaseci 1.4 is not installed in {JASECI_VENV}: run `make jaseci-env` "
        "(`make test` does it first)",
        allow_module_level=True,
    )

JASECI_TWIN = '''
"""sample_actions.py, written with Jaseci's decorator."""
import time

from jaseci.jsorc.live_actions import jaseci_action

FACTOR = 0


@jaseci_action(act_group=["demo"], allow_remote=True)
def setup(factor: int = 3):
    global FACTOR
    FACTOR = factor
    return factor


@jaseci_action(act_group=["demo"], aliases=["twice"], allow_remote=True)
def double(x: int):
    return 2 * x


@jaseci_action(act_group=["demo"], allow_remote=True)
def add(a: float, b: float = 2.0):
    return a + b


@jaseci_action(act_group=["demo"], allow_remote=True)
def gather(first, *rest, scale: int = 1, **extra):
    return {"first": first, "rest": list(rest), "scale": scale, "extra": extra}


@jaseci_action(act_group=["demo"], allow_remote=True)
def boom(msg: str = "bad"):
    raise ValueError(msg)


@jaseci_action(act_group=["demo"], allow_remote=True)
def factor():
    return FACTOR


@jaseci_action(act_group=["demo"], allow_remote=True)
def nap(seconds: float = 0.2):
    time.sleep(seconds)
    return {"slept": seconds, "peak": 1}


@jaseci_action(act_group=["demo"], allow_remote=False)
def local_only():
    return "here"


@jaseci_action(allow_remote=True)
def nogroup(t: str):
    return t.upper()
'''


@pytest.fixture(scope="module")
def jaseci_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Jaseci's own action server: ``uvicorn --factory sample_actions:serv_actions``, run in a
    scratch directory (importing jaseci creates .jaseci_logs/ there)."""
    scratch = tmp_path_factory.mktemp("jaseci_server")
    (scratch / "sample_actions.py").write_text(JASECI_TWIN)
    port = free_port()
    with running(jaseci_server_cmd("sample_actions", port), port, scratch / "server.log",
                 cwd=scratch) as server:
        yield server


def run_jaseci_client(script: str, cwd: Path) -> Any:
    """Run ``script`` with Jaseci's Python in ``cwd``; it prints one JSON line last."""
    done = subprocess.run([str(JASECI_PYTHON), "-c", textwrap.dedent(script)], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_jaseci_client_loads_and_calls_a_jsorc_action_server(
    sample_server: Server, tmp_path: Path
) -> None:
    port = free_port()
    bi_enc = jsorc_server_cmd("jsorc_live.actions.examples.bi_enc", port,
                              "--setup", '{"memory_mb": 4}')
    with running(bi_enc, port, tmp_path / "bi_enc.log") as model_server:
        result = run_jaseci_client(f"""
            import json
            from jaseci.jsorc.live_actions import load_remote_actions, live_actions
            loaded = [load_remote_actions({sample_server.url!r}),
                      load_remote_actions({model_server.url!r})]
            a = live_actions
            print(json.dumps({{
                "loaded": loaded,
                "keys": sorted(k for k in a if k.split(".")[0] in ("demo", "sample_actions")),
                "double": a["demo.double"](21),
                "twice": a["demo.twice"](x=5),
                "add_none_is_default": a["demo.add"](1, None),
                "gather": a["demo.gather"](1, 2, 3, scale=4, k="v"),
                "factor": a["demo.factor"](),
                "nogroup": a["sample_actions.nogroup"]("abc"),
                "invalid": a["demo.double"]("abc"),
                "bi_enc_keys": sorted(k for k in a if k.startswith("bi_enc.")),
                "bi_enc_score": a["bi_enc.cos_sim_score"]("hi", "hello"),
            }}))
        """, tmp_path)
        with RemoteActions(model_server.url) as jsorc_client:
            expected_score = jsorc_client.call("bi_enc.cos_sim_score", {"q": "hi", "a": "hello"})
    assert result["loaded"] == [True, True]
    assert result["keys"] == sorted(SAMPLE_SPEC)  # every spec key became a live action
    assert result["double"] == 42
    assert result["twice"] == 10
    assert result["add_none_is_default"] == 3.0  # Jaseci drops None: the server's default
    assert result["gather"] == {"first": 1, "rest": [2, 3], "scale": 4, "extra": {"k": "v"}}
    assert result["factor"] == 3
    assert result["nogroup"] == "ABC"
    # Jaseci's client returns an error body as if it were the result.
    assert result["invalid"]["detail"][0]["loc"] == ["body", "x"]
    assert result["bi_enc_keys"] == ["bi_enc.cos_sim_score", "bi_enc.get_candidate_emb",
                                     "bi_enc.get_context_emb", "bi_enc.infer", "bi_enc.setup"]
    assert result["bi_enc_score"] == expected_score


def test_jsorc_client_calls_a_jaseci_action_server(jaseci_server: Server) -> None:
    with RemoteActions(jaseci_server.url, timeout_s=10) as client:
        assert client.spec() == SAMPLE_SPEC
        assert client.call("demo.double", {"x": 21}) == 42
        assert client.call("twice", {"x": "4"}) == 8
        assert client.call("add", {"a": 1}) == 3.0
        assert client.call("gather", {"first": 1, "*rest": [2], "**extra": {"k": 1}}) == {
            "first": 1, "rest": [2], "scale": 1, "extra": {"k": 1}}
        assert client.call("factor", {}) == 3  # Jaseci ran setup() at start-up
        with pytest.raises(ActionArgumentError) as invalid:
            client.call("double", {"x": "abc"})
        assert invalid.value.errors[0]["loc"] == ["body", "x"]
        with pytest.raises(ActionCallError) as unknown:
            client.call("nope", {})
        assert (unknown.value.status, unknown.value.message) == (404, "Not Found")
        with pytest.raises(ActionCallError) as raised:
            client.call("boom", {})
        assert (raised.value.status, raised.value.message) == (500, "Internal Server Error")
        # Jaseci's server has closed the connection after the exception, without saying so:
        # the next call goes through all the same (on a new connection).
        assert client.call("double", {"x": 1}) == 2
        with pytest.raises(ActionCallError, match="timed out"):
            client.call("nap", {"seconds": 1}, timeout_s=0.2)


def test_both_servers_publish_the_same_spec(sample_server: Server, jaseci_server: Server) -> None:
    specs = [httpx.get(s.url + "/jaseci_actions_spec/", timeout=10).json()
             for s in (sample_server, jaseci_server)]
    assert specs[0] == specs[1] == SAMPLE_SPEC


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_both_servers_answer_alike(sample_server: Server, jaseci_server: Server,
                                   case: Case) -> None:
    jsorc = send(sample_server.url, case)
    jaseci = send(jaseci_server.url, case)
    check(case, jaseci)
    check(case, jsorc)
    if case.kind == "detail":  # same places; the messages are pydantic 1's and 2's
        assert ([d["loc"] for d in jsorc.json()["detail"]]
                == [d["loc"] for d in jaseci.json()["detail"]])


@pytest.mark.parametrize("path", ["/double", "/jaseci_actions_spec"])
def test_both_servers_redirect_a_missing_slash_with_307(
    sample_server: Server, jaseci_server: Server, path: str
) -> None:
    for server in (sample_server, jaseci_server):
        method = "GET" if "spec" in path else "POST"
        r = httpx.request(method, server.url + path, json={"x": 1}, timeout=10)
        assert r.status_code == 307
        assert r.headers["location"] == server.url + path + "/"


def test_the_one_deliberate_difference_an_empty_body_missing_a_parameter(
    sample_server: Server, jaseci_server: Server
) -> None:
    check(EMPTY_BODY, send(sample_server.url, EMPTY_BODY))  # jsorc: 422, x is missing
    jaseci = send(jaseci_server.url, EMPTY_BODY)
    assert (jaseci.status_code, jaseci.text) == (500, "Internal Server Error")
