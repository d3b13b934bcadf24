"""The autoscalers against their projects' own test tables, then through the simulator.

The arithmetic is checked function by function with cases taken from the sources' tests
(kubernetes replica_calculator_test.go and horizontal_test.go, knative autoscaler_test.go,
ray test_autoscaling_policy.py), each a small declarative struct; the policies are then
driven observation by observation (stabilisation, panic, delays), and last run on a
simulated action whose load steps up and back down.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import policies
from jsorc_sim.scenario import from_dict
from jsorc_sim.simulate import simulate
from policies import ActionStats, Decision, Mode, NodeStats, Observation, Placement, PolicyError
from policies.autoscalers import (
    Hpa,
    HpaParams,
    Kpa,
    KpaPanic,
    KpaParams,
    RayServe,
    RayServeParams,
    Samples,
    hpa_rate_limit,
    hpa_replica_count,
    hpa_scale_down_limit,
    hpa_scale_up_limit,
    hpa_stabilise,
    kpa_scale,
    ray_apply_delay,
    ray_apply_scaling_factors,
    ray_desired,
)

NAN = math.nan


# ----------------------------------------------------------------------------- helpers


def action(replicas: int = 1, *, ready: int | None = None, utilisation: float = NAN,
           concurrency: float = 0.0, cores: int = 1, name: str = "m",
           desired: Placement | None = None) -> ActionStats:
    """A remote action asked for `replicas`, of which `ready` (default all) are ready."""
    want = desired or Placement.remote(replicas)
    ready = want.replicas if ready is None else ready
    # A steady window: the ready replicas' cores were busy `utilisation` of the time.
    busy = utilisation * ready * cores if ready else 0.0
    return ActionStats(name=name, placement=Placement.remote(max(1, ready)), desired=want,
                       replicas_ready=ready, replica_cores=cores,
                       remote_concurrency=concurrency, remote_utilisation=utilisation,
                       remote_busy_cores=busy)


def observe(now: float, *actions: ActionStats, interval_s: float = 10.0) -> Observation:
    node = NodeStats(cores=4, memory_total_mb=4096, memory_used_mb=300)
    return Observation(now, interval_s, node, {a.name: a for a in actions})


class World:
    """One remote action whose replicas are ready at once; each decision is applied."""

    def __init__(self, policy: policies.Policy, replicas: int = 1, *, cores: int = 1,
                 interval_s: float = 10.0) -> None:
        self.policy, self.replicas, self.cores = policy, replicas, cores
        self.interval_s, self.now = interval_s, 0.0
        self.placement = Placement.remote(replicas)
        policy.reset(0)

    def step(self, **metrics: float) -> Placement:
        """Observe at `now` with the window's metrics, apply, advance; the new placement."""
        stats = action(desired=self.placement, cores=self.cores, **metrics)
        decision = self.policy.decide(observe(self.now, stats, interval_s=self.interval_s))
        self.placement = decision.placements.get("m", self.placement)
        self.now += self.interval_s
        return self.placement

    def run(self, steps: int, **metrics: float) -> list[int]:
        return [self.step(**metrics).replicas for _ in range(steps)]


# ----------------------------------------------------------------------------- shared


def test_window_means_weight_samples_by_their_overlap() -> None:
    s = Samples()
    s.add(0, 10, 1.0)
    s.add(10, 20, 3.0)
    s.add(20, 20, 99.0)  # an empty window carries no weight
    s.add(20, 30, NAN)  # nor does a missing value
    assert s.mean(20, 20) == pytest.approx(2.0)
    assert s.mean(20, 6) == pytest.approx(3.0)  # a window shorter than a sample: its value
    assert s.mean(20, 15) == pytest.approx((5 * 1.0 + 10 * 3.0) / 15)
    s.prune(20, 10)
    assert s.mean(20, 20) == pytest.approx(3.0)
    assert math.isnan(Samples().mean(10, 10))


@pytest.mark.parametrize("name", ["hpa", "kpa", "ray_serve"])
def test_only_remote_actions_are_scaled(name: str) -> None:
    policy = policies.make(name)
    policy.reset(0)
    local = dataclasses.replace(action(name="l"), desired=Placement.local())
    unloaded = dataclasses.replace(action(name="u"), desired=Placement.unloaded())
    for now in (0.0, 20.0):
        decision = policy.decide(observe(now, action(2, utilisation=0.8, concurrency=1.4),
                                         local, unloaded))
        assert set(decision.placements) == {"m"}
        assert decision.placements["m"].mode is Mode.REMOTE
    assert policy.decide(Observation.empty()) == Decision.keep()


@pytest.mark.parametrize("name", ["hpa", "kpa", "ray_serve"])
def test_same_observations_same_decisions(name: str) -> None:
    def run() -> list[int]:
        world = World(policies.make(name))
        loads = [0.2, 3.0, 5.0, 5.0, 0.5, 0.1] * 5
        return [world.step(utilisation=min(1.0, c), concurrency=c).replicas for c in loads]

    assert run() == run()


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("hpa", {"metric": "cpu"}, "hpa.metric must be one of .*'cpu'"),
        ("hpa", {"min_replicas": 5, "max_replicas": 2}, "min_replicas = 5 exceeds"),
        ("hpa", {"target": 0}, "hpa.target must be >= 0.01"),
        ("kpa", {"max_scale_down_rate": 1.0}, "max_scale_down_rate must be greater than 1.0"),
        ("kpa", {"target_utilisation": 1.5}, "kpa.target_utilisation must be <= 1.0"),
        ("ray_serve", {"min_replicas": 0}, "ray_serve.min_replicas must be >= 1"),
    ],
)
def test_bad_parameters_are_refused_by_name(name: str, params: dict[str, Any],
                                            message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        policies.make(name, params)


def test_documented_defaults() -> None:
    hpa, kpa, ray = HpaParams(), KpaParams(), RayServeParams()
    assert (hpa.metric, hpa.target, hpa.tolerance, hpa.sync_period_s) == \
        ("utilisation", 0.8, 0.1, 15.0)
    assert (hpa.scale_down_stabilisation_s, hpa.scale_up_pods, hpa.scale_up_percent,
            hpa.scale_down_percent) == (300.0, 4, 100.0, 100.0)
    assert (kpa.stable_window_s, kpa.panic_window_percentage, kpa.panic_threshold_percentage,
            kpa.max_scale_up_rate, kpa.max_scale_down_rate, kpa.target_utilisation,
            kpa.scale_to_zero_grace_s) == (60.0, 10.0, 200.0, 1000.0, 2.0, 0.7, 30.0)
    assert (ray.target_ongoing_requests, ray.upscale_delay_s, ray.downscale_delay_s,
            ray.upscaling_factor, ray.downscaling_factor) == (2.0, 30.0, 600.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- HPA: tables


@dataclass(frozen=True)
class ReplicaCalcCase:
    """replica_calculator_test.go's replicaCalcTestCase: pods' levels -> a ready average."""

    name: str
    current: int
    ready_levels: tuple[float, ...]  # metric of each ready replica
    unready: int
    target: float
    expected: int


REPLICA_CALC = [
    # TestReplicaCalcScaleUp: 3 pods at 300/500/700 m of 1 core, target 30 % -> 5.
    ReplicaCalcCase("scale up", 3, (0.3, 0.5, 0.7), 0, 0.3, 5),
    # TestReplicaCalcScaleUpUnreadyLessScale: the unready pod counts 0 % on a scale-up.
    ReplicaCalcCase("scale up, unready less scale", 3, (0.5, 0.7), 1, 0.3, 4),
    # TestReplicaCalcScaleUpUnreadyNoScale: counting them at 0 % reverses the direction.
    ReplicaCalcCase("scale up, unready no scale", 3, (0.4,), 2, 0.3, 3),
    # TestReplicaCalcScaleDown: 5 pods at 100/300/500/250/250 m, target 50 % -> 3.
    ReplicaCalcCase("scale down", 5, (0.1, 0.3, 0.5, 0.25, 0.25), 0, 0.5, 3),
    # TestReplicaCalcScaleDownIgnoresUnreadyPods.
    ReplicaCalcCase("scale down ignores unready", 5, (0.1, 0.3, 0.5), 2, 0.5, 2),
    # TestReplicaCalcTolerance: 102 % against 100 % is within 10 %.
    ReplicaCalcCase("tolerance", 3, (1.01, 1.03, 1.02), 0, 1.0, 3),
    # Custom (per-pod) metrics, qps in the sources: our in-flight calls per replica.
    ReplicaCalcCase("custom metric scale up", 3, (20, 10, 30), 0, 15, 4),
    ReplicaCalcCase("custom metric unready less scale", 3, (50, 10), 1, 15, 4),
    ReplicaCalcCase("custom metric scale down", 5, (12,) * 5, 0, 20, 3),
    ReplicaCalcCase("custom metric tolerance", 3, (20, 21, 21), 0, 20, 3),
]


@pytest.mark.parametrize("case", REPLICA_CALC, ids=lambda c: c.name)
def test_replica_calculator(case: ReplicaCalcCase) -> None:
    ratio = sum(case.ready_levels) / len(case.ready_levels) / case.target
    got = hpa_replica_count(case.current, len(case.ready_levels), case.unready, ratio, 0.1)
    assert got == case.expected


@dataclass(frozen=True)
class StabiliseCase:
    """horizontal_test.go's TestNormalizeDesiredReplicas: (age s, recommendation) pairs."""

    name: str
    recommendations: tuple[tuple[float, int], ...]
    desired: int
    current: int
    expected: int


STABILISE = [
    StabiliseCase("empty log", (), 5, 5, 5),
    StabiliseCase("stabilize", ((120, 4), (60, 5)), 3, 5, 5),
    StabiliseCase("no stabilize", ((120, 1), (60, 2)), 3, 5, 3),
    StabiliseCase("no stabilize - old recommendations", ((600, 10), (540, 9)), 3, 10, 3),
    StabiliseCase("stabilize - old recommendations", ((600, 10), (60, 4), (120, 5), (540, 9)),
                  3, 10, 5),
    StabiliseCase("exactly 300 s old is out", ((300, 9),), 3, 9, 3),
    StabiliseCase("scale-up is not stabilised", ((60, 2),), 8, 4, 8),
]


@pytest.mark.parametrize("case", STABILISE, ids=lambda c: c.name)
def test_downscale_stabilisation(case: StabiliseCase) -> None:
    now = 1000.0
    recs = [(now - age, r) for age, r in case.recommendations]
    assert hpa_stabilise(recs, now, case.desired, case.current, 0.0, 300.0) == case.expected


@dataclass(frozen=True)
class RateCase:
    """horizontal_test.go's TestScalingWithRules, default behavior: events are (age s, n)."""

    name: str
    current: int
    desired: int
    expected: int
    up_events: tuple[tuple[float, int], ...] = ()
    down_events: tuple[tuple[float, int], ...] = ()
    min_replicas: int = 1
    max_replicas: int = 1000


RATES = [
    RateCase("scaleUp with default behavior: doubles", 10, 50, 20),
    RateCase("4 pods beat 100 % from 1", 1, 10, 5),
    RateCase("4 pods beat 100 % from 3", 3, 1000, 7),
    RateCase("within range", 5, 7, 7),
    RateCase("max replicas", 8, 50, 10, max_replicas=10),
    RateCase("a scale-up 5 s ago counts in the period", 20, 50, 20, up_events=((5, 10),)),
    RateCase("a scale-up 20 s ago does not", 20, 50, 40, up_events=((20, 10),)),
    RateCase("scale down 100 % per period", 10, 2, 2),
    RateCase("down to min replicas", 10, 0, 1),
    RateCase("min replicas 5", 10, 2, 5, min_replicas=5),
]


@pytest.mark.parametrize("case", RATES, ids=lambda c: c.name)
def test_default_behavior_rate_limits(case: RateCase) -> None:
    now = 100.0
    up = [(now - age, n) for age, n in case.up_events]
    down = [(now - age, n) for age, n in case.down_events]
    up_limit = hpa_scale_up_limit(case.current, up, down, now, pods=4, percent=100,
                                  period_s=15)
    down_limit = hpa_scale_down_limit(case.current, up, down, now, percent=100, period_s=15)
    got = hpa_rate_limit(case.desired, case.current, up_limit, down_limit, case.min_replicas,
                         case.max_replicas)
    assert got == case.expected


# ----------------------------------------------------------------------------- HPA: policy


def hpa_after_one_sync(params: HpaParams, first: ActionStats, then: ActionStats) -> Placement:
    policy = Hpa(params)
    policy.decide(observe(0.0, first))  # the first sync: no window yet, no metrics
    return policy.decide(observe(20.0, then)).placements["m"]


@pytest.mark.parametrize(
    ("stats", "target", "expected"),
    [
        (action(3, utilisation=0.5), 0.3, 5),  # ceil(3 x 0.5 / 0.3)
        (action(3, utilisation=0.85), 0.8, 3),  # within tolerance
        (action(3, ready=2, utilisation=0.6), 0.3, 4),  # one starting: counted at 0 %
        (action(3, ready=1, utilisation=0.4), 0.3, 3),  # two starting: no scale-up
        (action(4, utilisation=0.1), 0.5, 4),  # the first recommendation holds 300 s
        (action(1, utilisation=1.0), 0.1, 5),  # +4 pods per 15 s
        (action(2, ready=0), 0.5, 2),  # no ready replica, no metrics: keep
    ],
)
def test_hpa_first_decision(stats: ActionStats, target: float, expected: int) -> None:
    params = HpaParams(target=target)
    assert hpa_after_one_sync(params, stats, stats) == Placement.remote(expected)


def test_hpa_in_flight_metric_is_per_replica_core() -> None:
    # 12 calls in the system over 3 replicas of 2 cores: 2 per core, 4x the target 0.5.
    stats = action(3, concurrency=12.0, cores=2)
    got = hpa_after_one_sync(HpaParams(metric="in_flight", target=0.5), stats, stats)
    assert got == Placement.remote(7)  # ceil(3 x 4) = 12, limited to 3 + 4 per 15 s


def test_hpa_decides_at_most_once_per_sync_period() -> None:
    world = World(Hpa(HpaParams(target=0.5)), interval_s=5.0)
    # t = 0 syncs with no data; then 5 and 10 are inside the 15 s period; 15 syncs.
    assert world.run(4, utilisation=1.0) == [1, 1, 1, 2]


def test_hpa_scale_down_waits_for_the_stabilisation_window() -> None:
    world = World(Hpa(HpaParams(target=0.5)))
    # Syncs every 20 s (interval 10 s, sync period 15 s). High load to t = 40.
    high = world.run(5, utilisation=1.0)  # t = 0..40
    assert high == [1, 1, 2, 2, 4]
    # From t = 50 a low load recommends 1, but the recommendation of 4 made at t = 40
    # holds until it is 300 s old: at t = 340 (a sync) it is out.
    low = world.run(30, utilisation=0.1)  # t = 50..340
    assert set(low[:-1]) == {4} and low[-1] == 1


def test_hpa_bounds() -> None:
    stats = action(3, utilisation=1.0)
    assert hpa_after_one_sync(HpaParams(target=0.1, max_replicas=4), stats, stats) == \
        Placement.remote(4)
    above = action(8, utilisation=0.5)  # above max_replicas: straight to it
    assert hpa_after_one_sync(HpaParams(max_replicas=5), above, above) == Placement.remote(5)


# ----------------------------------------------------------------------------- KPA: tables


CALM = KpaPanic()


@dataclass(frozen=True)
class KpaCase:
    """autoscaler_test.go's TestAutoscalerScale (its spec: rates 10, panic threshold 200 %)."""

    name: str
    target: float
    ready: int
    stable: float
    panic: float
    expected: int
    prior: KpaPanic = CALM
    up_rate: float = 10.0
    down_rate: float = 10.0


NOW = 1000.0
PANICKING = KpaPanic(NOW - 5, 5)
KPA_SCALE = [
    KpaCase("stable mode no change", 10, 1, 50, 50, 5),
    KpaCase("stable mode no change, already scaled", 10, 5, 50, 50, 5),
    KpaCase("panic: stable larger than panic", 1, 5, 50, 30, 50, prior=PANICKING),
    KpaCase("panic: stable less than panic", 1, 5, 20, 30, 30, prior=PANICKING),
    KpaCase("small scale-up rate still adds one", 1, 2, 3, 3.1, 3, up_rate=1.1),
    KpaCase("small scale-down rate", 10, 100, 1, 1, 90, down_rate=1.1),
    KpaCase("panic mode doubles the pod count", 10, 1, 50, 100, 10),
    KpaCase("rate limit scale up x10", 10, 1, 1000, 1001, 10),
    KpaCase("rate limit scale up x10 again", 10, 10, 1000, 1001, 100),
    KpaCase("rate limit scale down /10", 10, 100, 1, 1, 10),
    KpaCase("rate limit scale down /10 again", 10, 10, 1, 1, 1),
    KpaCase("no traffic: zero", 10, 1, 0, 0, 0),
    KpaCase("one pod as minimum when none is ready", 10, 0, 1000, 888, 10),
    KpaCase("default max scale-down rate 2", 10, 8, 0, 0, 4, down_rate=2.0),
    KpaCase("float noise: 2.1 / 0.7 is 3", 0.7, 3, 2.1, 2.1, 3),
]


@pytest.mark.parametrize("case", KPA_SCALE, ids=lambda c: c.name)
def test_kpa_scale(case: KpaCase) -> None:
    got, _ = kpa_scale(ready=case.ready, stable=case.stable, panic=case.panic,
                       target=case.target, panic_threshold=2.0,
                       max_scale_up_rate=case.up_rate, max_scale_down_rate=case.down_rate,
                       stable_window_s=60.0, now=NOW, state=case.prior)
    assert got == case.expected


def kpa_steps(steps: list[tuple[float, int, float, float, int]]) -> None:
    """(t, ready, stable, panic, expected) in order, with Knative's test spec."""
    state = KpaPanic()
    for t, ready, stable, panic, expected in steps:
        got, state = kpa_scale(ready=ready, stable=stable, panic=panic, target=10,
                               panic_threshold=2.0, max_scale_up_rate=10,
                               max_scale_down_rate=10, stable_window_s=60.0, now=t,
                               state=state)
        assert got == expected, (t, got, expected)


def test_kpa_panic_then_unpanic_scale_down() -> None:
    # TestAutoscalerPanicThenUnPanicScaleDown: no scale-down while in panic, which lasts
    # until a stable window passes without the panic metric over the threshold.
    kpa_steps([(0, 1, 100, 100, 10), (1, 10, 100, 1000, 100), (31, 10, 1, 1, 100),
               (62, 10, 1, 1, 1)])


def test_kpa_panic_window_extends_and_never_scales_down() -> None:
    # TestAutoscalerExtendPanicWindow and PanicModeExponentialTrackAndStabilize: every tick
    # over the threshold moves the end of panic; the pod count only grows meanwhile.
    # Panic from t = 1 would end after t = 61; the surge at t = 2 moves that past t = 62.
    kpa_steps([(0, 1, 6, 6, 1), (1, 1, 60, 60, 6), (2, 6, 20, 120, 12), (50, 12, 20, 20, 12),
               (62, 12, 20, 20, 12), (63, 12, 20, 20, 2)])


# ----------------------------------------------------------------------------- KPA: policy


def test_kpa_default_target_is_replica_cores_times_70_percent() -> None:
    kpa = Kpa()
    assert kpa.target(action(cores=2)) == pytest.approx(1.4)
    assert Kpa(KpaParams(target_concurrency=100)).target(action()) == pytest.approx(70)


def test_kpa_panics_on_a_surge_and_scales_down_by_half_after_it() -> None:
    world = World(Kpa())  # target 0.7 calls per one-core replica
    assert world.run(6, concurrency=0.5) == [1] * 6  # t = 0..50
    # t = 60: the last 10 s (the panic window) hold 7 calls: 10 replicas, panic.
    assert world.step(concurrency=7.0) == Placement.remote(10)
    # The surge is over at once, but panic holds the count for a stable window ...
    # (panic ends once 60 s have passed since the panic metric was last over: t > 120) ...
    held = world.run(6, concurrency=0.5)  # t = 70..120
    assert held == [10] * 6
    # ... then it halves per decision (max scale-down rate 2) to what 0.5 calls need.
    assert world.run(4, concurrency=0.5) == [5, 2, 1, 1]  # t = 130..160


def test_kpa_starts_in_panic_with_more_than_one_ready_replica() -> None:
    world = World(Kpa(), replicas=6)
    # No history: the current scale holds for a stable window (to t = 60), then halves.
    assert world.run(9, concurrency=0.0) == [6] * 7 + [3, 1]


def test_kpa_scale_to_zero_after_a_stable_window_and_the_grace_period() -> None:
    world = World(Kpa(KpaParams(scale_to_zero=True)))
    # Active since t = 0: 1 until it has been active a stable window (60 s); marked
    # inactive at t = 60; unloaded 30 s later.
    got = [str(world.step(concurrency=0.0)) for _ in range(10)]
    assert got == ["remote:1"] * 9 + ["unloaded"]
    without = World(Kpa())
    assert without.run(12, concurrency=0.0) == [1] * 12


# ----------------------------------------------------------------------------- Ray Serve


@dataclass(frozen=True)
class RayCase:
    """test_autoscaling_policy.py: (running, target, ongoing) -> replicas, no delays."""

    name: str
    running: int
    target: int
    ongoing: float
    target_ongoing: float
    expected: int


RAY = [
    # test_single_replica_receives_all_requests: 4 replicas, target 5.
    RayCase("all on one replica, 20", 4, 4, 20, 5, 4),
    RayCase("all on one replica, 100", 4, 4, 100, 5, 20),
    RayCase("all on one replica, 10", 4, 4, 10, 5, 2),
    # test_replicas_delayed_startup: desired follows the ongoing total.
    RayCase("delayed startup, 1 running", 1, 1, 100, 1, 100),
    RayCase("delayed startup, 3 running", 3, 100, 123, 1, 123),
]


@pytest.mark.parametrize("case", RAY, ids=lambda c: c.name)
def test_ray_queue_length_policy(case: RayCase) -> None:
    wanted = ray_desired(case.ongoing, case.running, case.target_ongoing)
    scaled = ray_apply_scaling_factors(wanted, case.running, 1.0, 1.0)
    assert ray_apply_delay(scaled, case.target, 0, 0, 0)[0] == case.expected


@pytest.mark.parametrize(
    ("desired", "current", "up", "down", "expected"),
    [
        (10.0, 5, 0.5, 1.0, 8),  # ceil(5 + 0.5 x 5)
        (1.0, 5, 1.0, 0.5, 3),  # ceil(5 - 0.5 x 4)
        (3.9, 5, 1.0, 0.1, 4),  # stuck at 5 by a small factor: one fewer
        (4.5, 5, 1.0, 0.1, 5),  # but ceil(4.5) is no scale-down
        (10.0, 1, 10.0, 1.0, 91),  # upscaling factor 10 from 1 towards 10
    ],
)
def test_ray_scaling_factors(desired: float, current: int, up: float, down: float,
                             expected: int) -> None:
    assert ray_apply_scaling_factors(desired, current, up, down) == expected


def test_ray_delays_count_consecutive_decisions() -> None:
    # upscale_delay_s 30 at 10 s intervals: three decisions to scale up hold, the fourth
    # acts; a decision the other way resets the count (test_upscale_downscale_delay).
    seq = [(2, 1), (2, 1), (2, 1), (2, 2)]
    counter = 0
    for desired, expected in seq:
        got, counter = ray_apply_delay(desired, 1, counter, 3, 60)
        assert got == expected
    counter = 0
    for desired in (2, 2, 0, 2, 2, 2):
        got, counter = ray_apply_delay(desired, 1, counter, 3, 60)
        assert got == 1
    assert ray_apply_delay(2, 1, counter, 3, 60)[0] == 2


def test_ray_serve_policy_delays() -> None:
    world = World(RayServe())
    # t = 0: no window yet. 10 calls for a target of 2 ask for 5 from t = 10; the delay
    # (30 s = 3 intervals) lets the fourth consecutive decision through, at t = 40.
    assert world.run(5, concurrency=10.0) == [1, 1, 1, 1, 5]
    # Idle: 60 consecutive scale-down decisions hold (600 s), the 61st acts. The first is
    # at t = 50 (the 30 s look-back mean falls to 6.67: 4 replicas), the 61st at t = 650.
    down = world.run(70, concurrency=0.0)  # t = 50..740
    first = down.index(1)
    assert set(down[:first]) == {5}
    assert 50 + 10 * first == 650


def test_ray_serve_holds_the_target_with_no_replica_running() -> None:
    policy = RayServe()
    policy.decide(observe(0.0, action(3, ready=0, concurrency=9.0)))
    decision = policy.decide(observe(10.0, action(3, ready=0, concurrency=9.0)))
    assert decision.placements["m"] == Placement.remote(3)


# ----------------------------------------------------------------------------- simulator


STEP_UP, STEP_DOWN, END = 60.0, 240.0, 960.0


def stepped_trace(path: Path) -> None:
    """Poisson arrivals at 1/s, 15/s from STEP_UP, 0.5/s from STEP_DOWN (seeded)."""
    rng = np.random.default_rng(7)
    times = []
    for start, stop, rate in ((0.0, STEP_UP, 1.0), (STEP_UP, STEP_DOWN, 15.0),
                              (STEP_DOWN, END, 0.5)):
        count = rng.poisson(rate * (stop - start))
        times.append(np.sort(rng.uniform(start, stop, count)))
    ts = np.concatenate(times)
    pd.DataFrame({"ts": ts, "app": "w"}).to_csv(path, index=False)


def replica_changes(decisions: pd.DataFrame, source: str) -> list[tuple[float, int, int]]:
    mine = decisions[(decisions["source"] == source) & (decisions["action"] == "m")]
    out = []
    for ts, new, old in zip(mine["ts"], mine["placement"], mine["previous"], strict=True):
        out.append((float(ts), Placement.parse(old).replicas, Placement.parse(new).replicas))
    return out


@pytest.mark.parametrize("name", ["hpa", "kpa", "ray_serve"])
def test_scales_a_simulated_action_up_and_later_down(name: str, tmp_path: Path) -> None:
    stepped_trace(tmp_path / "trace.csv")
    scenario = from_dict({
        "duration_s": END,
        "node": {"cores": 4, "memory_mb": 4096, "runtime_memory_mb": 300},
        "actions": {"m": {"service": {"dist": "exp", "mean_ms": 200}, "remote_start_s": 3,
                          "remote_cores": 1, "remote_memory_mb": 500}},
        "apps": {"w": {"calls": ["m"]}},
        "workload": {"kind": "trace", "trace": "trace.csv", "trace_format": "requests"},
        "placement": {"m": "remote:1"},
        "policy": {"interval_s": 10},
    }, base_dir=str(tmp_path))
    result = simulate(scenario, name, seed=1)
    assert result.status == "ok" and result.report()["cost"]["policy_errors"] == 0
    changes = replica_changes(result.decisions, name)
    ups = [t for t, old, new in changes if new > old and t > STEP_UP]
    downs = [t for t, old, new in changes if new < old and t > STEP_UP]
    # Replicas are added within a minute of the surge (3 erlangs on one-core replicas) ...
    assert ups and ups[0] <= STEP_UP + 60
    assert max(new for t, _, new in changes if STEP_UP < t <= STEP_DOWN) >= 3
    # ... and removed after it, never sooner than each algorithm allows.
    assert downs and changes[-1][2] <= 2
    first_down, settled = downs[0], changes[-1][0]
    if name == "hpa":  # an increase is a recommendation that holds for 300 s
        assert first_down - max(t for t in ups if t < first_down) >= 300
        assert settled >= STEP_DOWN + 280  # the surge's last recommendation, 300 s on
    elif name == "ray_serve":  # 61 consecutive scale-down decisions, 600 s
        assert first_down - max(t for t in ups if t < first_down) >= 600
    else:  # no scale-down in the panic the surge began; down soon after the surge ends
        assert first_down - ups[0] >= 60
        assert settled <= STEP_DOWN + 120
