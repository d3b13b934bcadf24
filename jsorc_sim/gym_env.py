"""`PlacementEnv`: the simulator as a Gymnasium environment, for learned placement policies.

    import gymnasium
    import jsorc_sim.gym_env  # registers jsorc/Placement-v0

    env = gymnasium.make("jsorc/Placement-v0", scenario="experiments/scenarios/llm_service.toml",
                         app="chat", duration_s=900)
    obs, info = env.reset(seed=1)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

An episode is one run of the scenario (jsorc_sim.stepping.Stepper); a step is one control
interval (`[policy] interval_s`): the action is applied at the control point, the run
advances to the next one, and the observation is the `Observation` a policy would see there,
encoded by `policies.encoding.Encoding` (a Box of `observation_size` float32 in [-1e3, 1e3]).
The action is `MultiDiscrete(Encoding.action_nvec)`: per action, 0 local, k remote with k
replicas (1..max_replicas). `terminated` is True at the run's end; nothing truncates.

The reward is minus an objective in `jsorc-sim tune`'s syntax (jsorc_sim.tune.parse_objective;
lower is better) over the step's window (`Stepper.window()`: walker latency of the runs that
finished in it, throughput, and the window's share of the cost integrals and counts), on the
run's scale (`window_reward_objective`: the window's costs scaled up to a whole run's, the
value scaled down by the window's share of the run), so an episode's rewards add up to about
minus the run's objective and a replica costs what it costs in the tune objective; windows
that end within warm-up cost no latency, as the run's objective counts none. A window
in which no walker run finished has no latency; its latency metrics then count as the age of
the oldest request still in the system at the window's end (what the next finished run will
report at least: a stuck queue is penalised as it grows, instead of reading as no cost), or 0
when nothing is in the system (an idle window costs no latency).

`seed` (or `reset(seed=...)`, which wins) is the run's seed: `reset(seed=s)` replays
`simulate(..., seed=s)`'s arrivals. A reset without a seed draws the next run's seed from the
env's `np_random`, so episodes differ but a seeded sequence repeats. `info` holds the window's
metrics (None where a statistic had no sample, as the report writes it), the decision
applied (action -> placement) and its reason, `now` and the run's `seed`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium
import numpy as np
from gymnasium import spaces

from jsorc_sim.hindsight import actions_in_use
from jsorc_sim.scenario import Scenario
from jsorc_sim.simulate import resolve_scenario
from jsorc_sim.stepping import WINDOW_COST, WINDOW_LATENCY, Stepper
from jsorc_sim.tune import Objective, parse_objective
from policies import Decision
from policies.encoding import BOUND, Encoding

ENV_ID = "jsorc/Placement-v0"
DEFAULT_OBJECTIVE = "95th_latency + 0.05 * replica_core_s"
# What a window measures, and so what an objective here may use.
WINDOW_METRICS = ("throughput", *WINDOW_LATENCY, *WINDOW_COST)
_SEEDS = 2**31 - 1


class PlacementEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """One simulated run per episode, one control interval per step (see the module)."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012  (Gymnasium's API)

    def __init__(self, scenario: Scenario | str | Path, app: str | None = None,
                 overrides: Mapping[str, Any] | None = None, seed: int | None = None,
                 duration_s: float | None = None, objective: str = DEFAULT_OBJECTIVE,
                 max_replicas: int = 8, actions: Sequence[str] | None = None,
                 render_mode: str | None = None, record: str = "none",
                 fast: str = "auto") -> None:
        if render_mode is not None:
            raise ValueError(f"PlacementEnv renders nothing: render_mode must be None, got "
                             f"{render_mode!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or seed < 0):
            raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")
        self.render_mode = render_mode
        # Resolved once, so a bad path, app or override fails here, not at the first reset.
        self.scenario = resolve_scenario(scenario, overrides=overrides, app=app,
                                         duration_s=duration_s)
        self.objective = window_objective(objective)
        names = tuple(actions) if actions is not None else actions_in_use(self.scenario)
        # One agent serving several apps (jsorc_sim.rl) encodes the union of their actions:
        # an action of the scenario that this app does not call encodes as zeros, unplaced.
        known = self.scenario.actions if app is None or actions is None else resolve_scenario(
            scenario, overrides=overrides, duration_s=duration_s).actions
        unknown = [a for a in names if a not in known]
        if unknown:
            raise ValueError(f"action {unknown[0]!r} is not in scenario "
                             f"{self.scenario.name!r} (actions: "
                             f"{', '.join(self.scenario.actions)})")
        if not names:
            raise ValueError(f"scenario {self.scenario.name!r} calls no action: nothing to place")
        self.encoding = Encoding(names, max_replicas)
        self.observation_space = spaces.Box(-BOUND, BOUND, (self.encoding.observation_size,),
                                            np.float32)
        self.action_space = spaces.MultiDiscrete(np.array(self.encoding.action_nvec))
        self.record = record
        self.fast = fast
        self._first_seed = seed
        self.stepper: Stepper | None = None
        self.run_seed: int | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is None and self._first_seed is not None:
            seed, self._first_seed = self._first_seed, None
        super().reset(seed=seed)
        run_seed = seed if seed is not None else int(self.np_random.integers(_SEEDS))
        self.run_seed = run_seed
        self.stepper = Stepper(self.scenario, seed=run_seed, record=self.record,
                               fast=self.fast)
        return self.encoding.encode(self.stepper.observe()), {"now": self.stepper.now,
                                                              "seed": run_seed}

    def step(self, action: np.ndarray
             ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        stepper = self.stepper
        if stepper is None:
            raise RuntimeError("call reset() before step()")
        if stepper.done:
            raise RuntimeError(f"the episode ended at t={stepper.now:g} s: call reset()")
        placements = self.encoding.decode(action)
        observed = stepper.observe().actions
        # Only actions the world lists (all of the scenario's, loaded or not).
        chosen = {a: p for a, p in placements.items() if a in observed}
        reason = "agent: " + ", ".join(f"{a}={p}" for a, p in chosen.items())
        stepper.apply(Decision(chosen, reason), "agent")
        stepper.advance()
        window = stepper.window()
        scored = window
        if stepper.now <= stepper.world.scenario.warmup_s:
            # The run's objective leaves warm-up out: its windows cost no latency (the runs
            # that finish then are not counted, and the queue they leave is not either).
            scored = {**window, "oldest_unfinished_ms": 0.0}
        reward = -window_reward_objective(self.objective, scored, stepper.duration_s)
        info: dict[str, Any] = {
            **{k: None if isinstance(v, float) and math.isnan(v) else v
               for k, v in window.items()},
            "decision": {a: str(p) for a, p in chosen.items()},
            "reason": reason,
            "now": stepper.now,
            "seed": self.run_seed,
        }
        obs = self.encoding.encode(stepper.observe())
        return obs, reward, stepper.done, False, info


def window_objective(text: str) -> Objective:
    """The objective, checked by the tune parser and against what a window measures."""
    objective = parse_objective(text)
    missing = [n for n in objective.names if n not in WINDOW_METRICS]
    if missing:
        raise ValueError(f"objective {text!r}: {', '.join(repr(n) for n in missing)} is not "
                         f"measured per step (a window has: {', '.join(WINDOW_METRICS)})")
    return objective


def window_metrics(window: Mapping[str, float]) -> dict[str, float]:
    """The window's metrics for the objective: a latency with no sample counts as the oldest
    unfinished request's age, or 0 with nothing in the system (see the module)."""
    fallback = float(window.get("oldest_unfinished_ms", 0.0))
    return {k: fallback if k in WINDOW_LATENCY and math.isnan(v) else float(v)
            for k, v in window.items()}


def window_reward_objective(objective: Objective, window: Mapping[str, float],
                            duration_s: float) -> float:
    """The objective of a window on the scale of the whole run's, times the window's share of
    the run, so that an episode's rewards add up to about minus the run's objective.

    A run's objective adds a latency (a statistic of the whole run) to cost totals (integrals
    and counts over the whole run). A window's cost is only its share of those totals, while
    its latency is a whole statistic: summed over the windows unscaled, the latency would count
    once per window and the cost once per run, and replicas would look almost free. So the
    window's costs are scaled up to a run's (times duration / window) before the objective is
    taken, and the result scaled down by window / duration: for a linear objective the sum
    over an episode is the time-average of the window latencies plus the run's cost terms."""
    span = float(window.get("window_s", 0.0))
    if not span > 0.0 or not duration_s > 0.0:
        return objective(window_metrics(window))
    share = span / duration_s
    metrics = {k: v / share if k in WINDOW_COST else v
               for k, v in window_metrics(window).items()}
    return share * objective(metrics)


if ENV_ID not in gymnasium.registry:  # importing twice (a reload) registers once
    gymnasium.register(id=ENV_ID, entry_point="jsorc_sim.gym_env:PlacementEnv")
