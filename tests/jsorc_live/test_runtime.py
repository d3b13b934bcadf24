"""Router and Runtime with in-process fakes: moves under load fail no call, drains come
before unloads, round-robin, scaling, dead replicas, cold starts, logs and reports."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from jsorc_live.controller import LiveObserver
from jsorc_live.runtime import (
    CALL_COLUMNS,
    LOADTEST_APPS,
    ActionInfo,
    CallFailed,
    CallTiming,
    Invoker,
    Replica,
    RowLog,
    Runtime,
    RuntimeRefusal,
    Step,
    TransportError,
    Walker,
)
from policies import Mode, Placement


class FakeModule:
    """A local copy whose calls take `work_s`; records calls running when it is unloaded."""

    def __init__(self, log: list[str], work_s: float) -> None:
        self.log = log
        self.work_s = work_s
        self.running = 0
        self.unloaded = False
        self.memory_mb = 12.5
        self.lock = threading.Lock()

    def call(self, name: str, kwargs: dict[str, Any]) -> Any:
        assert not self.unloaded, "a call reached an unloaded module"
        with self.lock:
            self.running += 1
        time.sleep(self.work_s)
        with self.lock:
            self.running -= 1
        return {"local": name, **kwargs}

    def unload(self) -> None:
        self.log.append(f"unload running={self.running}")
        self.unloaded = True


class FakeReplicas:
    """Replicas that start after `start_s`; `dead` holds URLs that no longer answer."""

    def __init__(self, start_s: float = 0.05, fail: bool = False) -> None:
        self.start_s = start_s
        self.fail = fail
        self.ids = itertools.count(1000)
        self.running: set[Replica] = set()
        self.dead: set[str] = set()
        self.stopped: list[Replica] = []
        self.lock = threading.Lock()

    def start_replica(self, info: ActionInfo) -> Replica:
        action = info.name
        time.sleep(self.start_s)
        if self.fail:
            raise RuntimeError("no room")
        replica = Replica(action, f"fake://{action}/{next(self.ids)}", next(self.ids))
        with self.lock:
            self.running.add(replica)
        return replica

    def stop_replica(self, replica: Replica) -> None:
        with self.lock:
            self.running.discard(replica)
            self.stopped.append(replica)

    def healthy(self, replica: Replica) -> bool:
        return replica.url not in self.dead and replica in self.running

    def connect(self, replica: Replica) -> Invoker:
        def invoke(name: str, kwargs: dict[str, Any], timeout_s: float
                   ) -> tuple[Any, CallTiming]:
            if replica.url in self.dead:
                raise TransportError(f"{replica.url} refused the connection", sent=False)
            assert replica in self.running, "a call reached a stopped replica"
            time.sleep(0.002)
            return {"remote": replica.url}, CallTiming(1.5, 0.5)
        return invoke


def make_runtime(work_s: float = 0.002, replicas: FakeReplicas | None = None,
                 fail_load: bool = False) -> tuple[Runtime, list[str], FakeReplicas]:
    log: list[str] = []
    pool = replicas or FakeReplicas()

    def load_local(info: ActionInfo) -> FakeModule:
        time.sleep(0.02)
        if fail_load:
            raise ImportError(f"no module {info.module}")
        log.append(f"load {info.module}")
        return FakeModule(log, work_s)

    walker = Walker("two", (Step("a", "f", {"text": "text"}), Step("b", "g")))
    runtime = Runtime(load_local=load_local, connect=pool.connect, replicas=pool,
                      walkers=[walker], ready_timeout_s=5.0, call_timeout_s=5.0)
    runtime.configure(ActionInfo("a", "mod_a", local_memory_mb=10.0))
    runtime.configure(ActionInfo("b", "mod_b", default_mode=Mode.REMOTE))
    return runtime, log, pool


def settled_observations_agree(runtime: Runtime) -> None:
    """With no call running, the runtime's observations hold no call, and count the
    replicas ready that the routers have (every event was paired, none lost)."""
    observation = LiveObserver(runtime).observe(1.0)
    for name, router in runtime.routers.items():
        stats = observation.actions[name]
        assert (stats.in_flight, stats.queued, stats.oldest_call_age_s) == (0, 0, 0.0)
        assert stats.replicas_ready == router.replicas_ready
        assert stats.placement == router.placement


def no_replica_left(runtime: Runtime) -> None:
    """After close, every replica the observations knew of was reported gone."""
    builder = runtime.observations.target
    for name in runtime.routers:
        assert not builder.action(name).replicas


def test_loadtest_apps_are_jsorcs_eight() -> None:
    assert LOADTEST_APPS["virtual_assistant"] == ("text_seg", "bi_enc", "tfm_ner",
                                                   "sbert_sim", "use_qa")
    assert len(LOADTEST_APPS) == 8


def test_cold_start_loads_in_the_default_mode_and_logs_the_call() -> None:
    runtime, _, _ = make_runtime()
    result = runtime.run_walker("two", {"text": "hi"})
    assert result.ok, result.error
    assert result.report[0] == {"local": "f", "text": "hi"}
    assert result.report[1]["remote"].startswith("fake://b/")
    rows = [dict(zip(CALL_COLUMNS, r, strict=True)) for r in runtime.calls.since(0)[0]]
    assert [(r["action"], r["placement"], r["cold"], r["ok"]) for r in rows] == [
        ("a", "local", True, True), ("b", "remote", True, True)]
    assert rows[1]["service_ms"] == 1.5 and rows[1]["replica"] > 0
    assert rows[0]["replica"] == -1 and rows[0]["wait_ms"] > 10  # it waited for the load
    again = runtime.run_walker("two", {"text": "x"})
    assert again.ok and not any(r[11] for r in runtime.calls.since(2)[0])
    assert str(runtime.routers["a"].placement) == "local"
    assert runtime.routers["a"].local_memory_mb == 12.5  # the measured size
    runtime.close()


def test_unknown_walker_and_unconfigured_action_are_refused() -> None:
    runtime, _, _ = make_runtime()
    with pytest.raises(RuntimeRefusal, match="unknown walker"):
        runtime.run_walker("nope", {})
    runtime.add_walker(Walker("lost", (Step("zzz", "f"),)))
    with pytest.raises(RuntimeRefusal, match="unconfigured action"):
        runtime.run_walker("lost", {})
    with pytest.raises(RuntimeRefusal, match="unknown action"):
        runtime.router("zzz")
    runtime.close()


def test_moves_under_load_fail_no_call_and_drain_before_unloading() -> None:
    runtime, log, pool = make_runtime(work_s=0.01)
    router = runtime.routers["a"]
    router.set_placement(Placement.local())
    assert router.wait_settled(5)
    stop = threading.Event()

    def client() -> int:
        failures = 0
        while not stop.is_set():
            failures += not runtime.run_walker("two", {"text": "t"}).ok
        return failures

    with ThreadPoolExecutor(4) as clients:
        futures = [clients.submit(client) for _ in range(4)]
        for target in [Placement.remote(2), Placement.local(), Placement.remote(1),
                       Placement.local()]:
            time.sleep(0.1)
            router.set_placement(target)
            assert router.wait_settled(5), router.status()
            assert str(router.placement) == str(target)
        time.sleep(0.1)
        stop.set()
        assert sum(f.result() for f in futures) == 0
    rows = runtime.calls.since(0)[0]
    assert rows and all(r[10] for r in rows)
    placements = {r[4] for r in rows if r[3] == "a"}
    assert placements == {"local", "remote"}
    # Every local copy was unloaded with no call running in it.
    assert [e for e in log if e.startswith("unload")] == ["unload running=0"] * 2
    # Every replica of a's remote placements was stopped once drained.
    assert not [r for r in pool.running if r.action == "a"]
    settled_observations_agree(runtime)
    runtime.close()
    no_replica_left(runtime)


def test_remote_replicas_are_dealt_round_robin_and_scale_down_drains() -> None:
    runtime, _, pool = make_runtime()
    router = runtime.routers["b"]
    router.set_placement(Placement.remote(3))
    assert router.wait_settled(5)
    assert router.replicas_ready == 3
    urls = [router.call("g", {})[0]["remote"] for _ in range(6)]
    assert len(set(urls)) == 3 and urls[:3] == urls[3:]
    router.set_placement(Placement.remote(1))
    assert router.wait_settled(5)
    assert router.replicas_ready == 1 and len(pool.stopped) == 2
    status = router.status()
    assert status["mode"] == "remote" and status["remote"]["status"] == "READY"
    settled_observations_agree(runtime)
    runtime.close()
    assert not pool.running
    no_replica_left(runtime)


def test_a_dead_replica_is_replaced_and_no_call_fails() -> None:
    runtime, _, pool = make_runtime()
    router = runtime.routers["b"]
    router.set_placement(Placement.remote(2))
    assert router.wait_settled(5)
    victim = next(iter(pool.running))
    pool.dead.add(victim.url)
    results = [router.call("g", {})[0]["remote"] for _ in range(10)]
    assert victim.url not in results
    deadline = time.monotonic() + 5
    while router.replicas_ready < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert router.replicas_ready == 2
    assert victim in pool.stopped
    # Found by the calls that could not connect and the health checks, not a process exit.
    assert any(e["kind"] == "replica_unhealthy" for e in router.events)
    settled_observations_agree(runtime)
    runtime.close()


def test_a_failed_move_keeps_the_placement() -> None:
    runtime, _, _ = make_runtime(replicas=FakeReplicas(fail=True))
    router = runtime.routers["b"]
    router.set_placement(Placement.remote(1))
    router.wait_settled(5)
    assert router.placement.mode is Mode.UNLOADED
    assert "no replica started" in router.status()["error"]
    with pytest.raises(CallFailed, match="no replica started"):  # refused in _acquire
        router.call("g", {})
    failed = LiveObserver(runtime).observe(1.0).actions["b"]
    assert (failed.calls, failed.failures, failed.queued, failed.in_flight) == (1, 1, 0, 0)
    runtime.close()

    runtime, _, _ = make_runtime(fail_load=True)
    router = runtime.routers["a"]
    router.set_placement(Placement.remote(1))
    assert router.wait_settled(5)
    router.set_placement(Placement.local())
    router.wait_settled(5)
    assert str(router.placement) == "remote:1"
    assert "ImportError" in router.status()["error"]
    assert router.call("f", {})[1]["placement"] == "remote"
    settled_observations_agree(runtime)
    assert runtime.observations.observe(1.0).node.oom_events == 0  # not refused for memory
    runtime.close()
    no_replica_left(runtime)


@pytest.mark.parametrize("limit,appended", [(10, 25), (10, 10), (7, 100), (2, 3)])
def test_row_log_says_how_many_rows_a_reader_lost(limit: int, appended: int) -> None:
    log = RowLog(limit=limit)
    late = 3  # a reader that came in after the third row
    for i in range(appended):
        log.append((i,))
        if i == late - 1:
            cursor = log.cursor
    rows, now = log.since(0)
    values = [row[0] for row in rows]
    assert now == appended and values == list(range(appended - len(values), appended))
    assert log.lost(0) == appended - len(values)  # every row is either read or counted lost
    assert log.lost(now) == 0
    later, _ = log.since(cursor)
    assert log.lost(cursor) + len(later) == appended - late


def test_trackact_benchmark_and_calls_since_count_what_the_logs_dropped() -> None:
    runtime, _, _ = make_runtime()
    runtime.calls = RowLog(limit=4)  # small logs, so a short session outruns them
    runtime.requests = RowLog(limit=2)
    runtime.track_start()
    runtime.benchmark_start()
    _, mark, lost = runtime.calls_since(runtime.calls.cursor)
    assert lost == 0
    for _ in range(5):
        runtime.run_walker("two", {})  # two calls each
    rows, _, lost = runtime.calls_since(mark)
    assert lost > 0 and lost + len(rows) == 10
    calls = runtime.track_stop()
    assert runtime.track_lost > 0 and runtime.track_lost + len(calls) == 10
    report = runtime.benchmark_stop()
    counted = round(report["walker_run"]["all"]["throughput"]
                    * (runtime._benchmark["stop"] - runtime._benchmark["start"]))
    assert report["requests_lost"] > 0 and report["requests_lost"] + counted == 5
    runtime.close()


def test_benchmark_report_has_jsorcs_shape_and_track_returns_call_rows() -> None:
    runtime, _, _ = make_runtime()
    with pytest.raises(RuntimeRefusal):
        runtime.benchmark_report()
    runtime.run_walker("two", {})  # before the benchmark: not counted
    runtime.benchmark_start()
    runtime.track_start()
    for _ in range(5):
        runtime.run_walker("two", {})
    calls = runtime.track_stop()
    report = runtime.benchmark_stop()
    assert len(calls) == 10 and set(calls[0]) == set(CALL_COLUMNS) and runtime.track_lost == 0
    assert "requests_lost" not in report  # nothing dropped: JSORC's shape exactly
    assert set(report["walker_run"]) == {"two", "all"}
    entry = report["walker_run"]["all"]
    assert set(entry) == {"throughput", "average_latency", "50th_latency", "90th_latency",
                          "95th_latency", "99th_latency"}
    assert entry["throughput"] > 0
    assert entry["50th_latency"] <= entry["99th_latency"]
    with pytest.raises(RuntimeRefusal):
        runtime.track_stop()
    runtime.close()


def test_a_second_trackact_start_says_how_many_calls_it_let_go() -> None:
    runtime, _, _ = make_runtime()
    assert runtime.track_start() is None  # none was running
    runtime.run_walker("two", {})
    assert runtime.track_start() == 2  # the walker's two calls
    runtime.run_walker("two", {})
    assert len(runtime.track_stop()) == 2
    runtime.close()
