"""`[[workload.phases]]`: a workload whose app mix (and clients or rate) changes mid-run.

Every expectation is computed from the tables the run wrote, not from the sources that drew
them: the share of each app among the requests issued in a phase (a binomial bound around the
phase's weights), the requests in flight at an instant (from each request's arrival and
latency), the arrivals per phase of a Poisson workload (a Poisson bound around rate x length).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from jsorc_sim.results import Result
from jsorc_sim.scenario import PhaseSpec, Scenario, ScenarioError, from_dict, load
from jsorc_sim.simulate import simulate
from policies import Placement
from tests.jsorc_sim.test_fastpath import Toggle, assert_same, both

REPO = Path(__file__).resolve().parents[2]
BIG = {"a": "remote:24", "b": "remote:12"}  # room for a trace's ~200 requests a second
SIGMAS = 4.5  # a bound that a correct draw misses once in ~150,000 checks


def table(workload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Three apps on remote actions (nothing runs out of memory, nothing fails)."""
    out: dict[str, Any] = {
        "name": "phased", "duration_s": 600, "timeline_s": 30, "seed": 5,
        "actions": {"a": {"service": {"dist": "exp", "mean_ms": 40}},
                    "b": {"service": {"dist": "lognormal", "mean_ms": 20, "cv": 0.5}}},
        "apps": {"x": {"calls": ["a"]}, "y": {"calls": ["b", "a"]},
                 "z": {"calls": ["b"], "compute_ms": 2.0}},
        "workload": workload,
        "placement": {"a": "remote:6", "b": "remote:4"},
    }
    out.update(extra)
    return out


def arrivals(r: Result) -> np.ndarray:
    """Every arrival's time: the requests' and those of requests unfinished at the end."""
    unfinished = [t for t, _ in r.meters.unfinished_arrivals]
    return np.sort(np.concatenate([r.requests["ts"].to_numpy(), unfinished]))


def in_phase(requests: pd.DataFrame, start: float, end: float) -> pd.DataFrame:
    return requests[(requests["ts"] >= start) & (requests["ts"] < end)]


def assert_shares(requests: pd.DataFrame, weights: dict[str, float], apps: list[str]) -> None:
    """Each app's share of `requests` is within SIGMAS binomial deviations of its weight."""
    n = len(requests)
    assert n > 500
    counts = requests["app"].astype(str).value_counts()
    total = sum(weights.values())
    for app in apps:
        p = weights.get(app, 0.0) / total
        k = int(counts.get(app, 0))
        if p == 0.0:
            assert k == 0, f"{app}: weight 0 but {k} requests"
            continue
        bound = SIGMAS * math.sqrt(p * (1 - p) / n)
        assert abs(k / n - p) <= bound, f"{app}: {k}/{n} = {k / n:.4f}, weight share {p:.4f}"


def in_flight(requests: pd.DataFrame, t: float) -> int:
    """Requests issued at or before `t` and not finished by then."""
    start = requests["ts"].to_numpy()
    end = start + requests["latency_ms"].to_numpy() / 1000.0
    return int(((start <= t) & (end > t)).sum())


# ----------------------------------------------------------------------------- mixes


@pytest.mark.parametrize("kind", ["closed", "poisson"])
def test_app_shares_follow_the_phase_a_request_is_issued_in(kind: str) -> None:
    first, second, third = {"x": 1.0}, {"x": 1.0, "y": 3.0}, {"z": 2.0, "y": 1.0}
    load_ = {"clients": 4} if kind == "closed" else {"rate_per_s": 20.0}
    scenario = from_dict(table({"kind": kind, **load_, "mix": first, "phases": [
        {"start_s": 200, "mix": second}, {"start_s": 400, "mix": third}]}))
    r = simulate(scenario, seed=2)
    apps = list(scenario.apps)
    for (start, end), weights in zip([(0, 200), (200, 400), (400, 600)],
                                     [first, second, third], strict=True):
        assert_shares(in_phase(r.requests, start, end), weights, apps)


def test_a_trace_replays_unmapped_streams_by_the_phase_mix(traces_dir: Path) -> None:
    scenario = from_dict(table({
        "kind": "trace", "trace_format": "azure2019",
        "trace": str(traces_dir / "azure_functions_2019_single" / "invocations.csv"),
        "mix": {"x": 1.0, "z": 1.0}, "phases": [{"start_s": 60, "mix": {"y": 1.0}}]},
        duration_s=120, placement=BIG))
    r = simulate(scenario)
    assert_shares(in_phase(r.requests, 0, 60), {"x": 1.0, "z": 1.0}, list(scenario.apps))
    assert_shares(in_phase(r.requests, 60, 120), {"y": 1.0}, list(scenario.apps))
    # The arrival times are the trace's: the same as without phases.
    plain = simulate(dataclasses.replace(scenario, workload=dataclasses.replace(
        scenario.workload, phases=())))
    np.testing.assert_array_equal(arrivals(r), arrivals(plain))


def test_poisson_rate_steps() -> None:
    rates = [(0, 200, 10.0), (200, 350, 40.0), (350, 600, 5.0)]
    scenario = from_dict(table({"kind": "poisson", "rate_per_s": 10.0, "phases": [
        {"start_s": 200, "rate_per_s": 40.0}, {"start_s": 350, "rate_per_s": 5.0}]}))
    r = simulate(scenario, seed=3)
    arrivals = r.requests["ts"].to_numpy()
    assert np.all(np.diff(np.sort(arrivals)) >= 0)
    for start, end, rate in rates:
        n = int(((arrivals >= start) & (arrivals < end)).sum())
        mean = rate * (end - start)
        assert abs(n - mean) <= SIGMAS * math.sqrt(mean), (start, n, mean)


# ----------------------------------------------------------------------------- clients


def test_closed_loop_client_count_steps() -> None:
    """No think time: each client always has one request in flight, so the requests in flight
    at an instant are the clients running then. Fewer clients: the extra ones stop after their
    request (they are all done within a second of the phase's start)."""
    scenario = from_dict(table({"kind": "closed", "clients": 2, "phases": [
        {"start_s": 150, "clients": 7}, {"start_s": 300, "clients": 3},
        {"start_s": 450, "mix": {"z": 1.0}}]}))
    r = simulate(scenario)
    assert r.requests["ok"].all()
    expected = {2: [10, 75.5, 149.9], 7: [150.0, 151.0, 200.25, 299.9], 3: [301.0, 420.5, 590.0]}
    for clients, instants in expected.items():
        for t in instants:
            assert in_flight(r.requests, t) == clients, f"t = {t}"
    # The five new clients issue their first requests at the phase's start.
    assert int((r.requests["ts"] == 150.0).sum()) >= 5
    # Clients over the new count issue nothing after it: at most 3 requests start after 300 s
    # before the first of the 3 clients still running finishes one.
    late = r.requests[r.requests["ts"] > 300.0].sort_values("ts")
    first_end = (late["ts"] + late["latency_ms"] / 1000.0).min()
    assert int((late["ts"] < first_end).sum()) <= 3


def test_clients_absent_at_the_start_begin_at_their_phase() -> None:
    scenario = from_dict(table({"kind": "closed", "clients": 1, "think_ms": 50.0,
                                "phases": [{"start_s": 100, "clients": 4}]}))
    r = simulate(scenario)
    assert r.requests[r.requests["ts"] < 100.0]["ts"].diff().min() > 0.05  # one client
    assert in_flight(r.requests, 300.0) <= 4
    assert in_flight(r.requests, 50.0) <= 1


# ----------------------------------------------------------------------------- checks


BAD = [
    ([{"start_s": 0, "mix": {"x": 1}}], "workload.phases[0].start_s must be > 0"),
    ([{"start_s": 600, "mix": {"x": 1}}], "workload.phases[0].start_s = 600 is at or past the"),
    ([{"start_s": 700, "mix": {"x": 1}}], "workload.phases[0].start_s = 700 is at or past the"),
    ([{"start_s": 300, "mix": {"x": 1}}, {"start_s": 300, "mix": {"y": 1}}],
     "workload.phases[1].start_s = 300 must be after workload.phases[0].start_s = 300"),
    ([{"start_s": 300, "mix": {"x": 1}}, {"start_s": 200, "mix": {"y": 1}}],
     "workload.phases[1].start_s = 200 must be after"),
    ([{"mix": {"x": 1}}], "[workload.phases[0]] missing required field 'start_s'"),
    ([{"start_s": 10, "mix": {"w": 1}}], "workload.phases[0].mix: unknown app 'w'"),
    ([{"start_s": 10, "mix": {"x": -1}}], "workload.phases[0].mix.x must be a weight >= 0"),
    ([{"start_s": 10, "mix": {"x": 0, "y": 0}}], "workload.phases[0].mix: the weights sum to 0"),
    ([{"start_s": 10, "mix": {"x": float("nan")}}], "workload.phases[0].mix.x must be finite"),
    ([{"start_s": 10}], "workload.phases[0] changes nothing"),
    ([{"start_s": 10, "clients": 0}], "workload.phases[0].clients must be > 0"),
    ([{"start_s": 10, "clients": 2.5}], "workload.phases[0].clients must be a whole number"),
    ([{"start_s": 10, "rate_per_s": 3}], "workload.phases[0].rate_per_s needs kind = 'poisson'"),
    ([{"start_s": 10, "mix": {"x": 1}, "when": 3}], "[workload.phases[0]] unknown field 'when'"),
    ([3], "workload.phases[0] must be a table, got 3"),
    ({"start_s": 10}, "workload.phases must be a list of tables"),
]


@pytest.mark.parametrize(("phases", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_phases_are_named(phases: Any, message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        from_dict(table({"kind": "closed", "phases": phases}))
    assert message in str(caught.value)


def test_every_problem_at_once() -> None:
    with pytest.raises(ScenarioError) as caught:
        from_dict(table({"kind": "poisson", "phases": [
            {"start_s": 900, "mix": {"w": 1}}, {"start_s": 100, "clients": 3}]}))
    problems = caught.value.problems
    assert any("phases[0].start_s = 900 is at or past" in p for p in problems)
    assert any("phases[0].mix: unknown app 'w'" in p for p in problems)
    assert any("phases[1].start_s = 100 must be after" in p for p in problems)
    assert any("phases[1].clients needs kind = 'closed'" in p for p in problems)


def test_a_trace_that_draws_no_app_from_the_mix_refuses_phases(traces_dir: Path) -> None:
    trace = str(traces_dir / "azure_functions_2019_sample10" / "inv.csv")
    with pytest.raises(ScenarioError, match="with unmapped = 'drop'"):
        from_dict(table({"kind": "trace", "trace_format": "azure2019", "trace": trace,
                         "unmapped": "drop", "phases": [{"start_s": 10, "mix": {"x": 1}}]}))
    with pytest.raises(ScenarioError, match=r"phases\[0\].clients needs kind = 'closed'"):
        from_dict(table({"kind": "trace", "trace_format": "azure2019", "trace": trace,
                         "phases": [{"start_s": 10, "clients": 2}]}))


def test_in_force_carries_what_a_phase_leaves_out() -> None:
    workload = from_dict(table({"kind": "closed", "clients": 3, "mix": {"x": 2}, "phases": [
        {"start_s": 100, "clients": 5}, {"start_s": 200, "mix": {"y": 1}}]})).workload
    assert workload.in_force() == (
        PhaseSpec(start_s=0.0, mix={"x": 2.0}, clients=3, rate_per_s=1.0),
        PhaseSpec(start_s=100.0, mix={"x": 2.0}, clients=5, rate_per_s=1.0),
        PhaseSpec(start_s=200.0, mix={"y": 1.0}, clients=5, rate_per_s=1.0),
    )


# ----------------------------------------------------------------------------- one app


def test_for_app_drops_the_mixes_and_keeps_the_steps() -> None:
    scenario = from_dict(table({"kind": "closed", "clients": 2, "mix": {"x": 1, "y": 1},
                                "phases": [{"start_s": 200, "mix": {"z": 1}},
                                           {"start_s": 300, "clients": 5, "mix": {"y": 1}}]}))
    one = scenario.for_app("y")
    assert one.workload.phases == (PhaseSpec(start_s=300.0, mix={}, clients=5),)
    r = simulate(one)
    assert set(r.requests["app"].astype(str)) == {"y"}
    assert in_flight(r.requests, 250.0) == 2 and in_flight(r.requests, 400.0) == 5


# ----------------------------------------------------------------------------- engines


def phased_poisson(**extra: Any) -> Scenario:
    return from_dict(table({"kind": "poisson", "rate_per_s": 15.0, "mix": {"x": 1.0},
                            "phases": [{"start_s": 210, "mix": {"y": 2, "z": 1},
                                        "rate_per_s": 35.0},
                                       {"start_s": 420, "rate_per_s": 8.0}]}, **extra))


def test_engines_agree_on_a_phased_poisson_workload() -> None:
    slow, fast = both(phased_poisson())
    assert_same(slow, fast)
    assert fast.extra["engine"]["fast_s"] > 590


def test_engines_agree_with_hand_backs_across_phases() -> None:
    scenario = phased_poisson(duration_s=900, policy={"name": "none", "interval_s": 15})
    plan = ["remote:8", "remote:5", "remote:9"]
    slow = simulate(scenario, Toggle(plan, every=5), fast="off")
    fast = simulate(scenario, Toggle(plan, every=5), fast="auto")
    assert_same(slow, fast)
    engine = fast.extra["engine"]
    assert engine["hand_backs"] >= 3 and 0 < engine["fast_s"] < 900


def test_engines_agree_on_a_phased_trace(traces_dir: Path) -> None:
    scenario = from_dict(table({
        "kind": "trace", "trace_format": "azure2019",
        "trace": str(traces_dir / "azure_functions_2019_single" / "invocations.csv"),
        "mix": {"x": 1.0}, "phases": [{"start_s": 50, "mix": {"y": 1.0, "z": 3.0}}]},
        duration_s=120, placement=BIG))
    slow, fast = both(scenario)
    assert_same(slow, fast)
    assert fast.extra["engine"]["fast_s"] > 0


# ----------------------------------------------------------------------------- saved runs


def rerun(saved: Path) -> Result:
    return simulate(load(saved / "scenario.toml"), fast="off")


def test_the_saved_scenario_keeps_the_phases_and_repeats_the_run(tmp_path: Path) -> None:
    scenario = from_dict(table({"kind": "closed", "clients": 2, "phases": [
        {"start_s": 100, "clients": 4, "mix": {"y": 1, "z": 1}},
        {"start_s": 200, "clients": 1}]}, duration_s=300))
    first = simulate(scenario, out=tmp_path / "run", fast="off")
    saved = load(tmp_path / "run" / "scenario.toml")
    assert saved.workload.phases == scenario.workload.phases
    again = rerun(tmp_path / "run")
    pd.testing.assert_frame_equal(first.requests, again.requests)


def test_a_run_cut_before_a_phase_saves_a_scenario_that_loads(tmp_path: Path) -> None:
    scenario = from_dict(table({"kind": "poisson", "rate_per_s": 5.0, "phases": [
        {"start_s": 100, "rate_per_s": 9.0}, {"start_s": 500, "mix": {"z": 1}}]}))
    first = simulate(scenario, duration_s=300, out=tmp_path / "cut")
    saved = load(tmp_path / "cut" / "scenario.toml")
    assert [p.start_s for p in saved.workload.phases] == [100.0]
    pd.testing.assert_frame_equal(first.requests, rerun(tmp_path / "cut").requests)


def test_a_scenario_without_phases_saves_no_phases_key(tmp_path: Path) -> None:
    simulate(from_dict(table({"kind": "poisson"})), duration_s=60, out=tmp_path / "plain")
    assert "phases" not in (tmp_path / "plain" / "scenario.toml").read_text()


# ----------------------------------------------------------------------------- the example


def test_the_example_changes_its_mix_halfway() -> None:
    scenario = load(REPO / "experiments" / "scenarios" / "mix_change.toml")
    workload = scenario.workload
    assert (workload.kind, workload.clients, scenario.duration_s) == ("closed", 8, 1800.0)
    assert [p.start_s for p in workload.phases] == [900.0]
    assert set(workload.mix) == set(workload.phases[0].mix) == set(scenario.apps)
    assert len(scenario.apps) == 8
    light = {"sentence_pairing", "discussion_analysis", "restaurant_chatbot"}
    heavy = set(scenario.apps) - light
    for mix, mostly in ((workload.mix, light), (workload.phases[0].mix, heavy)):
        top = sorted(mix, key=mix.__getitem__, reverse=True)[:3]
        share = sum(mix[a] for a in top) / sum(mix.values())
        assert share > 0.8 and (set(top) <= mostly)


def test_the_example_halves_have_different_best_placements() -> None:
    """The two placements its comments name, each half's mix run alone (shorter than there):
    each is the faster in its own half."""
    scenario = load(REPO / "experiments" / "scenarios" / "mix_change.toml")

    def latency(mix: dict[str, float], local: set[str]) -> float:
        placement = {a: Placement.local() if a in local else Placement.remote(1)
                     for a in scenario.actions}
        half = dataclasses.replace(scenario, duration_s=360.0, placement=placement,
                                   workload=dataclasses.replace(scenario.workload, mix=mix,
                                                                phases=()))
        return float(simulate(half, "none", seed=1).report()["walker_run"]["all"]
                     ["average_latency"])

    light_best, heavy_best = {"sbert_sim", "tfm_ner", "bi_enc"}, {"text_seg", "tfm_ner",
                                                                  "cl_summer"}
    first, second = dict(scenario.workload.mix), dict(scenario.workload.phases[0].mix)
    assert latency(first, light_best) < latency(first, heavy_best)
    assert latency(second, heavy_best) < latency(second, light_best)
