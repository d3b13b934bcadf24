"""Finding and building policies: names, import paths, parameters checked at the door."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import policies
from policies import Decision, NoParams, Observation, Placement, PolicyError, param


@dataclass(frozen=True)
class _ToyParams:
    replicas: int = param(2, "replicas", minimum=1, maximum=8)
    share: float = param(0.5, "a fraction", minimum=0.0, maximum=1.0)
    quirks: bool = param(False, "a flag")
    label: str = param("x", "a name")
    weights: dict[str, float] = param({}, "a table")
    names: tuple[str, ...] = param((), "a list")


class Toy:
    """A policy defined outside the library, found by import path."""

    Params = _ToyParams

    def __init__(self, params: _ToyParams | None = None) -> None:
        self.params = params or _ToyParams()

    def reset(self, seed: int) -> None:
        self.seed = seed

    def decide(self, observation: Observation) -> Decision:
        return Decision.keep()


class NotAPolicy:
    Params = NoParams

    def __init__(self, params: NoParams | None = None) -> None:
        pass


def test_baselines_are_registered() -> None:
    assert {"none", "all_local", "all_remote", "static"} <= set(policies.names())


def test_import_path_and_string_coercion() -> None:
    toy = policies.get(
        f"{__name__}:Toy",
        replicas="3",
        share="0.25",
        quirks="true",
        weights='{"a": 1}',
        names="x, y",
    )
    assert isinstance(toy, Toy)
    assert toy.params == _ToyParams(3, 0.25, True, "x", {"a": 1}, ("x", "y"))


def test_values_from_toml_keep_their_types() -> None:
    toy = policies.make(f"{__name__}:Toy", {"replicas": 4.0, "share": 1, "quirks": False})
    assert toy.params.replicas == 4 and toy.params.share == 1.0


def test_mutable_defaults_are_not_shared() -> None:
    a, b = _ToyParams(), _ToyParams()
    a.weights["x"] = 1.0
    assert b.weights == {}


@pytest.mark.parametrize(
    ("ref", "params", "message"),
    [
        ("nope", {}, "unknown policy 'nope'; registered: .*all_local"),
        ("no_such_module_xyz:P", {}, "cannot import policy module 'no_such_module_xyz'"),
        (f"{__name__}:Missing", {}, "has no class 'Missing'"),
        (f"{__name__}:NotAPolicy", {}, "does not implement the Policy protocol"),
        (f"{__name__}:Toy", {"replica": 2}, "has no parameter 'replica' .parameters: replicas"),
        (f"{__name__}:Toy", {"replicas": "two"}, "Toy.replicas must be an int, got 'two'"),
        (f"{__name__}:Toy", {"replicas": 0}, "replicas must be >= 1, got 0"),
        (f"{__name__}:Toy", {"replicas": 9}, "replicas must be <= 8, got 9"),
        (f"{__name__}:Toy", {"replicas": 2.5}, "must be an int, got 2.5"),
        (f"{__name__}:Toy", {"share": "half"}, "share must be a number, got 'half'"),
        (f"{__name__}:Toy", {"quirks": "maybe"}, "quirks must be true or false"),
        (f"{__name__}:Toy", {"weights": "{oops"}, "weights must be a JSON object"),
        ("all_remote", {"replicas": 0}, "all_remote.replicas must be >= 1, got 0"),
        ("static", {"placements": {"a": "remot"}}, "'remot'"),
    ],
)
def test_bad_policies_and_parameters_are_named(ref: str, params: dict[str, object],
                                               message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        policies.make(ref, params)


def test_describe_lists_parameters_with_defaults_and_docs() -> None:
    info = {p.name: p for p in policies.describe(f"{__name__}:Toy")}
    assert info["replicas"].default == 2 and info["replicas"].maximum == 8
    assert info["share"].doc == "a fraction"
    assert info["weights"].default == {}


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(PolicyError, match="already registered"):
        policies.register("all_local")(Toy)


def test_static_places_listed_actions_and_the_default() -> None:
    from policies import ActionStats, NodeStats

    node = NodeStats(cores=2, memory_total_mb=1000, memory_used_mb=0)
    unloaded = Placement.unloaded()
    obs = Observation(0.0, 10.0, node, {n: ActionStats(n, unloaded, unloaded) for n in "abc"})
    static = policies.get("static", placements={"a": "remote:2"}, default="local")
    assert static.decide(obs).placements == {
        "a": Placement.remote(2), "b": Placement.local(), "c": Placement.local()}
    only_a = policies.get("static", placements={"a": "unloaded"})
    assert only_a.decide(obs).placements == {"a": Placement.unloaded()}
    assert policies.get("all_remote", replicas=3).decide(obs).placements["c"] == \
        Placement.remote(3)
    assert set(policies.get("all_local").decide(obs).placements.values()) == {Placement.local()}
    assert policies.get("none").decide(obs).placements == {}
