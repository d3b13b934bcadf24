"""A learned baseline: PPO (stable-baselines3) trained on `jsorc/Placement-v0`, saved as a
folder, and loaded back as a `Policy` that runs wherever a policy does.

    folder = train_ppo("experiments/scenarios/jsorc_loadtest.toml", app="flow_analysis",
                       overrides={"workload.clients": 8}, timesteps=20_000, out=Path("runs/ppo"))
    policy = load_agent(folder)          # an AgentPolicy: check_policy, simulate, jsorc serve

A trained agent is a folder: `model.zip` (stable-baselines3's own format) and `agent.json`:
the `Encoding`'s fields (so the observation vector and the action are read exactly as in
training), what it was trained on (scenario, apps, overrides, objective, timesteps, seed) and
how (training wall time, package versions).

Training choices, and why:
- MlpPolicy on the CPU, seeded (PPO's seed and the environments' first reset), one torch
  thread: a 2x64 network is faster on one thread than fighting the simulator for two cores.
- The reward (minus the objective of each control interval, in ms-scale units) is normalised
  by a running estimate of the return's spread (VecNormalize, rewards only): PPO's value
  loss is then of order one whatever the objective's units. Observations are *not*
  normalised: the Encoding already bounds and scales every feature (log1p of heavy tails,
  shares of memory), so the saved agent needs nothing beyond the encoding to act, live too.
- gamma 0.95: a placement's effect on latency shows within a few intervals (a replica starts
  in 20-45 s), so a horizon of ~20 intervals is enough and learns faster than 0.99.
- Several apps (`apps=`): each episode draws one of them (seeded), and the encoding covers
  the union of their actions, so one agent serves them all.

This module imports stable-baselines3 and torch only inside its functions, so it imports
without the `rl` extra; using it without raises ImportError saying `pip install -e '.[rl]'`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from jsorc_sim import scenario as scenario_mod
from jsorc_sim.gym_env import ENV_ID  # importing it registers jsorc/Placement-v0
from policies.encoding import Encoding
from policies.learned import AgentPolicy

DEFAULT_OBJECTIVE = "95th_latency + 0.05 * replica_core_s"
MODEL_FILE = "model.zip"
AGENT_FILE = "agent.json"
AGENT_FORMAT = 1
GAMMA = 0.95
MAX_ROLLOUT = 512  # steps per PPO rollout, fewer when training for fewer steps
MINIBATCH = 64
EXTRA_HINT = "pip install -e '.[rl]'"


def require_rl() -> Any:
    """The stable_baselines3 module, or ImportError naming the extra to install."""
    try:
        import stable_baselines3
        import torch  # noqa: F401  (the message below should name both when either is missing)
    except ImportError as exc:
        raise ImportError(f"jsorc_sim.rl needs stable-baselines3 and torch, the `rl` extra: "
                          f"{EXTRA_HINT} (missing: {exc.name or exc})") from exc
    return stable_baselines3


def train_ppo(
    scenario: str | Path,
    *,
    app: str | None = None,
    apps: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    timesteps: int = 20_000,
    seed: int = 0,
    duration_s: float | None = None,
    objective: str = DEFAULT_OBJECTIVE,
    max_replicas: int = 8,
    out: Path,
) -> Path:
    """Train PPO on `scenario` restricted to `app` (or, each episode, one of `apps`) for
    `timesteps` control intervals; save `model.zip` and `agent.json` in `out` and return it.

    `overrides` are dotted scenario paths ({"workload.clients": 8}), `duration_s` an
    episode's simulated length (default the scenario's), `objective` the per-interval cost
    (the tune objective's syntax; reward = minus it). Progress goes to stderr."""
    sb3 = require_rl()
    import torch
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    chosen = _check_training(scenario, app, apps, overrides, timesteps, seed)
    encoding_actions = _actions_of(scenario, chosen, overrides) if len(chosen) > 1 else None
    env_kwargs: dict[str, Any] = {
        "scenario": str(scenario), "overrides": dict(overrides or {}), "seed": seed,
        "duration_s": duration_s, "objective": objective, "max_replicas": max_replicas,
        "actions": encoding_actions,
    }

    def build() -> gymnasium.Env[Any, Any]:
        from stable_baselines3.common.monitor import Monitor

        monitored: gymnasium.Env[Any, Any] = Monitor(_env_over_apps(chosen, env_kwargs))
        return monitored  # episode returns, for the progress lines

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        venv = VecNormalize(DummyVecEnv([build]), norm_obs=False, norm_reward=True,
                            gamma=GAMMA)
        venv.seed(seed)
        encoding = _encoding_of(venv)
        rollout = max(MINIBATCH, min(MAX_ROLLOUT, timesteps // MINIBATCH * MINIBATCH))
        model = sb3.PPO("MlpPolicy", venv, n_steps=rollout, batch_size=MINIBATCH, gamma=GAMMA,
                        seed=seed, device="cpu", verbose=0)
        model.learn(total_timesteps=timesteps, callback=_progress(timesteps, started))
        wall_s = time.perf_counter() - started
        venv.close()
    finally:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / MODEL_FILE)
    meta = {
        "format": AGENT_FORMAT,
        "algorithm": "PPO",
        "encoding": dataclasses.asdict(encoding),
        "scenario": str(Path(scenario).resolve()),
        "apps": list(chosen),
        "overrides": dict(overrides or {}),
        "objective": objective,
        "duration_s": duration_s,
        "timesteps": timesteps,
        "trained_timesteps": int(model.num_timesteps),
        "seed": seed,
        "gamma": GAMMA,
        "n_steps": rollout,
        "train_wall_s": round(wall_s, 3),
        "versions": {name: _version(name) for name in
                     ("stable-baselines3", "torch", "gymnasium", "numpy")},
    }
    (out / AGENT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"ppo: saved {out / MODEL_FILE} and {AGENT_FILE} ({model.num_timesteps} steps in "
          f"{wall_s:.1f} s)", file=sys.stderr)
    return out


def load_agent(folder: str | Path, *, name: str = "ppo") -> AgentPolicy:
    """The agent saved in `folder` by `train_ppo`, as a Policy: each decision is the model's
    deterministic action (`model.predict(x, deterministic=True)[0]`) on the encoded
    observation. Raises FileNotFoundError or ValueError naming the folder and what is wrong."""
    sb3 = require_rl()
    folder = Path(folder).expanduser()
    encoding = read_encoding(folder)
    if not (folder / MODEL_FILE).is_file():
        raise FileNotFoundError(f"agent folder {str(folder)!r} has no {MODEL_FILE} (train one "
                                "with experiments/train_ppo.py)")
    model = sb3.PPO.load(folder / MODEL_FILE, device="cpu")
    expected = (encoding.observation_size,)
    if tuple(model.observation_space.shape) != expected:
        raise ValueError(f"agent folder {str(folder)!r}: the model reads observations of shape "
                         f"{model.observation_space.shape}, its encoding makes {expected}")

    def act(x: np.ndarray) -> Any:
        return model.predict(x, deterministic=True)[0]

    return AgentPolicy(act, encoding, name=name)


def read_encoding(folder: str | Path) -> Encoding:
    """The Encoding an agent folder's `agent.json` records."""
    path = Path(folder).expanduser() / AGENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"agent folder {str(path.parent)!r} has no {AGENT_FILE} (train "
                                "one with experiments/train_ppo.py)")
    try:
        meta = json.loads(path.read_text())
        fields = dict(meta["encoding"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{str(path)!r} is not an agent description: {exc}") from None
    if meta.get("format") != AGENT_FORMAT:
        raise ValueError(f"{str(path)!r} has format {meta.get('format')!r}, this jsorc reads "
                         f"{AGENT_FORMAT}")
    fields["actions"] = tuple(fields.get("actions", ()))
    return Encoding(**fields)


# ----------------------------------------------------------------------------- helpers


def _check_training(scenario: str | Path, app: str | None, apps: Sequence[str] | None,
                    overrides: Mapping[str, Any] | None, timesteps: int,
                    seed: int) -> tuple[str, ...]:
    """The apps to train on, checked: exactly one of app / apps, known to the scenario."""
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be an int >= 1, got {timesteps!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if app is not None and apps is not None:
        raise ValueError(f"give app or apps, not both (got app={app!r}, apps={apps!r})")
    if isinstance(apps, str):
        raise ValueError(f"apps must be a sequence of app names, got the string {apps!r}")
    chosen = (app,) if app is not None else tuple(apps or ())
    if not chosen:
        raise ValueError("name the app to train on: app=NAME or apps=[NAME, ...]")
    known = _scenario(scenario, overrides).apps
    for name in chosen:
        if name not in known:
            raise ValueError(f"app {name!r} is not in scenario {str(scenario)!r} (apps: "
                             f"{', '.join(known)})")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"apps names an app twice: {list(chosen)}")
    return chosen


def _scenario(scenario: str | Path, overrides: Mapping[str, Any] | None) -> Any:
    loaded = scenario_mod.load(scenario)
    return scenario_mod.override(loaded, overrides, source=f"{scenario} with overrides") \
        if overrides else loaded


def _actions_of(scenario: str | Path, apps: Sequence[str],
                overrides: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Every action the apps call, in the scenario's order (as the env orders one app's)."""
    spec = _scenario(scenario, overrides)
    called = {a for app in apps for a in spec.apps[app].calls}
    return tuple(name for name in spec.actions if name in called)


def _env_over_apps(apps: Sequence[str], kwargs: Mapping[str, Any]) -> gymnasium.Env[Any, Any]:
    """One environment, or one that draws an app per episode from several (same spaces)."""
    envs = [gymnasium.make(ENV_ID, app=app, **kwargs) for app in apps]
    if len(envs) == 1:
        return envs[0]
    return AppDraw(envs, seed=int(kwargs.get("seed") or 0))


def _encoding_of(venv: Any) -> Encoding:
    env = venv.envs[0]
    while not hasattr(env, "encoding") and hasattr(env, "env"):
        env = env.env
    encoding = getattr(env, "encoding", None) or getattr(env.unwrapped, "encoding", None)
    if not isinstance(encoding, Encoding):
        raise TypeError(f"the training environment has no Encoding (got {encoding!r})")
    return encoding


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _progress(total: int, started: float) -> Any:
    """A stable-baselines3 callback printing steps, episodes and mean episode return after
    each rollout, to stderr."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Progress(BaseCallback):  # type: ignore[misc]  # sb3 is Any to mypy
        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            returns = [info["r"] for info in self.model.ep_info_buffer]
            mean = float(np.mean(returns)) if returns else math.nan
            print(f"ppo: {self.num_timesteps:,}/{total:,} steps, {len(returns)} recent "
                  f"episodes, mean return {mean:,.1f}, {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)

    return Progress()


class AppDraw(gymnasium.Env[Any, Any]):
    """Several environments of identical spaces; each episode runs one, drawn with a
    generator seeded once, so one agent learns to serve all of them."""

    def __init__(self, envs: Sequence[gymnasium.Env[Any, Any]], *, seed: int) -> None:
        first = envs[0]
        for env in envs[1:]:
            if env.observation_space != first.observation_space or \
                    env.action_space != first.action_space:
                raise ValueError("environments drawn per episode must share their spaces")
        self.envs = list(envs)
        self.observation_space = first.observation_space
        self.action_space = first.action_space
        self.encoding = first.unwrapped.encoding  # type: ignore[attr-defined]
        self._draw = np.random.default_rng(seed)
        self._current = first

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self._draw = np.random.default_rng(seed)
        self._current = self.envs[int(self._draw.integers(len(self.envs)))]
        return self._current.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self._current.step(action)
        return obs, float(reward), terminated, truncated, info

    def close(self) -> None:
        for env in self.envs:
            env.close()

