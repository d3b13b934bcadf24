"""The HTTP API under a hostile or unlucky client, over real HTTP on 127.0.0.1 (issue #10).

- walker load cannot lock the operator out: admin answers while 45 slow walker runs hold
  their own pool; past the walker queue, runs are refused 503 with Retry-After;
- bodies over the limit are refused 413, whether they say their length or stream it;
- the inputs that gave 500s are 4xx, NaN and infinities are refused, and a refused request
  changes nothing;
- the built-in walkers cannot be replaced; max_replicas is a setting;
- /openapi.json documents every route.

The slow action is a local module whose calls wait on an event the test sets, so nothing
here depends on how fast the machine is: the admin deadline (2 s) is generous, and the walker
runs are released only after it was measured.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from jsorc_live.api import JsorcService, make_app
from jsorc_live.inproc import app_in_thread
from jsorc_live.limits import PoolSizes
from jsorc_live.runtime import ActionInfo, Runtime, RuntimeRefusal, loadtest_walkers
from tests.jsorc_live.servers import jsorc_serving

TOKEN = "hardening-token"
AUTH = {"Authorization": f"token {TOKEN}"}


class Gate:
    """A local action whose calls block until `release` (or the test's deadline)."""

    memory_mb = 1.0

    def __init__(self) -> None:
        self.open = threading.Event()
        self.waiting = 0
        self._lock = threading.Lock()

    def call(self, name: str, kwargs: dict[str, Any]) -> Any:
        with self._lock:
            self.waiting += 1
        self.open.wait(timeout=120)
        return {"passed": True}

    def unload(self) -> None:
        self.open.set()


@dataclass
class App:
    url: str
    service: JsorcService
    gate: Gate
    app: Any


@contextlib.contextmanager
def serving(pools: PoolSizes | None = None, max_body_bytes: int = 8 * 1024 * 1024,
            load_config: Callable[[str, str], ActionInfo] | None = None) -> Iterator[App]:
    """The app over a runtime with the built-in walkers and one `gate` action, served by
    uvicorn on a free loopback port until the block ends."""
    gate = Gate()
    runtime = Runtime(load_local=lambda info: gate, connect=lambda replica: _no_remote,
                      walkers=loadtest_walkers())

    def configs(module: str, name: str) -> ActionInfo:
        if module != "gate.config":
            raise RuntimeRefusal(f"config {module!r} is not trusted")
        return ActionInfo(name, "gate")

    service = JsorcService(runtime, None, load_config=load_config or configs)
    app = make_app(service, TOKEN, pools=pools, max_body_bytes=max_body_bytes)
    try:
        with app_in_thread(app) as url:
            try:
                yield App(url, service, gate, app)
            finally:
                gate.open.set()  # no slow call outlives the test
    finally:
        service.close()


def _no_remote(name: str, kwargs: dict[str, Any]) -> Any:
    raise AssertionError("no remote replicas here")


def admin(url: str, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = httpx.post(url + path, json=body, headers=AUTH, timeout=30)
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


def slow_walker(url: str) -> None:
    admin(url, "/jsorc/actions/config", {"name": "gate", "config": "gate.config"})
    admin(url, "/jsorc/actions/load", {"name": "gate", "mode": "module"})
    admin(url, "/jsorc/walker/set", {"name": "slow", "steps": [
        {"action": "gate", "function": "wait"}]})


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --------------------------------------------------------------------------- pools


def test_admin_answers_while_45_slow_walkers_run() -> None:
    with serving() as served:
        url = served.url
        slow_walker(url)
        with ThreadPoolExecutor(45) as pool:
            runs = [pool.submit(httpx.post, url + "/walker_run", json={"name": "slow"},
                                timeout=120) for _ in range(45)]
            # Every one of the 45 is inside the action (on its own thread), more than
            # starlette's default pool of 40 that the admin API used to share.
            wait_until(lambda: served.gate.waiting == 45, "45 walker runs in the action")
            took = []
            for path, body in (("/jsorc/status", {}),
                               ("/jsorc/config/set", {"name": "backoff_interval",
                                                      "value": 3}),
                               ("/jsorc/actionpolicy/get", {})):
                start = time.monotonic()
                admin(url, path, body)
                took.append(time.monotonic() - start)
            assert max(took) < 2.0, took
            assert not any(run.done() for run in runs)  # they really were all running
            served.gate.open.set()
            answers = [run.result() for run in runs]
        assert [a.status_code for a in answers] == [200] * 45


def test_walker_runs_past_the_queue_are_refused_503_with_retry_after() -> None:
    with serving(PoolSizes(walker_threads=2, walker_queue=1)) as served:
        url = served.url
        slow_walker(url)
        pools = served.app.state.pools
        with ThreadPoolExecutor(3) as pool:
            runs = [pool.submit(httpx.post, url + "/walker_run", json={"name": "slow"},
                                timeout=120) for _ in range(3)]
            wait_until(lambda: pools.walkers_in == 3 and served.gate.waiting == 2,
                       "2 walker runs running and 1 waiting")
            for path in ("/walker_run", "/js/walker_run"):
                refused = httpx.post(url + path, json={"name": "slow"}, timeout=30)
                assert refused.status_code == 503, refused.text
                assert refused.headers["retry-after"] == "1"
                assert refused.json()["success"] is False
                assert "--walker-threads" in refused.json()["message"]
            # The admin API has its own pool: it still answers.
            admin(url, "/jsorc/status", {})
            served.gate.open.set()
            assert [run.result().status_code for run in runs] == [200] * 3


# --------------------------------------------------------------------------- body limit


def raw_request(url: str, head: bytes, chunks: Iterator[bytes] | None = None
                ) -> tuple[int, bytes]:
    """Send `head` then `chunks` on a raw socket until the server answers; (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        sock.settimeout(0.05)
        reply = b""
        for chunk in chunks or iter(()):
            with contextlib.suppress(TimeoutError, BlockingIOError):
                reply += sock.recv(65536)
            if reply:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(30)
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in reply or not _complete(reply):
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
    status = int(reply.split(b" ", 2)[1])
    return status, reply.split(b"\r\n\r\n", 1)[1]


def _complete(reply: bytes) -> bool:
    head, _, body = reply.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


def test_a_body_over_the_limit_is_refused_413_by_content_length_and_when_chunked() -> None:
    limit = 1024 * 1024
    with serving(max_body_bytes=limit) as served:
        url = served.url
        # 100 MB declared: refused before a byte of it is sent.
        head = (b"POST /walker_run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000000\r\n\r\n")
        status, body = raw_request(url, head)
        assert status == 413
        answer = json.loads(body)
        assert answer["success"] is False and "1 MiB" in answer["message"]
        # Chunked, no length: refused once it passes the limit, while it streams.
        sent = 0

        def chunks() -> Iterator[bytes]:
            nonlocal sent
            piece = b" " * 65536
            while sent < 50 * limit:
                sent += len(piece)
                yield b"%x\r\n%s\r\n" % (len(piece), piece)

        head = (b"POST /jsorc/status HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n" + f"Authorization: token {TOKEN}\r\n\r\n"
                .encode())
        status, body = raw_request(url, head, chunks())
        assert status == 413 and "passed the limit" in json.loads(body)["message"]
        assert sent < 20 * limit  # answered while the body streamed, not after all of it
        # Under the limit is served as before; the server is unharmed.
        small = httpx.post(url + "/walker_run", timeout=30,
                           json={"name": "nobody", "ctx": {"text": "x" * (limit // 2)}})
        assert small.status_code == 404
        admin(url, "/jsorc/status", {})


# --------------------------------------------------------------------------- input checks


def state(url: str) -> dict[str, Any]:
    """What a refused request must leave as it was."""
    meta = admin(url, "/js_admin/service_info", {"name": "meta"})
    policy = admin(url, "/jsorc/actionpolicy/get", {})
    return {"status": admin(url, "/jsorc/status", {}),
            "policy": (policy["policy"], policy["params"]),
            "config": admin(url, "/jsorc/config/get", {})["config"],
            "starts": meta["controller"]["starts"], "pending": meta["pending"]}


NON_FINITE = ["NaN", "nan", "Infinity", "-inf", "inf"]


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/jsorc/config/get", {"name": 5}, 400, "'name'"),
    ("/jsorc/config/get", {"name": ["automation"]}, 400, "'name'"),
    ("/jsorc/config/set", {"name": 5, "value": 1}, 400, "'name'"),
    ("/jsorc/walker/set", {"name": "w", "steps": [{"action": "a", "function": "f",
                                                   "defaults": [1]}]}, 400, "defaults"),
    ("/jsorc/walker/set", {"name": "w", "steps": [{"action": "a", "function": "f",
                                                   "args": {"x": 1}}]}, 400, "args"),
    ("/jsorc/walker/set", {"name": "w", "steps": "abc"}, 400, "steps"),
    ("/jsorc/walker/set", {"name": "flow_analysis", "steps": [
        {"action": "a", "function": "f"}]}, 409, "'flow_analysis' is built in"),
    *[("/jsorc/actionpolicy/set", {"policy_name": "hpa", "policy_params": {"target": v}},
       400, "target") for v in NON_FINITE],
    ("/jsorc/actionpolicy/set", {"policy_name": "evaluation",
                                 "policy_params": {"node_mem_threshold": "NaN"}}, 400,
     "node_mem_threshold"),
    ("/jsorc/actionpolicy/set", {"policy_name": "hpa", "policy_params": "target=1"}, 400,
     "policy_params"),
    ("/jsorc/actionpolicy/set", {"policy_name": 7}, 400, "policy_name"),
    ("/jsorc/config/set", {"name": "backoff_interval", "value": "NaN"}, 400, "finite"),
    ("/jsorc/config/set", {"name": "max_replicas", "value": 0}, 400, "max_replicas"),
    ("/jsorc/config/set", {"name": "max_replicas", "value": "2.5"}, 400, "max_replicas"),
    ("/jsorc/actions/load", {"name": "gate", "mode": "remote", "replicas": "2"}, 400,
     "replicas"),
    ("/jsorc/actions/load", {"name": "gate", "mode": "remote", "url": 5}, 400, "url"),
    ("/jsorc/status", {"verbose": True}, 400, "unknown field 'verbose'"),
    ("/js_admin/jsorc_actionpolicy_set", {"policy_name": "hpa",
                                          "policy_params": '{"target": NaN}'}, 400, "NaN"),
    ("/js_admin/jsorc_actionpolicy_set", {"policy_name": "hpa",
                                          "policy_params": {"target": "inf"}}, 400, "target"),
    ("/js_admin/config_set", {"name": "META_CONFIG",
                              "value": '{"backoff_interval": Infinity}'}, 400, "finite"),
])
def test_a_refused_request_is_a_clear_4xx_and_changes_nothing(
        path: str, body: dict[str, Any], status: int, words: str) -> None:
    with serving() as served:
        url = served.url
        before = state(url)
        response = httpx.post(url + path, json=body, headers=AUTH, timeout=30)
        assert response.status_code == status, response.text
        answer = response.json()
        assert answer["success"] is False and words in answer["message"], answer
        assert state(url) == before


@pytest.mark.parametrize("raw", [b'{"policy_name": "hpa", "policy_params": {"target": NaN}}',
                                 b'{"policy_name": "hpa", "policy_params": {"target": '
                                 b'-Infinity}}',
                                 b'{"policy_name": "hpa", "policy_params": {"target": 1e999}}'])
def test_json_non_finite_numbers_are_refused_naming_them(raw: bytes) -> None:
    with serving() as served:
        before = state(served.url)
        for path in ("/jsorc/actionpolicy/set", "/js_admin/jsorc_actionpolicy_set"):
            response = httpx.post(served.url + path, content=raw, timeout=30,
                                  headers={**AUTH, "Content-Type": "application/json"})
            assert response.status_code == 400, response.text
            message = response.json()["message"]
            assert any(word in message for word in ("NaN", "Infinity", "1e999")), message
        assert state(served.url) == before
        # The policy still answers (an accepted infinity used to break every later get).
        assert admin(served.url, "/jsorc/actionpolicy/get", {})["policy"] == "default"


def test_a_valid_policy_is_still_set() -> None:
    with serving() as served:
        answer = admin(served.url, "/jsorc/actionpolicy/set",
                       {"policy_name": "hpa", "policy_params": {"target": "0.5"}})
        assert answer["policy"] == "hpa" and answer["params"]["target"] == 0.5
        assert admin(served.url, "/jsorc/actionpolicy/get", {})["params"]["target"] == 0.5


def test_built_in_walkers_stay_and_new_ones_are_added() -> None:
    with serving() as served:
        url = served.url
        steps = served.service.runtime.walkers["flow_analysis"].steps
        for path in ("/jsorc/walker/set",):
            response = httpx.post(url + path, headers=AUTH, timeout=30, json={
                "name": "flow_analysis", "steps": [{"action": "gate", "function": "f"}]})
            assert response.status_code == 409
            assert "flow_analysis" in response.json()["message"]
        assert served.service.runtime.walkers["flow_analysis"].steps == steps
        answer = admin(url, "/jsorc/walker/set", {"name": "mine", "steps": [
            {"action": "gate", "function": "f", "args": {"x": "x"}, "defaults": {"x": 1}}]})
        assert answer == {"success": True, "walker": "mine", "steps": 1}
        # A user's own walker may be redefined.
        admin(url, "/jsorc/walker/set", {"name": "mine", "steps": [
            {"action": "gate", "function": "g"}]})


def test_an_unexpected_error_is_a_logged_json_500(caplog: pytest.LogCaptureFixture) -> None:
    def broken(module: str, name: str) -> ActionInfo:
        raise KeyError("a bug in a config loader")

    with caplog.at_level(logging.ERROR), serving(load_config=broken) as served:
        response = httpx.post(served.url + "/jsorc/actions/config", headers=AUTH,
                              json={"name": "x", "config": "any.module"}, timeout=30)
        assert response.status_code == 500
        answer = response.json()
        assert answer["success"] is False and "KeyError" in answer["message"]
        admin(served.url, "/jsorc/status", {})  # the server goes on
    assert any("unexpected error in /jsorc/actions/config" in r.getMessage()
               for r in caplog.records)


def test_max_replicas_is_a_setting_the_runtime_reads() -> None:
    with serving() as served:
        url = served.url
        assert admin(url, "/jsorc/config/get", {"name": "max_replicas"})["value"] == 32
        assert admin(url, "/jsorc/config/set", {"name": "max_replicas", "value": "3"}
                     )["value"] == 3
        assert served.service.runtime.max_replicas == 3
        # META_CONFIG (Jaseci's) sets it too, on refresh.
        admin(url, "/js_admin/config_set", {"name": "META_CONFIG",
                                            "value": {"max_replicas": 5}})
        admin(url, "/js_admin/service_refresh", {"name": "meta"})
        assert served.service.runtime.max_replicas == 5


def test_serve_takes_the_limits_from_its_options() -> None:
    with jsorc_serving(TOKEN, "--max-replicas", "4", "--walker-threads", "8",
                       "--admin-threads", "4", "--walker-queue", "0",
                       "--max-body-mb", "0.5") as url:
        assert admin(url, "/jsorc/config/get", {"name": "max_replicas"})["value"] == 4
        status, body = raw_request(url, b"POST /walker_run HTTP/1.1\r\nHost: x\r\n"
                                        b"Content-Length: 600000\r\n\r\n")
        assert status == 413 and "0.5 MiB" in json.loads(body)["message"]


# --------------------------------------------------------------------------- schema


def test_openapi_documents_every_route() -> None:
    import schemathesis

    with serving() as served:
        doc = httpx.get(served.url + "/openapi.json", timeout=30).json()
        routes = {(route.path.rstrip("/") or "/", method.lower())
                  for route in served.app.routes if hasattr(route, "methods")
                  for method in route.methods - {"HEAD"}}
        routes -= {("/openapi.json", "get"), ("/docs", "get"), ("/redoc", "get"),
                   ("/docs/oauth2-redirect", "get")}
        # The dashboard's HTML pages and assets are not API (its /dashboard/data is).
        routes -= {("/dashboard", "get"), ("/dashboard/login", "post"),
                   ("/dashboard/logout", "post"), ("/dashboard/static/{name}", "get")}
        documented = {(path.rstrip("/"), method) for path, ops in doc["paths"].items()
                      for method in ops}
        assert routes == documented
        assert {"/walker_run", "/js/walker_run", "/user/token/", "/metrics", "/healthz",
                "/js_admin/jsorc_actions_load", "/jsorc/actionpolicy/set"} <= set(doc["paths"])
        assert doc["components"]["securitySchemes"]["token"]["name"] == "Authorization"
        load = doc["paths"]["/jsorc/actions/load"]["post"]
        assert load["security"] == [{"token": []}]
        body = load["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/ActionsLoad"}
        fields = doc["components"]["schemas"]["ActionsLoad"]
        assert fields["required"] == ["name", "mode"] and not fields["additionalProperties"]
        assert {"200", "400", "401", "403", "404", "409", "413"} <= set(load["responses"])
        assert "422" in load["responses"]  # a module that fails to load, not FastAPI's
        assert doc["paths"]["/walker_run"]["post"]["security"] == []
        # schemathesis loads it and finds every operation.
        schema = schemathesis.openapi.from_dict(doc)
        assert sum(1 for result in schema.get_all_operations() if result.ok()) == \
            len(documented)
