"""An autoscaler composed with a placement policy: one decides where, the other how many.

`compose(evaluation, hpa)` is a policy whose placement policy (`evaluation`) decides each
action's mode and whose scaler (`hpa`) decides the replica count of the actions that are
remote. From a scenario or the command line it is the registered policy `compose`:

    [policy]
    name = "compose"
    [policy.params]
    placement = "all_remote"        # placement_params = {} (its defaults)
    scaler = "hpa"
    scaler_params = { target = 0.6 }

Each interval:

1. the placement policy decides on the observation as the world reports it;
2. each action's *effective* placement is what the placement policy asked for, or its
   desired placement if it asked nothing. When it asks `remote:N` for an action that is
   already remote the count stays the one desired (the scaler's); `N` only seeds an action
   that becomes remote;
3. the scaler decides on the same observation with `desired` set to the effective placement,
   so it scales exactly the actions that will be remote (and forgets the others);
4. a remote action gets the scaler's count (`remote:n`, or `unloaded` for a scaler that
   scales to zero); anything else the scaler asks is ignored. Other actions get what the
   placement policy asked.

`reset(seed)` resets both, with two seeds derived from `seed` (BLAKE2b of the seed and the
role), so they draw from independent, reproducible streams. Pure, as its two policies are.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies.contract import ActionStats, Decision, Mode, Observation, Placement, Policy
from policies.registry import CheckedParams, PolicyError, make, param, register


@dataclass(frozen=True)
class ComposeParams(CheckedParams):
    placement: str = param("none", "policy deciding each action's mode (name or module:Class)")
    placement_params: Mapping[str, Any] = param({}, "its parameters")
    scaler: str = param("hpa", "autoscaler deciding the replica count of remote actions")
    scaler_params: Mapping[str, Any] = param({}, "its parameters")


def derive_seed(seed: int, role: str) -> int:
    """A 32-bit seed for one part of a composed policy, from the run's seed and the role."""
    digest = hashlib.blake2b(f"{seed}:{role}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def _build(role: str, ref: str, raw: Mapping[str, Any]) -> Policy:
    try:
        return make(ref, raw)
    except PolicyError as exc:
        raise PolicyError(f"compose.{role}: {exc}") from None


def _describe(policy: Policy) -> tuple[str, dict[str, Any]]:
    """The name and parameters of a policy object, for `ComposeParams`."""
    cls = type(policy)
    name = getattr(cls, "policy_name", None) or f"{cls.__module__}:{cls.__qualname__}"
    given = policy.params
    values = dataclasses.asdict(given) \
        if dataclasses.is_dataclass(given) and not isinstance(given, type) else {}
    return str(name), values


@register("compose")
class Compose:
    """A placement policy and an autoscaler as one policy (see the module's docstring)."""

    Params = ComposeParams

    def __init__(self, params: ComposeParams | None = None, *,
                 placement: Policy | None = None, scaler: Policy | None = None) -> None:
        self.params = params or ComposeParams()
        p = self.params
        self.placement = placement if placement is not None \
            else _build("placement", p.placement, p.placement_params)
        self.scaler = scaler if scaler is not None \
            else _build("scaler", p.scaler, p.scaler_params)

    def reset(self, seed: int) -> None:
        self.placement.reset(derive_seed(seed, "placement"))
        self.scaler.reset(derive_seed(seed, "scaler"))

    def decide(self, observation: Observation) -> Decision:
        where = self.placement.decide(observation)
        effective = {name: _effective(stats, where.placements.get(name))
                     for name, stats in observation.actions.items()}
        view = dataclasses.replace(observation, actions={
            name: dataclasses.replace(stats, desired=effective[name])
            for name, stats in observation.actions.items()})
        scaled = self.scaler.decide(view)
        placements: dict[str, Placement] = {}
        for name, chosen in effective.items():
            count = scaled.placements.get(name)
            if chosen.mode is Mode.REMOTE and count is not None \
                    and count.mode in (Mode.REMOTE, Mode.UNLOADED):
                placements[name] = count
            elif name in where.placements or chosen.mode is Mode.REMOTE:
                placements[name] = chosen
        # Actions the world does not list pass through, so it still reports the mistake.
        for name, asked in where.placements.items():
            placements.setdefault(name, asked)
        reason = "; ".join(r for r in (where.reason, scaled.reason) if r)
        return Decision(placements, reason)


def _effective(stats: ActionStats, asked: Placement | None) -> Placement:
    """Where an action will be: as asked, except that a remote action keeps its count."""
    if asked is None:
        return stats.desired
    if asked.mode is Mode.REMOTE and stats.desired.mode is Mode.REMOTE:
        return stats.desired
    return asked


def compose(placement: Policy, scaler: Policy) -> Compose:
    """`placement` decides where each action runs, `scaler` how many replicas the remote
    ones have. Both are policy objects; their names and parameters go in `params`."""
    placement_name, placement_params = _describe(placement)
    scaler_name, scaler_params = _describe(scaler)
    params = ComposeParams(placement_name, placement_params, scaler_name, scaler_params)
    return Compose(params, placement=placement, scaler=scaler)
