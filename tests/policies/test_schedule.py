"""The `schedule` policy: a fixed placement per stretch of the run, switched at given times."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from typing import Any

import pytest

import policies
from jsorc_sim import scenario as scenario_mod
from jsorc_sim.simulate import simulate
from policies import ActionStats, Observation, Placement, PolicyError, check_policy

# Constant service, no start-up time, one closed-loop client: every change is instant.
TWO_ACTIONS = {
    "name": "two_actions",
    "duration_s": 60,
    "warmup_s": 5,
    "node": {"cores": 2, "memory_mb": 4096, "runtime_memory_mb": 300},
    "network": {"rtt_ms": 20},
    "actions": {
        "a": {"local_memory_mb": 500, "service": {"dist": "const", "mean_ms": 10}},
        "b": {"local_memory_mb": 500, "service": {"dist": "const", "mean_ms": 10}},
    },
    "apps": {"walker": {"calls": ["a", "b"]}},
    "workload": {"kind": "closed", "clients": 1},
}
STRETCHES = [
    {"start_s": 0, "placements": {"a": "local", "b": "remote:1"}},
    {"start_s": 20, "placements": {"a": "remote:2"}},
    {"start_s": 30, "placements": {"a": "remote:2"}},  # repeats: asks for nothing
    {"start_s": 40, "placements": {"a": "local", "b": "local"}},
]


def test_switches_at_the_given_times() -> None:
    scenario = scenario_mod.from_dict(TWO_ACTIONS)
    run = simulate(scenario, "schedule", params={"stretches": STRETCHES}, seed=1)
    rows = run.decisions[run.decisions["source"] == "schedule"]
    got = sorted(zip(rows["ts"], rows["action"], rows["placement"], strict=True))
    # Expected from STRETCHES: each change at its stretch's start (a multiple of the 10 s
    # control interval), nothing at 30 s, b untouched at 20 s. At t = 0 the first call's cold
    # start has loaded a locally already (a runtime row), so the schedule asks only for b.
    assert got == [(0.0, "b", "remote:1"), (20.0, "a", "remote:2"), (40.0, "a", "local"),
                   (40.0, "b", "local")]
    timeline = run.timeline.set_index(["ts", "action"])["desired"]
    for ts, a, b in [(10.0, "local", "remote:1"), (30.0, "remote:2", "remote:1"),
                     (50.0, "local", "local")]:
        assert (timeline[(ts, "a")], timeline[(ts, "b")]) == (a, b)
    # The calls follow: a runs local before 20 s and after 40 s (plus the load), remote
    # between, and b remote until 40 s.
    calls = run.calls
    a, b = calls[calls["action"] == "a"], calls[calls["action"] == "b"]
    between = a[(a["ts"] > 21) & (a["ts"] < 39)]
    assert (between["placement"] == "remote").all() and len(between) > 0
    assert (a[(a["ts"] > 1) & (a["ts"] < 19)]["placement"] == "local").all()
    assert (a[a["ts"] > 41]["placement"] == "local").all()
    assert (b[(b["ts"] > 1) & (b["ts"] < 39)]["placement"] == "remote").all()
    assert (b[b["ts"] > 41]["placement"] == "local").all()


def test_the_same_run_as_static_for_one_stretch() -> None:
    placements = {"a": "local", "b": "remote:2"}
    scenario = scenario_mod.from_dict(TWO_ACTIONS)
    schedule = simulate(scenario, "schedule", seed=2,
                        params={"stretches": [{"start_s": 0, "placements": placements}]})
    static = simulate(scenario, "static", params={"placements": placements}, seed=2)
    assert schedule.report() == static.report()


def observation(now: float, **desired: str) -> Observation:
    actions = {name: ActionStats(name=name, placement=Placement.parse(p),
                                 desired=Placement.parse(p)) for name, p in desired.items()}
    return dataclasses.replace(Observation.empty(now=now), actions=actions)


def test_asks_only_for_what_differs_and_the_default_fills_in() -> None:
    policy = policies.get("schedule", stretches=STRETCHES[:2], default="remote:3")
    first = policy.decide(observation(0.0, a="local", b="unloaded", c="local"))
    assert first.placements == {"b": Placement.remote(1), "c": Placement.remote(3)}
    assert policy.decide(observation(19.9, a="local", b="remote:1", c="remote:3")
                         ).placements == {}
    assert policy.decide(observation(20.0, a="local", b="remote:1", c="remote:3")
                         ).placements == {"a": Placement.remote(2), "b": Placement.remote(3)}
    check_policy(policy)


def test_stretches_from_json_text_and_toml_tables() -> None:
    from_list = policies.get("schedule", stretches=STRETCHES)
    from_json = policies.make("schedule", {"stretches": json.dumps(STRETCHES)})
    toml = tomllib.loads("""
        [[stretches]]
        start_s = 0
        placements = { a = "local", b = "remote:1" }
        [[stretches]]
        start_s = 20
        placements = { a = "remote:2" }
        [[stretches]]
        start_s = 30
        placements = { a = "remote:2" }
        [[stretches]]
        start_s = 40.0
        placements = { a = "local", b = "local" }
    """)
    from_toml = policies.make("schedule", toml)
    assert from_list.params == from_json.params == from_toml.params
    assert [s["start_s"] for s in from_toml.params.stretches] == [0.0, 20.0, 30.0, 40.0]


@pytest.mark.parametrize(("stretches", "message"), [
    ([{"start_s": 5, "placements": {}}], r"stretches\[0\]\.start_s must be 0"),
    ([{"start_s": 0}, {"start_s": 10}, {"start_s": 10}],
     r"stretches\[2\]\.start_s = 10 must be after the stretch before it"),
    ([{"start_s": 0}, {"start_s": 10}, {"start_s": 5}], r"stretches\[2\]\.start_s = 5"),
    ([{"start_s": 0}, {"start_s": -1}], r"stretches\[1\]\.start_s must be a finite number"),
    ([{"start_s": 0}, {"start_s": float("nan")}], r"stretches\[1\]\.start_s"),
    ([{"start_s": 0, "placements": {"a": "remot"}}], r"stretches\[0\]\.placements\['a'\]"),
    ([{"start_s": 0, "placements": {"a": "local:2"}}], r"stretches\[0\]\.placements\['a'\]"),
    ([{"start_s": 0, "placement": {}}], r"stretches\[0\] takes start_s"),
    ([{"placements": {}}], r"stretches\[0\] takes start_s \(required\)"),
    (["local"], r"stretches\[0\] must be a table"),
    ("[{not json", "must be a JSON list"),
    ({"start_s": 0}, "must be a list of tables"),
])
def test_bad_stretches_are_refused_naming_the_entry(stretches: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        policies.make("schedule", {"stretches": stretches})


def test_bad_default_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"schedule\.default"):
        policies.make("schedule", {"default": "remote:0"})
