"""The PPO agent of a folder from `experiments/train_ppo.py` as a policy named by file path:

    jsorc-sim run SCENARIO --policy experiments/ppo_policy.py:PPOPolicy --param model=runs/ppo
    [[policy]] name = "ppo_policy.py:PPOPolicy"  params = { model = "/abs/runs/ppo" }
    jsorc serve --policy-file experiments/ppo_policy.py   # then, live:
    jsorc actionpolicy set experiments/ppo_policy.py:PPOPolicy --param model=/abs/runs/ppo

The model is loaded once, when the policy is built (reading files is not allowed in
`decide`); each decision is the model's deterministic action on the encoded observation
(jsorc_sim.rl.load_agent). A relative `model` is from the current folder: give experiment
files and servers an absolute one. Needs the `rl` extra (pip install -e '.[rl]').
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jsorc_sim.rl import load_agent
from policies import Decision, Observation, PolicyError, param


@dataclass(frozen=True)
class PPOParams:
    model: str = param("", "folder of a trained agent (model.zip, agent.json): "
                           "experiments/train_ppo.py --out")


class PPOPolicy:
    """A trained PPO agent (see the module): delegates to `load_agent(params.model)`."""

    Params = PPOParams
    policy_name = "ppo"

    def __init__(self, params: PPOParams | None = None) -> None:
        self.params = params or PPOParams()
        if not self.params.model:
            raise PolicyError("policy 'ppo': set model=FOLDER, a folder written by "
                              "experiments/train_ppo.py --out")
        try:
            self._agent = load_agent(Path(self.params.model), name="ppo")
        except (FileNotFoundError, ValueError) as exc:
            raise PolicyError(f"policy 'ppo': {exc}") from None

    def reset(self, seed: int) -> None:
        self._agent.reset(seed)

    def decide(self, observation: Observation) -> Decision:
        return self._agent.decide(observation)
