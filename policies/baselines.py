"""Baseline policies: keep what is there, everything local, everything remote, a fixed placement,
a fixed placement per stretch of the run (the clairvoyant bound's schedule)."""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class ScheduleParams(CheckedParams):
    stretches: Sequence[Mapping[str, Any]] = param(
        (), 'list of {start_s, placements: {action: "local" | "remote:N" | ...}}, start_s '
        "strictly increasing from 0 (a JSON list on the command line, an array of tables in "
        "TOML)")
    default: str = param("", "placement for actions a stretch does not list; empty keeps theirs")

    def __post_init__(self) -> None:
        super().__post_init__()
        # Checked and normalised here (tuple of {start_s: float, placements: dict}) so that a
        # bad entry is refused when the policy is built, naming it, not mid-run; the registry
        # passes a Sequence parameter through as given, so JSON text is read here too.
        object.__setattr__(self, "stretches", _checked_stretches(self.stretches))
        if self.default:
            try:
                Placement.parse(self.default)
            except ValueError as exc:
                raise PolicyError(f"schedule.default: {exc}") from None


def _checked_stretches(raw: Any) -> tuple[dict[str, Any], ...]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise PolicyError(f"schedule.stretches must be a JSON list, got {raw!r}") from None
    if isinstance(raw, Mapping) or not isinstance(raw, Sequence) or isinstance(raw, str):
        raise PolicyError(f"schedule.stretches must be a list of tables, got {raw!r}")
    out: list[dict[str, Any]] = []
    for index, entry in enumerate(raw):
        where = f"schedule.stretches[{index}]"
        if not isinstance(entry, Mapping):
            raise PolicyError(f"{where} must be a table {{start_s, placements}}, got {entry!r}")
        unknown = sorted(set(entry) - {"start_s", "placements"})
        if unknown or "start_s" not in entry:
            raise PolicyError(f"{where} takes start_s (required) and placements, got keys "
                              f"{sorted(entry)}")
        start = entry["start_s"]
        if isinstance(start, bool) or not isinstance(start, int | float) \
                or not math.isfinite(start) or start < 0:
            raise PolicyError(f"{where}.start_s must be a finite number >= 0, got {start!r}")
        if index == 0 and start != 0:
            raise PolicyError(f"{where}.start_s must be 0 (the first stretch starts the run), "
                              f"got {start!r}")
        if out and start <= out[-1]["start_s"]:
            raise PolicyError(f"{where}.start_s = {start!r} must be after the stretch before "
                              f"it ({out[-1]['start_s']!r}): start times strictly increase")
        placements = entry.get("placements", {})
        if not isinstance(placements, Mapping):
            raise PolicyError(f"{where}.placements must be a table action -> placement, got "
                              f"{placements!r}")
        for name, text in placements.items():
            try:
                Placement.parse(text)
            except ValueError as exc:
                raise PolicyError(f"{where}.placements[{name!r}]: {exc}") from None
        out.append({"start_s": float(start), "placements": {str(a): str(t).strip()
                                                            for a, t in placements.items()}})
    return tuple(out)


@register("schedule")
class Schedule:
    """A fixed placement per stretch of the run: from each stretch's `start_s` on, the
    placements it lists (the clairvoyant piecewise-static bound's schedule, jsorc_sim.clairvoyant).

    It asks only for what differs from the desired placement, so a stretch that repeats the
    one before changes nothing. A stretch takes effect at the first decision at or after its
    `start_s` (decisions come every `interval_s`)."""

    Params = ScheduleParams

    def __init__(self, params: ScheduleParams | None = None) -> None:
        self.params = params or ScheduleParams()
        self._starts = [float(s["start_s"]) for s in self.params.stretches]
        self._given = [{name: Placement.parse(t) for name, t in s["placements"].items()}
                       for s in self.params.stretches]
        self._default = Placement.parse(self.params.default) if self.params.default else None

    def reset(self, seed: int) -> None:
        pass

    def decide(self, observation: Observation) -> Decision:
        index = bisect.bisect_right(self._starts, observation.now) - 1
        given = self._given[index] if index >= 0 else {}
        changes = {}
        for name, stats in observation.actions.items():
            placement = given.get(name, self._default)
            if placement is not None and placement != stats.desired:
                changes[name] = placement
        if not changes:
            return Decision.keep()
        return Decision(changes, f"schedule: stretch {index} from "
                                 f"{self._starts[index]:g} s" if index >= 0 else "schedule")
