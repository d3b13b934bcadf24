"""The learned baseline (jsorc_sim.rl): PPO trained on a tiny scenario, saved, loaded back as a
policy that passes check_policy and, run by simulate(), decides exactly what the saved model
predicts on the observations the world built; and the message without the `rl` extra."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from jsorc_sim.runtime import observation_builder
from jsorc_sim.simulate import simulate
from policies import Encoding, Placement, check_policy
from policies.observe import replay

# Two actions, one app, two clients: a handful of simulated seconds per control interval,
# so a few hundred training steps take seconds.
TINY = """
name = "tiny"
duration_s = 120
warmup_s = 0

[node]
cores = 2
memory_mb = 4096
runtime_memory_mb = 300

[actions.small]
local_memory_mb = 500
local_load_s = 1
remote_start_s = 5
service = { dist = "exp", mean_ms = 20 }

[actions.big]
local_memory_mb = 1500
local_load_s = 2
remote_start_s = 8
service = { dist = "exp", mean_ms = 60 }

[apps.walk]
compute_ms = 5
calls = ["small", "big"]

[apps.other]
compute_ms = 5
calls = ["big"]

[workload]
kind = "closed"
clients = 2

[policy]
interval_s = 10
"""
TIMESTEPS = 256

HAVE_RL = importlib.util.find_spec("stable_baselines3") is not None \
    and importlib.util.find_spec("torch") is not None
needs_rl = pytest.mark.skipif(not HAVE_RL, reason="the `rl` extra is not installed "
                              "(stable-baselines3, torch): pip install -e '.[rl]' (make rl-env)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def trained(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jsorc_sim.rl import train_ppo

    return train_ppo(tiny, app="walk", timesteps=TIMESTEPS, seed=3,
                     out=tmp_path_factory.mktemp("agent") / "ppo")


# ----------------------------------------------------------------------------- without the extra


def test_the_module_imports_without_the_extra_and_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # None in sys.modules makes `import stable_baselines3` raise ImportError, as if absent.
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)
    monkeypatch.delitem(sys.modules, "jsorc_sim.rl", raising=False)
    rl = importlib.import_module("jsorc_sim.rl")
    for call in (lambda: rl.load_agent(tmp_path),
                 lambda: rl.train_ppo(tmp_path / "x.toml", app="a", out=tmp_path)):
        with pytest.raises(ImportError, match=r"pip install -e '\.\[rl\]'") as info:
            call()
        assert "stable-baselines3" in str(info.value)
    monkeypatch.delitem(sys.modules, "jsorc_sim.rl")  # the next import is a normal one


# ----------------------------------------------------------------------------- train, save, load


@needs_rl
def test_training_saves_the_model_and_its_description(trained: Path, tiny: Path) -> None:
    meta = json.loads((trained / "agent.json").read_text())
    assert (trained / "model.zip").stat().st_size > 0
    # The encoding of the environment the agent learned in: the app's actions.
    assert meta["encoding"]["actions"] == ["small", "big"]
    assert meta["encoding"]["max_replicas"] == 8
    assert meta["scenario"] == str(tiny.resolve()) and meta["apps"] == ["walk"]
    assert meta["timesteps"] == TIMESTEPS and meta["trained_timesteps"] >= TIMESTEPS
    assert meta["train_wall_s"] > 0
    import stable_baselines3
    import torch
    assert meta["versions"]["stable-baselines3"] == stable_baselines3.__version__
    assert torch.__version__.startswith(meta["versions"]["torch"])  # 2.14.1 of 2.14.1+cu130


@needs_rl
def test_the_loaded_agent_passes_check_policy(trained: Path) -> None:
    from jsorc_sim.rl import load_agent

    check_policy(load_agent(trained))


@needs_rl
def test_simulated_decisions_are_the_models_predictions(trained: Path, tiny: Path) -> None:
    from stable_baselines3 import PPO

    from jsorc_sim.rl import load_agent

    policy = load_agent(trained)
    result = simulate(tiny, policy, app="walk", duration_s=120, seed=11, record_events=True)
    # The observations the world handed the policy, rebuilt from its event log, and what the
    # saved model (loaded on its own) predicts for each, decoded by hand.
    observations = replay(result.extra["events"], observation_builder(result.scenario))
    assert len(observations) == 12
    model = PPO.load(trained / "model.zip", device="cpu")
    encoding = Encoding(("small", "big"), max_replicas=8)
    predicted = []
    for obs in observations:
        action = model.predict(encoding.encode(obs), deterministic=True)[0]
        predicted.append({name: Placement.remote(int(k)) if k else Placement.local()
                          for name, k in zip(encoding.actions, action, strict=True)
                          if name in obs.actions})
    # Each decision shows as the next observation's `desired` placement...
    for asked, after in zip(predicted, observations[1:], strict=False):
        for name, placement in asked.items():
            assert after.actions[name].desired == placement, (after.now, name)
    # ...and every change the world recorded for the policy is one the model predicted.
    moves = result.decisions[(result.decisions["source"] == "ppo")
                             & (result.decisions["action"] != "")]
    by_time = {obs.now: p for obs, p in zip(observations, predicted, strict=True)}
    assert len(moves) > 0
    for row in moves.itertuples():
        assert str(by_time[row.ts][row.action]) == row.placement, row
    assert result.cost()["policy_errors"] == 0


@needs_rl
def test_several_apps_share_one_encoding_of_all_their_actions(tiny: Path, tmp_path: Path) -> None:
    from jsorc_sim.rl import load_agent, train_ppo

    folder = train_ppo(tiny, apps=["other", "walk"], timesteps=128, seed=1, out=tmp_path)
    policy = load_agent(folder)
    # "other" calls only big; the encoding covers both apps' actions, in the scenario's order.
    assert policy.encoding.actions == ("small", "big")
    for app in ("other", "walk"):
        r = simulate(tiny, policy, app=app, duration_s=60, seed=2)
        assert r.cost()["policy_errors"] == 0
        calls = r.report()["walker_run"]["all"]
        assert calls["throughput"] > 0


@needs_rl
def test_the_file_policy_builds_from_its_params(trained: Path, tiny: Path) -> None:
    from policies import make

    ref = f"{Path(__file__).resolve().parents[2]}/experiments/ppo_policy.py:PPOPolicy"
    policy = make(ref, {"model": str(trained)})
    check_policy(policy)
    a = simulate(tiny, policy, app="walk", duration_s=60, seed=5)
    b = simulate(tiny, "all_local", app="walk", duration_s=60, seed=5)
    # Paired seeds: the same arrivals, so the request counts differ only by the placements.
    assert len(a.requests) > 0 and len(b.requests) > 0
    with pytest.raises(Exception, match="set model=FOLDER"):
        make(ref, {})
    with pytest.raises(Exception, match=r"has no agent\.json"):
        make(ref, {"model": str(trained.parent)})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"app": "walk", "apps": ["walk"]}, "not both"),
    ({}, "name the app"),
    ({"app": "nope"}, "app 'nope' is not in scenario"),
    ({"apps": "walk"}, "the string 'walk'"),
    ({"app": "walk", "timesteps": 0}, "timesteps must be an int >= 1, got 0"),
])
def test_bad_training_arguments_are_named(tiny: Path, tmp_path: Path, kwargs: dict[str, Any],
                                          message: str) -> None:
    if not HAVE_RL:
        pytest.skip("the `rl` extra is not installed: pip install -e '.[rl]'")
    from jsorc_sim.rl import train_ppo

    with pytest.raises(ValueError, match=message):
        train_ppo(tiny, out=tmp_path, **kwargs)
