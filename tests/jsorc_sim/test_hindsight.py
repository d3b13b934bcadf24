"""The hindsight baseline: the best static placement, found by simulating every feasible one."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from jsorc_sim import scenario as scenario_mod
from jsorc_sim.hindsight import best_static, combinations, fits, regret
from jsorc_sim.simulate import simulate
from policies import Placement
from tests.conftest import REPO

LOADTEST = REPO / "experiments" / "scenarios" / "jsorc_loadtest.toml"

# Known by construction. Constant service times, one closed-loop client, no start-up time,
# a 20 ms network: `fast` is 10 ms local / 30 ms remote; `slow` runs 5x slower on the node
# (50 ms local / 30 ms remote); `huge` never fits the 4 GB node (10 ms + 20 ms remote).
# Best: fast local, slow remote, huge remote = 10 + 30 + 30 = 70 ms per walker.
KNOWN = {
    "name": "known",
    "duration_s": 60,
    "warmup_s": 10,
    "node": {"cores": 2, "memory_mb": 4096, "runtime_memory_mb": 300},
    "network": {"rtt_ms": 20},
    "actions": {
        "fast": {"local_memory_mb": 1000, "service": {"dist": "const", "mean_ms": 10}},
        "huge": {"local_memory_mb": 5000, "service": {"dist": "const", "mean_ms": 10}},
        "slow": {"local_memory_mb": 1000, "local_slowdown": 5,
                 "service": {"dist": "const", "mean_ms": 10}},
    },
    "apps": {"walker": {"calls": ["fast", "huge", "slow"]}},
    "workload": {"kind": "closed", "clients": 1},
}


@pytest.fixture(scope="module")
def known() -> scenario_mod.Scenario:
    return scenario_mod.from_dict(KNOWN)


def placements(**given: str) -> dict[str, Placement]:
    return {a: Placement.parse(p) for a, p in given.items()}


def test_the_known_best_is_found(known: scenario_mod.Scenario) -> None:
    result = best_static(known, seed=3)
    assert result.best == placements(fast="local", huge="remote:1", slow="remote:1")
    assert result.best_latency_ms == pytest.approx(70.0)
    assert result.actions == ("fast", "huge", "slow")
    table = result.table
    assert len(table) == 8
    simulated = table[table["simulated"]]
    # Every run is exact: 10 or 30 ms for fast, 30 for huge, 50 or 30 for slow.
    assert simulated["average_latency"].tolist() == pytest.approx([70.0, 90.0, 90.0, 110.0])
    assert simulated[["fast", "slow"]].values.tolist() == [
        ["local", "remote:1"], ["local", "local"], ["remote:1", "remote:1"],
        ["remote:1", "local"]]  # ties in enumeration order
    assert (simulated["huge"] == "remote:1").all()
    assert (simulated["oom_events"] == 0).all() and (simulated["failed_requests"] == 0).all()


def test_infeasible_combinations_are_listed_but_never_simulated(
        known: scenario_mod.Scenario) -> None:
    table = best_static(known).table
    infeasible = table[~table["feasible"]]
    assert len(infeasible) == 4 and (infeasible["huge"] == "local").all()
    assert not infeasible["simulated"].any()
    assert infeasible["average_latency"].isna().all()
    assert (infeasible["node_memory_mb"] > 4096).all()
    assert table.index[~table["feasible"]].min() == 4  # listed last


def test_regret(known: scenario_mod.Scenario) -> None:
    result = best_static(known)
    assert regret(90.0, result) == pytest.approx(20.0)
    assert result.regret(90.0, relative=True) == pytest.approx(20.0 / 70.0)
    assert regret(60.0, 70.0) == pytest.approx(-10.0)  # an adaptive policy can beat it
    assert math.isnan(regret(None, result)) and math.isnan(regret(math.nan, 70.0))


def test_seeded_deterministic_and_the_same_in_parallel() -> None:
    args = {"app": "discussion_analysis", "duration_s": 90, "seed": 4}
    serial = best_static(LOADTEST, **args)
    again = best_static(LOADTEST, **args)
    parallel = best_static(LOADTEST, workers=2, **args)
    pd.testing.assert_frame_equal(serial.table, again.table)
    pd.testing.assert_frame_equal(serial.table, parallel.table)
    assert serial.best == parallel.best
    other_seed = best_static(LOADTEST, app="discussion_analysis", duration_s=90, seed=5)
    assert not serial.table["average_latency"].equals(other_seed.table["average_latency"])


def test_loadtest_sentence_pairing() -> None:
    result = best_static(LOADTEST, app="sentence_pairing", duration_s=120, seed=1)
    scenario = scenario_mod.load(LOADTEST).for_app("sentence_pairing")
    assert set(result.actions) == {"sbert_sim", "bi_enc"}
    assert len(result.table) == 4 and result.table["feasible"].all()  # 1.8 GB fits in 4 GB
    assert fits(scenario, dict(result.best))
    # The best is what `simulate` gives for that placement under `static`, same seed.
    run = simulate(scenario, "static", seed=1, duration_s=120,
                   params={"placements": {a: str(p) for a, p in result.best.items()}})
    assert run.report()["walker_run"]["all"]["average_latency"] == result.best_latency_ms


@pytest.mark.parametrize(("app", "memory_mb", "infeasible"),
                         [("sentence_pairing", 1700, 1), ("flow_analysis", 4096, 4)])
def test_loadtest_infeasible_combinations_are_skipped(app: str, memory_mb: int,
                                                      infeasible: int) -> None:
    scenario = scenario_mod.load(LOADTEST)
    scenario = dataclasses.replace(scenario,
                                   node=dataclasses.replace(scenario.node, memory_mb=memory_mb))
    result = best_static(scenario, app=app, duration_s=120, seed=1)
    table = result.table
    assert (~table["feasible"]).sum() == infeasible
    assert not table.loc[~table["feasible"], "simulated"].any()
    assert table["simulated"].equals(table["feasible"])
    for _, row in table.iterrows():
        combo = {a: Placement.parse(row[a]) for a in result.actions}
        assert row["feasible"] == fits(scenario.for_app(app), combo)
    assert fits(scenario.for_app(app), dict(result.best))
    assert (table.loc[table["simulated"], "oom_events"] == 0).all()


def test_combinations_are_all_local_first() -> None:
    combos = combinations(["a", "b"], replicas=2)
    assert [{k: str(v) for k, v in c.items()} for c in combos] == [
        {"a": "local", "b": "local"}, {"a": "local", "b": "remote:2"},
        {"a": "remote:2", "b": "local"}, {"a": "remote:2", "b": "remote:2"}]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"app": "nope"}, scenario_mod.ScenarioError, "unknown app 'nope'"),
        ({"max_runs": 512}, ValueError, "10 actions make 1024 combinations, more than "
                                        "max_runs = 512"),
        ({"replicas": 0}, ValueError, "replicas must be >= 1"),
        ({"app": "flow_analysis", "duration_s": 30}, scenario_mod.ScenarioError,
         "must exceed warmup_s"),
    ],
)
def test_bad_input(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        best_static(LOADTEST, **kwargs)  # type: ignore[arg-type]
