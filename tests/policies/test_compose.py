"""The combinator: a placement policy decides where, an autoscaler how many replicas."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pytest

import policies
from jsorc_sim.scenario import from_dict
from jsorc_sim.simulate import simulate
from policies import (
    ActionStats,
    Decision,
    NodeStats,
    NoParams,
    Observation,
    Placement,
    PolicyError,
)
from policies.autoscalers import Hpa, HpaParams, Kpa
from policies.baselines import AllRemote, AllRemoteParams
from policies.compose import Compose, ComposeParams, compose, derive_seed

P = Placement.parse


# ----------------------------------------------------------------------------- stubs


class Scripted:
    """A policy answering each observation with `answer(observation)`; records what it saw."""

    Params = NoParams

    def __init__(self, answer: Callable[[Observation], Mapping[str, Placement]],
                 reason: str = "") -> None:
        self.params = NoParams()
        self.answer, self.reason = answer, reason
        self.seen: list[Observation] = []
        self.seeds: list[int] = []

    def reset(self, seed: int) -> None:
        self.seeds.append(seed)

    def decide(self, observation: Observation) -> Decision:
        self.seen.append(observation)
        return Decision(dict(self.answer(observation)), self.reason)


def one_more(observation: Observation) -> dict[str, Placement]:
    """A scaler: one replica more for every action it is shown as remote."""
    return {name: Placement.remote(a.desired.replicas + 1)
            for name, a in observation.actions.items() if a.desired.mode.value == "remote"}


def observe(**desired: str) -> Observation:
    actions = {name: ActionStats(name=name, placement=P(text), desired=P(text))
               for name, text in desired.items()}
    return Observation(10.0, 10.0, NodeStats(4, 4096, 300), actions)


# ----------------------------------------------------------------------------- semantics


@dataclass(frozen=True)
class ComposeCase:
    name: str
    desired: Mapping[str, str]  # what the world reports as desired
    placement: Mapping[str, str]  # what the placement policy asks
    expected: Mapping[str, str]  # the composed decision
    scaler_sees: Mapping[str, str]  # desired placements in the scaler's view
    scaler: Callable[[Observation], Mapping[str, Placement]] = one_more


CASES = [
    ComposeCase("placement silent: modes stay, the remote ones are scaled",
                {"a": "remote:2", "b": "local"}, {}, {"a": "remote:3"},
                {"a": "remote:2", "b": "local"}),
    ComposeCase("newly remote: the placement's count seeds it",
                {"a": "local"}, {"a": "remote:4"}, {"a": "remote:5"}, {"a": "remote:4"}),
    ComposeCase("already remote: the scaler's count stands",
                {"a": "remote:2"}, {"a": "remote:7"}, {"a": "remote:3"}, {"a": "remote:2"}),
    ComposeCase("moved local: not scaled", {"a": "remote:2"}, {"a": "local"},
                {"a": "local"}, {"a": "local"}),
    ComposeCase("unloaded stays unloaded", {"a": "unloaded", "b": "remote:1"},
                {"a": "unloaded"}, {"a": "unloaded", "b": "remote:2"},
                {"a": "unloaded", "b": "remote:1"}),
    ComposeCase("a scaler may scale a remote action to zero", {"a": "remote:1"}, {},
                {"a": "unloaded"}, {"a": "remote:1"},
                scaler=lambda o: {"a": Placement.unloaded()}),
    ComposeCase("a scaler cannot change the mode", {"a": "remote:2", "b": "local"}, {},
                {"a": "remote:2"}, {"a": "remote:2", "b": "local"},
                scaler=lambda o: {"a": Placement.local(), "b": Placement.remote(3)}),
    ComposeCase("an action the world does not list passes through", {"a": "local"},
                {"ghost": "local"}, {"ghost": "local"}, {"a": "local"}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_placement_decides_where_and_the_scaler_how_many(case: ComposeCase) -> None:
    placement = Scripted(lambda o: {n: P(t) for n, t in case.placement.items()})
    scaler = Scripted(case.scaler)
    composed = compose(placement, scaler)
    composed.reset(0)
    decision = composed.decide(observe(**case.desired))
    assert {n: str(p) for n, p in decision.placements.items()} == case.expected
    (view,) = scaler.seen
    assert {n: str(a.desired) for n, a in view.actions.items()} == case.scaler_sees
    (seen,) = placement.seen
    assert {n: str(a.desired) for n, a in seen.actions.items()} == case.desired


def test_reasons_are_joined() -> None:
    composed = compose(Scripted(lambda o: {}, "phase 2"), Scripted(one_more, "hpa: a 2 -> 3"))
    assert composed.decide(observe(a="remote:2")).reason == "phase 2; hpa: a 2 -> 3"
    quiet = compose(Scripted(lambda o: {}), Scripted(lambda o: {}))
    assert quiet.decide(observe(a="local")) == Decision.keep()


def test_reset_gives_each_part_its_own_reproducible_seed() -> None:
    placement, scaler = Scripted(lambda o: {}), Scripted(lambda o: {})
    composed = compose(placement, scaler)
    composed.reset(5)
    composed.reset(5)
    composed.reset(6)
    assert placement.seeds[0] == placement.seeds[1] == derive_seed(5, "placement")
    assert scaler.seeds[0] == scaler.seeds[1] == derive_seed(5, "scaler")
    assert placement.seeds[0] != scaler.seeds[0]
    assert placement.seeds[2] != placement.seeds[0] and scaler.seeds[2] != scaler.seeds[0]


# ----------------------------------------------------------------------------- building


def test_python_api_describes_its_parts() -> None:
    composed = compose(AllRemote(AllRemoteParams(2)), Hpa(HpaParams(target=0.6)))
    assert isinstance(composed, policies.Policy)
    p = composed.params
    assert (p.placement, dict(p.placement_params)) == ("all_remote", {"replicas": 2})
    assert p.scaler == "hpa" and p.scaler_params["target"] == 0.6
    unregistered = compose(Scripted(lambda o: {}), Kpa())
    assert unregistered.params.placement.endswith("test_compose:Scripted")


def test_registered_policy_builds_its_parts_by_name() -> None:
    composed = policies.make("compose", {
        "placement": "all_remote", "placement_params": {"replicas": 2},
        "scaler": "hpa", "scaler_params": '{"target": 0.6}',  # as from a command line
    })
    assert isinstance(composed, Compose)
    assert composed.placement.params == AllRemoteParams(2)
    assert composed.scaler.params == HpaParams(target=0.6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        composed.params.scaler = "kpa"  # type: ignore[misc]
    assert Compose().params == ComposeParams("none", {}, "hpa", {})
    defaults = {info.name: info.default for info in policies.describe("compose")}
    assert defaults == {"placement": "none", "placement_params": {}, "scaler": "hpa",
                        "scaler_params": {}}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"scaler": "nope"}, "compose.scaler: unknown policy 'nope'"),
        ({"scaler_params": {"target": 0}}, "compose.scaler: hpa.target must be >= 0.01"),
        ({"placement": "all_remote", "placement_params": {"replicas": 0}},
         "compose.placement: all_remote.replicas must be >= 1"),
        ({"scaler_params": {"targett": 1}}, "compose.scaler: policy 'hpa' has no parameter"),
        ({"scaler_params": "[1, 2]"}, "compose.scaler_params must be a table"),
        ({"scalers": "hpa"}, "policy 'compose' has no parameter 'scalers'"),
    ],
)
def test_bad_parts_are_refused_by_name(params: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        policies.make("compose", params)


# ----------------------------------------------------------------------------- simulator


def test_all_remote_with_hpa_in_the_simulator() -> None:
    # An action loaded locally; 8 closed-loop clients. all_remote moves it remote (one
    # replica) and keeps asking remote:1; HPA adds replicas and all_remote does not undo it.
    scenario = from_dict({
        "duration_s": 120,
        "node": {"cores": 4, "memory_mb": 4096, "runtime_memory_mb": 300},
        "actions": {"m": {"service": {"dist": "exp", "mean_ms": 100}, "remote_start_s": 2,
                          "local_memory_mb": 200, "remote_memory_mb": 200}},
        "apps": {"w": {"calls": ["m"]}},
        "workload": {"kind": "closed", "clients": 8},
        "placement": {"m": "local"},
        "policy": {"interval_s": 10},
    })
    result = simulate(scenario, "compose", params={"placement": "all_remote", "scaler": "hpa"},
                      seed=1)
    assert result.status == "ok" and result.report()["cost"]["policy_errors"] == 0
    rows = result.decisions[(result.decisions["source"] == "compose")
                            & (result.decisions["action"] == "m")]
    counts = [P(text).replicas for text in rows["placement"]]
    assert str(rows["placement"].iloc[0]) == "remote:1" and rows["ts"].iloc[0] == 0
    assert counts[1:] and all(b > a for a, b in itertools.pairwise(counts))
    assert max(counts) >= 4
    assert result.policy_params["scaler"] == "hpa"
