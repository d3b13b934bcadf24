"""The data that crosses the policy boundary: placements and decisions refuse nonsense."""

from __future__ import annotations

import dataclasses
import math
import pickle

import pytest

from policies import (
    ActionStats,
    Decision,
    LatencyStats,
    Mode,
    NodeStats,
    Observation,
    Placement,
    PlacementError,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("local", Placement(Mode.LOCAL)),
        ("unloaded", Placement(Mode.UNLOADED)),
        ("remote", Placement(Mode.REMOTE, 1)),
        ("remote:3", Placement(Mode.REMOTE, 3)),
        (" remote:12 ", Placement(Mode.REMOTE, 12)),
    ],
)
def test_parse_placement(text: str, expected: Placement) -> None:
    assert Placement.parse(text) == expected
    assert Placement.parse(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("remot", "'remot'"),
        ("remote:0", "replicas >= 1, got 0"),
        ("remote:-2", "got -2"),
        ("remote:two", "'remote:two'"),
        ("local:2", "only a remote placement takes a replica count"),
        ("", "''"),
    ],
)
def test_parse_placement_refuses_and_names_the_value(text: str, message: str) -> None:
    with pytest.raises(PlacementError, match=message.replace("(", r"\(")):
        Placement.parse(text)


@pytest.mark.parametrize(
    ("mode", "replicas", "message"),
    [
        ("remote", 0, "replicas >= 1"),
        ("local", 2, "a local placement has no replicas"),
        ("unloaded", 1, "has no replicas"),
        ("cloud", 0, "'cloud'"),
        ("remote", 1.5, "must be an int"),
        ("remote", True, "must be an int"),
    ],
)
def test_placement_checks_its_fields(mode: str, replicas: object, message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        Placement(mode, replicas)  # type: ignore[arg-type]


def test_placement_accepts_mode_strings_and_is_frozen() -> None:
    placement = Placement("remote", 2)  # type: ignore[arg-type]
    assert placement.mode is Mode.REMOTE
    with pytest.raises(dataclasses.FrozenInstanceError):
        placement.replicas = 3  # type: ignore[misc]


def test_decision_refuses_what_is_not_a_placement() -> None:
    with pytest.raises(PlacementError, match="placement for 'a' must be a Placement"):
        Decision({"a": "local"})  # type: ignore[dict-item]
    with pytest.raises(PlacementError, match="must be a mapping"):
        Decision([("a", Placement.local())])  # type: ignore[arg-type]
    assert Decision.keep("nothing to do").placements == {}


def test_empty_stats_say_no_data_with_nan_not_zero() -> None:
    stats = LatencyStats()
    assert stats.count == 0 and math.isnan(stats.mean_ms) and math.isnan(stats.p99_ms)
    action = ActionStats("a", Placement.local(), Placement.local())
    assert math.isnan(action.local_service_ms) and action.calls == 0


def test_observation_round_trips_through_pickle() -> None:
    # Observations cross process boundaries (parallel experiments, recorded replays).
    node = NodeStats(cores=4, memory_total_mb=4096, memory_used_mb=300)
    obs = Observation(
        now=10.0,
        interval_s=10.0,
        node=node,
        actions={"a": ActionStats("a", Placement.remote(2), Placement.remote(3), 2, True)},
    )
    # repr, not ==: the empty latency stats hold NaN, which never equals itself.
    assert repr(pickle.loads(pickle.dumps(obs))) == repr(obs)
    assert node.memory_free_mb == 3796
