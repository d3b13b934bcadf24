"""The live controller's observations, measured against what is known to have happened.

Real parts throughout: action-server processes started by the process backend, the HTTP
client, the loader importing example modules into this process, psutil. The right side of
each check is computed without the observation builder: the number of client threads, the
configured cores, this process's RSS read here, this thread's own CPU time, the module size
asked for, a replay of the recorded events into a fresh builder.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from jsorc_live.actions.config import ActionConfig, ConfigError
from jsorc_live.actions.loader import AllowList, LocalModule
from jsorc_live.api import connect_remote, info_of
from jsorc_live.backend import ProcessBackend
from jsorc_live.controller import LiveObserver
from jsorc_live.runtime import ActionInfo, Runtime, Step, Walker
from policies import Mode, Observation, Placement
from policies.observe import ObservationBuilder, replay
from tests.jsorc_live.servers import SAMPLE

BI_ENC = "jsorc_live.actions.examples.bi_enc"
MB = 1024.0 * 1024.0


@dataclasses.dataclass
class Live:
    runtime: Runtime
    backend: ProcessBackend
    observer: LiveObserver


@pytest.fixture()
def live(tmp_path: Path) -> Iterator[Live]:
    """A runtime over the process backend and the real client and loader; walkers: `naps`
    (one sample.nap), `mix` (a local bi_enc call, a short remote nap), `bad` (sample.boom)."""
    backend = ProcessBackend(start_timeout_s=30, log_dir=tmp_path)
    allow = AllowList([BI_ENC])

    def load_local(info: ActionInfo) -> LocalModule:
        return LocalModule.load(info.module, allow=allow, setup=info.setup)

    walkers = [
        Walker("naps", (Step("sample", "nap", {"seconds": "seconds"}),)),
        Walker("mix", (Step("bi_enc", "cos_sim_score", {"q": "q", "a": "a"}),
                       Step("sample", "nap", {"seconds": "seconds"}))),
        Walker("bad", (Step("sample", "boom"),)),
    ]
    runtime = Runtime(load_local=load_local, connect=connect_remote, replicas=backend,
                      walkers=walkers, ready_timeout_s=30.0, call_timeout_s=30.0)
    try:
        yield Live(runtime, backend, LiveObserver(runtime, backend))
    finally:
        runtime.close()
        backend.shutdown()


def remote_sample(remote_cores: float = 1.0) -> ActionInfo:
    """sample_actions.py served remotely, configured as `jsorc actions config` would; its
    module is the file's path (the server loads it; this process never does)."""
    config = ActionConfig("sample", "sample_actions", local_memory_mb=0.0,
                          remote_memory_mb=80.0, remote_cores=remote_cores)
    return dataclasses.replace(info_of(config), module=str(SAMPLE), default_mode=Mode.REMOTE)


def local_bi_enc(memory_mb: float) -> ActionInfo:
    return info_of(ActionConfig("bi_enc", BI_ENC, local_memory_mb=memory_mb,
                                remote_memory_mb=memory_mb + 70,
                                setup={"memory_mb": memory_mb}))


def settle(runtime: Runtime, action: str, placement: Placement) -> None:
    router = runtime.router(action)
    router.set_placement(placement)
    assert router.wait_settled(30.0), router.status()
    assert router.placement == placement, router.status()


def clients(runtime: Runtime, walker: str, n: int, ctx: Mapping[str, Any],
            stop: threading.Event) -> tuple[ThreadPoolExecutor, list[Any]]:
    """`n` closed-loop clients: each runs `walker` again as soon as its last run ended."""

    def loop() -> list[Any]:
        results = []
        while not stop.is_set():
            results.append(runtime.run_walker(walker, ctx))
        return results

    pool = ThreadPoolExecutor(n)
    return pool, [pool.submit(loop) for _ in range(n)]


# --------------------------------------------------------------------------- ground truth


def test_four_closed_loop_clients_read_as_a_concurrency_of_four(live: Live) -> None:
    """One remote replica (8 cores configured) of `nap(1 s)`, four clients calling it back
    to back: four calls are in the system at every moment, bar the microseconds a client
    spends between its calls, so every window reads 4 (time-weighted, not a sum of
    finished calls) and, with 8 cores, a utilisation of 4/8.

    Tolerance 5 %: a client is out of the system between its calls and the clock is read
    at emit, not at the wire; both are microseconds per 1 s call on an idle machine, but a
    loaded CI machine can stall a thread for tens of milliseconds per call."""
    runtime = live.runtime
    runtime.configure(remote_sample(remote_cores=8))
    settle(runtime, "sample", Placement.remote(1))
    (replica,) = live.backend.replicas("sample")
    assert replica.pid is not None
    stop = threading.Event()
    pool, futures = clients(runtime, "naps", 4, {"seconds": 1.0}, stop)
    readings = []
    try:
        time.sleep(0.5)
        live.observer.observe(2.0)  # the first window holds the clients' start
        for _ in range(3):
            time.sleep(2.0)
            readings.append(live.observer.observe(2.0))
    finally:
        stop.set()
        pool.shutdown(wait=True)
    results = [r for f in futures for r in f.result()]
    assert results and all(r.ok for r in results)
    # The server ran the naps side by side (its own count of naps running at once).
    assert max(r.report[0]["peak"] for r in results) == 4
    print("\nwindow  remote_concurrency  in_flight  queued  remote_utilisation  "
          "replica_cpu  replica_mb  calls")
    for obs in readings:
        a = obs.actions["sample"]
        print(f"{obs.now:6.2f}  {a.remote_concurrency:18.4f}  {a.in_flight:9d}  "
              f"{a.queued:6d}  {a.remote_utilisation:18.4f}  "
              f"{a.replica_cpu_utilisation:11.4f}  {a.replica_memory_used_mb:10.1f}  "
              f"{a.calls:5d}")
    for obs in readings:
        a = obs.actions["sample"]
        assert a.remote_concurrency == pytest.approx(4.0, rel=0.05)
        assert a.in_flight == 4 and a.queued == 0
        assert a.replicas_ready == 1 and a.replica_cores == 8
        assert a.remote_utilisation == pytest.approx(4 / 8, rel=0.05)
        assert a.local_concurrency == 0.0
        # Closed loop: four clients finish about two 1 s calls each per 2 s window.
        assert 4 <= a.calls <= 12 and a.failures == 0
        # Sleeping calls take next to no CPU of the replica's process; its memory is the
        # server's (Python, numpy, uvicorn): tens of MB, not the node's.
        assert 0.0 <= a.replica_cpu_utilisation < 0.1
        assert 20.0 < a.replica_memory_used_mb < 400.0


# --------------------------------------------------------------------------- replay


def same(a: Any, b: Any) -> bool:
    """Equality of observations, with NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, Mapping):
        return (isinstance(b, Mapping) and list(a) == list(b)
                and all(same(a[k], b[k]) for k in a))
    return bool(a == b)


def test_same_takes_nan_for_nan_and_nothing_else() -> None:
    empty = Observation.empty()
    assert same(float("nan"), float("nan")) and not same(float("nan"), 1.0)
    assert same(empty, Observation.empty())
    assert not same(empty, dataclasses.replace(empty, now=1.0))


def test_a_recorded_live_run_replays_to_the_same_observations(live: Live) -> None:
    """Local and remote calls, a cold start, failing calls, a scale-up, a move from local
    to remote, and the runtime's shutdown: the observer's every observation is the
    builder's reading of the events, nothing computed beside them."""
    runtime = live.runtime
    log = runtime.observations.record()
    node = log.builder.node
    fresh = ObservationBuilder(log.builder.t0, cores=node.cores,
                               memory_total_mb=node.memory_total_mb, actions={},
                               apps=list(log.builder.apps))
    runtime.configure(local_bi_enc(8.0))
    runtime.configure(remote_sample())
    runtime.router("sample").set_placement(Placement.remote(1))
    observed: list[Observation] = []
    stop = threading.Event()

    def observe_every(period_s: float) -> None:
        while not stop.wait(period_s):
            observed.append(live.observer.observe(period_s))

    observing = threading.Thread(target=observe_every, args=(0.3,))
    observing.start()
    ctx = {"q": "where is my flight", "a": "when does my plane leave", "seconds": 0.05}
    pool, futures = clients(runtime, "mix", 2, ctx, stop)  # bi_enc's first call is cold
    try:
        assert not runtime.run_walker("bad").ok
        time.sleep(1.0)
        settle(runtime, "sample", Placement.remote(2))
        time.sleep(0.5)
        settle(runtime, "bi_enc", Placement.remote(1))
        assert not runtime.run_walker("bad").ok
        time.sleep(0.5)
    finally:
        stop.set()
        pool.shutdown(wait=True)
        observing.join()
    assert all(r.ok for f in futures for r in f.result())
    observed.append(live.observer.observe(0.3))
    runtime.close()
    observed.append(live.observer.observe(0.3))

    assert len(observed) >= 8
    sample = [o.actions["sample"] for o in observed if "sample" in o.actions]
    bi_enc = [o.actions["bi_enc"] for o in observed if "bi_enc" in o.actions]
    assert max(a.replicas_ready for a in sample) == 2
    assert sum(a.failures for a in sample) == 2
    assert sum(a.cold_starts for a in bi_enc) >= 1
    assert sum(a.latency_local.count for a in bi_enc) > 0
    assert sum(a.latency_remote.count for a in bi_enc) > 0
    assert observed[-2].node.runtime_up and not observed[-1].node.runtime_up
    assert observed[-1].actions["bi_enc"].in_flight == 0

    replayed = replay(log.events, fresh)
    assert len(replayed) == len(observed)
    for live_obs, again in zip(observed, replayed, strict=True):
        assert same(live_obs, again), (live_obs, again)


# --------------------------------------------------------------------------- node


def spin(seconds: float) -> float:
    """Keep this thread busy for `seconds` of wall time; the CPU seconds it got."""
    cpu0, end = time.thread_time(), time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return time.thread_time() - cpu0


def test_the_node_is_this_process_with_its_local_copies(live: Live) -> None:
    runtime, observer = live.runtime, live.observer
    me = psutil.Process()
    before = me.memory_info().rss / MB
    first = observer.observe(1.0)
    after = me.memory_info().rss / MB
    # This process's RSS (read here, around the observation), not the machine's use.
    assert before - 2.0 <= first.node.memory_used_mb <= after + 2.0
    assert first.node.memory_total_mb == pytest.approx(psutil.virtual_memory().total / MB)
    assert first.node.runtime_up and first.node.oom_events == 0

    # A local copy of 64 MB is on the node: its memory is in the node's.
    runtime.configure(local_bi_enc(64.0))
    settle(runtime, "bi_enc", Placement.local())
    loaded = observer.observe(1.0)
    grown = loaded.node.memory_used_mb - first.node.memory_used_mb
    assert grown == pytest.approx(64.0, abs=10.0)
    assert loaded.actions["bi_enc"].local_memory_mb == pytest.approx(64.0, abs=6.0)

    # CPU: this process's own time over the window's core-seconds.
    start = observer.observe(1.0)
    busy_s = spin(0.6)
    end = observer.observe(1.0)
    window_s = end.now - start.now
    used_s = end.node.cpu_utilisation * end.node.cores * window_s
    # psutil counts CPU in clock ticks of 10 ms: three of them of slack.
    assert busy_s > 0.1 and used_s >= busy_s - 0.03
    assert used_s <= busy_s + 0.3 * window_s  # the other threads are near idle


@pytest.mark.parametrize(("remote_cores", "replica_cores"), [(1.0, 1), (2.0, 2), (0.5, 1)])
def test_replica_cores_follow_the_config(live: Live, remote_cores: float,
                                         replica_cores: int) -> None:
    live.runtime.configure(info_of(ActionConfig("sample", "sample_actions", 0.0, 80.0,
                                                remote_cores=remote_cores)))
    observed = live.observer.observe(1.0).actions["sample"]
    assert observed.replica_cores == replica_cores


@pytest.mark.parametrize("make", [
    lambda: ActionConfig("a", "m", 1.0, 1.0, remote_cores=0),
    lambda: ActionInfo("a", "m", replica_cores=0),
    lambda: ActionInfo("a", "m", replica_cores=1.5),
])
def test_replica_cores_are_positive(make: Callable[[], object]) -> None:
    with pytest.raises((ConfigError, ValueError), match="cores"):
        make()


def test_a_local_load_refused_for_memory_is_an_out_of_memory_event(live: Live) -> None:
    """A copy larger than the address space: the allocator refuses it (MemoryError in
    setup()). Each refusal counts; a load that fails for another reason does not; the
    runtime keeps serving."""
    runtime, observer = live.runtime, live.observer
    runtime.configure(local_bi_enc(1e9))  # 1 PB
    router = runtime.router("bi_enc")
    for attempt in (1, 2):
        router.set_placement(Placement.local())
        router.wait_settled(30.0)
        assert "Unable to allocate" in router.last_error
        obs = observer.observe(1.0)
        assert obs.node.oom_events == attempt and obs.node.runtime_up
        assert obs.actions["bi_enc"].placement == Placement.unloaded()
    settle(runtime, "bi_enc", Placement.unloaded())
    # setup() refuses a negative size: a failed load, not one refused for memory.
    runtime.configure(dataclasses.replace(local_bi_enc(8.0), setup={"memory_mb": -1.0}))
    router = runtime.router("bi_enc")
    router.set_placement(Placement.local())
    router.wait_settled(30.0)
    assert "memory_mb must be > 0" in router.last_error
    assert observer.observe(1.0).node.oom_events == 2
