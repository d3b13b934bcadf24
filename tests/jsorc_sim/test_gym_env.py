"""`jsorc/Placement-v0` (jsorc_sim/gym_env.py): Gymnasium's own checker passes; spaces are the
encoding's; a constant action is the `static` run; the reward is minus the objective over the
step's window, computed here from the run's requests table."""

from __future__ import annotations

import math
import warnings
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import jsorc_sim.gym_env  # noqa: F401  (registers jsorc/Placement-v0)
from jsorc_sim.gym_env import ENV_ID, PlacementEnv
from jsorc_sim.simulate import simulate
from jsorc_sim.tune import TuneError
from policies import Encoding
from tests.conftest import REPO

SCENARIOS = REPO / "experiments" / "scenarios"
LLM = str(SCENARIOS / "llm_service.toml")
LOADTEST = str(SCENARIOS / "jsorc_loadtest.toml")


def make(**kwargs: Any) -> gymnasium.Env[Any, Any]:
    return gymnasium.make(ENV_ID, **{"scenario": LLM, "app": "chat", "duration_s": 200,
                                     **kwargs})


def test_check_env_passes_raw_and_through_make() -> None:
    env = make()
    check_env(env.unwrapped)
    with warnings.catch_warnings():
        # Gymnasium's note that a wrapped env "could effect the checker": it is checked anyway.
        warnings.filterwarnings("ignore", message=".*different from the unwrapped")
        check_env(env)
    env.close()


def test_spaces_are_the_encodings_of_the_scenarios_actions() -> None:
    env = gymnasium.make(ENV_ID, scenario=LOADTEST, app="flow_analysis")
    actions = ("use_enc", "text_seg", "tfm_ner")  # what flow_analysis calls, scenario order
    encoding = Encoding(actions, 8)
    assert env.unwrapped.encoding == encoding  # type: ignore[attr-defined]
    assert env.observation_space.shape == (encoding.observation_size,)
    assert env.observation_space.dtype == np.float32
    assert isinstance(env.action_space, gymnasium.spaces.MultiDiscrete)
    assert tuple(env.action_space.nvec) == encoding.action_nvec == (9, 9, 9)
    small = PlacementEnv(LOADTEST, app="flow_analysis", max_replicas=3, actions=["use_enc"])
    assert tuple(small.action_space.nvec) == (4,)


def test_a_constant_action_is_the_static_run_and_the_reward_its_objective() -> None:
    env = PlacementEnv(LLM, app="chat", duration_s=300, record="requests")
    obs, info = env.reset(seed=5)
    assert info == {"now": 0.0, "seed": 5} and obs in env.observation_space
    action = np.array([0, 3])  # moderation local, llm on three replicas
    steps = []
    terminated = False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(action)
        assert not truncated and obs in env.observation_space
        steps.append((float(reward), info))
    assert len(steps) == 30 and steps[-1][1]["now"] == 300.0
    assert steps[0][1]["decision"] == {"moderation": "local", "llm": "remote:3"}

    static = simulate(LLM, "static", app="chat", duration_s=300, seed=5, record="requests",
                      params={"placements": {"moderation": "local", "llm": "remote:3"}})
    assert env.stepper is not None
    run = env.stepper.result()
    assert run.report()["walker_run"] == static.report()["walker_run"]
    cost = static.report()["cost"]
    assert sum(i["replica_core_s"] for _, i in steps) == pytest.approx(cost["replica_core_s"])

    # The reward against the requests table: the runs that finished in the step's window.
    requests = static.requests
    finished = requests["ts"] + requests["latency_ms"] / 1000.0
    counted = (requests["ts"] >= 120.0) & requests["ok"]  # llm_service's warm-up
    checked = 0
    for reward, info in steps:
        end = info["now"]
        latency = requests["latency_ms"][counted & (finished >= end - 10) & (finished < end)]
        if len(latency):
            p95 = float(np.percentile(latency, 95))
            assert info["95th_latency"] == pytest.approx(p95)
            checked += 1
        else:  # no walker run counted: the oldest request in the system stands in, except
            # in warm-up, which the run's objective leaves out
            assert info["95th_latency"] is None
            p95 = 0.0 if end <= 120.0 else info["oldest_unfinished_ms"]
        # on the run's scale: the latency at the window's share of the run, costs as they are
        share = info["window_s"] / 300.0
        assert reward == pytest.approx(-(share * p95 + 0.05 * info["replica_core_s"]))
    assert checked == 18  # the 12 warm-up windows count no latency


def test_a_stuck_window_costs_the_age_of_its_oldest_request() -> None:
    # The llm starts unloaded with its replica 60 s away: nothing finishes meanwhile.
    env = PlacementEnv(LLM, app="chat", duration_s=200, objective="average_latency",
                       overrides={"placement": {}, "warmup_s": 0})
    env.reset(seed=1)
    _, reward, _, _, info = env.step(np.array([0, 1]))
    assert info["average_latency"] is None and info["oldest_unfinished_ms"] > 5000
    assert reward == pytest.approx(-info["oldest_unfinished_ms"] * info["window_s"] / 200.0)


def test_seeds_a_reset_seed_wins_and_unseeded_episodes_differ() -> None:
    env = PlacementEnv(LLM, app="chat", duration_s=200, seed=7)
    assert env.reset()[1]["seed"] == 7  # the constructor's seed: the first episode
    seeds = {env.reset()[1]["seed"] for _ in range(4)}
    assert len(seeds) == 4 and 7 not in seeds
    assert env.reset(seed=11)[1]["seed"] == 11
    again = PlacementEnv(LLM, app="chat", duration_s=200)
    again.reset(seed=11)
    assert [again.reset()[1]["seed"] for _ in range(3)] == \
        [env.reset()[1]["seed"] for _ in range(3)]


def test_bad_arguments_are_refused_naming_the_value() -> None:
    with pytest.raises(TuneError, match="unknown metric 'p95'"):
        PlacementEnv(LLM, objective="p95 + replica_core_s")
    with pytest.raises(ValueError, match="'peak_node_memory_mb' is not measured per step"):
        PlacementEnv(LLM, objective="95th_latency + peak_node_memory_mb")
    with pytest.raises(ValueError, match="render_mode must be None, got 'human'"):
        PlacementEnv(LLM, render_mode="human")
    with pytest.raises(ValueError, match="action 'nope' is not in scenario"):
        PlacementEnv(LLM, actions=["nope"])
    env = PlacementEnv(LLM, app="chat", duration_s=200)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0, 1]))
    env.reset(seed=1)
    with pytest.raises(ValueError, match=r"'llm' must be in 0\.\.8"):
        env.step(np.array([0, 9]))


def test_the_window_metrics_are_what_the_objective_may_use() -> None:
    env = PlacementEnv(LLM, app="chat", duration_s=200,
                       objective="average_latency + 2 * failed_requests - throughput")
    env.reset(seed=2)
    for _ in range(13):
        _, reward, _, _, info = env.step(np.array([1, 2]))
    share = info["window_s"] / 200.0  # statistics at the window's share, counts as they are
    expected = share * info["average_latency"] + 2 * info["failed_requests"] \
        - share * info["throughput"]
    assert math.isfinite(expected) and reward == pytest.approx(-expected)


def test_an_episodes_rewards_add_up_to_the_runs_objective_scale() -> None:
    """Each window's costs count at their share of the run and its latency at the window's
    share of time: the sum of rewards is minus (the time-average of the windows' p95 plus
    0.05 x the run's replica core-seconds), computed here from the infos."""
    import gymnasium


    env = gymnasium.make("jsorc/Placement-v0", scenario=str(LLM), app="chat", duration_s=300,
                         objective="95th_latency + 0.05 * replica_core_s")
    env.reset(seed=3)
    total, latency_part, cores = 0.0, 0.0, 0.0
    done = False
    action = np.array([1, 2])  # moderation remote:1, llm remote:2
    while not done:
        _, reward, done, _, info = env.step(action)
        total += float(reward)
        p95 = info["95th_latency"]
        if p95 is None:  # llm_service's warm-up is 120 s: those windows cost no latency
            p95 = 0.0 if info["now"] <= 120.0 else info["oldest_unfinished_ms"]
        latency_part += p95 * info["window_s"] / 300.0
        cores += info["replica_core_s"]
    assert total == pytest.approx(-(latency_part + 0.05 * cores), rel=1e-9)
    assert cores > 0.0
