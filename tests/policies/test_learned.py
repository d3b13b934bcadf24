"""The observation encoding, the action codec and `AgentPolicy` (policies/encoding.py,
policies/learned.py): vectors bounded and computed as documented, placements round-tripped,
the adapter through check_policy, through simulate() (the same run as `static`) and through a
real `jsorc serve` with a --policy-file (the placement it asks for is applied)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jsorc_live import cli
from jsorc_sim.simulate import simulate
from policies import (
    ActionStats,
    AgentPolicy,
    Encoding,
    LatencyStats,
    Observation,
    Placement,
    check_policy,
)
from policies.checker import synthetic_observations
from policies.encoding import ACTION_FEATURES, BOUND
from tests.conftest import REPO
from tests.jsorc_live.servers import jsorc_serving

LOADTEST = REPO / "experiments" / "scenarios" / "jsorc_loadtest.toml"
FLOW = ("use_enc", "text_seg", "tfm_ner")  # flow_analysis's actions, in scenario order


def feature(encoding: Encoding, vector: np.ndarray, name: str) -> float:
    return float(vector[encoding.feature_names.index(name)])


# ----------------------------------------------------------------------------- the encoding


def test_every_synthetic_observation_encodes_finite_bounded_and_sized() -> None:
    encoding = Encoding(("bi_enc", "use_enc", "sbert_sim", "never_there"), max_replicas=4)
    assert len(encoding.feature_names) == encoding.observation_size
    for observation in synthetic_observations():
        x = encoding.encode(observation)
        assert x.dtype == np.float32 and x.shape == (encoding.observation_size,)
        assert np.isfinite(x).all() and (np.abs(x) <= BOUND).all(), observation.now
        # An action the observation does not list is all zeros, one-hot included.
        missing = [i for i, n in enumerate(encoding.feature_names) if n.startswith("never_")]
        assert not x[missing].any()


def _stats(**fields: Any) -> ActionStats:
    base = ActionStats("a", Placement.remote(3), Placement.remote(5))
    return dataclasses.replace(base, **fields)


def test_features_are_the_documented_functions_of_the_observation() -> None:
    encoding = Encoding(("a",), max_replicas=8, latency_scale_ms=200.0, rate_scale=4.0)
    stats = _stats(replicas_ready=2, transition=True, call_rate=6.0,
                   latency=LatencyStats(10, 300.0, 250.0, 500.0, 700.0), in_flight=7, queued=3,
                   oldest_call_age_s=2.5, remote_utilisation=0.6, local_memory_mb=1024.0)
    observation = dataclasses.replace(Observation.empty(now=5.0), actions={"a": stats})
    observation = dataclasses.replace(observation, node=dataclasses.replace(
        observation.node, memory_total_mb=4096.0, memory_used_mb=1024.0, cpu_utilisation=0.25,
        runtime_up=False))
    x = encoding.encode(observation)
    expected = {
        "a.unloaded": 0.0, "a.local": 0.0, "a.remote": 1.0,
        "a.desired_replicas": 5 / 8, "a.ready_replicas": 2 / 8, "a.transition": 1.0,
        "a.call_rate": 6.0 / 4.0, "a.latency": math.log1p(300.0 / 200.0), "a.latency_known": 1,
        "a.in_flight": math.log1p(7), "a.queued": math.log1p(3),
        "a.oldest_call_age": math.log1p(2.5), "a.remote_utilisation": 0.6,
        "a.remote_utilisation_known": 1.0, "a.local_memory": 0.25,
        "node_memory_used": 0.25, "node_cpu_utilisation": 0.25, "node_runtime_up": 0.0,
        "totals_latency": 0.0, "totals_latency_known": 0.0,  # no request finished: NaN
    }
    assert set(expected) == set(encoding.feature_names)
    for name, value in expected.items():
        assert feature(encoding, x, name) == pytest.approx(value, rel=1e-6), name


def test_no_sample_reads_zero_with_its_flag_and_a_stuck_queue_stays_small() -> None:
    encoding = Encoding(("a",))
    stuck = _stats(latency=LatencyStats(), remote_utilisation=math.nan, queued=10**6,
                   oldest_call_age_s=1e6, call_rate=math.inf)
    x = encoding.encode(dataclasses.replace(Observation.empty(), actions={"a": stuck}))
    assert feature(encoding, x, "a.latency") == feature(encoding, x, "a.latency_known") == 0.0
    assert feature(encoding, x, "a.remote_utilisation_known") == 0.0
    assert feature(encoding, x, "a.queued") == pytest.approx(math.log1p(1e6))
    assert feature(encoding, x, "a.oldest_call_age") < 15
    assert np.isfinite(x).all() and (np.abs(x) <= BOUND).all()


@given(st.lists(st.integers(0, 6), min_size=1, max_size=5))
def test_placements_round_trip_through_the_action_codec(counts: list[int]) -> None:
    encoding = Encoding(tuple(f"a{i}" for i in range(len(counts))), max_replicas=6)
    placements = {f"a{i}": Placement.remote(k) if k else Placement.local()
                  for i, k in enumerate(counts)}
    action = encoding.encode_placements(placements)
    assert action.dtype == np.int64 and action.tolist() == counts
    assert encoding.decode(action) == placements
    assert encoding.action_nvec == (7,) * len(counts)


@pytest.mark.parametrize(("action", "named"), [
    ([1], "must hold 2 integers"),
    ([[1, 2]], "got shape (1, 2)"),
    ([0, 9], "'b' must be in 0..8"),
    ([-1, 0], "'a' must be in 0..8"),
    ([0.5, 0], "'a' must be an integer"),
])
def test_a_bad_action_is_a_value_error_naming_the_entry(action: Any, named: str) -> None:
    with pytest.raises(ValueError) as error:
        Encoding(("a", "b")).decode(action)
    assert named in str(error.value)


def test_bad_encodings_and_unencodable_placements_are_refused() -> None:
    for bad, named in [({"actions": ()}, "at least one"), ({"actions": ("a", "a")}, "'a'"),
                       ({"actions": "ab"}, "sequence"),
                       ({"actions": ("a",), "max_replicas": 0}, "max_replicas"),
                       ({"actions": ("a",), "rate_scale": math.nan}, "rate_scale")]:
        with pytest.raises(ValueError, match=named):
            Encoding(**bad)
    encoding = Encoding(("a", "b"), max_replicas=2)
    with pytest.raises(ValueError, match="'b'"):
        encoding.encode_placements({"a": Placement.local()})
    with pytest.raises(ValueError, match="unloaded"):
        encoding.encode_placements({"a": Placement.local(), "b": Placement.unloaded()})
    with pytest.raises(ValueError, match="above max_replicas 2"):
        encoding.encode_placements({"a": Placement.local(), "b": Placement.remote(3)})


# ----------------------------------------------------------------------------- the adapter


def _rule(x: np.ndarray) -> np.ndarray:
    """A hand-written agent: each action remote with 1 + its queue's feature, capped."""
    width = len(ACTION_FEATURES)
    queued = x[: len(x) - 5].reshape(-1, width)[:, ACTION_FEATURES.index("queued")]
    return np.minimum(1 + np.round(queued), 4).astype(int)


def test_the_adapter_passes_check_policy() -> None:
    # Actions seen from the start, halfway (sbert_sim), and never (the checker's own new one).
    encoding = Encoding(("use_enc", "text_seg", "sbert_sim", "zzz"), max_replicas=4)
    check_policy(AgentPolicy(_rule, encoding, name="rule"))


def test_decisions_name_only_observed_actions_with_a_readable_reason() -> None:
    policy = AgentPolicy(lambda x: np.array([3, 0, 1]), Encoding(("a", "b", "c")))
    observation = dataclasses.replace(Observation.empty(), actions={
        "a": _stats(name="a"), "b": _stats(name="b")})
    decision = policy.decide(observation)
    assert dict(decision.placements) == {"a": Placement.remote(3), "b": Placement.local()}
    assert decision.reason == "agent: a=remote:3, b=local"
    assert policy.params.actions == ("a", "b", "c") and policy.params.max_replicas == 8


@pytest.mark.parametrize(("answer", "named"), [
    (np.array([1, 2, 3]), "returned an action of shape (3,), expected shape (2,)"),
    (np.zeros((2, 1)), "returned an action of shape (2, 1)"),
    (np.float64(1.0), "returned an action of shape ()"),
    ((np.array([1, 0]), None), "returned a tuple, not a numeric array"),
])
def test_an_agent_of_the_wrong_shape_is_a_value_error_naming_it(answer: Any,
                                                                named: str) -> None:
    policy = AgentPolicy(lambda x: answer, Encoding(("a", "b")), name="ppo")
    with pytest.raises(ValueError, match="agent 'ppo' returned") as error:
        policy.decide(Observation.empty())
    assert named in str(error.value)


def test_a_broken_agent_is_a_recorded_policy_failure_in_a_run() -> None:
    policy = AgentPolicy(lambda x: np.array([1]), Encoding(FLOW), name="short")
    run = simulate(LOADTEST, policy, app="flow_analysis", seed=1, duration_s=90,
                   record="requests")
    cost = run.report()["cost"]
    assert run.status == "ok" and cost["policy_errors"] == run.recorder.policy_steps > 0
    errors = run.events[run.events["kind"] == "policy_error"]["detail"]
    assert errors.str.contains("agent 'short' returned an action of shape (1,)", regex=False).all()


def test_a_fixed_agent_runs_as_static_with_the_same_placements() -> None:
    placements = {"use_enc": "remote:3", "text_seg": "local", "tfm_ner": "local"}
    kwargs: dict[str, Any] = {"app": "flow_analysis", "seed": 2, "duration_s": 200,
                              "record": "calls"}
    static = simulate(LOADTEST, "static", params={"placements": placements}, **kwargs)
    agent = simulate(LOADTEST, AgentPolicy(lambda x: np.array([3, 0, 0]), Encoding(FLOW)),
                     **kwargs)
    assert agent.policy == "agent"
    assert agent.report() == static.report()
    pd.testing.assert_frame_equal(agent.calls, static.calls)
    moves = ["ts", "action", "placement", "previous"]
    pd.testing.assert_frame_equal(agent.decisions[moves], static.decisions[moves])
    assert set(agent.decisions["reason"]) >= {"agent: use_enc=remote:3, text_seg=local, "
                                              "tfm_ner=local"}


# ----------------------------------------------------------------------------- live, unchanged

TOKEN = "agent-token"
SCALE = 0.02  # JSORC_ACTION_SCALE: the example models' memory, shrunk for the test machine
WAIT_S = 60.0

AGENT_FILE = '''
import numpy as np

from policies import AgentPolicy, Encoding


def ask(x):
    """A hand-written agent: bi_enc on two replicas, tfm_ner local, whatever it sees."""
    assert x.shape == (2 * 15 + 5,)
    return np.array([2, 0])


class HandAgent(AgentPolicy):
    def __init__(self, params=None):
        super().__init__(ask, Encoding(("bi_enc", "tfm_ner")), name="hand")
'''


def _jsorc(url: str, *argv: str) -> Any:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main([*argv, "--server", url, "--token", TOKEN, "--json"])
    assert code == 0, argv
    return json.loads(buffer.getvalue())


def test_the_adapter_runs_live_unchanged(tmp_path: Path) -> None:
    policy_file = tmp_path / "hand_agent.py"
    policy_file.write_text(AGENT_FILE)
    env = {**os.environ, "JSORC_ACTION_SCALE": str(SCALE)}
    with jsorc_serving(TOKEN, "--policy-file", str(policy_file), env=env) as url:
        for action in ("bi_enc", "tfm_ner"):
            _jsorc(url, "actions", "config", action, "jsorc_live.actions.config")
            _jsorc(url, "actions", "load", action, "-mode", "module")
        _jsorc(url, "actionpolicy", "set", f"{policy_file}:HandAgent")
        _jsorc(url, "config", "set", "backoff_interval", "0.5")
        _jsorc(url, "config", "set", "automation", "true")
        deadline = time.monotonic() + WAIT_S
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = {a: _jsorc(url, "actions", "status", a)["action_status"]
                      for a in ("bi_enc", "tfm_ner")}
            if status["bi_enc"]["placement"] == "remote:2" and \
                    not status["bi_enc"]["transition"]:
                break
            time.sleep(0.2)
        assert status["bi_enc"]["placement"] == "remote:2", status
        assert status["tfm_ner"]["placement"] == "local", status
        decisions = _jsorc(url, "actionpolicy", "get")["decisions"]
        assert not [d["error"] for d in decisions if d["error"]], decisions
        assert any(d["reason"] == "hand: bi_enc=remote:2, tfm_ner=local" for d in decisions)
