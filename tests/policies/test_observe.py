"""The observation builder on hand-written event sequences, each expected value worked out
by hand from the definitions in policies/contract.py (time averages over the window)."""

from __future__ import annotations

import math

import pytest

from policies import Placement
from policies.observe import (
    LOCAL,
    REMOTE,
    ActionInfo,
    EventLog,
    ObservationBuilder,
    replay,
)


def builder(cores: int = 2, replica_cores: int = 1) -> ObservationBuilder:
    return ObservationBuilder(0.0, cores=cores, memory_total_mb=4096.0,
                              actions={"enc": ActionInfo(1000.0, 1200.0, replica_cores)},
                              apps=["app"])


def test_one_long_remote_call_is_counted_in_every_window_it_spans() -> None:
    # One call in the system from 0 to 25 s on a ready replica: windows of 10 s read
    # 1, 1 and 0.5 (5 of 10 s), never 0 then 2.5 as a sum over finished calls would.
    b = builder()
    enc = b.action("enc")
    enc.replica_ready(0.0, "r0")
    tok = enc.issued(0.0)
    enc.dispatched(tok, 0.0, REMOTE)
    enc.started(tok, 0.0, "r0")
    readings = []
    for now in (10.0, 20.0):
        readings.append(b.observe(now, 10.0).actions["enc"])
    enc.finished(tok, 25.0, True, 25_000.0, 24_990.0, 10.0, app="app")
    readings.append(b.observe(30.0, 10.0).actions["enc"])
    assert [r.remote_concurrency for r in readings] == [1.0, 1.0, 0.5]
    assert [r.remote_utilisation for r in readings] == [1.0, 1.0, 0.5]
    assert [r.in_flight for r in readings] == [1, 1, 0]
    assert [r.calls for r in readings] == [0, 0, 1]
    assert readings[2].latency_remote.mean_ms == 25_000.0
    assert readings[2].remote_service_ms == 24_990.0 and readings[2].network_ms == 10.0
    assert [r.oldest_call_age_s for r in readings] == [10.0, 20.0, 0.0]


def test_utilisation_counts_busy_cores_of_ready_replicas_only() -> None:
    # Two replicas of 2 cores ready from 0; 3 calls on r0 over [0, 10): r0 is busy on its 2
    # cores (the third waits inside it), r1 idle: 2 busy of 4 ready cores = 0.5. Concurrency
    # counts all 3. r0 retires at 5 s: from then 0 of 2 ready cores busy, so the window's
    # busy 2 x 5 = 10 over capacity 4 x 5 + 2 x 5 = 30 core-seconds.
    b = builder(replica_cores=2)
    enc = b.action("enc")
    enc.replica_ready(0.0, "r0")
    enc.replica_ready(0.0, "r1")
    for _ in range(3):
        tok = enc.issued(0.0)
        enc.dispatched(tok, 0.0, REMOTE)
        enc.started(tok, 0.0, "r0")
    enc.replica_retiring(5.0, "r0")
    stats = b.observe(10.0, 10.0).actions["enc"]
    assert stats.remote_concurrency == 3.0
    assert stats.remote_utilisation == pytest.approx(10.0 / 30.0)
    assert stats.replicas_ready == 1
    assert stats.in_flight == 3 and stats.queued == 0


def test_no_ready_replica_gives_nan_utilisation_and_waiting_calls_are_queued() -> None:
    b = builder()
    enc = b.action("enc")
    enc.replica_starting(0.0, "r0")
    tok = enc.issued(1.0)  # a cold start: waits for the replica
    stats = b.observe(10.0, 10.0).actions["enc"]
    assert math.isnan(stats.remote_utilisation)
    assert stats.remote_concurrency == 0.0
    assert stats.queued == 1 and stats.in_flight == 0
    assert stats.oldest_call_age_s == 9.0
    assert stats.call_rate == 0.1  # one call issued in 10 s
    enc.replica_ready(12.0, "r0")
    enc.dispatched(tok, 12.0, REMOTE)
    enc.started(tok, 12.0, "r0")
    enc.finished(tok, 16.0, True, 15_000.0, 4_000.0, 0.0, cold=True, app="app")
    stats = b.observe(20.0, 10.0).actions["enc"]
    assert stats.remote_concurrency == pytest.approx(0.4)  # 4 of 10 s
    assert stats.remote_utilisation == pytest.approx(4.0 / 8.0)  # ready from 12 s
    assert stats.cold_starts == 1 and stats.calls == 1


def test_local_calls_and_walker_compute_make_node_utilisation() -> None:
    # Node of 2 cores, window of 10 s: compute 0-4 s on one core, a local call waiting for a
    # core 0-2 s then running 2-10 s: busy = 4 + 8 = 12 of 20 core-seconds.
    b = builder(cores=2)
    enc = b.action("enc")
    b.node.request_arrived(0.0, "app")
    b.node.compute_started(0.0)
    tok = enc.issued(0.0)
    enc.dispatched(tok, 0.0, LOCAL)
    b.node.compute_finished(4.0)
    enc.started(tok, 2.0)
    obs = b.observe(10.0, 10.0)
    assert obs.node.cpu_utilisation == pytest.approx(0.6)
    stats = obs.actions["enc"]
    assert stats.local_concurrency == 1.0
    assert stats.local_utilisation == pytest.approx(8.0 / 20.0)
    assert stats.in_flight == 1 and stats.queued == 0


def test_a_measured_cpu_counter_replaces_the_busy_levels() -> None:
    b = builder(cores=2)
    b.node.cpu_time(0.0, 100.0)
    b.observe(0.0, 10.0)
    b.node.cpu_time(10.0, 105.0)  # 5 core-seconds in 10 s on 2 cores
    assert b.observe(10.0, 10.0).node.cpu_utilisation == pytest.approx(0.25)


def test_a_call_moved_from_the_wire_to_a_local_copy_leaves_the_remote_system() -> None:
    b = builder()
    enc = b.action("enc")
    tok = enc.issued(0.0)
    enc.dispatched(tok, 0.0, REMOTE)
    enc.dispatched(tok, 4.0, LOCAL)
    enc.started(tok, 4.0)
    enc.finished(tok, 6.0, True, 6000.0, 2000.0, 0.0, app="app")
    stats = b.observe(10.0, 10.0).actions["enc"]
    assert stats.remote_concurrency == pytest.approx(0.4)
    assert stats.local_concurrency == pytest.approx(0.2)
    assert stats.latency_local.count == 1 and stats.latency_remote.count == 0
    assert stats.queued == 0 and stats.in_flight == 0


def test_requests_per_app_and_calls_per_request() -> None:
    b = builder()
    enc = b.action("enc")
    for i in range(2):
        b.node.request_arrived(float(i), "app")
        for _ in range(3):
            tok = enc.issued(float(i))
            enc.dispatched(tok, float(i), LOCAL)
            enc.started(tok, float(i))
            enc.finished(tok, i + 0.5, True, 500.0, 500.0, 0.0, app="app")
        b.node.request_finished(i + 0.5, "app", 500.0 + i, ok=i == 0)
    obs = b.observe(10.0, 10.0)
    app = obs.apps["app"]
    assert (app.requests, app.failures, app.mean_ms) == (2, 1, 500.0)
    assert app.calls_per_request == {"enc": 3.0}
    assert (obs.totals.requests, obs.totals.failures, obs.totals.requests_so_far) == (2, 1, 2)
    assert b.observe(20.0, 10.0).apps["app"].requests == 0


def test_a_replayed_event_log_gives_the_same_observations() -> None:
    b = builder()
    log = EventLog(b)
    enc = log.action("enc")
    enc.replica_ready(0.0, "r0")
    seen = []
    for i in range(5):
        tok = enc.issued(i * 3.0)
        enc.dispatched(tok, i * 3.0, REMOTE)
        enc.started(tok, i * 3.0 + 0.5, "r0")
        enc.finished(tok, i * 3.0 + 2.0, True, 2000.0, 1500.0, 500.0, app="app")
        enc.state(i * 3.0, Placement.remote(1), Placement.remote(2), True)
        seen.append(log.observe(i * 3.0 + 2.5, 3.0))
    again = replay(log.events, builder())
    assert again == seen
