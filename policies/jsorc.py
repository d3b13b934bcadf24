"""JSORC's own action policies: `default`, `evaluation`, `adaptive` and `predictive`.

Followed from Jaseci's source (github.com/Jaseci-Labs/jaseci):

- `jaseci_core/jaseci/utils/actions/actions_optimizer.py`, class `ActionsOptimizer`, in two
  versions. The Jaseci 1.4 one (`POLICIES = ["Default", "Evaluation"]`, `NODE_MEM_THRESHOLD =
  0.8`): `run`, `_init_evalution_policy` (the enumeration), `_actionpolicy_evaluation` (the
  phases), `_get_action_change`, `apply_actions_change`. The research one (`POLICIES =
  [..., "Adaptive", "Predictive"]`, `THRESHOLD = 0.2`, `WINDOW_SIZE = 4`):
  `_actionpolicy_adaptive`, `_check_phase_change`, `_actionpolicy_predictive`,
  `get_module_config`, `has_action_utilz_changed`, and its `_actionpolicy_evaluation` with the
  20 % rule for doubling.
- `jaseci_core/jaseci/utils/actions/actions_manager.py`, class `ActionManager`: the benchmark
  the policies read (`post_request_hook` keeps successful walker runs only) and the per-action
  call log (`post_action_call_hook`).
- `jaseci_core/jaseci/utils/actions/actions_state.py`: `get_active_actions`.

Where the issue (issue 3, "JSORC's policies, faithful") states a behaviour, it is followed;
the original's quirks are kept behind `jsorc_quirks = true` (default off), documented on each
policy. Two things differ from the original on purpose, in both modes:

- "Actions in use" are the actions seen called (calls, cold starts, calls in flight or queued,
  or in an app's `calls_per_request`), in the order first seen; the original used every action
  it had loaded. Local copies of actions outside that set count as fixed memory.
- `cold_start_guard` (default on, not in JSORC): a call to an unloaded action loads it
  locally (a cold start), which the policy cannot stop between two decisions; so an unloaded
  action whose local copy would not fit beside the copies the policy is heading for (and the
  other unloaded actions that do fit) is placed remote before its first call. Without it,
  the first walker of the loadtest's flow_analysis loads use_enc locally and runs the 4 GB
  node out of memory before any phase has begun.

Everything here is pure: no I/O, no wall clock (time is `observation.now`), no module state;
each policy keeps its state on itself and `reset` clears it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from itertools import product

from policies.baselines import Stateless
from policies.contract import Decision, Mode, Observation, Placement, Totals
from policies.registry import CheckedParams, param, register

Config = tuple[tuple[str, Mode], ...]
"""A placement of the actions in use: (action, local or remote), in the order first seen."""


# ---------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class JsorcParams(CheckedParams):
    """What every JSORC policy shares: the memory rule, replica count and quirks."""

    node_mem_threshold: float = param(
        0.8, "local copies plus the runtime must stay under this fraction of node memory",
        minimum=0.0, maximum=1.0)
    runtime_memory_mb: float = param(300.0, "memory of the runtime itself (JSORC's figure)",
                                     minimum=0.0)
    replicas: int = param(1, "replicas of an action moved remote (JSORC ran one)", minimum=1)
    cold_start_guard: bool = param(
        True, "place remote, before its first call, an unloaded action whose cold start "
        "would not fit beside the local copies (not in JSORC: no out-of-memory cold start)")
    jsorc_quirks: bool = param(False, "reproduce the original's quirks (see the policy's doc)")


@dataclass(frozen=True)
class EvaluationParams(JsorcParams):
    eval_phase_s: float = param(
        10.0, "seconds each configuration is measured, from when its changes are applied",
        minimum=0.0)
    perf_phase_s: float = param(
        100.0, "seconds the winner is held before evaluating again (doubles while the "
        "winner stays the same)", minimum=0.0)


@dataclass(frozen=True)
class AdaptiveParams(EvaluationParams):
    window: int = param(4, "intervals in the latency window (WINDOW_SIZE)", minimum=1)
    latency_change_s: float = param(
        0.2, "evaluate again when the window's latency sum moves by more than this (s)",
        minimum=0.0)
    improvement: float = param(
        0.2, "the perf phase doubles only if the unchanged winner's latency improved by "
        "more than this fraction", minimum=0.0, maximum=1.0)


@dataclass(frozen=True)
class PredictiveParams(JsorcParams):
    walker_step: int = param(20, "plan every this many walker runs (first threshold and step)",
                             minimum=1)
    share_change: float = param(0.01, "plan again only when a call share moves by more",
                                minimum=0.0, maximum=1.0)


# ---------------------------------------------------------------------------- pure helpers


def config_text(config: Config) -> str:
    """`{text_seg: local, use_enc: remote}`."""
    return "{" + ", ".join(f"{name}: {mode.value}" for name, mode in config) + "}"


def ok_requests(totals: Totals) -> int:
    """Walker runs that succeeded in the window (JSORC's benchmark drops failed ones)."""
    return max(0, totals.requests - totals.failures)


def fixed_local_mb(observation: Observation, considered: Iterable[str]) -> float:
    """Node memory of local copies outside `considered` (they stay where they are)."""
    skip = set(considered)
    return sum(a.local_memory_mb for name, a in observation.actions.items()
               if name not in skip
               and Mode.LOCAL in (a.desired.mode, a.placement.mode))


def fits(local_mb: float, observation: Observation, params: JsorcParams) -> bool:
    """JSORC's rule: runtime + local copies < node_mem_threshold x node memory."""
    limit = params.node_mem_threshold * observation.node.memory_total_mb
    return params.runtime_memory_mb + local_mb < limit


def enumerate_configs(actions: list[str], observation: Observation,
                      params: JsorcParams) -> list[Config]:
    """Every local/remote combination whose local copies fit; all-local first.

    The order is `_init_evalution_policy`'s: the first action varies slowest, local before
    remote. The all-remote configuration is always kept (the original checks memory only
    when it adds a local action).
    """
    known = [name for name in actions if name in observation.actions]
    fixed = fixed_local_mb(observation, known)
    configs = []
    for modes in product((Mode.LOCAL, Mode.REMOTE), repeat=len(known)):
        local = sum(observation.actions[name].local_memory_mb
                    for name, mode in zip(known, modes, strict=True) if mode is Mode.LOCAL)
        if Mode.LOCAL not in modes or fits(fixed + local, observation, params):
            configs.append(tuple(zip(known, modes, strict=True)))
    return configs


def still_fits(observation: Observation, config: Config, params: JsorcParams) -> bool:
    """Whether `config` fits beside the local copies outside it as they are now."""
    local = sum(observation.actions[name].local_memory_mb for name, mode in config
                if mode is Mode.LOCAL and name in observation.actions)
    fixed = fixed_local_mb(observation, (name for name, _ in config))
    return all(mode is Mode.REMOTE for _, mode in config) or fits(fixed + local, observation,
                                                                  params)


def applied(observation: Observation, target: Config) -> bool:
    """Every action of `target` asked for and serving there, and no action in transition."""
    for name, mode in target:
        action = observation.actions.get(name)
        if action is not None and (action.desired.mode is not mode
                                   or action.placement.mode is not mode):
            return False
    return not any(a.transition for a in observation.actions.values())


def staged_changes(observation: Observation, target: Config, replicas: int,
                   remote_first: bool) -> dict[str, Placement]:
    """The placements to ask for now to move towards `target`.

    Remote first: moves to remote are asked for, and local loads only once every remote
    action of `target` serves remotely with no transition (its local copy freed), so a change
    of configuration never holds old and new local copies at once. Without `remote_first`
    (the original) everything is asked for at once. An action already asked to be remote keeps
    its replica count (an autoscaler may own it).
    """
    changes: dict[str, Placement] = {}
    remote_pending = False
    for name, mode in target:
        action = observation.actions.get(name)
        if action is None or mode is not Mode.REMOTE:
            continue
        if action.desired.mode is not Mode.REMOTE:
            changes[name] = Placement.remote(replicas)
            remote_pending = True
        elif action.placement.mode is not Mode.REMOTE or action.transition:
            remote_pending = True
    if remote_pending and remote_first:
        return changes
    for name, mode in target:
        action = observation.actions.get(name)
        if action is not None and mode is Mode.LOCAL and action.desired.mode is not Mode.LOCAL:
            changes[name] = Placement.local()
    return changes


def cold_start_guard(observation: Observation, params: JsorcParams,
                     target: Config | None) -> dict[str, Placement]:
    """Unloaded actions whose cold start (a local load) would not fit: remote before their
    first call.

    Memory counts the runtime, every local copy the policy is heading for (`target`, or the
    action's desired placement) or that is still resident, and, in the world's order, the
    unloaded actions already judged to fit (their first call may load them). Actions of
    `target` are left to it.
    """
    if not params.cold_start_guard:
        return {}
    heading = dict(target or ())
    local_mb = 0.0
    unloaded = []
    for name, a in observation.actions.items():
        mode = heading.get(name, a.desired.mode)
        if Mode.LOCAL in (mode, a.placement.mode):
            local_mb += a.local_memory_mb
        elif mode is Mode.UNLOADED and a.placement.mode is Mode.UNLOADED:
            unloaded.append(name)
    guarded = {}
    for name in unloaded:
        need = observation.actions[name].local_memory_mb
        if fits(local_mb + need, observation, params):
            local_mb += need
        else:
            guarded[name] = Placement.remote(params.replicas)
    return guarded


def with_guarded(reason: str, guarded: Mapping[str, Placement]) -> str:
    if not guarded:
        return reason
    return f"{reason}; {', '.join(guarded)} remote: a cold start would not fit"


def greedy_config(observation: Observation, shares: Mapping[str, float], params: JsorcParams,
                  by_share: bool = True) -> Config:
    """Local by decreasing share while the local copies fit, the rest remote
    (`get_module_config`); an action that does not fit is skipped and smaller ones may still
    go local. `by_share=False` goes in first-seen order (the original's loop). The result
    lists the actions in first-seen order."""
    names = [n for n in shares if n in observation.actions]
    if by_share:
        names.sort(key=lambda n: -shares[n])  # stable: ties keep first-seen order
    local_mb = fixed_local_mb(observation, names)
    local = set()
    for name in names:
        need = observation.actions[name].local_memory_mb
        if fits(local_mb + need, observation, params):
            local.add(name)
            local_mb += need
    return tuple((n, Mode.LOCAL if n in local else Mode.REMOTE)
                 for n in shares if n in observation.actions)


def shares_moved(previous: Mapping[str, float], current: Mapping[str, float],
                 threshold: float) -> bool:
    """`has_action_utilz_changed`, with calls needed before and now: the set of actions
    changed or a share moved by more than `threshold`."""
    if not any(previous.values()) or not any(current.values()):
        return False
    if set(previous) != set(current):
        return True
    return any(abs(current[n] - previous[n]) > threshold for n in current)


class Usage:
    """What the runtime has used so far: actions in use (first-seen order), calls, walkers."""

    def __init__(self) -> None:
        self.in_use: dict[str, None] = {}  # an ordered set
        self.calls: dict[str, int] = {}
        self.walkers = 0  # successful walker runs

    def observe(self, observation: Observation) -> None:
        listed: set[str] = set()
        for app in observation.apps.values():
            listed.update(app.calls_per_request)
        for name, a in observation.actions.items():
            if a.calls or a.cold_starts or a.in_flight or a.queued or name in listed:
                self.in_use.setdefault(name, None)
            if a.calls:
                self.calls[name] = self.calls.get(name, 0) + a.calls
        self.walkers += ok_requests(observation.totals)

    def shares(self) -> dict[str, float]:
        """Each action in use: its share of all calls so far (`_get_action_utilization`)."""
        total = sum(self.calls.values())
        return {name: self.calls.get(name, 0) / total if total else 0.0 for name in self.in_use}


class LatencyWindow:
    """Mean walker latency over a phase, weighted by the successful runs of each window."""

    def __init__(self) -> None:
        self.sum_ms = 0.0
        self.runs = 0

    def add(self, totals: Totals) -> None:
        runs = ok_requests(totals)
        if runs and not math.isnan(totals.mean_ms):
            self.sum_ms += totals.mean_ms * runs
            self.runs += runs

    @property
    def mean_ms(self) -> float:
        return self.sum_ms / self.runs if self.runs else math.nan


# ---------------------------------------------------------------------------- default


@register("default")
class Default(Stateless):
    """JSORC's Default policy: changes nothing; an action loads on its first call, in its
    configured mode (`ActionsOptimizer.run`: "Default policy does not manage action
    automatically")."""

    def decide(self, observation: Observation) -> Decision:
        return Decision.keep("default: no automatic placement; actions load on first call")


# ---------------------------------------------------------------------------- evaluation


class Phase(StrEnum):
    WAITING = "waiting"  # no action in use yet
    EVALUATION = "evaluation"
    PERFORMANCE = "performance"


@register("evaluation")
class Evaluation:
    """JSORC's Evaluation policy (`_actionpolicy_evaluation`): try every configuration that
    fits, keep the fastest for a while, try again.

    Evaluation phase: enumerate every local/remote combination of the actions in use whose
    local copies fit (`enumerate_configs`), all-local first. For each in turn, ask for its
    changes (`staged_changes`, remote first) and start its clock only once all are applied
    and nothing is in transition (JSORC's `eval_switching`: switching time is not measured);
    after `eval_phase_s`, its metric is the mean walker latency of the successful runs since
    the clock started; if no walker ran, the phase is extended until one does. Performance
    phase: the fastest configuration (the first on ties) is applied and held for
    `perf_phase_s`, counted from the choice; then the evaluation starts again (or, if no
    walker ran in the phase, the hold starts again). `perf_phase_s` doubles whenever the
    winner is the same as the previous winner.

    `jsorc_quirks = true` reproduces the Jaseci 1.4 code: (1) the winner is compared with the
    configuration at the policy's start (`prev_best_config` was set once, never updated), not
    with the previous winner, to decide the doubling; (2) a move to remote did not unload the
    local copy (`load_action_remote(name)` without `unload_existing`). The contract has no
    placement "remote, local copy kept", so (2) is approximated: every change is asked for at
    once, and the old local copies (freed by the world only when the replica is ready) are
    resident while the new ones load, which is how the original could run out of memory.
    The original also spelled local "module" in its state, so its comparison (1) matched only
    remote actions; that spelling slip is not reproduced.
    """

    Params = EvaluationParams
    _label = "evaluation"

    def __init__(self, params: EvaluationParams | None = None) -> None:
        self.params = params or self.Params()
        self.reset(0)

    def reset(self, seed: int) -> None:
        self._usage = Usage()
        self._phase = Phase.WAITING
        self._initial: dict[str, Mode] | None = None  # the quirk's comparison
        self._target: Config | None = None
        self._settled_at: float | None = None  # when the target was seen applied
        self._window = LatencyWindow()
        self._extended = False
        self._configs: list[Config] = []
        self._index = 0
        self._results: list[float] = []
        self._cause = ""
        self._perf_s = self.params.perf_phase_s
        self._perf_start = 0.0
        self._perf_runs = 0
        self._winner: Config | None = None
        self._winner_ms = math.nan
        self._held: dict[str, Mode] = {}  # every action's mode when the winner was chosen
        self._doubled = False
        self._held_again = False

    def decide(self, observation: Observation) -> Decision:
        self._usage.observe(observation)
        if self._initial is None:
            self._initial = {n: a.desired.mode for n, a in observation.actions.items()}
        if self._phase is Phase.WAITING:
            if self._usage.in_use:
                self._start_round(observation, "")
        elif self._phase is Phase.EVALUATION:
            self._evaluate(observation)
        else:
            self._perform(observation)
        guarded = cold_start_guard(observation, self.params, self._target)
        placements = dict(guarded)
        if self._target is not None:
            placements.update(staged_changes(observation, self._target, self.params.replicas,
                                             remote_first=not self.params.jsorc_quirks))
        return Decision(placements, with_guarded(self._reason(), guarded))

    # ------------------------------------------------------------------ phases

    def _start_round(self, observation: Observation, cause: str) -> None:
        self._configs = enumerate_configs(list(self._usage.in_use), observation, self.params)
        self._index = 0
        self._results = []
        self._cause = cause
        self._phase = Phase.EVALUATION
        self._aim(observation, self._configs[0])

    def _aim(self, observation: Observation, config: Config) -> None:
        """Make `config` the target; its clock starts now if nothing needs to change."""
        self._target = config
        self._window = LatencyWindow()
        self._extended = False
        self._settled_at = observation.now if applied(observation, config) else None

    def _evaluate(self, observation: Observation) -> None:
        assert self._target is not None
        if self._settled_at is None:
            if applied(observation, self._target):
                self._settled_at = observation.now  # what ran before this is not measured
            return
        self._window.add(observation.totals)
        if observation.now - self._settled_at < self.params.eval_phase_s:
            return
        if not self._window.runs:
            self._extended = True  # no walker ran: stay in this phase
            return
        self._results.append(self._window.mean_ms)
        self._index += 1
        while (self._index < len(self._configs)
               and not still_fits(observation, self._configs[self._index], self.params)):
            self._results.append(math.inf)  # an action loaded since the round began took its room
            self._index += 1
        if self._index < len(self._configs):
            self._aim(observation, self._configs[self._index])
        else:
            self._choose(observation)

    def _choose(self, observation: Observation) -> None:
        best = min(range(len(self._results)), key=self._results.__getitem__)
        winner, winner_ms = self._configs[best], self._results[best]
        self._doubled = self._doubles(winner, winner_ms)
        if self._doubled:
            self._perf_s *= 2
        self._winner, self._winner_ms = winner, winner_ms
        self._held = {name: a.desired.mode for name, a in observation.actions.items()}
        self._held.update(winner)
        self._phase = Phase.PERFORMANCE
        self._perf_start = observation.now
        self._perf_runs = 0
        self._held_again = False
        self._aim(observation, winner)

    def _doubles(self, winner: Config, winner_ms: float) -> bool:
        if self.params.jsorc_quirks:
            initial = self._initial or {}
            return all(initial.get(name) is mode for name, mode in winner)
        return self._unchanged(winner)

    def _unchanged(self, winner: Config) -> bool:
        """Whether `winner` places every action as the previous winner left it (an action in
        use only since then compares with where it was when that winner was chosen)."""
        return self._winner is not None and all(
            self._held.get(name) is mode for name, mode in winner)

    def _perform(self, observation: Observation) -> None:
        self._perf_runs += ok_requests(observation.totals)
        cause = self._change_detected(observation)
        if cause:
            self._start_round(observation, cause)
        elif observation.now - self._perf_start >= self._perf_s:
            if self._perf_runs:
                self._start_round(observation, "")
            else:  # no walker ran in the phase: hold again
                self._perf_start = observation.now
                self._held_again = True

    def _change_detected(self, observation: Observation) -> str:
        """Why to leave the performance phase early ("" to stay). Evaluation never does."""
        return ""

    # ------------------------------------------------------------------ reasons

    def _reason(self) -> str:
        if self._phase is Phase.WAITING or self._target is None:
            return f"{self._label}: waiting for action calls"
        if self._phase is Phase.EVALUATION:
            label = f"evaluation ({self._cause})" if self._cause else "evaluation"
            step = f"{self._index + 1}/{len(self._configs)} {config_text(self._target)}"
            if self._settled_at is None:
                return f"{label}: switching to {step}"
            extended = "; no walker ran, phase extended" if self._extended else ""
            return f"{label}: trying {step}{extended}"
        doubled = ", winner unchanged: doubled" if self._doubled else ""
        again = "; no walker ran, holding again" if self._held_again else ""
        return (f"performance: holding {config_text(self._target)} for {self._perf_s:g} s "
                f"(best of {len(self._configs)}: {self._winner_ms:.1f} ms{doubled}){again}")


# ---------------------------------------------------------------------------- adaptive


@register("adaptive")
class Adaptive(Evaluation):
    """The research branch's Adaptive policy (`_actionpolicy_adaptive`): Evaluation that also
    watches for a change of workload.

    Once the winner is applied, each interval appends the mean latency (s) of that interval's
    successful walker runs (0 when none ran, as `_get_walker_latency`) to a series, and the set
    of actions called in the interval. After `window` intervals, each interval compares the
    latency sum of the last `window` entries with the window one step earlier
    (`_check_phase_change`): a move of more than `latency_change_s`, or a non-empty set of
    called actions different from the previous interval's, starts a new evaluation at once.
    The performance phase also ends after `perf_phase_s`, as Evaluation's; it doubles only if
    the winner is the previous winner and its latency improved by more than `improvement`
    against the latency it won with last time.

    The series starts once the winner is applied (the original started it at the choice, so
    its first windows measured the switch). `jsorc_quirks = true` reproduces the research
    code: every change is asked for at once (no waiting for remote moves); the series holds
    the mean latency since the performance phase began, not per interval (the benchmark was
    not cleared between intervals); and the improvement is measured against the previous
    winner's latency in this same evaluation, which is zero when the winner is unchanged, so
    the phase never doubles.
    """

    Params = AdaptiveParams
    params: AdaptiveParams
    _label = "adaptive"

    def __init__(self, params: AdaptiveParams | None = None) -> None:
        super().__init__(params or AdaptiveParams())

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self._tracking = False
        self._series: list[float] = []
        self._called: frozenset[str] = frozenset()
        self._since = LatencyWindow()  # for the quirk's cumulative series

    def _choose(self, observation: Observation) -> None:
        self._tracking = False
        self._series = []
        self._called = frozenset()
        self._since = LatencyWindow()
        super()._choose(observation)

    def _doubles(self, winner: Config, winner_ms: float) -> bool:
        if not self._unchanged(winner):
            return False
        before = self._winner_ms
        if self.params.jsorc_quirks:  # the previous winner's latency in this same evaluation
            before = winner_ms
        return before > 0 and (before - winner_ms) / before > self.params.improvement

    def _change_detected(self, observation: Observation) -> str:
        assert self._target is not None
        if not self._tracking:
            self._tracking = applied(observation, self._target)
            return ""
        totals = observation.totals
        self._since.add(totals)
        if self.params.jsorc_quirks:
            mean_ms = self._since.mean_ms if self._since.runs else 0.0
        else:
            mean_ms = totals.mean_ms if ok_requests(totals) else 0.0
        self._series.append(mean_ms / 1000.0)
        previous, self._called = self._called, frozenset(
            name for name, a in observation.actions.items() if a.calls)
        window = self.params.window
        if len(self._series) <= window:
            return ""
        moved = abs(sum(self._series[-window - 1:-1]) - sum(self._series[-window:]))
        if moved > self.params.latency_change_s:
            return f"latency window moved {moved:.2f} s"
        if self._called and self._called != previous:
            return "called actions changed"
        return ""


# ---------------------------------------------------------------------------- predictive


@register("predictive")
class Predictive:
    """The research branch's Predictive policy (`_actionpolicy_predictive`): place by share of
    calls, no trial.

    Every `walker_step` successful walker runs (the threshold starts at `walker_step` and rises
    by it at each crossing, and again when a switch completes), compute each action's share of
    all calls so far, sort the actions by share, and make them local greedily in that order
    while their local copies fit (an action that does not fit is skipped, smaller ones may
    still go local), the rest remote (`get_module_config`). The first crossing always plans;
    later ones plan again only if the set of actions changed or a share moved by more than
    `share_change` since the previous interval (`has_action_utilz_changed`). While a plan is
    being applied (`action_switching`) nothing is planned.

    `jsorc_quirks = true` reproduces the research code: the greedy pass goes through the
    actions in the order first called, not by share (`get_module_config` sorted them but then
    iterated over `module_history`), and every change is asked for at once. The research code
    used 0.75 of (node memory − runtime); here the memory rule is Evaluation's
    (`node_mem_threshold` of node memory, runtime included).
    """

    Params = PredictiveParams

    def __init__(self, params: PredictiveParams | None = None) -> None:
        self.params = params or PredictiveParams()
        self.reset(0)

    def reset(self, seed: int) -> None:
        self._usage = Usage()
        self._threshold = self.params.walker_step
        self._planned = False
        self._switching = False
        self._target: Config | None = None
        self._plan_shares: dict[str, float] = {}
        self._shares: dict[str, float] = {}

    def decide(self, observation: Observation) -> Decision:
        self._usage.observe(observation)
        shares = self._usage.shares()
        previous, self._shares = self._shares, shares
        if self._switching:
            assert self._target is not None
            if applied(observation, self._target):
                self._switching = False
                self._threshold += self.params.walker_step
        elif self._usage.walkers >= self._threshold:
            self._threshold += self.params.walker_step
            if not self._planned or shares_moved(previous, shares, self.params.share_change):
                self._plan(observation, shares)
        guarded = cold_start_guard(observation, self.params, self._target)
        placements = dict(guarded)
        if self._target is not None:
            placements.update(staged_changes(observation, self._target, self.params.replicas,
                                             remote_first=not self.params.jsorc_quirks))
        return Decision(placements, with_guarded(self._reason(), guarded))

    def _plan(self, observation: Observation, shares: Mapping[str, float]) -> None:
        self._planned = True
        self._plan_shares = dict(shares)
        self._target = greedy_config(observation, shares, self.params,
                                     by_share=not self.params.jsorc_quirks)
        self._switching = not applied(observation, self._target)

    def _reason(self) -> str:
        if self._target is None:
            return f"predictive: waiting for {self._threshold} walker runs"
        shares = ", ".join(f"{n} {s:.2f}" for n, s in self._plan_shares.items())
        verb = "switching to" if self._switching else "holding"
        return f"predictive: {verb} {config_text(self._target)} (call shares {shares})"
