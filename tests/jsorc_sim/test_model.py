"""Scenario tests of the simulated runtime, asserting on its logs (decisions, events, calls).

Each test builds a small scenario with constant service and start-up times, so that every
time in the log is known in advance: `assert log == [...]` as in SimPy's own tests.
Several tests here first pinned library bugs as strict xfails; the bugs are fixed and the
tests now guard against their return.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
import pytest

from jsorc_sim.results import Result
from jsorc_sim.scenario import Scenario, from_dict
from jsorc_sim.simulate import simulate
from policies import Decision, NoParams, Observation, Placement

COLD_REASON = "cold start: call to an unloaded action"
OOM_REASON = "out of memory: runtime restarted"
RESTARTED = "runtime up after out-of-memory"


# ----------------------------------------------------------------------------- helpers


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in, table by table (a copy; neither input changes)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def const(mean_ms: float) -> dict[str, Any]:
    return {"dist": "const", "mean_ms": mean_ms}


def scenario(**tables: Any) -> Scenario:
    """One action `a` (const 100 ms), one app `w` calling it, a 1000 MB node, and `tables`."""
    base = {
        "duration_s": 60,
        "timeline_s": 5,
        "node": {"cores": 2, "memory_mb": 1000, "runtime_memory_mb": 100, "restart_s": 30},
        "actions": {"a": {"service": const(100)}},
        "apps": {"w": {"calls": ["a"]}},
        "policy": {"interval_s": 10},
        "workload": {"kind": "closed", "clients": 1},
    }
    return from_dict(merge(base, tables))


def rows(frame: pd.DataFrame, columns: list[str] | None = None) -> list[tuple[Any, ...]]:
    """A table as a list of plain tuples, for `assert log == [...]`."""
    if columns is not None:
        frame = frame[columns]
    return [tuple(row) for row in frame.astype(object).itertuples(index=False, name=None)]


def decision_log(result: Result) -> list[tuple[Any, ...]]:
    return rows(result.decisions, ["ts", "action", "placement", "previous", "source", "reason"])


def event_log(result: Result) -> list[tuple[Any, ...]]:
    return rows(result.events)


def timeline_of(result: Result, action: str, column: str) -> dict[float, Any]:
    tl = result.timeline
    mine = tl[tl["action"] == action]
    return dict(zip(mine["ts"], mine[column], strict=True))


class Switch:
    """From `at` seconds on, ask for `placements` (before that, keep): a one-step policy."""

    Params = NoParams

    def __init__(self, at: float, placements: Mapping[str, Placement], reason: str) -> None:
        self.params = NoParams()
        self.at = at
        self.placements = dict(placements)
        self.reason = reason

    def reset(self, seed: int) -> None:
        pass

    def decide(self, observation: Observation) -> Decision:
        if observation.now >= self.at:
            return Decision(self.placements, self.reason)
        return Decision.keep()


class Script:
    """Returns `steps[now]` at the control steps it names (times rounded to the µs), else keep."""

    Params = NoParams

    def __init__(self, steps: Mapping[float, Any]) -> None:
        self.params = NoParams()
        self.steps = dict(steps)

    def reset(self, seed: int) -> None:
        pass

    def decide(self, observation: Observation) -> Any:
        return self.steps.get(round(observation.now, 6), Decision.keep())


class Boom:
    """Places `a` locally, then raises at every step from t = 20 s on."""

    Params = NoParams

    def __init__(self) -> None:
        self.params = NoParams()

    def reset(self, seed: int) -> None:
        pass

    def decide(self, observation: Observation) -> Decision:
        if observation.now >= 20:
            raise RuntimeError(f"boom at {observation.now:g}")
        return Decision({"a": Placement.local()}, "local")


# ----------------------------------------------------------------------------- cold start


def test_cold_start_waits_for_the_local_load_then_calls_are_warm() -> None:
    # One client calling every second (100 ms service + 900 ms think); loading takes 2 s.
    s = scenario(
        duration_s=10,
        timeline_s=1,
        actions={"a": {"local_load_s": 2, "local_memory_mb": 200}},
        workload={"think_ms": 900},
    )
    r = simulate(s, "none", seed=1)

    assert decision_log(r) == [(0.0, "a", "local", "unloaded", "runtime", COLD_REASON)]
    first, second = r.calls.iloc[0], r.calls.iloc[1]
    assert (first["ts"], first["placement"], bool(first["cold"])) == (0.0, "local", True), \
        f"the first call should be a local cold start at t=0, got {first.to_dict()}"
    assert first["wait_ms"] == pytest.approx(2000.0), "a cold call waits for the 2 s load"
    assert first["latency_ms"] == pytest.approx(2100.0), "cold latency = load 2 s + service 0.1 s"
    # The first request ends at 2.1 s, the client thinks 0.9 s: the next call is at 3 s, warm.
    assert (second["ts"], bool(second["cold"]), second["wait_ms"]) == \
        pytest.approx((3.0, False, 0.0)), f"the second call should be warm, got {second.to_dict()}"
    assert not r.calls["cold"].iloc[1:].any(), "only the first call is a cold start"
    assert r.cost()["cold_starts"] == 1
    memory = timeline_of(r, "a", "memory_used_mb")
    local = timeline_of(r, "a", "local")
    # Memory is taken when the load starts (just after the t=0 sample) and kept once loaded.
    assert (memory[1.0], local[1.0]) == (300.0, "loading"), "100 MB runtime + 200 MB loading"
    assert (memory[3.0], local[3.0]) == (300.0, "ready")
    assert event_log(r) == [], "a cold start is no event"


def test_cold_start_of_a_remote_default_action_starts_one_replica() -> None:
    s = scenario(
        duration_s=10,
        actions={"a": {"default_mode": "remote", "remote_start_s": 3}},
        workload={"think_ms": 900},
    )
    r = simulate(s, "none", seed=1)

    assert decision_log(r) == [(0.0, "a", "remote:1", "unloaded", "runtime", COLD_REASON)]
    first = r.calls.iloc[0]
    assert (first["placement"], first["replica"], bool(first["cold"])) == ("remote", 0, True)
    assert first["latency_ms"] == pytest.approx(3100.0), "replica start 3 s + service 0.1 s"
    assert set(r.calls["placement"]) == {"remote"}, "every call goes to the replica"
    assert set(r.calls["replica"]) == {0}


def test_cold_remote_call_counts_the_replica_start_as_wait_not_network() -> None:
    s = scenario(
        duration_s=10,
        network={"rtt_ms": 8},
        actions={"a": {"default_mode": "remote", "remote_start_s": 3}},
        workload={"think_ms": 900},
    )
    first = simulate(s, "none", seed=1).calls.iloc[0]
    assert bool(first["cold"])
    assert first["network_ms"] == pytest.approx(8.0), \
        f"network_ms should be the 8 ms round trip, got {first['network_ms']}"
    assert first["wait_ms"] == pytest.approx(3000.0), \
        f"the 3 s replica start is waiting (as wait_ms of a local cold call is), got " \
        f"{first['wait_ms']}"


# ----------------------------------------------------------------------------- moves


def test_local_to_remote_move_keeps_calls_local_until_the_replica_is_ready() -> None:
    # Closed loop: 100 ms call + 400 ms think. Loaded locally at t=0 (1 s); at t=50 the
    # policy asks for one replica, which takes 20 s to start.
    s = scenario(
        duration_s=100,
        actions={"a": {"local_load_s": 1, "local_memory_mb": 200, "remote_start_s": 20}},
        placement={"a": "local"},
        workload={"think_ms": 400},
    )
    r = simulate(s, Switch(50, {"a": Placement.remote(1)}, "move"), seed=1)

    assert decision_log(r) == [
        (0.0, "a", "local", "unloaded", "scenario", "initial placement"),
        (50.0, "a", "remote:1", "local", "Switch", "move"),
    ]
    calls = r.calls
    assert calls["ok"].all(), f"no call may fail during a move:\n{calls[~calls['ok']]}"
    local, remote = calls[calls["placement"] == "local"], calls[calls["placement"] == "remote"]
    assert local["ts"].max() < 70.0, "no call goes local once the replica is ready at 70 s"
    assert local["ts"].max() > 69.0, "calls keep going local until the replica is ready"
    assert remote["ts"].min() == pytest.approx(70.0, abs=0.5), \
        "the first call after the replica is ready goes remote"
    assert remote["ts"].min() >= 70.0 - 1e-9, "no call goes remote before 70 s"
    assert set(remote["replica"]) == {0}
    assert event_log(r) == []
    # The local copy (200 MB) is freed when the replica is ready and the copy drained.
    memory = timeline_of(r, "a", "memory_used_mb")
    assert {t: m for t, m in memory.items() if 5 <= t <= 65} == \
        {t: 300.0 for t in range(5, 70, 5)}, "runtime 100 MB + local copy 200 MB until 70 s"
    assert {t: m for t, m in memory.items() if t >= 75} == {t: 100.0 for t in range(75, 100, 5)}
    # Time integrals say when exactly: 300 MB for 70 s, 100 MB for 30 s; a replica from 50 s.
    assert r.meters.node_memory_mb_s == pytest.approx(300 * 70 + 100 * 30)
    assert r.meters.replica_memory_mb_s == pytest.approx(200 * 50), \
        "a replica takes local_memory_mb by default, from its start (50 s) to the end"
    assert r.meters.replica_core_s == pytest.approx(50.0)


def test_remote_to_local_move_keeps_calls_remote_until_loaded_then_retires_the_replica() -> None:
    s = scenario(
        duration_s=40,
        actions={"a": {"local_load_s": 5, "local_memory_mb": 200, "remote_start_s": 2,
                       "remote_memory_mb": 500}},
        placement={"a": "remote:1"},
        workload={"think_ms": 400},
    )
    r = simulate(s, Switch(10, {"a": Placement.local()}, "come home"), seed=1)

    assert decision_log(r) == [
        (0.0, "a", "remote:1", "unloaded", "scenario", "initial placement"),
        (10.0, "a", "local", "remote:1", "Switch", "come home"),
    ]
    calls = r.calls
    assert calls["ok"].all()
    remote, local = calls[calls["placement"] == "remote"], calls[calls["placement"] == "local"]
    assert remote["ts"].max() < 15.0 < local["ts"].min() + 0.5, \
        "calls stay remote until the local load (10 s + 5 s) is done, then go local"
    assert remote["ts"].max() > 14.0
    # The replica lives 0-15 s (500 MB, 1 core); the local copy is held from the load's start.
    assert r.meters.replica_core_s == pytest.approx(15.0)
    assert r.meters.replica_memory_mb_s == pytest.approx(500 * 15)
    assert r.meters.node_memory_mb_s == pytest.approx(100 * 10 + 300 * 30)


@pytest.mark.parametrize(("queue", "rtt_ms"), [
    pytest.param("shared", 0.0),
    pytest.param("shared", 50.0),
    pytest.param("per_replica", 0.0),
    pytest.param("per_replica", 50.0),
])
def test_remote_to_local_move_under_load_loses_no_client(queue: str, rtt_ms: float) -> None:
    # Three closed-loop clients share one replica, so two calls always wait for it. At 20 s
    # the action moves local (load 1 s, 2 cores): every client must go on, 10 requests/s each.
    s = scenario(
        duration_s=100,
        node={"cores": 4},
        network={"rtt_ms": rtt_ms},
        actions={"a": {"remote_queue": queue, "remote_start_s": 1, "local_load_s": 1,
                       "local_memory_mb": 100}},
        placement={"a": "remote:1"},
        workload={"clients": 3},
    )
    r = simulate(s, Switch(20, {"a": Placement.local()}, "move"), seed=1)
    req = r.requests
    late = req[(req["ts"] >= 30) & (req["ts"] < 90)]
    assert len(late) >= 3 * 10 * 60 - 3, \
        f"3 clients x 10 requests/s over 60 s should finish ~1800 requests, got {len(late)}"
    queued = timeline_of(r, "a", "queued")
    assert all(q == 0 for t, q in queued.items() if t >= 30), \
        f"no call may be left waiting for a retired replica: {queued}"


def test_unloading_an_idle_action_makes_the_next_call_a_cold_start_again() -> None:
    s = scenario(actions={"a": {"local_load_s": 5, "local_memory_mb": 200}},
                 workload={"think_ms": 400})
    r = simulate(s, Script({10: Decision({"a": Placement.unloaded()}, "unload")}), seed=1)
    assert decision_log(r) == [
        (0.0, "a", "local", "unloaded", "runtime", COLD_REASON),
        (10.0, "a", "unloaded", "local", "Script", "unload"),
        (10.0, "a", "local", "unloaded", "runtime", COLD_REASON),
    ]
    cold = r.calls[r.calls["cold"]]
    assert cold["ts"].tolist() == pytest.approx([0.0, 10.0], abs=0.5)
    assert cold["wait_ms"].tolist() == pytest.approx([5000.0, 5000.0], abs=500.0)
    assert r.calls["ok"].all() and r.meters.unfinished == 0


def test_unloading_an_action_while_a_call_waits_for_its_load_loses_no_call() -> None:
    s = scenario(policy={"interval_s": 2}, actions={"a": {"local_load_s": 5,
                                                          "local_memory_mb": 200}},
                 workload={"think_ms": 400})
    r = simulate(s, Script({2: Decision({"a": Placement.unloaded()}, "unload")}), seed=1)
    assert r.meters.arrivals > 50, \
        f"the client should go on calling every ~0.5 s, made {r.meters.arrivals} request(s)"
    assert r.requests["ok"].all()


# ----------------------------------------------------------------------------- out of memory


def test_loading_a_second_action_that_does_not_fit_fails_in_flight_requests_and_restarts() -> None:
    # a (600 MB) is loaded on the first call; at t=20 the policy also asks b (600 MB) local:
    # 100 + 600 + 600 > 1000 MB. Two closed-loop clients call a back to back.
    s = scenario(
        actions={"a": {"local_load_s": 1, "local_memory_mb": 600},
                 "b": {"service": const(100), "local_load_s": 1, "local_memory_mb": 600}},
        workload={"clients": 2},
    )
    r = simulate(s, Script({20: Decision({"b": Placement.local()}, "load b")}), seed=1)

    assert event_log(r) == [
        (20.0, "out_of_memory", "loading b (600 MB) with 700 of 1000 MB in use"),
        (50.0, "restarted", RESTARTED),
    ]
    assert decision_log(r) == [
        (0.0, "a", "local", "unloaded", "runtime", COLD_REASON),
        (20.0, "b", "local", "unloaded", "Script", "load b"),
        (20.0, "a", "unloaded", "local", "runtime", OOM_REASON),
        (20.0, "b", "unloaded", "local", "runtime", OOM_REASON),
        (50.0, "a", "local", "unloaded", "runtime", COLD_REASON),
    ]
    req = r.requests
    failed = req[~req["ok"]]
    assert len(failed) == 2, f"the two requests in flight at 20 s fail, got\n{failed}"
    assert set(failed["error"]) == {"out_of_memory"}
    assert (failed["ts"] + failed["latency_ms"] / 1000).tolist() == pytest.approx([20.0, 20.0])
    failed_calls = r.calls[~r.calls["ok"]]
    assert rows(failed_calls, ["request_id", "action", "placement", "error"]) == [
        (rid, "a", "local", "out_of_memory") for rid in failed["request_id"]]
    # The clients' next requests wait at the door until the restart, then cold-start a again.
    ends = req["ts"] + req["latency_ms"] / 1000
    assert not ((ends > 20) & (ends < 51)).any(), "nothing completes while the runtime is down"
    after = req[(req["ts"] >= 20) & req["ok"]]
    assert after["ts"].iloc[:2].tolist() == [20.0, 20.0]
    assert after["latency_ms"].iloc[:2].tolist() == pytest.approx([31100.0, 31100.0]), \
        "30 s at the door + 1 s load + 0.1 s service"
    up = timeline_of(r, "a", "runtime_up")
    assert [t for t, u in up.items() if not u] == [20.0, 25.0, 30.0, 35.0, 40.0, 45.0]
    assert timeline_of(r, "a", "memory_used_mb")[20.0] == 100.0, "OOM drops every local copy"
    assert (r.meters.oom_events, r.meters.peak_memory_mb) == (1, 700.0)


def test_all_local_with_actions_that_never_fit_together_restarts_every_restart_s() -> None:
    s = scenario(
        duration_s=100,
        actions={"a": {"local_load_s": 1, "local_memory_mb": 600},
                 "b": {"service": const(100), "local_load_s": 1, "local_memory_mb": 600}},
        apps={"w": {"calls": ["a", "b"]}},
        workload={"clients": 2, "think_ms": 400},
    )
    r = simulate(s, "all_local", seed=1)

    oom = (("out_of_memory", "loading b (600 MB) with 700 of 1000 MB in use"))
    assert event_log(r) == [
        (0.0, *oom), (30.0, "restarted", RESTARTED),
        (30.0, *oom), (60.0, "restarted", RESTARTED),
        (60.0, *oom), (90.0, "restarted", RESTARTED),
        (90.0, *oom),
    ], "each restart (after restart_s = 30 s) reloads both actions and runs out again"
    req = r.requests
    assert not req["ok"].any(), "no request can complete on this node"
    assert set(req["error"]) == {"out_of_memory"}
    ends = (req["ts"] + req["latency_ms"] / 1000).round(9)
    assert set(ends) <= {0.0, 30.0, 60.0, 90.0}, "requests fail at the out-of-memory instants"
    assert r.meters.oom_events == 4
    assert r.meters.peak_memory_mb <= 1000.0


def test_a_load_cancelled_during_a_restart_does_not_run_after_it() -> None:
    # t=0: b (300) then a (800) local: 100+300+800 > 1000, out of memory; restart 25 s.
    # t=10 (down): both local again; t=20 (still down): a remote. At 25 s only b should load.
    s = scenario(
        node={"restart_s": 25},
        actions={"a": {"local_memory_mb": 800, "remote_start_s": 1, "service": const(10)},
                 "b": {"local_memory_mb": 300, "service": const(10)}},
        workload={"kind": "poisson", "rate_per_s": 0.01},
    )
    both = {"b": Placement.local(), "a": Placement.local()}
    r = simulate(s, Script({0: Decision(both, "both"), 10: Decision(both, "both again"),
                            20: Decision({"a": Placement.remote(1)}, "a remote")}), seed=1)
    assert event_log(r) == [
        (0.0, "out_of_memory", "loading a (800 MB) with 400 of 1000 MB in use"),
        (25.0, "restarted", RESTARTED),
    ], "after the restart only b (300 MB) is wanted local, and it fits"
    assert set(r.calls["placement"]) <= {"remote"}, "a is served by its replica"


# ----------------------------------------------------------------------------- bad policies


def test_a_policy_that_raises_is_recorded_and_the_placement_kept() -> None:
    s = scenario(duration_s=40, actions={"a": {"local_load_s": 1, "local_memory_mb": 200}},
                 workload={"think_ms": 400})
    r = simulate(s, Boom(), seed=1)

    assert r.status == "ok"
    kinds = rows(r.events, ["ts", "kind"])
    assert kinds == [(20.0, "policy_error"), (30.0, "policy_error")]
    for detail, t in zip(r.events["detail"], (20, 30), strict=True):
        assert detail.startswith(f"RuntimeError: boom at {t} (at "), \
            f"the event names the exception and its message: {detail!r}"
        assert __file__ in detail, f"...and where it was raised: {detail!r}"
    assert decision_log(r) == [
        (0.0, "a", "local", "unloaded", "runtime", COLD_REASON),
        (0.0, "", "", "", "Boom", "local"),
        (20.0, "", "", "", "Boom", "policy failed; placement kept"),
        (30.0, "", "", "", "Boom", "policy failed; placement kept"),
    ]
    assert r.decisions["error"].tolist()[2:] == r.events["detail"].tolist()
    assert set(timeline_of(r, "a", "placement").values()) - {"unloaded"} == {"local"}
    assert r.calls["ok"].all() and r.calls["ts"].max() > 39, "the run goes on to the end"
    assert r.cost()["policy_errors"] == 2


def test_a_policy_that_raises_with_on_error_stop_stops_the_run() -> None:
    s = scenario(duration_s=40, policy={"on_error": "stop"}, workload={"think_ms": 400})
    r = simulate(s, Boom(), seed=1)

    assert r.status.startswith("stopped"), r.status
    assert "policy 'Boom' failed at t=20s: RuntimeError: boom at 20" in r.status
    assert rows(r.events, ["ts", "kind"]) == [(20.0, "policy_error")]
    assert r.calls["ts"].max() < 20.0, "no call is made after the run stopped"
    assert r.timeline["ts"].max() <= 20.0


def test_a_stopped_run_reports_throughput_over_the_time_it_ran() -> None:
    s = scenario(duration_s=40, policy={"on_error": "stop"}, workload={"think_ms": 400})
    r = simulate(s, Boom(), seed=1)
    assert r.status.startswith("stopped")
    done = int(r.requests["ok"].sum())
    assert r.report()["walker_run"]["all"]["throughput"] == pytest.approx(done / 20.0, rel=1e-3), \
        f"{done} requests in the 20 s the run lasted"


@pytest.mark.parametrize(("returned", "message"), [
    (None, "PlacementError: decide() must return a Decision, got NoneType: None"),
    ({"a": "remote"}, "PlacementError: decide() must return a Decision, got dict: {'a': 'remote'}"),
    (Decision({"zz": Placement.remote(1)}, "typo"),
     "PlacementError: decision names unknown action 'zz' (actions: a)"),
], ids=["none", "dict", "unknown-action"])
def test_an_invalid_decision_is_recorded_and_the_placement_kept(returned: Any,
                                                                message: str) -> None:
    s = scenario(duration_s=30, placement={"a": "local"}, workload={"think_ms": 400})
    r = simulate(s, Script({0: Decision.keep(), 10: returned}), seed=1)

    assert r.status == "ok"
    assert rows(r.events, ["ts", "kind"]) == [(10.0, "policy_error")]
    assert r.events["detail"].iloc[0].startswith(message), r.events["detail"].iloc[0]
    assert decision_log(r) == [
        (0.0, "a", "local", "unloaded", "scenario", "initial placement"),
        (10.0, "", "", "", "Script", "policy failed; placement kept"),
    ]
    assert set(r.calls["placement"]) == {"local"}, "the placement is kept"
    assert r.calls["ok"].all() and r.calls["ts"].max() > 29


# ----------------------------------------------------------------------------- replicas


def test_per_replica_queues_deal_calls_round_robin_onto_every_replica() -> None:
    s = scenario(
        duration_s=30,
        actions={"a": {"service": const(10), "remote_start_s": 1, "remote_queue": "per_replica"}},
        placement={"a": "remote:3"},
        workload={"kind": "poisson", "rate_per_s": 5},
    )
    r = simulate(s, "none", seed=1)
    calls = r.calls.sort_values("ts", kind="stable")
    assert calls["ok"].all()
    ids = calls["replica"].tolist()
    assert set(ids) == {0, 1, 2}, "every replica serves calls"
    start = ids[0]
    assert ids == [(start + i) % 3 for i in range(len(ids))], \
        f"calls go round-robin onto the replicas: {ids[:12]}..."
    counts = calls["replica"].value_counts()
    assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("queue", ["shared", "per_replica"])
def test_scaling_remote_1_to_3_adds_replicas_that_serve_once_ready(queue: str) -> None:
    s = scenario(
        actions={"a": {"service": {"dist": "exp", "mean_ms": 100}, "remote_start_s": 5,
                       "remote_memory_mb": 50, "remote_queue": queue}},
        placement={"a": "remote:1"},
        workload={"kind": "poisson", "rate_per_s": 15},
    )
    r = simulate(s, Switch(20, {"a": Placement.remote(3)}, "scale up"), seed=2)

    assert decision_log(r) == [
        (0.0, "a", "remote:1", "unloaded", "scenario", "initial placement"),
        (20.0, "a", "remote:3", "remote:1", "Switch", "scale up"),
    ]
    calls = r.calls
    assert calls["ok"].all()
    assert set(calls["replica"]) == {0, 1, 2}, "the two new replicas serve calls"
    new = calls[calls["replica"] > 0]
    started = new["ts"] + (new["network_ms"] + new["wait_ms"]) / 1000
    assert started.min() >= 25.0 - 1e-9, "a new replica serves only once started (20 s + 5 s)"
    replicas = timeline_of(r, "a", "replicas")
    ready = timeline_of(r, "a", "replicas_ready")
    assert [replicas[t] for t in (5, 15, 20, 25, 55)] == [1, 1, 3, 3, 3]
    assert [ready[t] for t in (5, 15, 20, 25, 55)] == [1, 1, 1, 3, 3]
    assert r.meters.replica_memory_mb_s == pytest.approx(50 * (60 + 2 * 40))
    assert r.meters.replica_core_s == pytest.approx(60 + 2 * 40)


def test_remote_3_with_instant_start_starts_exactly_three_replicas() -> None:
    # Regression: scale_to used to re-enter itself through _become_ready -> _reconcile and
    # start replicas 0..5 for remote:3 when remote_start_s = 0.
    s = scenario(duration_s=20, actions={"a": {"service": const(10)}},
                 placement={"a": "remote:3"}, workload={"kind": "poisson", "rate_per_s": 5})
    r = simulate(s, "none", seed=1)
    assert set(r.calls["replica"]) == {0, 1, 2}, \
        f"three replicas numbered 0, 1, 2 should serve, got {sorted(set(r.calls['replica']))}"
    assert r.meters.replica_core_s == pytest.approx(3 * 20.0), "and no other replica ever ran"


def test_scaling_down_retires_the_newest_replicas() -> None:
    s = scenario(duration_s=40, actions={"a": {"service": const(10), "remote_start_s": 1}},
                 placement={"a": "remote:3"}, workload={"kind": "poisson", "rate_per_s": 5})
    r = simulate(s, Switch(10, {"a": Placement.remote(1)}, "scale down"), seed=1)
    late = r.calls[r.calls["ts"] > 11]
    assert set(late["replica"]) == {0}, \
        f"the oldest replica (0) should be kept, got {sorted(set(late['replica']))}"


def test_scaling_down_while_a_freed_slot_is_being_handed_over_does_not_crash() -> None:
    # Three clients, two replicas ready at 5 s, 10 s calls: at 15 s both calls end exactly
    # when the policy scales to one replica, and the waiting client is handed a slot.
    s = scenario(duration_s=40, actions={"a": {"service": const(10_000), "remote_start_s": 5}},
                 placement={"a": "remote:2"}, policy={"interval_s": 5},
                 workload={"clients": 3})
    r = simulate(s, Switch(15, {"a": Placement.remote(1)}, "scale down"), seed=1)
    assert r.calls["ok"].all()
    assert math.isclose(r.timeline["replicas"].iloc[-1], 1)
