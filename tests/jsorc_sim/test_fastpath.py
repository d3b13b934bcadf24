"""The fast path against SimPy: the same run, request by request and call by call.

Each scenario kind runs twice on one seed, `fast="off"` (SimPy only) and `fast="auto"`, and
every table must agree: the same requests and calls, the same waits, services, latencies
and replica ids, the same decisions and the same unfinished requests, to floating-point
tolerance. The policy's observations are recorded in both runs and compared too, so the
batches the fast path hands the observation builder are checked against the events SimPy
emits one by one. Where the fast path cannot run, the run says why.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jsorc_sim import fifo
from jsorc_sim.fastpath import FastPathError, static_reasons
from jsorc_sim.fifo import serve, serve_python
from jsorc_sim.results import Result
from jsorc_sim.scenario import Scenario, from_dict
from jsorc_sim.simulate import simulate
from policies import Decision, Observation, Placement, make

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"
RTOL = 1e-9


def mmc(**extra: Any) -> Scenario:
    table: dict[str, Any] = {
        "name": "mmc", "duration_s": 900, "warmup_s": 60, "timeline_s": 30, "seed": 4,
        "actions": {"a": {"service": {"dist": "exp", "mean_ms": 100}}},
        "apps": {"x": {"calls": ["a"]}},
        "workload": {"kind": "poisson", "rate_per_s": 30.0},
        "placement": {"a": "remote:4"},
    }
    for key, value in extra.items():
        table[key] = value
    return from_dict(table)


def chain() -> Scenario:
    """Two apps, walker compute on a two-core node, the wire, sizes, two actions in a chain."""
    return from_dict({
        "name": "chain", "duration_s": 600, "warmup_s": 30, "timeline_s": 20, "seed": 9,
        "node": {"cores": 2},
        "network": {"rtt_ms": 4.0, "bandwidth_mbps": 800.0},
        "actions": {
            "a": {"service": {"dist": "lognormal", "mean_ms": 30, "cv": 0.8},
                  "payload_kb": 16},
            "b": {"service": {"dist": "gamma", "mean_ms": 50, "cv": 0.5}, "per_size_ms": 0.5},
        },
        "apps": {"x": {"compute_ms": 8, "calls": ["a", "b"]},
                 "y": {"compute_ms": 3, "calls": ["b"]}},
        "workload": {"kind": "poisson", "rate_per_s": 25.0, "mix": {"x": 0.6, "y": 0.4}},
        "placement": {"a": "remote:2", "b": "remote:3"},
    })


class Recording:
    """Wraps a policy and keeps every observation it was shown."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.params = inner.params
        self.policy_name = getattr(inner, "policy_name", type(inner).__name__)
        self.seen: list[Observation] = []

    def reset(self, seed: int) -> None:
        self.inner.reset(seed)

    def decide(self, observation: Observation) -> Decision:
        self.seen.append(observation)
        decision: Decision = self.inner.decide(observation)
        return decision


class Toggle:
    """Changes a's replicas every `every`-th step, and sends it local once: hand-backs."""

    params = None
    policy_name = "toggle"

    def __init__(self, plan: list[str], every: int = 4) -> None:
        self.plan = plan
        self.every = every
        self.step = 0
        self.target = "a"

    def reset(self, seed: int) -> None:
        self.step = 0

    def decide(self, observation: Observation) -> Decision:
        self.step += 1
        if self.step % self.every:
            return Decision({}, "")
        target = self.plan[(self.step // self.every - 1) % len(self.plan)]
        return Decision({self.target: Placement.parse(target)}, f"step {self.step}: {target}")


def both(scenario: Scenario, policy: Any = "none", **kwargs: Any) -> tuple[Result, Result]:
    slow = simulate(scenario, _fresh(policy), fast="off", **kwargs)
    fast = simulate(scenario, _fresh(policy), fast="auto", **kwargs)
    return slow, fast


def _fresh(policy: Any) -> Any:
    if isinstance(policy, str):
        return policy
    return policy()


def assert_same(slow: Result, fast: Result) -> None:
    assert slow.status == fast.status == "ok"
    a = slow.requests.sort_values("request_id").reset_index(drop=True)
    b = fast.requests.sort_values("request_id").reset_index(drop=True)
    assert len(a) == len(b) > 0
    assert (a["request_id"].to_numpy() == b["request_id"].to_numpy()).all()
    assert (a["app"].astype(str).to_numpy() == b["app"].astype(str).to_numpy()).all()
    assert (a["ok"].to_numpy() == b["ok"].to_numpy()).all()
    for column in ("ts", "latency_ms"):
        np.testing.assert_allclose(b[column], a[column], rtol=RTOL, atol=1e-9, err_msg=column)
    keys = ["request_id", "ts"]
    ca = slow.calls.sort_values(keys).reset_index(drop=True)
    cb = fast.calls.sort_values(keys).reset_index(drop=True)
    assert len(ca) == len(cb)
    for column in ("request_id", "replica", "ok", "cold"):
        assert (ca[column].to_numpy() == cb[column].to_numpy()).all(), column
    for column in ("action", "placement", "error"):
        assert (ca[column].astype(str).to_numpy() == cb[column].astype(str).to_numpy()).all()
    for column in ("ts", "wait_ms", "service_ms", "network_ms", "latency_ms"):
        np.testing.assert_allclose(cb[column], ca[column], rtol=RTOL, atol=1e-9, err_msg=column)
    ua, ub = sorted(slow.meters.unfinished_arrivals), sorted(fast.meters.unfinished_arrivals)
    assert [app for _, app in ua] == [app for _, app in ub]
    np.testing.assert_allclose([t for t, _ in ub], [t for t, _ in ua], rtol=RTOL)
    assert slow.meters.arrivals == fast.meters.arrivals
    da, db = slow.decisions, fast.decisions
    assert da[["action", "placement", "previous", "source"]].equals(
        db[["action", "placement", "previous", "source"]])
    np.testing.assert_allclose(db["ts"], da["ts"], rtol=RTOL)
    ta, tb = slow.timeline, fast.timeline
    assert len(ta) == len(tb)
    for column in ta.columns:
        if pd.api.types.is_numeric_dtype(ta[column]) and not pd.api.types.is_bool_dtype(
                ta[column]):
            np.testing.assert_allclose(tb[column].to_numpy(dtype=float),
                                       ta[column].to_numpy(dtype=float), rtol=1e-7, atol=1e-7,
                                       err_msg=f"timeline {column}")
        else:
            assert (ta[column].to_numpy() == tb[column].to_numpy()).all(), column
    ra, rb = slow.report(), fast.report()
    assert ra["cost"] == rb["cost"]
    for app, stats in ra["walker_run"].items():
        for key, value in stats.items():
            assert rb["walker_run"][app][key] == pytest.approx(value, rel=1e-6, abs=1e-3), key


def assert_same_observations(slow: list[Observation], fast: list[Observation]) -> None:
    assert len(slow) == len(fast) > 0
    for oa, ob in zip(slow, fast, strict=True):
        assert oa.now == pytest.approx(ob.now, rel=RTOL)
        for name, sa in oa.actions.items():
            sb = ob.actions[name]
            for field in dataclasses.fields(sa):
                va, vb = getattr(sa, field.name), getattr(sb, field.name)
                _close(va, vb, f"t={oa.now} {name}.{field.name}")
        _close(oa.totals, ob.totals, f"t={oa.now} totals")
        _close(oa.node, ob.node, f"t={oa.now} node")
        for app, sa in oa.apps.items():
            _close(sa, ob.apps[app], f"t={oa.now} app {app}")


def _close(a: Any, b: Any, where: str) -> None:
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        for field in dataclasses.fields(a):
            _close(getattr(a, field.name), getattr(b, field.name), f"{where}.{field.name}")
    elif isinstance(a, float):
        if math.isnan(a):
            assert math.isnan(b), where
        else:
            assert b == pytest.approx(a, rel=1e-7, abs=1e-7), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _close(a[key], b[key], f"{where}[{key}]")
    else:
        assert a == b, where


# ----------------------------------------------------------------------------- the kernel


def test_compiled_kernel_is_the_python_loop() -> None:
    rng = np.random.default_rng(5)
    arrival = np.cumsum(rng.exponential(0.02, 20_000))
    service = rng.lognormal(-3, 1, 20_000)
    out = []
    for fn in (serve, serve_python):
        free, order = np.zeros(3), np.arange(3)
        start, token, counter = fn(arrival, service, free, order, 3)
        out.append((start, token, counter, free))
    assert fifo._serve is not fifo.serve_python  # the compiled kernel ran, not the loop twice
    assert (out[0][1] == out[1][1]).all() and out[0][2] == out[1][2]
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][3], out[1][3])


def test_one_server_is_lindley() -> None:
    """With one server the waits are Lindley's recursion, computed here on its own."""
    rng = np.random.default_rng(2)
    gaps, service = rng.exponential(1.0, 5000), rng.exponential(0.9, 5000)
    arrival = np.cumsum(gaps)
    start, _, _ = serve(arrival, service, np.zeros(1), np.zeros(1, dtype=np.int64), 1)
    wait = [0.0]
    for n in range(1, 5000):
        wait.append(max(0.0, wait[-1] + service[n - 1] - gaps[n]))
    np.testing.assert_allclose(start - arrival, wait, atol=1e-9)


# ----------------------------------------------------------------------------- cross-checks


def test_mmc_static() -> None:
    slow, fast = both(mmc())
    assert_same(slow, fast)
    engine = fast.extra["engine"]
    assert engine["fast_s"] == pytest.approx(900.0)
    assert engine["stretches"] >= 900 / 30
    assert slow.extra["engine"]["fast_s"] == 0.0


def test_chain_with_compute_wire_and_sizes() -> None:
    slow, fast = both(chain())
    assert_same(slow, fast)
    assert fast.extra["engine"]["fast_s"] > 590


@pytest.mark.skipif(not (TRACES / "azure_functions_2019_single").exists(),
                    reason="needs ../shared/traces")
def test_trace_replay() -> None:
    scenario = from_dict({
        "name": "azure_day", "duration_s": 240, "timeline_s": 60,
        "actions": {"f": {"service": {"dist": "lognormal", "mean_ms": 5, "cv": 1.0},
                          "default_mode": "remote"}},
        "apps": {"f": {"calls": ["f"]}},
        "workload": {"kind": "trace", "trace_format": "azure2019",
                     "trace": str(TRACES / "azure_functions_2019_single" / "invocations.csv")},
        "placement": {"f": "remote:2"},
    })
    slow, fast = both(scenario)
    assert_same(slow, fast)
    assert len(fast.requests) > 10_000


@pytest.mark.skipif(not (TRACES / "azure_llm_inference_2023_code.csv").exists(),
                    reason="needs ../shared/traces")
def test_llm_trace_with_sizes_under_a_policy() -> None:
    base = Path(__file__).resolve().parents[2] / "experiments" / "scenarios" / "llm_service.toml"
    overrides = {"workload.kind": "trace", "workload.trace_format": "azure_llm2023",
                 "workload.trace": str(TRACES / "azure_llm_inference_2023_code.csv"),
                 "workload.llm_size": "total", "placement.moderation": "remote:1",
                 "duration_s": 1200}

    def policy() -> Recording:
        return Recording(make("compose", {"placement": "all_remote", "scaler": "hpa"}))

    slow_policy, fast_policy = policy(), policy()
    slow = simulate(base, slow_policy, overrides=overrides, fast="off")
    fast = simulate(base, fast_policy, overrides=overrides, fast="auto")
    assert_same(slow, fast)
    assert_same_observations(slow_policy.seen, fast_policy.seen)


def test_hand_backs_under_changes() -> None:
    """Replica changes and a move to local and back: the fast path hands the requests in
    flight back to SimPy at each change and takes over again once things settle."""
    plan = ["remote:3", "remote:5", "local", "remote:2", "remote:4"]
    scenario = mmc(duration_s=1500, policy={"name": "none", "interval_s": 15})
    scenario = dataclasses.replace(scenario, actions={
        "a": dataclasses.replace(scenario.actions["a"], remote_start_s=4.0, local_load_s=2.0,
                                 local_memory_mb=500)})
    slow_policy, fast_policy = Recording(Toggle(plan)), Recording(Toggle(plan))
    slow = simulate(scenario, slow_policy, fast="off")
    fast = simulate(scenario, fast_policy, fast="auto")
    assert_same(slow, fast)
    assert_same_observations(slow_policy.seen, fast_policy.seen)
    engine = fast.extra["engine"]
    assert engine["hand_backs"] >= 4 and engine["switches_in"] >= 4
    assert 0 < engine["fast_s"] < 1500


def test_hand_backs_in_every_state_on_the_chain() -> None:
    """On the chain, the requests handed back are computing, waiting for a core, on the
    wire, queued and in service; the changes include unloading (a cold start) and local."""
    plan = ["remote:3", "remote:1", "local", "remote:2", "unloaded", "remote:4"]
    scenario = chain()
    scenario = dataclasses.replace(scenario, duration_s=1500,
                                   policy=dataclasses.replace(scenario.policy, interval_s=7))
    slow_policy, fast_policy = Recording(Toggle(plan, 3)), Recording(Toggle(plan, 3))
    slow = simulate(scenario, slow_policy, fast="off")
    fast = simulate(scenario, fast_policy, fast="auto")
    assert_same(slow, fast)
    assert_same_observations(slow_policy.seen, fast_policy.seen)
    assert fast.extra["engine"]["hand_backs"] >= 20


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_scenarios_agree(data: st.DataObject) -> None:
    """Random open scenarios and placement plans: both engines give the same run."""
    names = ["a", "b", "c"][:data.draw(st.integers(1, 3), label="actions")]
    dist = st.sampled_from([{"dist": "exp"}, {"dist": "const"}, {"dist": "lognormal", "cv": 1.5},
                            {"dist": "gamma", "cv": 0.5}])
    actions = {n: {"service": {**data.draw(dist), "mean_ms": data.draw(st.floats(2, 120))},
                   "remote_start_s": data.draw(st.sampled_from([0.0, 1.5, 6.0])),
                   "local_load_s": data.draw(st.sampled_from([0.0, 2.0])),
                   "payload_kb": data.draw(st.sampled_from([0.0, 40.0])),
                   "local_memory_mb": 300}
               for n in names}
    apps = {}
    for i in range(data.draw(st.integers(1, 3), label="apps")):
        calls = data.draw(st.permutations(names).map(lambda p: p[:max(1, len(p) - 1)]))
        apps[f"app{i}"] = {"calls": list(calls),
                           "compute_ms": data.draw(st.sampled_from([0.0, 0.0, 5.0]))}
    placements = {n: data.draw(st.sampled_from(["remote:1", "remote:2", "remote:4"]))
                  for n in names}
    scenario = from_dict({
        "name": "random", "duration_s": 300, "timeline_s": data.draw(st.sampled_from([7, 30])),
        "seed": data.draw(st.integers(0, 99)),
        "node": {"cores": data.draw(st.sampled_from([1, 2, 4]))},
        "network": {"rtt_ms": data.draw(st.sampled_from([0.0, 3.0]))},
        "actions": actions, "apps": apps,
        "workload": {"kind": "poisson", "rate_per_s": data.draw(st.floats(1.0, 25.0))},
        "placement": placements,
    })
    if static_reasons(scenario):  # apps calling actions in orders that loop
        event("refused")
        return
    plan = data.draw(st.lists(st.sampled_from(["remote:1", "remote:3", "local", "unloaded"]),
                              min_size=0, max_size=4))
    target = names[0]
    every = data.draw(st.integers(2, 5), label="every")

    def policy() -> Any:
        if not plan:
            return "none"
        toggle = Toggle(plan, every)
        toggle.target = target
        return Recording(toggle)

    slow_policy, fast_policy = policy(), policy()
    slow = simulate(scenario, slow_policy, fast="off")
    fast = simulate(scenario, fast_policy, fast="auto")
    assert_same(slow, fast)
    engine = fast.extra["engine"]
    event("fast path ran" if engine["fast_s"] > 0 else "SimPy only")
    event("handed back" if engine["hand_backs"] else "no hand-back")
    if isinstance(slow_policy, Recording) and isinstance(fast_policy, Recording):
        assert_same_observations(slow_policy.seen, fast_policy.seen)


def test_policy_scaling_the_chain() -> None:
    def policy() -> Recording:
        return Recording(make("compose", {"placement": "all_remote", "scaler": "kpa"}))

    slow_policy, fast_policy = policy(), policy()
    slow = simulate(chain(), slow_policy, fast="off")
    fast = simulate(chain(), fast_policy, fast="auto")
    assert_same(slow, fast)
    assert_same_observations(slow_policy.seen, fast_policy.seen)


# ----------------------------------------------------------------------------- fallbacks


@pytest.mark.parametrize(("change", "reason"), [
    ({"workload": {"kind": "closed", "clients": 4}}, "closed-loop"),
    ({"node": {"replicas_share_cores": True}}, "replicas_share_cores"),
])
def test_fallback_says_why(change: dict[str, Any], reason: str) -> None:
    scenario = mmc(duration_s=120, **change)
    assert any(reason in r for r in static_reasons(scenario))
    result = simulate(scenario, "none")
    engine = result.extra["engine"]
    assert engine["fast_s"] == 0.0
    assert any(reason in r for r in engine["not_fast_because"])
    with pytest.raises(FastPathError, match=reason):
        simulate(scenario, "none", fast="on")


def test_per_replica_and_loops_are_refused() -> None:
    per_replica = mmc(duration_s=120)
    per_replica = dataclasses.replace(per_replica, actions={
        "a": dataclasses.replace(per_replica.actions["a"], remote_queue="per_replica")})
    assert any("per-replica" in r for r in static_reasons(per_replica))
    loop = from_dict({
        "name": "loop", "duration_s": 60,
        "actions": {"a": {"service": {"mean_ms": 5}}, "b": {"service": {"mean_ms": 5}}},
        "apps": {"x": {"calls": ["a", "b"]}, "y": {"calls": ["b", "a"]}},
        "workload": {"kind": "poisson", "rate_per_s": 5.0},
        "placement": {"a": "remote:1", "b": "remote:1"},
    })
    assert any("loop" in r for r in static_reasons(loop))
    twice = dataclasses.replace(loop, apps={"x": dataclasses.replace(loop.apps["x"],
                                                                     calls=("a", "a"))})
    assert any("twice" in r for r in static_reasons(twice))


def test_local_placement_runs_on_simpy_and_says_so() -> None:
    result = simulate(mmc(duration_s=120, placement={"a": "local"}), "none")
    engine = result.extra["engine"]
    assert engine["fast_s"] == 0.0
    assert any("not settled on ready replicas" in r for r in engine["not_fast_because"])


def test_bad_mode_is_named() -> None:
    with pytest.raises(ValueError, match="'sometimes'"):
        simulate(mmc(duration_s=120), "none", fast="sometimes")


def test_quantized_trace_times_and_a_call_free_app(tmp_path: Path) -> None:
    """Arrivals on whole seconds (ties, and the last SimPy request ending exactly at a step),
    constant services, a two-call chain and an app that makes no call at all."""
    rows = ["ts,app"] + [f"{t},{'x' if t % 3 else 'y'}" for t in range(0, 600, 1)
                         for _ in range(1 + t % 2)]
    trace = tmp_path / "requests.csv"
    trace.write_text("\n".join(rows) + "\n")
    scenario = from_dict({
        "name": "quantized", "duration_s": 600, "timeline_s": 10, "node": {"cores": 2},
        "actions": {"a": {"service": {"dist": "const", "mean_ms": 250}},
                    "b": {"service": {"dist": "const", "mean_ms": 500}}},
        "apps": {"x": {"calls": ["a", "b"]}, "y": {"compute_ms": 40, "calls": []}},
        "workload": {"kind": "trace", "trace": str(trace), "trace_format": "requests"},
        "placement": {"a": "remote:2", "b": "remote:2"},
        "policy": {"name": "none", "interval_s": 10},
    })
    plan = ["remote:3", "remote:1", "remote:2"]
    slow_policy, fast_policy = Recording(Toggle(plan, 2)), Recording(Toggle(plan, 2))
    slow = simulate(scenario, slow_policy, fast="off")
    fast = simulate(scenario, fast_policy, fast="auto")
    assert_same(slow, fast)
    assert_same_observations(slow_policy.seen, fast_policy.seen)
    assert fast.extra["engine"]["fast_s"] > 0


def test_out_of_memory_then_the_fast_path_again() -> None:
    """A move to local that runs out of memory, a restart, then remote again: calls of the
    failed requests still hold replicas for a while, and the fast path waits for them."""
    scenario = mmc(duration_s=900, node={"memory_mb": 1200, "restart_s": 5.0},
                   policy={"name": "none", "interval_s": 15},
                   workload={"kind": "poisson", "rate_per_s": 6.0})
    scenario = dataclasses.replace(scenario, actions={
        "a": dataclasses.replace(scenario.actions["a"], local_memory_mb=2000, local_load_s=1.0,
                                 remote_start_s=1.0,
                                 service=dataclasses.replace(scenario.actions["a"].service,
                                                             mean_ms=400.0))})
    plan = ["local", "remote:4", "remote:6"]
    slow_policy, fast_policy = Recording(Toggle(plan, 3)), Recording(Toggle(plan, 3))
    slow = simulate(scenario, slow_policy, fast="off")
    fast = simulate(scenario, fast_policy, fast="auto")
    assert slow.meters.oom_events > 0
    assert_same(slow, fast)
    assert_same_observations(slow_policy.seen, fast_policy.seen)
    engine = fast.extra["engine"]
    assert engine["fast_s"] > 0 and engine["hand_backs"] > 0, engine


class LoadOnce:
    """Moves an unused, too-big action local at the second step: out of memory."""

    params = None
    policy_name = "load_once"

    def __init__(self) -> None:
        self.step = 0

    def reset(self, seed: int) -> None:
        self.step = 0

    def decide(self, observation: Observation) -> Decision:
        self.step += 1
        if self.step == 2:
            return Decision({"m": Placement.local()}, "boom")
        return Decision({}, "")


def test_calls_of_failed_requests_hold_their_replicas() -> None:
    """After an out-of-memory restart a failed request's 20 s call still holds its replica:
    the fast path waits for it to come back before it takes over (else one server short)."""
    scenario = from_dict({
        "name": "orphans", "duration_s": 200, "timeline_s": 5, "seed": 3,
        "node": {"memory_mb": 2000, "restart_s": 2},
        "policy": {"name": "none", "interval_s": 5},
        "actions": {"a": {"service": {"dist": "const", "mean_ms": 20000}},
                    "m": {"service": {"mean_ms": 5}, "local_memory_mb": 5000}},
        "apps": {"x": {"calls": ["a"]}},
        "workload": {"kind": "poisson", "rate_per_s": 0.08},
        "placement": {"a": "remote:3", "m": "unloaded"},
    })
    slow = simulate(scenario, LoadOnce(), fast="off")
    fast = simulate(scenario, LoadOnce(), fast="auto")
    assert slow.meters.oom_events == 1
    assert_same(slow, fast)
    engine = fast.extra["engine"]
    assert any("still hold" in r for r in engine["not_fast_because"]), engine
    assert engine["fast_s"] > 0
