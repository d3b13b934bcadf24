"""Guards: each a wrapper with one job, table-driven per guard, and how they compose."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

import policies
from policies import (
    ActionStats,
    Decision,
    Mode,
    NodeStats,
    NoParams,
    Observation,
    Placement,
    Policy,
    PolicyError,
    check_policy,
)
from policies.guards import (
    Cooldown,
    CooldownParams,
    Guarded,
    MaxChanges,
    MemoryCap,
    ReplicaBounds,
    Stabilisation,
    wear,
)
from tests.conftest import REPO

# Local memory of the test actions (MB); the node has 4096 MB and a 300 MB runtime.
SIZES = {"a": 1000.0, "b": 2000.0, "c": 1500.0, "big": 4000.0}


class Scripted:
    """An inner policy that asks, at its n-th decision, for `asks[n]` (then nothing)."""

    Params = NoParams

    def __init__(self, asks: Sequence[Mapping[str, str]] = ()) -> None:
        self.params = NoParams()
        self.asks = list(asks)
        self.step = 0
        self.seeds: list[int] = []

    def reset(self, seed: int) -> None:
        self.step = 0
        self.seeds.append(seed)

    def decide(self, observation: Observation) -> Decision:
        ask = self.asks[self.step] if self.step < len(self.asks) else {}
        self.step += 1
        return Decision({a: Placement.parse(p) for a, p in ask.items()}, "scripted")


def observe(now: float, desired: Mapping[str, str], *,
            placement: Mapping[str, str] | None = None,
            rates: Mapping[str, float] | None = None, used: float | None = None) -> Observation:
    """Actions at their desired placement (or `placement`, mid-transition); node memory is
    the runtime plus every copy held or loading unless `used` is given."""
    placement, rates = placement or {}, rates or {}
    actions = {}
    for name, text in desired.items():
        want = Placement.parse(text)
        where = Placement.parse(placement[name]) if name in placement else want
        actions[name] = ActionStats(name, where, want, transition=where != want,
                                    call_rate=rates.get(name, 0.0),
                                    local_memory_mb=SIZES.get(name, 100.0))
    if used is None:
        used = 300.0 + sum(SIZES.get(a, 100.0) for a, s in actions.items()
                           if Mode.LOCAL in (s.placement.mode, s.desired.mode))
    return Observation(now, 10.0, NodeStats(4, 4096.0, used), actions)


@dataclass(frozen=True)
class Step:
    """One control step: the world's state, what the inner policy asks, what must come out."""

    now: float
    desired: Mapping[str, str]
    asks: Mapping[str, str]
    expect: Mapping[str, str]
    placement: Mapping[str, str] = field(default_factory=dict)
    rates: Mapping[str, float] = field(default_factory=dict)
    used: float | None = None


@dataclass(frozen=True)
class Case:
    id: str
    wear: Callable[[Policy], Policy]
    steps: tuple[Step, ...]


def run_case(case: Case) -> None:
    inner = Scripted([s.asks for s in case.steps])
    guarded = case.wear(inner)
    guarded.reset(0)
    for step in case.steps:
        got = guarded.decide(observe(step.now, step.desired, placement=step.placement,
                                     rates=step.rates, used=step.used))
        assert {a: str(p) for a, p in got.placements.items()} == dict(step.expect), \
            f"{case.id} at t={step.now}: {got.reason}"


def cases(*items: Case) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("case", items, ids=[c.id for c in items])


# ----------------------------------------------------------------------------- ReplicaBounds

@cases(
    Case("raises to min", lambda p: ReplicaBounds(p, min_replicas=2),
         (Step(0, {"a": "local"}, {"a": "remote:1"}, {"a": "remote:2"}),)),
    Case("cuts to max", lambda p: ReplicaBounds(p, max_replicas=8),
         (Step(0, {"a": "remote:2"}, {"a": "remote:12"}, {"a": "remote:8"}),)),
    Case("within bounds passes", lambda p: ReplicaBounds(p, min_replicas=2, max_replicas=8),
         (Step(0, {"a": "remote:2"}, {"a": "remote:5"}, {"a": "remote:5"}),)),
    Case("no max by default", lambda p: ReplicaBounds(p),
         (Step(0, {"a": "remote:2"}, {"a": "remote:100"}, {"a": "remote:100"}),)),
    Case("local and unloaded pass", lambda p: ReplicaBounds(p, min_replicas=3),
         (Step(0, {"a": "remote:3", "b": "remote:3"}, {"a": "local", "b": "unloaded"},
               {"a": "local", "b": "unloaded"}),)),
    Case("what the inner policy did not state is left alone",
         lambda p: ReplicaBounds(p, max_replicas=2),
         (Step(0, {"a": "remote:20"}, {}, {}),)),
    Case("keeps nothing pending", lambda p: ReplicaBounds(p, max_replicas=2),
         (Step(0, {"a": "remote:1"}, {"a": "remote:5"}, {"a": "remote:2"}),
          Step(10, {"a": "remote:1"}, {}, {}))),
)
def test_replica_bounds(case: Case) -> None:
    run_case(case)


# ----------------------------------------------------------------------------- Cooldown

@cases(
    Case("a change then nothing within the cooldown; the held change comes after it",
         lambda p: Cooldown(p, cooldown_s=30),
         (Step(0, {"a": "local"}, {"a": "remote:1"}, {"a": "remote:1"}),
          Step(10, {"a": "remote:1"}, {"a": "local"}, {}),
          Step(20, {"a": "remote:1"}, {}, {}),
          Step(30, {"a": "remote:1"}, {}, {"a": "local"}))),
    Case("the first change of an action is never held", lambda p: Cooldown(p, cooldown_s=300),
         (Step(100, {"a": "local"}, {"a": "remote:2"}, {"a": "remote:2"}),)),
    Case("actions cool down separately", lambda p: Cooldown(p, cooldown_s=30),
         (Step(0, {"a": "local", "b": "local"}, {"a": "remote:1"}, {"a": "remote:1"}),
          Step(10, {"a": "remote:1", "b": "local"}, {"a": "remote:2", "b": "remote:1"},
               {"b": "remote:1"}))),
    Case("asking for what is already desired is no change", lambda p: Cooldown(p, cooldown_s=30),
         (Step(0, {"a": "local"}, {"a": "remote:1"}, {"a": "remote:1"}),
          Step(10, {"a": "remote:1"}, {"a": "remote:1"}, {"a": "remote:1"}))),
    Case("the inner policy's newer wish replaces a held one", lambda p: Cooldown(p, cooldown_s=30),
         (Step(0, {"a": "local"}, {"a": "remote:1"}, {"a": "remote:1"}),
          Step(10, {"a": "remote:1"}, {"a": "local"}, {}),
          Step(20, {"a": "remote:1"}, {"a": "remote:3"}, {}),
          Step(30, {"a": "remote:1"}, {}, {"a": "remote:3"}))),
    Case("a wish the world already satisfied is dropped", lambda p: Cooldown(p, cooldown_s=30),
         (Step(0, {"a": "local"}, {"a": "remote:1"}, {"a": "remote:1"}),
          Step(10, {"a": "remote:1"}, {"a": "local"}, {}),
          Step(20, {"a": "local"}, {}, {}),
          Step(40, {"a": "local"}, {}, {}))),
    Case("cooldown 0 holds nothing", lambda p: Cooldown(p, cooldown_s=0),
         (Step(0, {"a": "local"}, {"a": "remote:1"}, {"a": "remote:1"}),
          Step(0, {"a": "remote:1"}, {"a": "local"}, {"a": "local"}))),
)
def test_cooldown(case: Case) -> None:
    run_case(case)


# ----------------------------------------------------------------------------- Stabilisation

@cases(
    Case("scale-down waits for the window; scale-down then to the new recommendation",
         lambda p: Stabilisation(p, window_s=60),
         (Step(0, {"a": "remote:5"}, {"a": "remote:5"}, {"a": "remote:5"}),
          Step(10, {"a": "remote:5"}, {"a": "remote:2"}, {"a": "remote:5"}),
          Step(50, {"a": "remote:5"}, {}, {"a": "remote:5"}),
          Step(60, {"a": "remote:5"}, {}, {"a": "remote:2"}))),
    Case("the highest recommendation in the window wins (a partial scale-down)",
         lambda p: Stabilisation(p, window_s=60),
         (Step(0, {"a": "remote:5"}, {}, {}),
          Step(10, {"a": "remote:5"}, {"a": "remote:3"}, {"a": "remote:5"}),
          Step(20, {"a": "remote:5"}, {"a": "remote:1"}, {"a": "remote:5"}),
          Step(65, {"a": "remote:5"}, {}, {"a": "remote:3"}),
          Step(85, {"a": "remote:3"}, {}, {"a": "remote:1"}))),
    Case("scale-up is immediate", lambda p: Stabilisation(p, window_s=300),
         (Step(0, {"a": "remote:2"}, {"a": "remote:6"}, {"a": "remote:6"}),)),
    Case("a change of mode is not this guard's job", lambda p: Stabilisation(p, window_s=300),
         (Step(0, {"a": "remote:5"}, {}, {}),
          Step(10, {"a": "remote:5"}, {"a": "local"}, {"a": "local"}))),
    Case("the first recommendation scales down at once (an empty window)",
         lambda p: Stabilisation(p, window_s=300),
         (Step(0, {"a": "remote:5"}, {"a": "remote:2"}, {"a": "remote:2"}),)),
    Case("window 0 holds nothing", lambda p: Stabilisation(p, window_s=0),
         (Step(0, {"a": "remote:5"}, {}, {}),
          Step(10, {"a": "remote:5"}, {"a": "remote:1"}, {"a": "remote:1"}))),
)
def test_stabilisation(case: Case) -> None:
    run_case(case)


# ----------------------------------------------------------------------------- MemoryCap

@cases(
    Case("a copy that fits is loaded", lambda p: MemoryCap(p),
         (Step(0, {"a": "unloaded"}, {"a": "local"}, {"a": "local"}),)),
    Case("a copy that does not fit goes remote", lambda p: MemoryCap(p),
         (Step(0, {"big": "unloaded"}, {"big": "local"}, {"big": "remote:1"}),)),
    Case("refused = keep leaves it as it is", lambda p: MemoryCap(p, refused="keep"),
         (Step(0, {"big": "unloaded"}, {"big": "local"}, {}),)),
    Case("a refused action already remote keeps its replicas", lambda p: MemoryCap(p),
         (Step(0, {"big": "remote:3"}, {"big": "local"}, {"big": "remote:3"}),)),
    Case("copies being loaded count", lambda p: MemoryCap(p),
         # 300 + a 1000 (ready) + b 2000 (loading) + c 1500 > 4096
         (Step(0, {"a": "local", "b": "local", "c": "unloaded"}, {"c": "local"},
               {"c": "remote:1"}, placement={"b": "unloaded"}),)),
    Case("copies being moved away still count", lambda p: MemoryCap(p),
         (Step(0, {"a": "local", "b": "local", "c": "unloaded"}, {"b": "remote:1", "c": "local"},
               {"b": "remote:1", "c": "remote:1"}),)),
    Case("the memory the node reports counts (a copy still draining)", lambda p: MemoryCap(p),
         (Step(0, {"a": "unloaded"}, {"a": "local"}, {"a": "remote:1"}, used=3500.0),)),
    Case("a held copy is never evicted; asking for it again costs nothing",
         lambda p: MemoryCap(p, cap_mb=1000),
         (Step(0, {"b": "local"}, {"b": "local"}, {"b": "local"}),)),
    Case("busiest first", lambda p: MemoryCap(p, cap_mb=2500),
         (Step(0, {"b": "unloaded", "c": "unloaded"}, {"b": "local", "c": "local"},
               {"b": "local", "c": "remote:1"}, rates={"b": 5.0, "c": 1.0}),)),
    Case("busiest first, the other way", lambda p: MemoryCap(p, cap_mb=2500),
         (Step(0, {"b": "unloaded", "c": "unloaded"}, {"b": "local", "c": "local"},
               {"b": "remote:1", "c": "local"}, rates={"b": 1.0, "c": 5.0}),)),
    Case("a copy too big is skipped and a smaller one still fits",
         lambda p: MemoryCap(p),
         (Step(0, {"big": "unloaded", "a": "unloaded"}, {"big": "local", "a": "local"},
               {"big": "remote:1", "a": "local"}, rates={"big": 9.0}),)),
    Case("fraction of the node", lambda p: MemoryCap(p, fraction=0.5),
         (Step(0, {"b": "unloaded"}, {"b": "local"}, {"b": "remote:1"}),)),
    Case("a refused load is retried once memory is free", lambda p: MemoryCap(p),
         (Step(0, {"b": "local", "c": "local", "a": "remote:1"}, {"a": "local"},
               {"a": "remote:1"}),
          Step(10, {"b": "local", "c": "remote:1", "a": "remote:1"}, {}, {"a": "local"}))),
)
def test_memory_cap(case: Case) -> None:
    run_case(case)


# ----------------------------------------------------------------------------- MaxChanges

@cases(
    Case("one per interval: away from local first, then remote, then loads",
         lambda p: MaxChanges(p, max_changes=1),
         (Step(0, {"a": "remote:1", "b": "local", "c": "remote:1"},
               {"a": "local", "b": "remote:1", "c": "remote:2"}, {"b": "remote:1"}),
          Step(10, {"a": "remote:1", "b": "remote:1", "c": "remote:1"}, {}, {"c": "remote:2"}),
          Step(20, {"a": "remote:1", "b": "remote:1", "c": "remote:2"}, {}, {"a": "local"}),
          Step(30, {"a": "local", "b": "remote:1", "c": "remote:2"}, {}, {}))),
    Case("ties by action name", lambda p: MaxChanges(p, max_changes=2),
         (Step(0, {"c": "local", "b": "local", "a": "local"},
               {"c": "remote:1", "b": "remote:1", "a": "remote:1"},
               {"a": "remote:1", "b": "remote:1"}),)),
    Case("asking for what is desired is no change and does not count",
         lambda p: MaxChanges(p, max_changes=1),
         (Step(0, {"a": "local", "b": "local"}, {"a": "local", "b": "remote:1"},
               {"a": "local", "b": "remote:1"}),)),
)
def test_max_changes(case: Case) -> None:
    run_case(case)


# ----------------------------------------------------------------------------- composition

@cases(
    # The cap's remote fallback is remote:1; bounds outside it raise that to 2, bounds
    # inside it never see it.
    Case("bounds outside the cap bound its fallback",
         lambda p: ReplicaBounds(MemoryCap(p), min_replicas=2),
         (Step(0, {"big": "unloaded"}, {"big": "local"}, {"big": "remote:2"}),)),
    Case("bounds inside the cap do not", lambda p: MemoryCap(ReplicaBounds(p, min_replicas=2)),
         (Step(0, {"big": "unloaded"}, {"big": "local"}, {"big": "remote:1"}),)),
    # A cooldown outside a rate limit starts its clock when a change really goes out; inside
    # it, the clock starts when the change is first asked for, even if the limit defers it,
    # so the same action can then change twice within the cooldown.
    Case("cooldown outside a rate limit",
         lambda p: Cooldown(MaxChanges(p, max_changes=1), cooldown_s=15),
         (Step(0, {"a": "local", "b": "local"}, {"a": "remote:1", "b": "remote:1"},
               {"a": "remote:1"}),
          Step(10, {"a": "remote:1", "b": "local"}, {}, {"b": "remote:1"}),
          Step(20, {"a": "remote:1", "b": "remote:1"}, {"b": "local"}, {}))),
    Case("cooldown inside a rate limit",
         lambda p: MaxChanges(Cooldown(p, cooldown_s=15), max_changes=1),
         (Step(0, {"a": "local", "b": "local"}, {"a": "remote:1", "b": "remote:1"},
               {"a": "remote:1"}),
          Step(10, {"a": "remote:1", "b": "local"}, {}, {"b": "remote:1"}),
          Step(20, {"a": "remote:1", "b": "remote:1"}, {"b": "local"}, {"b": "local"}))),
    Case("all five", lambda p: wear(p, {"memory_cap": {}, "stabilisation": {"window_s": 60},
                                        "replica_bounds": {"max_replicas": 4},
                                        "cooldown": {"cooldown_s": 20},
                                        "max_changes": {"max_changes": 2}}),
         (Step(0, {"a": "unloaded", "big": "unloaded", "c": "remote:3"},
               {"a": "local", "big": "local", "c": "remote:9"},
               {"big": "remote:1", "c": "remote:4"}),
          # The cap re-states its fallback for big (no change) while its local wish waits.
          Step(10, {"a": "unloaded", "big": "remote:1", "c": "remote:4"}, {},
               {"a": "local", "big": "remote:1"}))),
)
def test_composition_order(case: Case) -> None:
    run_case(case)


# ----------------------------------------------------------------------------- the wrapper


@pytest.mark.parametrize("guard", [ReplicaBounds, Cooldown, Stabilisation, MemoryCap,
                                   MaxChanges])
def test_reset_passes_the_seed_and_clears_the_guard(guard: type) -> None:
    inner = Scripted([{"a": "remote:1"}, {"a": "local"}])
    policy = guard(inner)
    world = [observe(0, {"a": "local"}), observe(10, {"a": "remote:1"})]
    runs = []
    for _ in range(2):
        policy.reset(7)
        runs.append([policy.decide(o) for o in world])
    assert inner.seeds == [7, 7]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("guard", [ReplicaBounds, Cooldown, Stabilisation, MemoryCap,
                                   MaxChanges])
@pytest.mark.parametrize("inner", ["all_local", "all_remote", "evaluation"])
def test_guards_pass_the_conformance_check(guard: type, inner: str) -> None:
    if inner not in policies.names():
        pytest.skip(f"{inner} is not registered")
    check_policy(guard(policies.make(inner)))


def test_actions_the_world_does_not_know_pass_through() -> None:
    policy = Cooldown(Scripted([{"ghost": "local"}]))
    policy.reset(0)
    assert policy.decide(observe(0, {"a": "local"})).placements == {"ghost": Placement.local()}


def test_an_inner_policy_returning_nonsense_is_reported() -> None:
    class Bad(Scripted):
        def decide(self, observation: Observation) -> Decision:
            return {"a": "local"}  # type: ignore[return-value]

    policy = MaxChanges(Bad())
    with pytest.raises(TypeError, match="max_changes: the inner policy returned dict"):
        policy.decide(observe(0, {"a": "local"}))


def test_reasons_say_what_the_guard_did() -> None:
    policy = MemoryCap(Scripted([{"big": "local"}]))
    policy.reset(0)
    reason = policy.decide(observe(0, {"big": "unloaded"})).reason
    assert reason == "scripted [memory_cap: refused local big (cap 4096 MB)]"


def test_python_api_params_or_keywords() -> None:
    inner = Scripted()
    assert Cooldown(inner, CooldownParams(5.0)).params == Cooldown(inner, cooldown_s=5).params
    assert Cooldown(inner).params == CooldownParams(60.0)
    assert MemoryCap(inner, fraction=0.8).policy_name == "memory_cap(Scripted)"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Cooldown(Scripted(), cooldown_s=-1), r"cooldown\.cooldown_s must be >= 0"),
        (lambda: Cooldown(Scripted(), CooldownParams(5), cooldown_s=5), "not both"),
        (lambda: Cooldown(Scripted(), 30), "Cooldown takes CooldownParams, got int"),
        (lambda: Cooldown(Scripted(), cooldown=5), "has no parameter 'cooldown'"),
        (lambda: ReplicaBounds(Scripted(), min_replicas=4, max_replicas=2),
         "max_replicas = 2 is below min_replicas = 4"),
        (lambda: ReplicaBounds(Scripted(), min_replicas=0), "min_replicas must be >= 1"),
        (lambda: MemoryCap(Scripted(), refused="drop"), "refused must be one of remote, keep"),
        (lambda: MemoryCap(Scripted(), fraction=1.5), "fraction must be <= 1"),
        (lambda: MaxChanges(Scripted(), max_changes=0), "max_changes must be >= 1"),
        (lambda: wear(Scripted(), {"cooldwn": {}}), "unknown guard 'cooldwn'; guards: "),
        (lambda: wear(Scripted(), {"cooldown": 30}), "must be a table, got 30"),
    ],
)
def test_bad_guard_parameters_are_refused_by_name(build: Callable[[], object],
                                                  message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        build()


# ----------------------------------------------------------------------------- by name


def test_guarded_is_registered_and_built_from_a_table() -> None:
    policy = policies.make("guarded", {
        "policy": "all_remote", "params": {"replicas": 9},
        "guards": {"replica_bounds": {"max_replicas": 4}, "max_changes": {"max_changes": 1}},
    })
    assert isinstance(policy, Guarded)
    assert getattr(policy.policy, "policy_name") == "max_changes(replica_bounds(all_remote))"  # noqa: B009
    policy.reset(0)
    decision = policy.decide(observe(0, {"b": "local", "a": "local"}))
    assert decision.placements == {"a": Placement.remote(4)}


def test_guarded_from_the_command_line() -> None:
    policy = policies.make("guarded", {"policy": "all_local",
                                       "guards": '{"memory_cap": {"fraction": "0.5"}}'})
    policy.reset(0)
    assert policy.decide(observe(0, {"b": "unloaded"})).placements == {"b": Placement.remote(1)}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"policy": "nope"}, "unknown policy 'nope'"),
        ({"policy": "all_remote", "params": {"replica": 2}}, "has no parameter 'replica'"),
        ({"guards": {"cap": {}}}, "unknown guard 'cap'"),
        ({"guards": {"cooldown": {"cooldown_s": "soon"}}}, "cooldown_s must be a number"),
    ],
)
def test_guarded_refuses_bad_input_by_name(params: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        policies.make("guarded", params)


def test_in_the_simulator_a_memory_cap_prevents_out_of_memory() -> None:
    from jsorc_sim.simulate import simulate

    scenario = REPO / "experiments" / "scenarios" / "jsorc_loadtest.toml"
    bare = simulate(scenario, "all_local", app="flow_analysis", duration_s=120, seed=1)
    capped = simulate(scenario, "guarded", params={"policy": "all_local",
                                                   "guards": {"memory_cap": {}}},
                      app="flow_analysis", duration_s=120, seed=1)
    assert bare.report()["cost"]["oom_events"] > 0
    cost = capped.report()["cost"]
    assert cost["oom_events"] == 0 and cost["failed_requests"] == 0
    assert capped.report()["walker_run"]["all"]["average_latency"] is not None
