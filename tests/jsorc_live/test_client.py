"""jsorc's client of action servers, over real HTTP: results, every kind of failure as an
ActionCallError (non-2xx, timeout, nothing listening, a 2xx that is not JSON), readiness, and
the asyncio twin."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jsorc_live.actions.client import (
    ActionArgumentError,
    ActionCallError,
    AsyncRemoteActions,
    RemoteActions,
)
from tests.jsorc_live.servers import Server, free_port
from tests.jsorc_live.test_registry import SAMPLE_SPEC


@pytest.fixture
def client(sample_server: Server) -> Iterator[RemoteActions]:
    with RemoteActions(sample_server.url, timeout_s=10) as c:
        yield c


class _Odd(BaseHTTPRequestHandler):
    """A server that answers wrongly: 200 with text, a 302, a spec that is not one."""

    def do_POST(self) -> None:
        answers = {
            "/text/": (200, "text/plain", b"hello"),
            "/moved/": (302, "text/plain", b""),
            "/teapot/": (418, "application/json", b'{"detail": "short and stout"}'),
        }
        status, kind, body = answers.get(self.path, (404, "text/plain", b"?"))
        self.send_response(status)
        self.send_header("content-type", kind)
        if status == 302:
            self.send_header("location", "/elsewhere/")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        body = b'{"demo.x": "not a list"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def odd_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Odd)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_spec_and_calls_by_name_alias_or_spec_key(client: RemoteActions) -> None:
    assert client.spec() == SAMPLE_SPEC
    assert client.call("double", {"x": 21}) == 42
    assert client.call("demo.twice", {"x": 21}) == 42
    assert client.call("sample_actions.nogroup", {"t": "x"}) == "X"
    assert client.call("add", {"a": 1}) == 3.0  # omitted: the server's default
    assert client.call("gather", {"first": None, "*rest": [1]}) == {  # None is sent as null
        "first": None, "rest": [1], "scale": 1, "extra": {}}


def test_invalid_parameters_raise_an_argument_error_with_the_servers_detail(
    client: RemoteActions,
) -> None:
    with pytest.raises(ActionArgumentError) as info:
        client.call("double", {"x": "abc", "y": 1})
    assert info.value.status == 422
    assert [e["loc"] for e in info.value.errors] == [["body", "y"], ["body", "x"]]


@pytest.mark.parametrize(
    ("name", "params", "status", "message"),
    [("nope", {}, 404, "Not Found"), ("local_only", {}, 404, "Not Found"),
     ("boom", {"msg": "kaput"}, 500, "ValueError: kaput")],
)
def test_a_non_2xx_answer_is_an_error(
    client: RemoteActions, name: str, params: dict[str, str], status: int, message: str
) -> None:
    with pytest.raises(ActionCallError) as info:
        client.call(name, params)
    assert (info.value.status, info.value.message) == (status, message)
    assert info.value.url == client.url and info.value.name == name


def test_every_call_has_a_timeout(client: RemoteActions) -> None:
    start = time.monotonic()
    with pytest.raises(ActionCallError, match=r"timed out after 0\.3 s") as info:
        client.call("nap", {"seconds": 1}, timeout_s=0.3)
    assert info.value.status is None
    assert time.monotonic() - start < 1.5
    with RemoteActions(client.url, timeout_s=0.3) as short, pytest.raises(
        ActionCallError, match="timed out"
    ):
        short.call("nap", {"seconds": 1})


def test_nothing_listening_is_an_error_without_status() -> None:
    with RemoteActions(f"http://127.0.0.1:{free_port()}", timeout_s=2) as c:
        with pytest.raises(ActionCallError, match="ConnectError") as info:
            c.call("double", {"x": 1})
        assert info.value.status is None
        assert c.ready() is False


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [("text", 200, "answer is not JSON"), ("moved", 302, "Found"),
     ("teapot", 418, "short and stout")],
)
def test_answers_that_are_not_a_json_result_are_errors(
    odd_server: str, name: str, status: int, message: str
) -> None:
    with RemoteActions(odd_server, timeout_s=5) as c, pytest.raises(ActionCallError) as info:
        c.call(name, {})
    assert info.value.status == status
    assert message in info.value.message


def test_a_spec_that_is_not_one_is_an_error(odd_server: str) -> None:
    with RemoteActions(odd_server, timeout_s=5) as c, pytest.raises(
        ActionCallError, match="not an action spec"
    ):
        c.spec()


def test_wait_ready_returns_once_the_spec_answers(client: RemoteActions) -> None:
    assert client.ready()
    assert client.wait_ready(5) < 1


def test_wait_ready_is_bounded_and_stops_when_the_server_died() -> None:
    with RemoteActions(f"http://127.0.0.1:{free_port()}") as c:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"not ready after 0\.3 s"):
            c.wait_ready(0.3)
        assert time.monotonic() - start < 1.5
        with pytest.raises(RuntimeError, match="exited before it was ready"):
            c.wait_ready(30, alive=lambda: False)


@pytest.mark.parametrize(
    ("url", "timeout_s", "message"),
    [("127.0.0.1:80", 1.0, "must start with http"), ("http://h", 0.0, "timeout_s must be > 0")],
)
def test_a_bad_url_or_timeout_is_refused(url: str, timeout_s: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RemoteActions(url, timeout_s)


def test_the_async_client_calls_concurrently(sample_server: Server) -> None:
    async def scenario() -> tuple[list[object], float]:
        async with AsyncRemoteActions(sample_server.url, timeout_s=10) as c:
            assert await c.ready()
            assert (await c.spec()) == SAMPLE_SPEC
            start = time.monotonic()
            results = await asyncio.gather(
                *(c.call("nap", {"seconds": 0.3}) for _ in range(3)), c.call("double", {"x": 4})
            )
            elapsed = time.monotonic() - start
            with contextlib.suppress(ActionCallError):
                await c.call("boom", {})
                raise AssertionError("boom did not raise")
            with pytest.raises(ActionArgumentError):
                await c.call("double", {})
            with pytest.raises(ActionCallError, match="timed out"):
                await c.call("nap", {"seconds": 1}, timeout_s=0.2)
            return list(results), elapsed

    results, elapsed = asyncio.run(scenario())
    assert results[3] == 8
    assert elapsed < 0.85  # three 0.3 s naps at once, not one after another
