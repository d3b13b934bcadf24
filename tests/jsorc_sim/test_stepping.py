"""`Stepper` (jsorc_sim/stepping.py): a run driven from outside is simulate()'s run, and its
windows add up to the run's cost and hold the latency of the walker runs that finished in
them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

import policies
from jsorc_sim.results import TABLE_NAMES
from jsorc_sim.simulate import simulate, streams
from jsorc_sim.stepping import Stepper
from policies import Decision, Placement, PlacementError
from tests.conftest import REPO

SCENARIOS = REPO / "experiments" / "scenarios"
LOADTEST = SCENARIOS / "jsorc_loadtest.toml"
LLM = SCENARIOS / "llm_service.toml"


def drive(stepper: Stepper, name: str, params: dict[str, Any]) -> list[dict[str, float]]:
    """Run `stepper` to its end with the decisions of policy `name`, as simulate() seeds it."""
    policy = policies.make(name, params)
    policy.reset(int(streams(stepper.scenario.seed)["policy"].generate_state(1)[0]))
    windows = []
    while not stepper.done:
        stepper.apply(policy.decide(stepper.observe()), name)
        stepper.advance()
        windows.append(stepper.window())
    return windows


CASES = [
    # An open workload on settled replicas: the fast path computes most of it.
    ("static", {"placements": {"moderation": "remote:1", "llm": "remote:3"}}, LLM, None),
    ("kpa", {}, LLM, None),  # scales up and down: SimPy with hand-backs
    ("evaluation", {}, LOADTEST, "flow_analysis"),  # closed loop, phases, moves
    ("all_local", {}, LOADTEST, "flow_analysis"),  # out of memory, again and again
]


@pytest.mark.parametrize(("name", "params", "scenario", "app"), CASES,
                         ids=[c[0] for c in CASES])
def test_driven_with_a_policys_decisions_it_is_that_policys_run(
        name: str, params: dict[str, Any], scenario: Any, app: str | None) -> None:
    # Exact, not within a tolerance: the loop pauses before anything else at its instant,
    # so the same events happen in the same order as under controller.control.
    kwargs: dict[str, Any] = {"seed": 3, "duration_s": 400, "app": app, "record": "calls"}
    reference = simulate(scenario, name, params=params, **kwargs)
    stepper = Stepper(scenario, **kwargs)
    drive(stepper, name, params)
    run = stepper.result()
    assert run.report() == reference.report()
    for table in TABLE_NAMES:
        pd.testing.assert_frame_equal(getattr(run, table), getattr(reference, table))
    assert run.recorder.policy_steps == reference.recorder.policy_steps
    if name == "static":
        assert run.report()["engine"]["fast_s"] > 200, "the fast path ran too"


@pytest.mark.parametrize(("name", "params", "scenario", "app"), CASES,
                         ids=[c[0] for c in CASES])
def test_windows_add_up_to_the_run_and_hold_its_latency(
        name: str, params: dict[str, Any], scenario: Any, app: str | None) -> None:
    stepper = Stepper(scenario, seed=4, duration_s=400, app=app, record="requests")
    windows = drive(stepper, name, params)
    run = stepper.result()
    cost = run.report()["cost"]
    for key in ("replica_core_s", "node_memory_gb_s", "replica_memory_gb_s"):
        assert sum(w[key] for w in windows) == pytest.approx(cost[key], abs=2e-3), key
    for key in ("placement_changes", "oom_events", "failed_requests", "cold_starts",
                "arrivals"):
        assert sum(w[key] for w in windows) == cost[key], key
    if name == "all_local":
        assert cost["oom_events"] > 0

    # Each window against numpy on the requests table: the walker runs that finished in
    # it, arrived after warm-up and succeeded.
    requests = run.requests
    finished = requests["ts"] + requests["latency_ms"] / 1000.0
    counted = (requests["ts"] >= stepper.scenario.warmup_s) & requests["ok"]
    start = 0.0
    for window in windows:
        end = start + window["window_s"]
        latency = requests["latency_ms"][counted & (finished >= start) & (finished < end)]
        assert window["throughput"] * window["window_s"] == pytest.approx(len(latency))
        if len(latency):
            assert window["average_latency"] == pytest.approx(latency.mean(), rel=1e-9)
            for q in (50, 90, 95, 99):
                assert window[f"{q}th_latency"] == pytest.approx(
                    np.percentile(latency, q), rel=1e-9)
        else:
            assert np.isnan(window["95th_latency"])
        start = end
    assert start == pytest.approx(stepper.duration_s)


def test_result_reports_mid_run_and_the_clock_steps_by_the_interval() -> None:
    stepper = Stepper(LLM, seed=1, duration_s=300, record="none")
    assert (stepper.now, stepper.interval_s, stepper.done) == (0.0, 10.0, False)
    assert stepper.observe() is stepper.observe()
    stepper.apply(Decision({"llm": Placement.remote(2)}, "two"))
    for _ in range(20):
        stepper.advance()
    assert stepper.now == pytest.approx(200.0)
    report = stepper.result().report()
    assert report["cost"]["arrivals"] == stepper.world.runtime.arrivals > 0
    assert report["walker_run"]["all"]["throughput"] > 0
    decisions = stepper.result().decisions
    asked = decisions[decisions["source"] == "agent"]
    assert asked[["ts", "action", "placement", "reason"]].values.tolist() == [
        [0.0, "llm", "remote:2", "two"]]


def test_bad_decisions_and_steps_past_the_end_are_refused() -> None:
    stepper = Stepper(LLM, seed=1, duration_s=130)
    with pytest.raises(PlacementError, match="unknown action 'nope'"):
        stepper.apply(Decision({"nope": Placement.local()}))
    with pytest.raises(ValueError, match="record must be one of"):
        Stepper(LLM, record="some")
    while not stepper.done:
        stepper.advance()
    assert stepper.now == 130.0 and stepper.window()["window_s"] == pytest.approx(10.0)
    assert stepper.observe().now == 130.0  # the last window, for an environment
    with pytest.raises(RuntimeError, match="ended at t=130"):
        stepper.advance()
