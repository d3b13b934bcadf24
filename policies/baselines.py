"""Baseline policies: keep what is there, everything local, everything remote, a fixed placement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from policies.contract import Decision, Observation, Placement
from policies.registry import CheckedParams, NoParams, PolicyError, param, register


class Stateless:
    """Base of policies with no parameters and no state: `reset` has nothing to clear."""

    Params = NoParams

    def __init__(self, params: NoParams | None = None) -> None:
        self.params = params or NoParams()

    def reset(self, seed: int) -> None:
        pass


@register("none")
class Hold(Stateless):
    """Changes nothing: the initial placement holds, unloaded actions load on first call."""

    def decide(self, observation: Observation) -> Decision:
        return Decision.keep()


@register("all_local")
class AllLocal(Stateless):
    """Every known action local, whether it fits in memory or not (JSORC's all-local baseline)."""

    def decide(self, observation: Observation) -> Decision:
        local = Placement.local()
        return Decision({name: local for name in observation.actions}, "all local")


@dataclass(frozen=True)
class AllRemoteParams(CheckedParams):
    replicas: int = param(1, "replicas per action", minimum=1)


@register("all_remote")
class AllRemote:
    """Every known action remote with a fixed replica count (JSORC's all-remote baseline)."""

    Params = AllRemoteParams

    def __init__(self, params: AllRemoteParams | None = None) -> None:
        self.params = params or AllRemoteParams()

    def reset(self, seed: int) -> None:
        pass

    def decide(self, observation: Observation) -> Decision:
        remote = Placement.remote(self.params.replicas)
        return Decision({name: remote for name in observation.actions}, "all remote")


@dataclass(frozen=True)
class StaticParams(CheckedParams):
    placements: Mapping[str, str] = param(
        {}, 'action -> "local" | "remote" | "remote:N" | "unloaded" (JSON on the command line)'
    )
    default: str = param("", "placement for actions not listed; empty keeps theirs")

    def __post_init__(self) -> None:
        super().__post_init__()
        # Parse once here so a typo is refused when the policy is built, not mid-run.
        for name, text in self.placements.items():
            try:
                Placement.parse(text)
            except ValueError as exc:
                raise PolicyError(f"static.placements[{name!r}]: {exc}") from None
        if self.default:
            Placement.parse(self.default)


@register("static")
class Static:
    """A fixed placement, given per action (the hindsight and hand-tuned baselines)."""

    Params = StaticParams

    def __init__(self, params: StaticParams | None = None) -> None:
        self.params = params or StaticParams()
        self._given = {name: Placement.parse(t) for name, t in self.params.placements.items()}
        self._default = Placement.parse(self.params.default) if self.params.default else None

    def reset(self, seed: int) -> None:
        pass

    def decide(self, observation: Observation) -> Decision:
        chosen = {}
        for name in observation.actions:
            placement = self._given.get(name, self._default)
            if placement is not None:
                chosen[name] = placement
        return Decision(chosen, "static")
