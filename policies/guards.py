"""Guards: wrappers with one job each that any policy can wear.

Bounds, cooldowns, stabilisation windows, memory caps and rate limits compose around any
policy instead of being re-implemented inside each (like Gymnasium's `ActionWrapper` and
`TimeLimit`, Ray Serve's `_apply_bounds`/`_apply_delay_logic`, the numbered steps of HPA's
`normalizeDesiredReplicasWithBehaviors`). A guard is a `Policy` itself: it asks its inner
policy, then filters or rewrites what the inner policy asked for.

    ReplicaBounds  remote placements get between `min_replicas` and `max_replicas` replicas
    Cooldown       an action this guard let change is not changed again within `cooldown_s`
    Stabilisation  a scale-down goes only to the highest recommendation of the last
                   `window_s`; a scale-up is immediate
    MemoryCap      a new local copy that would push node memory past the cap is refused
    MaxChanges     at most `max_changes` actions change per control interval

Python: `Cooldown(policy, cooldown_s=30)` or `Cooldown(policy, CooldownParams(30))`; they
nest, innermost first: `MaxChanges(Cooldown(hpa, cooldown_s=30), max_changes=1)`. By name:
`wear(policy, {"cooldown": {"cooldown_s": 30}, "max_changes": {}})`, or the registered
policy `guarded` (`policy`, `params`, `guards` = the same table) from a scenario or the CLI.

**Deferred changes.** A change a guard holds back (cooldown, rate limit, memory, a scale-down
being stabilised) stays *pending*: the guard retries it every interval until it is applied,
until the action's desired placement already equals it, or until the inner policy asks
something else for that action. Many policies state a placement once and then keep quiet
("an action left out keeps its placement"); without this a held change would be lost. An
inner policy that changes its mind names the new placement: silence means "as I last asked".
`ReplicaBounds` is a pure clamp and keeps nothing pending.

Actions the observation does not list pass through untouched, so the world still reports
the inner policy's mistake.

Order matters, as in HPA's numbered steps. Suggested, innermost first: `memory_cap`,
`stabilisation`, `replica_bounds`, `max_changes`, `cooldown` -- bounds after stabilisation
and after the cap's remote fallback, so they have the last word on replica counts; the
cooldown outermost, so its clock starts when a change really goes out (inside `max_changes`
it starts when the change is first asked for, even if the rate limit then defers it).
`ReplicaBounds(MemoryCap(p))` bounds the cap's remote fallback; `MemoryCap(ReplicaBounds(p))`
does not (tests/policies/test_guards.py shows both).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from policies.contract import Decision, Mode, Observation, Placement, Policy
from policies.registry import CheckedParams, PolicyError, coerce_params, make, param, register

P = TypeVar("P")


class Guard(Generic[P]):
    """Base of the guards: ask `inner`, then `guard` the placements it asked for.

    `reset` passes the seed on to the inner policy and clears the guard's own state.
    """

    Params: ClassVar[type[Any]]
    name: ClassVar[str]  # as used in `guarded`'s table and in decision reasons
    defers: ClassVar[bool] = True  # keep held-back wishes pending (see the module doc)

    def __init__(self, inner: Policy, params: P | None = None, **values: Any) -> None:
        if params is not None and values:
            raise PolicyError(f"{type(self).__name__}: give a {self.Params.__name__} or "
                              f"keyword parameters, not both")
        if params is not None:
            if not isinstance(params, self.Params):
                raise PolicyError(f"{type(self).__name__} takes {self.Params.__name__}, "
                                  f"got {type(params).__name__}: {params!r}")
            values = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
        # Through the registry's coercion, so that bounds are checked however it is built.
        self.params: P = coerce_params(type(self), values, policy=f"guard {self.name}")
        self.inner = inner
        self._pending: dict[str, Placement] = {}

    @property
    def policy_name(self) -> str:
        inner = getattr(self.inner, "policy_name", type(self.inner).__name__)
        return f"{self.name}({inner})"

    def reset(self, seed: int) -> None:
        self.inner.reset(seed)
        self._pending = {}
        self._clear()

    def decide(self, observation: Observation) -> Decision:
        asked: object = self.inner.decide(observation)
        if not isinstance(asked, Decision):
            raise TypeError(f"{self.name}: the inner policy returned {type(asked).__name__}, "
                            f"not a Decision: {asked!r:.80}")
        known = observation.actions
        wishes = {a: w for a, w in self._pending.items() if a in known and known[a].desired != w}
        foreign = {}
        for action, placement in asked.placements.items():
            if action in known:
                wishes[action] = placement
            else:
                foreign[action] = placement
        allowed, note = self.guard(observation, wishes)
        if self.defers:
            self._pending = {a: w for a, w in wishes.items() if allowed.get(a) != w}
        reason = asked.reason
        if note:
            reason = f"{reason} [{self.name}: {note}]".lstrip()
        return Decision({**allowed, **foreign}, reason)

    def guard(self, observation: Observation,
              wishes: Mapping[str, Placement]) -> tuple[dict[str, Placement], str]:
        """What to ask for, given what the inner policy wants (now or still pending), and a
        note for the reason ("" when nothing was changed). Every action in `wishes` is in the
        observation. An action left out of the result is held back."""
        raise NotImplementedError

    def _clear(self) -> None:
        """Forget the guard's own state (called by `reset`)."""


# ----------------------------------------------------------------------------- bounds


@dataclass(frozen=True)
class ReplicaBoundsParams(CheckedParams):
    min_replicas: int = param(1, "fewest replicas of a remote placement", minimum=1)
    max_replicas: int | None = param(None, "most replicas of a remote placement (none: no "
                                     "limit)", minimum=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise PolicyError(f"max_replicas = {self.max_replicas} is below min_replicas = "
                              f"{self.min_replicas}")


class ReplicaBounds(Guard[ReplicaBoundsParams]):
    """Clamps the replica count of every remote placement the inner policy asks for (Ray
    Serve's `_apply_bounds`). Local and unloaded placements pass; placements the inner policy
    did not state are left alone."""

    Params = ReplicaBoundsParams
    name = "replica_bounds"
    defers = False

    def guard(self, observation: Observation,
              wishes: Mapping[str, Placement]) -> tuple[dict[str, Placement], str]:
        low, high = self.params.min_replicas, self.params.max_replicas
        out, clamped = {}, []
        for action, wish in wishes.items():
            if wish.mode is Mode.REMOTE:
                replicas = max(low, wish.replicas if high is None else min(high, wish.replicas))
                if replicas != wish.replicas:
                    clamped.append(f"{action} {wish.replicas}->{replicas}")
                    wish = Placement.remote(replicas)
            out[action] = wish
        return out, f"clamped {', '.join(clamped)}" if clamped else ""


# ----------------------------------------------------------------------------- cooldown


@dataclass(frozen=True)
class CooldownParams(CheckedParams):
    cooldown_s: float = param(60.0, "an action changed is not changed again for this long",
                              minimum=0.0)


class Cooldown(Guard[CooldownParams]):
    """An action whose placement this guard let change is not changed again within
    `cooldown_s` (by observation time); the held change stays pending. The first change of
    an action is never held, and the clock starts when the guard passes the change (an outer
    guard refusing it does not stop the clock)."""

    Params = CooldownParams
    name = "cooldown"

    def __init__(self, inner: Policy, params: CooldownParams | None = None,
                 **values: Any) -> None:
        super().__init__(inner, params, **values)
        self._changed_at: dict[str, float] = {}

    def _clear(self) -> None:
        self._changed_at = {}

    def guard(self, observation: Observation,
              wishes: Mapping[str, Placement]) -> tuple[dict[str, Placement], str]:
        now = observation.now
        out, held = {}, []
        for action, wish in wishes.items():
            if wish != observation.actions[action].desired:
                last = self._changed_at.get(action)
                if last is not None and now - last < self.params.cooldown_s:
                    held.append(action)
                    continue
                self._changed_at[action] = now
            out[action] = wish
        return out, f"held {', '.join(held)}" if held else ""


# ----------------------------------------------------------------------------- stabilisation


@dataclass(frozen=True)
class StabilisationParams(CheckedParams):
    window_s: float = param(300.0, "a scale-down goes to the highest recommendation of this "
                            "window (HPA's scale-down stabilisation)", minimum=0.0)


class Stabilisation(Guard[StabilisationParams]):
    """Scale-down stabilisation of remote replicas, as HPA does it.

    Every interval each action that is, or is asked to be, remote records a recommendation:
    the replicas the inner policy asks for (or still wants), else its current desired count.
    A scale-down (remote:N to remote:M, M < N) is cut to min(N, the highest recommendation
    over the last `window_s`); the rest stays pending. A scale-up, and any change of mode,
    passes at once. With `window_s` = 0 nothing is held.
    """

    Params = StabilisationParams
    name = "stabilisation"

    def __init__(self, inner: Policy, params: StabilisationParams | None = None,
                 **values: Any) -> None:
        super().__init__(inner, params, **values)
        self._history: dict[str, deque[tuple[float, int]]] = {}

    def _clear(self) -> None:
        self._history = {}

    def guard(self, observation: Observation,
              wishes: Mapping[str, Placement]) -> tuple[dict[str, Placement], str]:
        now = observation.now
        horizon = now - self.params.window_s
        for action, stats in observation.actions.items():
            history = self._history.setdefault(action, deque())
            while history and history[0][0] <= horizon:  # HPA keeps those after the cutoff
                history.popleft()
            wanted = wishes.get(action, stats.desired)
            if wanted.mode is Mode.REMOTE:
                history.append((now, wanted.replicas))
            if not history:
                del self._history[action]
        out, held = {}, []
        for action, wish in wishes.items():
            current = observation.actions[action].desired
            if (wish.mode is Mode.REMOTE and current.mode is Mode.REMOTE
                    and wish.replicas < current.replicas):
                ceiling = max(replicas for _, replicas in self._history[action])
                replicas = min(current.replicas, ceiling)
                if replicas != wish.replicas:
                    held.append(f"{action} at {replicas}")
                    wish = Placement.remote(replicas)
            out[action] = wish
        return out, f"scale-down held: {', '.join(held)}" if held else ""


# ----------------------------------------------------------------------------- memory cap

REFUSED = ("remote", "keep")


@dataclass(frozen=True)
class MemoryCapParams(CheckedParams):
    fraction: float = param(1.0, "cap as a fraction of the node's memory", minimum=0.0,
                            maximum=1.0)
    cap_mb: float = param(0.0, "cap in MB (0: none); with `fraction`, the lower applies",
                          minimum=0.0)
    runtime_memory_mb: float = param(300.0, "the runtime's own memory, counted at least "
                                     "(JSORC's figure)", minimum=0.0)
    refused: str = param("remote", "a refused local placement: remote (1 replica, or its "
                         "current count) or keep (the action stays as it is)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.refused not in REFUSED:
            raise PolicyError(f"refused must be one of {', '.join(REFUSED)}, got "
                              f"{self.refused!r}")


class MemoryCap(Guard[MemoryCapParams]):
    """Refuses new local copies that would push node memory past the cap.

    The memory the node would use after the decision: what it uses now (the runtime, local
    copies loaded, being loaded or draining) -- at least `runtime_memory_mb` plus every copy
    held or being loaded -- plus each new local copy accepted. New copies are accepted
    greedily, busiest action first (call rate, then name), skipping any that does not fit.
    Copies being moved away are not subtracted: a copy is freed only when its last call
    ends, and a move to remote keeps it until a replica is ready. So a swap takes two
    intervals: the move away first, the load once the memory is free (the pending local
    wish is retried every interval).

    A refused action goes remote by default: left unloaded, its next call would cold-start
    it in its default mode -- often local, the very load that was refused. With
    `refused = "keep"` it stays as it is. Copies already held are never evicted.
    """

    Params = MemoryCapParams
    name = "memory_cap"

    def guard(self, observation: Observation,
              wishes: Mapping[str, Placement]) -> tuple[dict[str, Placement], str]:
        p = self.params
        node, actions = observation.node, observation.actions
        cap = p.fraction * node.memory_total_mb
        if p.cap_mb > 0:
            cap = min(cap, p.cap_mb)
        held = {a for a, s in actions.items()
                if Mode.LOCAL in (s.placement.mode, s.desired.mode)}
        used = max(node.memory_used_mb,
                   p.runtime_memory_mb + sum(actions[a].local_memory_mb for a in held))
        loads = sorted((a for a, w in wishes.items() if w.mode is Mode.LOCAL and a not in held),
                       key=lambda a: (-_finite(actions[a].call_rate), a))
        out = {a: w for a, w in wishes.items() if a not in loads}
        refused = []
        for action in loads:
            need = actions[action].local_memory_mb
            if used + need <= cap:
                out[action] = wishes[action]
                used += need
                continue
            refused.append(action)
            if p.refused == "remote":
                current = actions[action].desired
                out[action] = current if current.mode is Mode.REMOTE else Placement.remote(1)
        if not refused:
            return out, ""
        return out, f"refused local {', '.join(refused)} (cap {cap:.0f} MB)"


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


# ----------------------------------------------------------------------------- max changes


@dataclass(frozen=True)
class MaxChangesParams(CheckedParams):
    max_changes: int = param(1, "most actions changed per control interval", minimum=1)


class MaxChanges(Guard[MaxChangesParams]):
    """At most `max_changes` actions change per interval; the rest stay pending.

    Chosen deterministically: first moves away from local (they free node memory), then
    other changes to remote or unloaded, then loads to local (they take memory) -- JSORC's
    "remote first" order -- and by action name within each.
    """

    Params = MaxChangesParams
    name = "max_changes"

    def guard(self, observation: Observation,
              wishes: Mapping[str, Placement]) -> tuple[dict[str, Placement], str]:
        actions = observation.actions
        changes = sorted((a for a, w in wishes.items() if w != actions[a].desired),
                         key=lambda a: (_change_rank(actions[a].desired, wishes[a]), a))
        deferred = set(changes[self.params.max_changes:])
        out = {a: w for a, w in wishes.items() if a not in deferred}
        return out, f"deferred {', '.join(sorted(deferred))}" if deferred else ""


def _change_rank(current: Placement, wish: Placement) -> int:
    if current.mode is Mode.LOCAL and wish.mode is not Mode.LOCAL:
        return 0
    return 2 if wish.mode is Mode.LOCAL else 1


# ----------------------------------------------------------------------------- by name

GUARDS: Mapping[str, type[Guard[Any]]] = {
    cls.name: cls for cls in (ReplicaBounds, Cooldown, Stabilisation, MemoryCap, MaxChanges)
}


def wear(policy: Policy, guards: Mapping[str, Any]) -> Policy:
    """`policy` wearing `guards` (guard name -> its parameters), the first listed innermost.

    Raises PolicyError naming an unknown guard or a bad parameter.
    """
    for name, raw in guards.items():
        cls = GUARDS.get(name)
        if cls is None:
            raise PolicyError(f"unknown guard {name!r}; guards: {', '.join(GUARDS)}")
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise PolicyError(f"guard {name!r}: its parameters must be a table, got {raw!r}")
        policy = cls(policy, **raw)
    return policy


@dataclass(frozen=True)
class GuardedParams(CheckedParams):
    policy: str = param("none", "the inner policy: a registered name or module:Class")
    params: Mapping[str, Any] = param({}, "the inner policy's parameters")
    guards: Mapping[str, Any] = param(
        {}, f"guard -> its parameters, innermost first ({', '.join(GUARDS)}); JSON on the "
        "command line"
    )


@register("guarded")
class Guarded:
    """Another policy wearing guards, by name: for scenarios and the command line.

    `policy = "hpa"`, `params = { ... }`,
    `guards = { replica_bounds = { max_replicas = 8 }, cooldown = { cooldown_s = 60 } }`.
    """

    Params = GuardedParams

    def __init__(self, params: GuardedParams | None = None) -> None:
        self.params = params or GuardedParams()
        self.policy = wear(make(self.params.policy, self.params.params), self.params.guards)

    def reset(self, seed: int) -> None:
        self.policy.reset(seed)

    def decide(self, observation: Observation) -> Decision:
        return self.policy.decide(observation)
