"""What a policy sees in the simulator is true: window signals against ground truth.

The expected values are worked out by hand from the scenario (a closed system of N clients
on one replica always holds N calls) or from queueing theory (λW for M/M/c by Erlang C),
never read from a run. The autoscalers' expected replica counts are their published
formulas applied to the true concurrency, derived in the comments.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from jsorc_sim.runtime import observation_builder
from jsorc_sim.scenario import Scenario, from_dict, load
from jsorc_sim.simulate import simulate
from policies import Observation, Policy, make
from policies.observe import replay
from policies.recorded import Recorded


def closed(clients: int, service_ms: float, *, placement: str = "remote:1",
           start_s: float = 0.0, duration_s: float = 300.0, interval_s: float = 10.0,
           ) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": "closed",
        "duration_s": duration_s,
        "warmup_s": 0.0,
        "actions": {"a": {"service": {"dist": "const", "mean_ms": service_ms},
                          "remote_start_s": start_s, "default_mode": "remote"}},
        "apps": {"x": {"calls": ["a"]}},
        "workload": {"kind": "closed", "clients": clients},
        "policy": {"interval_s": interval_s},
    }
    if placement:
        table["placement"] = {"a": placement}
    return table


def test_four_clients_on_one_replica_read_four_in_every_window() -> None:
    # 4 closed-loop clients, no think time, 25 s calls, one replica ready from the start:
    # every moment 1 call is served and 3 wait, so the window mean is exactly 4 and the one
    # core is always busy -- whatever the windows' phase against the 25 s calls.
    spy = Recorded()
    simulate(from_dict(closed(4, 25_000.0)), spy, seed=1)
    windows = [o.actions["a"] for o in spy.seen[1:]]  # the first looks at an empty window
    assert len(windows) == 29
    for stats_ in windows:
        assert stats_.remote_concurrency == pytest.approx(4.0, rel=0.01)
        assert stats_.remote_utilisation == pytest.approx(1.0, rel=0.01)
        # At a completion instant the next call may not have resumed yet: it is then
        # queued, not lost.
        assert stats_.in_flight + stats_.queued == 4
        assert stats_.in_flight in (0, 1)
    assert all(0.0 <= o.node.cpu_utilisation <= 1.0 for o in spy.seen)


def test_the_timeline_reads_the_same_time_averages() -> None:
    # Same system on the node's one core (local): the core is always busy and 4 calls are
    # in the local system in every 10 s sample.
    table = closed(4, 25_000.0, placement="local")
    table["node"] = {"cores": 1}
    table["actions"]["a"]["local_memory_mb"] = 10.0
    table["timeline_s"] = 10.0
    result = simulate(from_dict(table), "none", seed=1)
    samples = result.timeline[result.timeline["ts"] > 0]
    assert samples["cpu_utilisation"].tolist() == pytest.approx([1.0] * len(samples))
    assert samples["local_concurrency"].tolist() == pytest.approx([4.0] * len(samples))


def erlang_c(servers: int, offered: float) -> float:
    blocking = stats.poisson.pmf(servers, offered) / stats.poisson.cdf(servers, offered)
    rho = offered / servers
    return float(blocking / (1.0 - rho * (1.0 - blocking)))


@pytest.mark.parametrize(("servers", "rho"), [(1, 0.6), (4, 0.75)])
def test_mmc_window_means_are_little_and_rho(servers: int, rho: float) -> None:
    # M/M/c, 100 ms mean service: L = λ (W_q + S) with Erlang C's W_q; busy fraction ρ.
    mean_s = 0.1
    rate = rho * servers / mean_s
    offered = rate * mean_s
    wait_s = erlang_c(servers, offered) * mean_s / (servers - offered)
    little = rate * (wait_s + mean_s)
    table = {
        "name": "mmc", "duration_s": 4000.0, "warmup_s": 0.0,
        "actions": {"a": {"service": {"dist": "exp", "mean_ms": mean_s * 1000.0}}},
        "apps": {"x": {"calls": ["a"]}},
        "workload": {"kind": "poisson", "rate_per_s": rate},
        "placement": {"a": f"remote:{servers}"},
        "policy": {"interval_s": 10.0},
    }
    spy = Recorded()
    simulate(from_dict(table), spy, seed=servers)
    windows = [o.actions["a"] for o in spy.seen[2:]]  # past the first 10 s
    concurrency = sum(w.remote_concurrency for w in windows) / len(windows)
    utilisation = sum(w.remote_utilisation for w in windows) / len(windows)
    assert concurrency == pytest.approx(little, rel=0.03)
    assert utilisation == pytest.approx(rho, rel=0.02)
    assert all(0.0 <= w.remote_utilisation <= 1.0 for w in windows)


def replicas_asked(spy: Recorded, policy: Policy, table: dict[str, Any]) -> list[int]:
    result = simulate(from_dict(table), spy, seed=1)
    asked = result.decisions[result.decisions["source"] != "runtime"]
    return [int(p.split(":")[1]) for p in asked["placement"] if p.startswith("remote:")]


def test_kpa_after_a_cold_start_asks_for_what_its_formula_gives() -> None:
    # 4 clients, 50 ms calls, no think time, a 45 s replica start, decisions every 2 s (as
    # Knative ticks). Once a replica is ready the 4 clients' calls are always in the remote
    # system: concurrency 4. KPA's target per replica is replica_cores x 0.7 = 0.7, so
    # desired = ceil(4 / 0.7) = ceil(5.71) = 6, and panic mode never goes above what the
    # panic window's concurrency asks for. (Summed finished latencies after the cold start
    # read 4 x 45 s / 2 s = 90, which asked for remote:29 and more.)
    table = closed(4, 50.0, placement="", start_s=45.0, duration_s=400.0, interval_s=2.0)
    kpa = make("kpa")
    asked = replicas_asked(Recorded(kpa), kpa, table)
    assert asked and max(asked) == math.ceil(4 / 0.7) == 6
    assert asked[-1] == 6


def test_hpa_after_a_cold_start_asks_for_what_its_formula_gives() -> None:
    # Same system, HPA on utilisation with target 0.8. With n replicas ready and 4 calls,
    # min(n, 4) cores are busy: utilisation min(n, 4) / n, desired = ceil(n x u / 0.8) =
    # ceil(min(n, 4) / 0.8): 2 from one replica, then 3, 4, and 5 = ceil(4 / 0.8), where
    # utilisation 4 / 5 = 0.8 is on target: it stays.
    table = closed(4, 50.0, placement="", start_s=45.0, duration_s=600.0, interval_s=2.0)
    hpa = make("hpa")
    asked = replicas_asked(Recorded(hpa), hpa, table)
    assert asked[:1] == [2]
    assert max(asked) == 5 and asked[-1] == 5


def same(a: object, b: object) -> bool:
    """Equality of nested dataclasses, mappings and floats, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        return type(a) is type(b) and all(
            same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def test_same_helper_tells_nan_and_values_apart() -> None:
    assert same({"x": math.nan}, {"x": math.nan})
    assert not same({"x": math.nan}, {"x": 1.0})
    assert not same(Observation.empty(1.0), Observation.empty(2.0))


@pytest.mark.parametrize("policy", ["model_based", "all_local"])
def test_the_simulators_events_replayed_give_the_policys_observations(policy: str) -> None:
    # model_based moves actions and starts replicas; all_local on flow_analysis runs the
    # 4 GB node out of memory again and again (failed calls, restarts). The recorded events,
    # replayed into a fresh builder, give every observation the policy was handed.
    spy = Recorded(make(policy))
    result = simulate(load_scenario(), spy, app="flow_analysis", duration_s=240, seed=3,
                      record_events=True)
    events = result.extra["events"]
    assert len(events) > 100 and len(spy.seen) == 24
    again = replay(events, observation_builder(result.scenario))
    assert len(again) == len(spy.seen)
    assert all(same(a, b) for a, b in zip(again, spy.seen, strict=True))
    kinds = {kind for kind, *_ in events}
    assert {"request_finished", "state", "local"} <= kinds
    if policy == "all_local":  # use_enc's load fails before any walker gets to call
        assert result.cost()["oom_events"] > 0 and "out_of_memory" in kinds
        assert any(o.node.oom_events for o in spy.seen)
    else:
        assert {"issued", "dispatched", "started", "finished", "replica_ready"} <= kinds


def load_scenario() -> Scenario:
    return load(Path(__file__).resolve().parents[2] / "experiments" / "scenarios"
                / "jsorc_loadtest.toml")
