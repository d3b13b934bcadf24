"""Keep-alive services (jsorc_live.services): real prometheus and redis-server processes on
free 127.0.0.1 ports, killed with SIGKILL and seen to come back with backoff; Prometheus
re-reading its generated scrape config on SIGHUP; a missing binary as a visible state through
the API and the CLI. Every wait is bounded; every process is killed in `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from jsorc_live import cli
from jsorc_live.api import JsorcService, make_app
from jsorc_live.inproc import app_in_thread
from jsorc_live.meta_config import (
    MetaConfigError,
    apply_to,
    check_services,
    definitions_of,
    parse_meta_config,
)
from jsorc_live.ops import serving
from jsorc_live.runtime import ActionInfo, Runtime, RuntimeRefusal
from jsorc_live.services import (
    Backoff,
    HealthCheck,
    HealthKind,
    KeptService,
    MetaService,
    ScrapeTarget,
    ServiceDefinition,
    State,
    scrape_config,
)
from tests.jsorc_live.binaries import need, poll
from tests.jsorc_live.servers import Server, free_port

TOKEN = "keep-alive-token"


def ping(port: int) -> bool:
    """Redis PING over a raw socket, written here independently of services.redis_ping."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
        s.sendall(b"PING\r\n")  # the inline command form
        return s.recv(16) == b"+PONG\r\n"
    return False


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def ready(old: int | None = None) -> Any:
    """A wait_for predicate: READY with a live pid other than `old`."""
    return lambda s: s["state"] == State.READY and s["pid"] is not None and s["pid"] != old


# --------------------------------------------------------------------------- pure parts


def test_backoff_doubles_up_to_its_cap_and_rejects_nonsense() -> None:
    delays = Backoff(initial_s=0.5, factor=2.0, max_s=4.0).delays()
    assert [next(delays) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(initial_s=0)
    with pytest.raises(ValueError, match=r"factor must be >= 1, got 0\.5"):
        Backoff(factor=0.5)


def test_scrape_config_lists_the_runtime_first_then_each_replica_with_labels() -> None:
    targets = [ScrapeTarget("http://127.0.0.1:9102", "replica", "bi_enc", 42),
               ScrapeTarget("http://127.0.0.1:8000", "runtime", pid=7),
               ScrapeTarget("", "runtime"),  # not serving yet: no URL, not scraped
               ScrapeTarget("http://127.0.0.1:9101", "replica", "bi_enc")]
    doc = json.loads(scrape_config(targets, interval_s=0.5))  # JSON is YAML too
    job = doc["scrape_configs"][0]
    assert job["job_name"] == "jsorc" and job["scrape_interval"] == "500ms"
    assert [(s["targets"], s["labels"]) for s in job["static_configs"]] == [
        (["127.0.0.1:8000"], {"role": "runtime", "name": "runtime"}),
        (["127.0.0.1:9101"], {"role": "replica", "action": "bi_enc",
                              "name": "bi_enc@127.0.0.1:9101"}),
        (["127.0.0.1:9102"], {"role": "replica", "action": "bi_enc",
                              "name": "bi_enc@127.0.0.1:9102"}),
    ]


# --------------------------------------------------------------------------- real processes


def test_redis_is_restarted_with_backoff_after_kill_9_and_stopped_when_unlisted() -> None:
    need("redis-server")
    names = ["redis"]
    meta = MetaService(lambda: names, poll_s=0.1,
                       backoff=Backoff(initial_s=0.5, factor=2.0, max_s=4.0))
    pids: set[int] = set()
    try:
        meta.start()
        redis = meta.service("redis")
        first = redis.wait_for(ready(), 10)
        assert first["state"] == "READY", first
        pids.add(first["pid"])
        port = first["port"]
        assert first["url"] == f"redis://127.0.0.1:{port}" and ping(port)

        # kill -9 twice: back on the same port after 0.5 s, then after 1 s (doubled).
        back = []
        last = first
        for _ in range(2):
            killed = time.monotonic()
            os.kill(last["pid"], signal.SIGKILL)
            last = redis.wait_for(ready(last["pid"]), 10)
            back.append(time.monotonic() - killed)
            assert last["state"] == "READY", last
            pids.add(last["pid"])
            assert last["port"] == port and ping(port)
        delays = [e["delay_s"] for e in redis.events if "delay_s" in e]
        assert delays == [0.5, 1.0]
        assert back[0] >= 0.5 and back[1] >= 1.0 and back[1] > back[0], back
        assert last["restarts"] == 2
        assert "exited with -9" in next(e["detail"] for e in redis.events if "delay_s" in e)

        # refresh: a new process at once, no backoff, not counted as a failure.
        began = time.monotonic()
        fresh = meta.refresh("redis")
        took = time.monotonic() - began
        pids.add(fresh["pid"])
        assert fresh["pid"] != last["pid"] and ping(port)
        assert fresh["refreshes"] == 1 and fresh["restarts"] == 2 and took < 5.0
        print(f"redis back after kill -9 in {back[0]:.2f} s and {back[1]:.2f} s "
              f"(backoff {delays}); refresh took {took:.2f} s")

        # keep_alive no longer names it: stopped, its data folder removed.
        workdir = Path(fresh["workdir"])
        assert workdir.is_dir()
        names.clear()
        poll(lambda: "redis" not in meta.status(), 10, "redis dropped")
        assert not alive(fresh["pid"]) and not workdir.exists() and not ping(port)
    finally:
        meta.close()
        kill_all(pids)


def test_prometheus_reloads_its_targets_on_sighup_and_survives_kill_9(
        sample_server: Server) -> None:
    need("prometheus")
    targets: list[ScrapeTarget] = []
    meta = MetaService(lambda: ["prometheus"], lambda: list(targets), poll_s=0.1,
                       scrape_interval_s=0.5, backoff=Backoff(initial_s=0.2))
    pids: set[int] = set()
    try:
        meta.start()
        prom = meta.service("prometheus")
        status = prom.wait_for(ready(), 15)
        assert status["state"] == "READY", status
        pids.add(status["pid"])
        url = status["url"]
        assert meta.url("prometheus") == url
        instance = sample_server.url.removeprefix("http://")

        def config() -> str:
            return str(httpx.get(f"{url}/api/v1/status/config", timeout=2).json()
                       ["data"]["yaml"])

        assert instance not in config()
        # A replica appears: the config is rewritten and re-read on SIGHUP, same process.
        targets.append(ScrapeTarget(sample_server.url, "replica", "sample"))
        poll(lambda: instance in config(), 5, "config reloaded")
        assert prom.status()["pid"] == status["pid"] and prom.status()["restarts"] == 0
        assert any(e.get("kind") == "reload" for e in prom.events)

        def up(prom_url: str) -> bool:
            result = httpx.get(f"{prom_url}/api/v1/query", params={"query": "up"},
                               timeout=2).json()["data"]["result"]
            return any(r["metric"]["instance"] == instance and r["value"][1] == "1"
                       and r["metric"]["action"] == "sample" for r in result)

        began = time.monotonic()
        poll(lambda: up(url), 20, "the replica scraped (up == 1)", every_s=0.25)
        scraped = time.monotonic() - began

        # kill -9: back on the same port with the same targets.
        os.kill(status["pid"], signal.SIGKILL)
        again = prom.wait_for(ready(status["pid"]), 15)
        assert again["state"] == "READY", again
        pids.add(again["pid"])
        assert again["url"] == url and again["restarts"] == 1
        assert instance in config()
        poll(lambda: up(url), 20, "scraped again after the restart", every_s=0.25)
        print(f"prometheus: replica scraped {scraped:.1f} s after the SIGHUP; "
              f"back after kill -9: {again['message']}")
    finally:
        meta.close()
        kill_all(pids)


def test_a_service_that_never_answers_is_killed_and_backed_off(tmp_path: Path) -> None:
    """A process that runs but never answers is not READY forever: after the ready timeout
    it is killed and retried with backoff (here: `sleep`, which answers nothing)."""
    definition = ServiceDefinition("sleeper", ("sleep", "30"), HealthCheck(
        HealthKind.COMMAND, command=("false",)), Backoff(initial_s=0.1))
    service = KeptService(definition, ready_timeout_s=0.3)
    pids: set[int] = set()
    try:
        service.start()
        first = service.wait_for(lambda s: s["pid"] is not None, 5)
        pids.add(first["pid"])
        status = service.wait_for(lambda s: s["restarts"] >= 2, 5)
        assert status["restarts"] >= 2 and "did not answer within 0.3 s" in " ".join(
            e["detail"] for e in service.events)
        assert status["last_error"] == "did not answer within 0.3 s"
        assert not alive(first["pid"])
    finally:
        service.stop()
        kill_all(pids)
    assert service.state is State.STOPPED


def http_server(version: str, backoff: dict[str, float] | None = None) -> dict[str, Any]:
    """A user service of META_CONFIG `services`: Python's http.server on {port}."""
    return {"command": [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "{port}",
                        "--directory", "{data}"],
            "health": {"kind": "http", "path": "/"}, "config_version": version,
            "backoff": backoff or {"initial_s": 0.3, "max_s": 2, "factor": 2}}


def test_a_user_defined_command_is_kept_alive_through_kill_9(tmp_path: Path) -> None:
    services = check_services({"web": http_server("1")})
    meta = MetaService(lambda: ["web"], defined=lambda: definitions_of(services), poll_s=0.1)
    pids: set[int] = set()
    try:
        meta.start()
        web = meta.service("web")
        first = web.wait_for(ready(), 15)
        assert first["state"] == "READY", first
        pids.add(first["pid"])
        assert first["health"] == "http" and first["config_version"] == "1"
        # Its {data} folder is served: a file put there is fetched independently.
        (Path(first["workdir"]) / "data" / "hello.txt").write_text("kept alive\n")
        page = f"http://127.0.0.1:{first['port']}/hello.txt"
        assert httpx.get(page, timeout=2).text == "kept alive\n"
        os.kill(first["pid"], signal.SIGKILL)
        again = web.wait_for(ready(first["pid"]), 15)
        assert again["state"] == "READY", again
        pids.add(again["pid"])
        assert again["restarts"] == 1 and again["port"] == first["port"]
        assert "exited with -9" in again["last_error"]
        assert httpx.get(page, timeout=2).text == "kept alive\n"
        assert [e["delay_s"] for e in web.events if "delay_s" in e] == [0.3]
    finally:
        meta.close()
        kill_all(pids)


def test_a_changed_definition_restarts_that_service_only() -> None:
    need("redis-server")
    services = check_services({"web": http_server("1"), "web2": http_server("1")})
    names = ["web", "web2", "redis"]
    meta = MetaService(lambda: names, defined=lambda: definitions_of(services), poll_s=0.1)
    pids: set[int] = set()
    try:
        meta.start()
        before = {n: meta.service(n).wait_for(ready(), 15) for n in names}
        assert all(s["state"] == "READY" for s in before.values()), before
        pids |= {s["pid"] for s in before.values()}
        # META_CONFIG set again, unchanged: nothing restarts.
        services = check_services({"web": http_server("1"), "web2": http_server("1")})
        time.sleep(0.5)  # five manager passes
        assert {n: meta.service(n).status()["pid"] for n in names} == {
            n: s["pid"] for n, s in before.items()}
        # web's config_version moves: web restarts, on its port; web2 and redis do not.
        services = check_services({"web": http_server("2"), "web2": http_server("1")})
        web = poll(lambda: meta.service("web").status() if meta.service("web").status()
                   ["config_version"] == "2" else None, 10, "web redefined")
        after = meta.service("web").wait_for(ready(before["web"]["pid"]), 15)
        assert after["state"] == "READY" and after["config_version"] == "2", web
        pids.add(after["pid"])
        assert not alive(before["web"]["pid"]) and after["port"] == before["web"]["port"]
        assert any(e.get("kind") == "redefined" for e in after["events"])
        for name in ("web2", "redis"):
            assert meta.service(name).status()["pid"] == before[name]["pid"]
            assert alive(before[name]["pid"])
        # Another kind of change (the backoff) is a change too.
        services = check_services({"web": http_server("2"),
                                   "web2": http_server("1", {"initial_s": 1.0})})
        poll(lambda: meta.service("web2").status()["pid"] not in (None, before["web2"]["pid"])
             or None, 15, "web2 restarted")
        pids.add(meta.service("web2").wait_for(ready(before["web2"]["pid"]), 15)["pid"])
        assert meta.service("web").status()["pid"] == after["pid"]
    finally:
        meta.close()
        kill_all(pids)


# --------------------------------------------------------------------------- API and CLI


@pytest.fixture()
def bare_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """An in-process jsorc API with no actions, its PATH empty of servers."""
    monkeypatch.setenv("PATH", str(tmp_path))  # neither prometheus nor redis-server here

    def load_config(module: str, name: str) -> ActionInfo:
        return ActionInfo(name, "none")

    runtime = Runtime(load_local=lambda info: None,
                      connect=lambda replica: None)
    service = JsorcService(runtime, None, load_config=load_config)
    app = make_app(service, TOKEN)
    port = free_port()
    serving(app, "127.0.0.1", port)
    try:
        with app_in_thread(app, port=port) as url:
            yield url
    finally:
        service.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def jsorc(url: str, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = cli.main([*argv, "--server", url, "--token", TOKEN, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err.strip())


def test_a_missing_binary_is_a_visible_state_not_a_crash(
        bare_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = bare_server
    code, answer = jsorc(url, "service", "status", capsys=capsys)
    assert code == 0 and answer["services"] == {}
    code, err = jsorc(url, "config", "set", "keep_alive", '["prometheus","task","mail","mongo"]',
                      capsys=capsys)
    assert code == 2 and "HTTP 400" in err
    assert "jsorc does not provide task (Jaseci's Celery task queue), mail (Jaseci's e-mail " \
        "sender), mongo (not a service jsorc knows)" in err
    assert "it keeps alive prometheus (JSORC's promon), redis, postgresql (JSORC's " \
        "jaseci-db)" in err
    code, answer = jsorc(url, "config", "set", "keep_alive", '["promon","redis"]',
                         capsys=capsys)
    assert code == 0 and answer["value"] == ["prometheus", "redis"]

    def states() -> dict[str, Any] | None:
        services = jsorc(url, "service", "status", capsys=capsys)[1]["services"]
        return services if len(services) == 2 else None

    services = poll(states, 5, "two services listed")
    assert services["prometheus"]["state"] == "MISSING"
    assert "apt-get install prometheus" in services["prometheus"]["message"]
    assert services["redis"]["state"] == "MISSING"
    assert "Debian package redis-server" in services["redis"]["message"]

    code, err = jsorc(url, "service", "refresh", "prometheus", capsys=capsys)
    assert code == 2 and "HTTP 409" in err and "not installed" in err
    code, err = jsorc(url, "service", "refresh", "mongo", capsys=capsys)
    assert code == 2 and "HTTP 404" in err and "unknown service 'mongo'" in err
    # The runtime answers on; tracksys falls back to psutil and says why.
    code, answer = jsorc(url, "tracksys", "start", capsys=capsys)
    assert code == 0 and answer["source"] == "psutil"
    assert "Prometheus is MISSING" in answer["detail"]
    assert cli.main(["service", "status", "--server", url, "--token", TOKEN]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["service", "state", "pid"]
    assert any(line.startswith("prometheus") and "MISSING" in line for line in table)


@pytest.mark.parametrize(("keep_alive", "refused"), [
    (["task"], "task (Jaseci's Celery task queue)"),
    (["promon", "mail"], "mail (Jaseci's e-mail sender)"),
    (["redis", "mongo"], "mongo (not a service jsorc knows)"),
    (["web", "task"], "task (Jaseci's Celery task queue)"),
])
def test_meta_config_refuses_services_jsorc_does_not_provide(
        keep_alive: list[str], refused: str) -> None:
    base = JsorcService(Runtime(load_local=lambda info: None, connect=lambda replica: None),
                        None, load_config=lambda m, n: ActionInfo(n, "none")).settings.as_dict()
    doc = {"keep_alive": keep_alive, "services": {"web": http_server("1")}}
    with pytest.raises(MetaConfigError) as caught:
        parse_meta_config(doc, base)
    message = str(caught.value)
    assert message.startswith("META_CONFIG refused, nothing changed: keep_alive: jsorc does "
                              "not provide ")
    assert refused in message and "web" not in message.split("provide")[1].split(":")[0]
    assert "it keeps alive prometheus (JSORC's promon), redis, postgresql (JSORC's " \
        "jaseci-db), web" in message
    # JSORC's names that jsorc does provide are taken, in jsorc's spelling.
    ok = parse_meta_config({"keep_alive": ["promon", "jaseci-db", "web"],
                            "services": {"web": http_server("1")}}, base)
    assert ok.keep_alive == ["prometheus", "postgresql", "web"]


def test_services_cannot_drop_a_service_keep_alive_names_but_both_change_together() -> None:
    settings = JsorcService(Runtime(load_local=lambda info: None, connect=lambda replica: None),
                            None, load_config=lambda m, n: ActionInfo(n, "none")).settings
    settings.set("services", {"web": http_server("1")})
    settings.set("keep_alive", ["web", "redis"])
    with pytest.raises(RuntimeRefusal, match="keep_alive names web, which this value leaves "
                                             "out: take it out of keep_alive first"):
        settings.set("services", {})
    assert list(settings.services) == ["web"] and settings.keep_alive == ("web", "redis")
    # A META_CONFIG that drops it from both at once is one change, and taken.
    base = settings.as_dict()
    apply_to(settings, parse_meta_config({"services": {}, "keep_alive": ["redis"]}, base))
    assert settings.services == {} and settings.keep_alive == ("redis",)
