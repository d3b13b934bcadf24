"""The router under faults, with real action-server processes on 127.0.0.1 (the process
backend, the real client and loader): a replica killed or frozen, a local call that never
returns, a connection refused, a call sent that got no answer, too many replicas, an
attached server that does not answer.

Executions are counted on the server side (fault_actions.py appends `PID TAG` to a counter
file), so "not sent again" is checked where it matters. Deadlines are generous bounds, never
exact times: the machine may be slow. Every process a test freezes is killed at teardown.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from jsorc_live.actions.config import ActionConfig, ConfigError
from jsorc_live.actions.loader import AllowList, LocalModule
from jsorc_live.api import connect_remote, info_of
from jsorc_live.backend import ProcessBackend
from jsorc_live.controller import apply_to_runtime
from jsorc_live.runtime import (
    ActionInfo,
    CallFailed,
    HealthPolicy,
    Replica,
    RetryPolicy,
    Router,
    Runtime,
    RuntimeRefusal,
)
from policies import Mode, Placement

FAULTS = Path(__file__).with_name("fault_actions.py")
LOCAL_MODULE = "tests.jsorc_live.fault_actions"
SETTLE_S = 60.0  # a bound for starts on a slow machine, not an expected time


@dataclass
class Live:
    runtime: Runtime
    backend: ProcessBackend
    tmp: Path
    frozen: list[int] = field(default_factory=list)

    def remote(self, name: str = "fault", **info: Any) -> Router:
        self.runtime.configure(ActionInfo(name, str(FAULTS), remote_memory_mb=80.0,
                                          default_mode=Mode.REMOTE, **info))
        return self.runtime.routers[name]

    def local(self, name: str = "fault", **info: Any) -> Router:
        self.runtime.configure(ActionInfo(name, LOCAL_MODULE, **info))
        return self.runtime.routers[name]

    def freeze(self, pid: int) -> None:
        self.frozen.append(pid)
        os.kill(pid, signal.SIGSTOP)

    def counter(self, name: str = "runs") -> Path:
        path = self.tmp / f"{name}.txt"
        path.touch()
        return path


def make_live(tmp: Path, *, check_every_s: float = 0.2, health: HealthPolicy | None = None,
              ready_timeout_s: float = 30.0) -> Live:
    holder: dict[str, Runtime] = {}
    backend = ProcessBackend(start_timeout_s=30, check_every_s=check_every_s, log_dir=tmp,
                             on_dead=lambda r: holder["runtime"].replica_died(r))
    allow = AllowList([LOCAL_MODULE])

    def load_local(info: ActionInfo) -> LocalModule:
        return LocalModule.load(info.module, allow=allow, setup=info.setup)

    runtime = Runtime(load_local=load_local, connect=connect_remote, replicas=backend,
                      ready_timeout_s=ready_timeout_s, call_timeout_s=20.0,
                      health=health or HealthPolicy(interval_s=0.5, timeout_s=1.0,
                                                    failures=2))
    holder["runtime"] = runtime
    return Live(runtime, backend, tmp)


def teardown(live: Live) -> None:
    for pid in live.frozen:  # a stopped process never exits on SIGTERM: kill it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    live.runtime.close()
    live.backend.shutdown()


@pytest.fixture()
def live(tmp_path: Path) -> Iterator[Live]:
    made = make_live(tmp_path)
    try:
        yield made
    finally:
        teardown(made)


def pids_of(live: Live, action: str = "fault") -> list[int]:
    return [r.pid for r in live.backend.replicas(action) if r.pid is not None]


def wait_for(what: Callable[[], bool], timeout_s: float = SETTLE_S) -> float:
    """Poll `what` until true; the seconds it took (fails after the bound)."""
    start = time.monotonic()
    while not what():
        assert time.monotonic() - start < timeout_s, "not within the bound"
        time.sleep(0.05)
    return time.monotonic() - start


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# --------------------------------------------------------------------------- replicas


def test_the_only_replica_killed_is_replaced_and_calls_succeed(live: Live) -> None:
    router = live.remote()
    router.set_placement(Placement.remote(1))
    assert router.wait_settled(SETTLE_S), router.status()
    victim = router.call("work", {})[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    # Once it is gone (a call racing the kill on a kept-alive connection may have been read
    # by it: that one fails, not sent again), a call is refused, sent again, waits for the
    # replacement (its deadline bounds the wait) and succeeds there.
    wait_for(lambda: gone(victim), 10.0)
    # The first call after the kill may go out on the connection the victim held: it was
    # (maybe) sent, so it fails rather than run twice. Every later one is refused, sent
    # again and succeeds on the replacement.
    outcomes: list[str] = []
    for _ in range(3):
        try:
            result, row = router.call("work", {})
        except CallFailed as exc:
            assert "not sent again: it may have run" in str(exc)
            outcomes.append("failed")
            continue
        outcomes.append("ok")
        break
    assert outcomes in (["ok"], ["failed", "ok"]), outcomes
    assert result["pid"] != victim and row["placement"] == "remote"
    assert router.wait_settled(SETTLE_S)
    assert router.replicas_ready == 1 and pids_of(live) == [result["pid"]]
    assert router.status()["remote"]["status"] == "READY"
    assert {e["kind"] for e in router.events} & {"replica_died", "replica_unhealthy"}


def test_status_is_starting_while_no_replica_is_ready(tmp_path: Path) -> None:
    # No monitor and no health checks to race with: the death is reported by hand.
    live = make_live(tmp_path, check_every_s=60.0,
                     health=HealthPolicy(interval_s=60.0, timeout_s=1.0, failures=2))
    try:
        router = live.remote()
        router.set_placement(Placement.remote(1))
        assert router.wait_settled(SETTLE_S)
        [replica] = live.backend.replicas("fault")
        router.replica_died(replica)
        status = router.status()
        assert status["remote"]["status"] == "STARTING" and status["transition"]
        assert router.wait_settled(SETTLE_S) and router.status()["remote"]["status"] == "READY"
        assert router.replicas_ready == 1 and pids_of(live) != [replica.pid]
    finally:
        teardown(live)


def test_a_frozen_replica_of_two_leaves_balancing_and_is_replaced(live: Live) -> None:
    router = live.remote()
    router.set_placement(Placement.remote(2))
    assert router.wait_settled(SETTLE_S), router.status()
    victim = pids_of(live)[0]
    victim_url = next(r.url for r in live.backend.replicas("fault") if r.pid == victim)
    live.freeze(victim)
    took = wait_for(lambda: victim_url not in router.status()["remote"]["replicas"], 20.0)
    # Two failed checks (0.5 s apart, 1 s each), with room for a slow machine.
    assert took < 15.0
    assert all(router.call("work", {})[0]["pid"] != victim for _ in range(10))
    wait_for(lambda: router.replicas_ready == 2 and victim not in pids_of(live))
    wait_for(lambda: gone(victim), 20.0)  # stopped: SIGTERM waits for SIGCONT, then SIGKILL
    assert any(e["kind"] == "replica_unhealthy" for e in router.events)


def test_calls_on_the_only_frozen_replica_fail_at_their_deadline(live: Live) -> None:
    router = live.remote(call_timeout_s=3.0)
    router.set_placement(Placement.remote(1))
    assert router.wait_settled(SETTLE_S)
    [victim] = pids_of(live)
    live.freeze(victim)
    start = time.monotonic()
    with pytest.raises(CallFailed, match="not sent again: it may have run") as failed:
        router.call("work", {})
    took = time.monotonic() - start
    assert 2.5 < took < 15.0, took  # the deadline (3 s), not the old 60 s read timeout
    assert "fault.work" in str(failed.value)
    # Health checks took it out and a replacement serves.
    wait_for(lambda: router.replicas_ready == 1 and victim not in pids_of(live))
    assert router.call("work", {})[0]["pid"] != victim


def test_the_least_loaded_replica_gets_the_next_call(live: Live) -> None:
    router = live.remote()
    router.set_placement(Placement.remote(2))
    assert router.wait_settled(SETTLE_S)
    counter = live.counter()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(router.call, "sleep", {"seconds": 3.0, "counter": str(counter)})
        wait_for(lambda: bool(lines(counter)), 20.0)
        busy = int(lines(counter)[0].split()[0])
        quick = {router.call("work", {})[0]["pid"] for _ in range(6)}
        assert busy not in quick and len(quick) == 1  # round-robin would have sent 3 there
        assert slow.result(timeout=30)[0]["pid"] == busy


# --------------------------------------------------------------------------- retries


def test_a_refused_connection_is_sent_again_and_runs_once(tmp_path: Path) -> None:
    # Nothing notices the death but the call itself: no monitor, no periodic checks.
    live = make_live(tmp_path, check_every_s=60.0,
                     health=HealthPolicy(interval_s=60.0, timeout_s=1.0, failures=2))
    try:
        router = live.remote()
        router.set_placement(Placement.remote(1))
        assert router.wait_settled(SETTLE_S)
        [victim] = pids_of(live)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: gone(victim), 10.0)
        counter = live.counter()
        result, _ = router.call("work", {"counter": str(counter), "tag": "once"})
        # Refused twice (the health threshold): taken out, replaced, sent there once.
        assert result["pid"] != victim
        assert lines(counter) == [f"{result['pid']} once"]
        assert any(e["kind"] == "replica_unhealthy" for e in router.events)
    finally:
        teardown(live)


def test_the_retry_pause_is_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(base_s=0.1, cap_s=1.0)
    rng = random.Random(7)
    for failures, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        pauses = [policy.pause_s(failures, rng) for _ in range(200)]
        assert min(pauses) >= 0.0 and max(pauses) <= ceiling
        assert max(pauses) > 0.8 * ceiling and min(pauses) < 0.2 * ceiling  # spread out
    for bad in [{"attempts": 0}, {"base_s": float("nan")}, {"cap_s": -1.0}]:
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


@pytest.mark.parametrize("idempotent", [False, True])
def test_a_call_sent_that_got_no_answer_is_sent_again_only_if_idempotent(
        live: Live, idempotent: bool) -> None:
    router = live.remote(idempotent=idempotent)
    router.set_placement(Placement.remote(2))
    assert router.wait_settled(SETTLE_S)
    counter = live.counter()
    with ThreadPoolExecutor(1) as pool:
        call: Future[Any] = pool.submit(router.call, "sleep",
                                        {"seconds": 2.0, "counter": str(counter)})
        wait_for(lambda: bool(lines(counter)), 20.0)
        first = int(lines(counter)[0].split()[0])
        os.kill(first, signal.SIGKILL)  # it was running the call: the connection drops
        if idempotent:
            result, _ = call.result(timeout=60)
            ran = [int(line.split()[0]) for line in lines(counter)]
            assert ran[0] == first and ran[1] == result["pid"] != first and len(ran) == 2
        else:
            with pytest.raises(CallFailed, match="not sent again"):
                call.result(timeout=60)
            time.sleep(0.5)
            assert [int(line.split()[0]) for line in lines(counter)] == [first]


def test_a_read_timeout_is_not_sent_again(live: Live) -> None:
    router = live.remote(call_timeout_s=1.0)
    router.set_placement(Placement.remote(2))
    assert router.wait_settled(SETTLE_S)
    counter = live.counter()
    with pytest.raises(CallFailed, match=r"timed out after .*not sent again"):
        router.call("sleep", {"seconds": 3.0, "counter": str(counter)})
    time.sleep(3.5)  # a resend would have run by now, on either replica
    assert len(lines(counter)) == 1


# --------------------------------------------------------------------------- local calls


def test_a_hung_local_call_fails_at_its_deadline_and_the_copy_is_reloaded(live: Live) -> None:
    router = live.local(call_timeout_s=1.5)
    router.set_placement(Placement.local())
    assert router.wait_settled(SETTLE_S)
    start = time.monotonic()
    with pytest.raises(CallFailed, match=r"fault\.hang did not finish within 1\.5 s"):
        router.call("hang", {})
    assert 1.0 < time.monotonic() - start < 10.0
    assert any(e["kind"] == "local_degraded" for e in router.events)
    assert router.wait_settled(SETTLE_S)
    assert "degraded" not in router.status()  # a fresh copy serves
    assert router.call("work", {})[0]["pid"] == os.getpid()
    assert router.in_flight == 0  # the hung call is not counted


def test_a_move_away_from_a_hung_local_call_completes_and_close_returns(live: Live) -> None:
    router = live.local(call_timeout_s=2.0)
    router.set_placement(Placement.local())
    assert router.wait_settled(SETTLE_S)
    pool = ThreadPoolExecutor(2)
    hung = pool.submit(router.call, "hang", {})
    wait_for(lambda: router.in_flight == 1, 10.0)
    start = time.monotonic()
    router.set_placement(Placement.remote(1))
    assert router.wait_settled(SETTLE_S), router.status()
    assert str(router.placement) == "remote:1"
    with pytest.raises(CallFailed, match="did not finish within 2 s"):
        hung.result(timeout=30)
    assert time.monotonic() - start < SETTLE_S
    # Back to local, a call hangs again, and the runtime closes within the drain bound.
    router.set_placement(Placement.local())
    assert router.wait_settled(SETTLE_S)
    again = pool.submit(router.call, "hang", {})
    wait_for(lambda: router.in_flight == 1, 10.0)
    start = time.monotonic()
    live.runtime.close()
    assert time.monotonic() - start < router.drain_s + 10.0
    with pytest.raises(CallFailed):
        again.result(timeout=30)
    pool.shutdown(wait=False)


# --------------------------------------------------------------------------- caps, attach


class Roomy:
    """A backend that would start anything (never asked to here) and holds `room` replicas."""

    def __init__(self, room: int | None) -> None:
        self.room = room
        self.starts = 0

    def start_replica(self, info: ActionInfo) -> Replica:
        self.starts += 1
        raise RuntimeError("no starts in this test")

    def stop_replica(self, replica: Replica) -> None:
        pass

    def healthy(self, replica: Replica) -> bool:
        return False

    def capacity(self, info: ActionInfo) -> int | None:
        return self.room


def capped_runtime(room: int | None) -> tuple[Runtime, Roomy]:
    backend = Roomy(room)
    runtime = Runtime(load_local=lambda info: None,  # type: ignore[arg-type, return-value]
                      connect=connect_remote, replicas=backend, max_replicas=8)
    runtime.configure(ActionInfo("a", "m", remote_memory_mb=100.0))
    return runtime, backend


@pytest.mark.parametrize(("room", "cap", "why"), [(None, 8, "max_replicas"),
                                                  (50, 8, "max_replicas"),
                                                  (3, 3, "what the backend can hold")])
def test_replicas_above_the_cap_are_refused_with_422(room: int | None, cap: int,
                                                     why: str) -> None:
    runtime, backend = capped_runtime(room)
    router = runtime.routers["a"]
    with pytest.raises(RuntimeRefusal, match=rf"100000 replicas .* the cap is {cap} \({why}\)") \
            as refused:
        router.set_placement(Placement.remote(100_000))
    assert refused.value.status == 422
    assert router.desired.mode is Mode.UNLOADED and backend.starts == 0
    runtime.max_replicas = 2
    with pytest.raises(RuntimeRefusal, match="the cap is 2"):
        router.set_placement(Placement.remote(3))
    with pytest.raises(ValueError, match="max_replicas"):
        runtime.max_replicas = 0
    # A policy deciding it: the refusal reaches the controller (which records it as an
    # apply_error row: test_controller_faults), and nothing changes.
    with pytest.raises(RuntimeRefusal, match="the cap is 2"):
        apply_to_runtime(runtime)("a", Placement.remote(100_000))
    assert router.desired.mode is Mode.UNLOADED and backend.starts == 0
    assert [e["kind"] for e in router.events].count("placement_refused") == 3
    runtime.close()


def test_the_process_backend_says_what_memory_holds(tmp_path: Path) -> None:
    backend = ProcessBackend(log_dir=tmp_path)
    try:
        available_mb = psutil.virtual_memory().available / 2**20
        held = backend.capacity(ActionInfo("a", "m", remote_memory_mb=100.0))
        assert held is not None and abs(held - available_mb // 100) <= 2
        assert backend.capacity(ActionInfo("a", "m", remote_memory_mb=0.0)) is None
    finally:
        backend.shutdown()


def test_an_attached_server_that_does_not_answer_never_reads_ready(tmp_path: Path) -> None:
    live = make_live(tmp_path, ready_timeout_s=2.0)
    try:
        router = live.remote()
        router.set_placement(Placement.remote(1), url="http://127.0.0.1:1")
        assert router.status()["remote"]["status"] == "STARTING"
        router.wait_settled(30.0)
        status = router.status()
        assert status["remote"]["status"] == "STARTING"
        assert "did not answer /jaseci_actions_spec/ within 2 s" in status["error"]
        assert router.placement.mode is Mode.UNLOADED
    finally:
        teardown(live)


def test_an_attached_server_that_stops_answering_is_suspended_then_readmitted(
        live: Live) -> None:
    server = live.backend.start_replica(ActionInfo("other", str(FAULTS)))
    assert server.pid is not None
    router = live.remote()
    router.set_placement(Placement.remote(1), url=server.url)
    assert router.wait_settled(SETTLE_S)
    assert router.call("work", {})[0]["pid"] == server.pid
    live.freeze(server.pid)
    wait_for(lambda: router.replicas_ready == 0, 20.0)
    assert router.status()["remote"]["status"] == "STARTING"
    os.kill(server.pid, signal.SIGCONT)
    wait_for(lambda: router.replicas_ready == 1, 20.0)
    assert router.call("work", {})[0]["pid"] == server.pid
    kinds = [e["kind"] for e in router.events]
    assert "replica_suspended" in kinds and "replica_recovered" in kinds


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "5", True])
def test_a_call_timeout_must_be_a_finite_positive_number(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"call_timeout_s must be a finite number"):
        ActionConfig("a", "m", 1.0, 1.0, call_timeout_s=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="call_timeout_s"):
        ActionInfo("a", "m", call_timeout_s=bad)  # type: ignore[arg-type]


def test_the_deadline_and_idempotence_come_from_the_config() -> None:
    config = ActionConfig.from_dict("a", {"module": "m", "call_timeout_s": 2.5,
                                          "idempotent": True})
    info = info_of(config)
    assert (info.call_timeout_s, info.idempotent) == (2.5, True)
    assert (info_of(ActionConfig("b", "m", 1.0, 1.0)).call_timeout_s,
            info_of(ActionConfig("b", "m", 1.0, 1.0)).idempotent) == (None, False)
    with pytest.raises(ConfigError, match="idempotent must be true or false"):
        ActionConfig.from_dict("a", {"module": "m", "idempotent": "yes"})
    runtime = Runtime(load_local=lambda i: None,  # type: ignore[arg-type, return-value]
                      connect=connect_remote, call_timeout_s=7.0)
    runtime.configure(info)
    runtime.configure(info_of(ActionConfig("b", "m", 1.0, 1.0)))
    assert runtime.routers["a"].deadline_s == 2.5 and runtime.routers["b"].deadline_s == 7.0
    runtime.call_timeout_s = 9.0
    assert runtime.routers["b"].deadline_s == 9.0
    with pytest.raises(ValueError, match="call_timeout_s"):
        runtime.call_timeout_s = float("nan")
    runtime.close()


def test_threads_do_not_pile_up_after_a_close() -> None:
    runtime, _ = capped_runtime(None)
    before = threading.active_count()
    runtime.close()
    assert threading.active_count() <= before
