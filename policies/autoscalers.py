"""Autoscalers for remote replicas: Kubernetes' HPA, Knative's KPA and Ray Serve's policy.

Each decides how many replicas an action that is *remote* should have; where an action runs
is someone else's decision (`policies.compose` pairs an autoscaler with a placement policy).
Only actions whose desired placement is remote are scaled and named in the decision, always
as `Placement.remote(n)` (KPA's scale to zero, when enabled, as `Placement.unloaded()`);
local and unloaded actions are left out, so they keep their placement.

The arithmetic of each algorithm is a set of pure functions (`hpa_*`, `kpa_scale`, `ray_*`),
transcribed from the projects' sources and tested alone against their own test tables; the
policy classes only keep the state those functions need between observations (metric
samples, recommendations, scale events, panic mode, delay counters) and feed them.

Metrics. The real autoscalers average a metric over a window of samples they collect; these
do the same with the window means the world reports every `interval_s`: each observation
gives a sample over `(previous now, now]` (weighted by its length), kept only while at least
one replica is ready (before that, calls go elsewhere and the remote metrics say nothing
about demand). A window mean overlaps the samples with `(now - window, now]`; a window
shorter than the control interval (KPA's 6 s panic window at `interval_s = 10`) is therefore
the last interval's mean. With no ready replica or no sample there is nothing to scale on
and the count is kept (HPA: "did not receive metrics for any ready pods"; Knative:
`ErrNoData`; Ray: the zero-replica path keeps the target).

Every `ceil` here ignores floating-point noise below 1e-9 (0.7 x 3 / 0.7 is 3, not 4), where
the Go and Python originals would round such noise up.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from policies.contract import ActionStats, Decision, Mode, Observation, Placement
from policies.registry import CheckedParams, PolicyError, param, register

_NOISE = 1e-9


def _ceil(x: float) -> int:
    return math.ceil(x - _NOISE)


def _floor(x: float) -> int:
    return math.floor(x + _NOISE)


# ============================================================================ shared machinery


class Samples:
    """Metric samples over successive windows, and their mean over a trailing window."""

    def __init__(self) -> None:
        self._items: deque[tuple[float, float, float]] = deque()  # (start, end, value)

    def add(self, start: float, end: float, value: float) -> None:
        if end > start and math.isfinite(value):
            self._items.append((start, end, value))

    def mean(self, now: float, window_s: float) -> float:
        """The time-weighted mean over `(now - window_s, now]`; NaN without a sample there."""
        lo = now - window_s
        total = weight = 0.0
        for start, end, value in self._items:
            overlap = min(end, now) - max(start, lo)
            if overlap > 0:
                total += value * overlap
                weight += overlap
        return total / weight if weight > 0 else math.nan

    def prune(self, now: float, keep_s: float) -> None:
        """Forget samples that ended before `now - keep_s`."""
        while self._items and self._items[0][1] <= now - keep_s:
            self._items.popleft()

    def clear(self) -> None:
        self._items.clear()


S = TypeVar("S")


class _Autoscaler(Generic[S]):
    """The loop shared by the three: per remote action, keep state, sample, scale.

    A subclass gives `_new_state` and `_scale`; `_scale` returns the placement for the
    action and a note for the decision's reason when it changes something.
    """

    label = ""

    def reset(self, seed: int) -> None:
        self._state: dict[str, S] = {}
        self._last_now: float | None = None

    def decide(self, observation: Observation) -> Decision:
        now = observation.now
        # The window the observation's means cover: since the previous one (the first one
        # covers at most one interval, and nothing before time 0).
        start = self._last_now if self._last_now is not None \
            else max(0.0, now - observation.interval_s)
        start = min(start, now)
        self._last_now = now
        remote = {name: a for name, a in observation.actions.items()
                  if a.desired.mode is Mode.REMOTE}
        for name in [n for n in self._state if n not in remote]:
            del self._state[name]  # no longer remote: start afresh if it comes back
        placements: dict[str, Placement] = {}
        notes: list[str] = []
        for name, stats in remote.items():
            state = self._state.get(name)
            if state is None:
                state = self._state[name] = self._new_state(stats, now)
            placement, note = self._scale(state, stats, start, now, observation.interval_s)
            placements[name] = placement
            if placement != stats.desired:
                notes.append(f"{name} {stats.desired} -> {placement} ({note})")
        reason = f"{self.label}: {'; '.join(notes)}" if notes else ""
        return Decision(placements, reason)

    def _new_state(self, stats: ActionStats, now: float) -> S:
        raise NotImplementedError

    def _scale(self, state: S, stats: ActionStats, start: float, now: float,
               interval_s: float) -> tuple[Placement, str]:
        raise NotImplementedError


def _check_bounds(who: str, low: int, high: int) -> None:
    if low > high:
        raise PolicyError(f"{who}: min_replicas = {low} exceeds max_replicas = {high}")


# ============================================================================ HPA


class HpaMetric(StrEnum):
    UTILISATION = "utilisation"  # busy fraction of the ready replicas' cores (as CPU)
    IN_FLIGHT = "in_flight"  # remote calls in the system (served or queued) per ready replica


def hpa_replica_count(current: int, ready: int, unready: int, ratio: float,
                      tolerance: float) -> int:
    """The replica calculator: `GetResourceReplicas` / `calcPlainMetricReplicas`.

    kubernetes/kubernetes pkg/controller/podautoscaler/replica_calculator.go. `ratio` is the
    metric averaged over the `ready` replicas divided by its target. Unready replicas
    (starting) are left out; on a scale-up they are counted at 0 % and the ratio computed
    again, and the count is kept if that would be within tolerance or reverse the direction.
    Every replica that is measured is counted, so there are no "missing" pods here.
    """
    if unready == 0 or ratio <= 1.0:
        if abs(1.0 - ratio) <= tolerance:
            return current
        return _ceil(ratio * ready)
    counted = ready + unready
    new_ratio = ratio * ready / counted  # the unready replicas at 0 %
    if abs(1.0 - new_ratio) <= tolerance or new_ratio < 1.0:
        return current
    new = _ceil(new_ratio * counted)
    return current if new < current else new


def hpa_stabilise(recommendations: Iterable[tuple[float, int]], now: float, desired: int,
                  current: int, up_window_s: float, down_window_s: float) -> int:
    """`stabilizeRecommendationWithBehaviors` (horizontal.go): bring `current` to within the
    lowest recommendation of the scale-up window and the highest of the scale-down window,
    `desired` included, so a scale-down goes only as low as the highest recent
    recommendation. Recommendations exactly `window` old are out (Go's `After`)."""
    up = down = desired
    for at, recommended in recommendations:
        if at > now - up_window_s:
            up = min(up, recommended)
        if at > now - down_window_s:
            down = max(down, recommended)
    return min(max(current, up), down)


def _changed_in(events: Iterable[tuple[float, int]], now: float, period_s: float) -> int:
    """`getReplicasChangePerPeriod`: replicas added (or removed) in the last `period_s`."""
    return sum(change for at, change in events if at > now - period_s)


def hpa_scale_up_limit(current: int, up_events: Sequence[tuple[float, int]],
                       down_events: Sequence[tuple[float, int]], now: float, *, pods: int,
                       percent: float, period_s: float) -> int:
    """`calculateScaleUpLimitWithScalingRules` with the two default policies (a Pods and a
    Percent policy over one period, `selectPolicy: Max`): from the count at the start of the
    period, at most `pods` more or `percent` % more, whichever allows more."""
    start = current - _changed_in(up_events, now, period_s) \
        + _changed_in(down_events, now, period_s)
    return max(start + pods, _ceil(start * (1.0 + percent / 100.0)))


def hpa_scale_down_limit(current: int, up_events: Sequence[tuple[float, int]],
                         down_events: Sequence[tuple[float, int]], now: float, *,
                         percent: float, period_s: float) -> int:
    """`calculateScaleDownLimitWithBehaviors` with the default Percent policy: at most
    `percent` % fewer than at the start of the period (Go truncates)."""
    start = current - _changed_in(up_events, now, period_s) \
        + _changed_in(down_events, now, period_s)
    return int(start * (1.0 - percent / 100.0))


def hpa_rate_limit(desired: int, current: int, up_limit: int, down_limit: int,
                   min_replicas: int, max_replicas: int) -> int:
    """`convertDesiredReplicasWithBehaviorRate`: the rate limits and min/max replicas."""
    if desired > current:
        return min(desired, max_replicas, max(up_limit, current))
    if desired < current:
        return max(desired, min_replicas, min(down_limit, current))
    return desired


@dataclass(frozen=True)
class HpaParams(CheckedParams):
    metric: str = param(
        "utilisation",
        "utilisation (busy fraction of the ready replicas' cores, HPA's CPU) or in_flight "
        "(remote calls in the system per ready replica, a custom per-pod metric)")
    target: float = param(
        0.8, "target per ready replica, as a fraction of its cores: busy fraction "
        "(utilisation) or calls in the system (in_flight); Kubernetes' default is 80 % CPU",
        minimum=0.01)
    tolerance: float = param(0.1, "no change while |metric/target - 1| <= this", minimum=0.0)
    sync_period_s: float = param(15.0, "decide at most once per this many seconds",
                                 minimum=0.0)
    min_replicas: int = param(1, "fewest replicas", minimum=1)
    max_replicas: int = param(100, "most replicas (Kubernetes requires one; no default)",
                              minimum=1)
    scale_up_stabilisation_s: float = param(
        0.0, "a scale-up goes only as high as the lowest recommendation of this window",
        minimum=0.0, maximum=3600.0)
    scale_down_stabilisation_s: float = param(
        300.0, "a scale-down goes only as low as the highest recommendation of this window",
        minimum=0.0, maximum=3600.0)
    scale_up_pods: int = param(4, "a scale-up may add this many replicas per period",
                               minimum=0)
    scale_up_percent: float = param(100.0, "... or this % more, whichever is larger",
                                    minimum=0.0)
    scale_up_period_s: float = param(15.0, "period of the scale-up limits", minimum=1.0,
                                     maximum=1800.0)
    scale_down_percent: float = param(100.0, "a scale-down may remove this % per period",
                                      minimum=0.0, maximum=100.0)
    scale_down_period_s: float = param(15.0, "period of the scale-down limit", minimum=1.0,
                                       maximum=1800.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            HpaMetric(self.metric)
        except ValueError:
            raise PolicyError(f"hpa.metric must be one of {[m.value for m in HpaMetric]}, "
                              f"got {self.metric!r}") from None
        _check_bounds("hpa", self.min_replicas, self.max_replicas)


@dataclass
class _HpaState:
    samples: Samples = field(default_factory=Samples)  # since the last sync
    last_sync: float | None = None
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    up_events: list[tuple[float, int]] = field(default_factory=list)
    down_events: list[tuple[float, int]] = field(default_factory=list)


@register("hpa")
class Hpa(_Autoscaler[_HpaState]):
    """Kubernetes' Horizontal Pod Autoscaler (autoscaling/v2 with the default behavior).

    Sources: kubernetes/kubernetes pkg/controller/podautoscaler/horizontal.go
    (`reconcileAutoscaler`, `recordInitialRecommendation`,
    `normalizeDesiredReplicasWithBehaviors`, `stabilizeRecommendationWithBehaviors`,
    `convertDesiredReplicasWithBehaviorRate`), replica_calculator.go (tolerance 0.1,
    unready pods), pkg/apis/autoscaling/v2/defaults.go (scale up by max(4 pods, 100 %) per
    15 s, down by 100 % per 15 s; 80 % CPU when no metric is given) and the
    kube-controller-manager defaults (sync period 15 s, downscale stabilisation 300 s).

    Every `sync_period_s` of `observation.now` (at `interval_s = 10` the 15 s period
    makes that every 20 s), per remote action: the metric averaged over
    the samples since the last sync; `current` = the desired replica count (the Deployment's
    spec), `ready` = the replicas ready, `unready` = the rest (starting). The first sync
    records `current` as a recommendation, so nothing scales down in the first 300 s.
    `min_replicas` and `max_replicas` bound it as HPA's spec does.

    Metric. `utilisation` (the default: HPA's own default is CPU utilisation at 80 %): the
    busy replica cores (`remote_busy_cores`, averaged over the samples since the last sync)
    over the cores of the replicas ready at the sync. It saturates at 100 %, so under
    overload HPA grows by at most 1/target per sync. `in_flight` is `remote_concurrency`
    (its mean since the last sync) per replica ready at the sync, against
    `target x replica_cores`: it includes queued calls, so it keeps rising under overload
    and scales up faster; it also counts network time.
    """

    Params = HpaParams
    label = "hpa"

    def __init__(self, params: HpaParams | None = None) -> None:
        self.params = params or HpaParams()
        self.reset(0)

    def _new_state(self, stats: ActionStats, now: float) -> _HpaState:
        return _HpaState()

    def _total(self, stats: ActionStats) -> float:
        """The window's summed metric over all replicas: busy replica cores (utilisation)
        or remote calls in the system (in_flight); NaN with no replica ready."""
        if stats.replicas_ready == 0:
            return math.nan
        if self.params.metric == HpaMetric.UTILISATION:
            return stats.remote_busy_cores
        return stats.remote_concurrency

    def _scale(self, state: _HpaState, stats: ActionStats, start: float, now: float,
               interval_s: float) -> tuple[Placement, str]:
        p = self.params
        current = stats.desired.replicas
        state.samples.add(start, now, self._total(stats))
        if state.last_sync is not None and now - state.last_sync < p.sync_period_s:
            return stats.desired, ""
        since = state.last_sync if state.last_sync is not None else start
        total = state.samples.mean(now, now - since) if now > since else math.nan
        # Per replica ready now, as HPA's usage ratio over the pods it has metrics of: a
        # replica that became ready late in the period adds only its few busy seconds
        # (Kubernetes counts a pod without metrics as 0 % on a scale-up). Dividing each
        # window by its own ready count instead would average 4 saturated windows with one
        # of 5 replicas and ask 5 replicas for 6.
        ready_cores = stats.replicas_ready * max(1, stats.replica_cores)
        metric = total / ready_cores if ready_cores else math.nan
        state.samples.clear()
        state.last_sync = now
        if not state.recommendations:
            state.recommendations.append((now, current))  # recordInitialRecommendation
        if current > p.max_replicas:
            desired, note = p.max_replicas, "above max_replicas"
        elif current < p.min_replicas:
            desired, note = p.min_replicas, "below min_replicas"
        elif math.isnan(metric):
            return stats.desired, ""  # no metrics for any ready replica: no rescale
        else:
            ratio = metric / p.target
            unready = max(0, current - stats.replicas_ready)
            proposed = hpa_replica_count(current, stats.replicas_ready, unready, ratio,
                                         p.tolerance)
            desired = self._normalise(state, now, proposed, current)
            note = f"{p.metric} {metric:.2f} for {p.target:g}, recommends {proposed}"
        if desired > current:
            state.up_events.append((now, desired - current))
        elif desired < current:
            state.down_events.append((now, current - desired))
        return Placement.remote(desired), note

    def _normalise(self, state: _HpaState, now: float, proposed: int, current: int) -> int:
        """`normalizeDesiredReplicasWithBehaviors`: stabilise, then the rate limits."""
        p = self.params
        stabilised = hpa_stabilise(state.recommendations, now, proposed, current,
                                   p.scale_up_stabilisation_s, p.scale_down_stabilisation_s)
        keep = max(p.scale_up_stabilisation_s, p.scale_down_stabilisation_s)
        state.recommendations = [(t, r) for t, r in state.recommendations if t > now - keep]
        state.recommendations.append((now, proposed))
        longest = max(p.scale_up_period_s, p.scale_down_period_s)
        state.up_events = [(t, c) for t, c in state.up_events if t > now - longest]
        state.down_events = [(t, c) for t, c in state.down_events if t > now - longest]
        up = hpa_scale_up_limit(current, state.up_events, state.down_events, now,
                                pods=p.scale_up_pods, percent=p.scale_up_percent,
                                period_s=p.scale_up_period_s)
        down = hpa_scale_down_limit(current, state.up_events, state.down_events, now,
                                    percent=p.scale_down_percent,
                                    period_s=p.scale_down_period_s)
        return hpa_rate_limit(stabilised, current, up, down, p.min_replicas, p.max_replicas)


# ============================================================================ KPA


@dataclass(frozen=True)
class KpaPanic:
    """Knative's panic state: when the panic metric was last over the threshold, and the
    most pods asked for since panic began (None and 0 when not panicking)."""

    since: float | None = None
    max_pods: int = 0


def kpa_scale(*, ready: int, stable: float, panic: float, target: float,
              panic_threshold: float, max_scale_up_rate: float, max_scale_down_rate: float,
              stable_window_s: float, now: float, state: KpaPanic) -> tuple[int, KpaPanic]:
    """`autoscaler.Scale` (knative/serving pkg/autoscaler/scaling/autoscaler.go).

    `stable` and `panic` are the total concurrency averaged over the stable and panic
    windows, `target` the concurrency one pod should hold. The desired count is kept within
    [floor(ready / max_scale_down_rate), ceil(ready x max_scale_up_rate)] (ready at least
    1). Panic begins when ceil(panic / target) / ready >= `panic_threshold`; while
    panicking the larger of the stable and panic counts is used and never decreases; panic
    ends once a whole stable window has passed since the panic metric was last over the
    threshold.
    """
    ready_f = max(1.0, float(ready))
    max_up = math.ceil(max_scale_up_rate * ready_f)
    max_down = _floor(ready_f / max_scale_down_rate)  # the revision is reachable
    stable_pods = _ceil(stable / target)
    panic_pods = _ceil(panic / target)
    desired_stable = min(max(stable_pods, max_down), max_up)
    desired_panic = min(max(panic_pods, max_down), max_up)
    over = panic_pods / ready_f >= panic_threshold
    since, max_pods = state.since, state.max_pods
    if over:
        since = now  # begin panicking, or extend the panic
    elif since is not None and since + stable_window_s < now:
        since, max_pods = None, 0  # the surge has made its way into the stable metric
    desired = desired_stable
    if since is not None:
        desired = max(desired, desired_panic)
        max_pods = max(max_pods, desired)  # no scale-down while panicking
        desired = max_pods
    return desired, KpaPanic(since, max_pods)


@dataclass(frozen=True)
class KpaParams(CheckedParams):
    target_concurrency: float = param(
        0.0, "calls one replica should hold (Knative's container concurrency); 0: the "
        "replica's cores, the hard limit our replicas have (Knative's default is 100)",
        minimum=0.0)
    target_utilisation: float = param(0.7, "fraction of target_concurrency to aim for",
                                      minimum=0.01, maximum=1.0)
    stable_window_s: float = param(60.0, "window of the stable concurrency", minimum=6.0,
                                   maximum=3600.0)
    panic_window_percentage: float = param(10.0, "panic window, % of the stable window",
                                           minimum=1.0, maximum=100.0)
    panic_threshold_percentage: float = param(
        200.0, "panic when the panic window asks for this % of the ready replicas",
        minimum=110.0, maximum=1000.0)
    max_scale_up_rate: float = param(1000.0, "at most this many times the ready replicas",
                                     minimum=1.0)
    max_scale_down_rate: float = param(2.0, "at least the ready replicas divided by this",
                                       minimum=1.0)
    min_replicas: int = param(0, "fewest replicas (Knative's min-scale); 0 lets "
                              "scale_to_zero work, else at least 1", minimum=0)
    max_replicas: int = param(100, "most replicas (Knative's max-scale; 0 there is "
                              "unlimited)", minimum=1)
    scale_to_zero: bool = param(False, "unload an action with no remote calls for a stable "
                                "window and then scale_to_zero_grace_s")
    scale_to_zero_grace_s: float = param(30.0, "time inactive before the last replica goes",
                                         minimum=0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("max_scale_up_rate", "max_scale_down_rate"):
            if getattr(self, name) <= 1.0:
                raise PolicyError(f"kpa.{name} must be greater than 1.0, "
                                  f"got {getattr(self, name)}")
        _check_bounds("kpa", self.min_replicas, self.max_replicas)


@dataclass
class _KpaState:
    active_since: float
    panic: KpaPanic
    samples: Samples = field(default_factory=Samples)
    inactive_since: float | None = None


@register("kpa")
class Kpa(_Autoscaler[_KpaState]):
    """Knative's Pod Autoscaler (KPA), concurrency metric.

    Sources: knative/serving pkg/autoscaler/scaling/autoscaler.go (`Scale`, `newAutoscaler`:
    start in panic mode when more than one pod is ready), pkg/autoscaler/config/config.go
    (defaults: stable window 60 s, panic window 10 %, panic threshold 200 %, max scale-up
    rate 1000, max scale-down rate 2, target 100 x 70 %, scale-to-zero grace 30 s),
    pkg/reconciler/autoscaling/resources `ResolveMetricTarget` (target = max(0.01,
    container concurrency, or 100 without one, x utilisation)),
    pkg/reconciler/autoscaling/kpa/scaler.go (`handleScaleToZero`, min/max scale bounds).

    Per remote action and every observation (Knative ticks every 2 s): stable and panic
    concurrency = the window means of `remote_concurrency` (calls queued or served, summed
    over replicas: what Knative's queue-proxies report); `ready` = replicas ready.
    Target: Knative uses a revision's container concurrency (its hard limit) x 70 % when it
    has one, else 100 x 70 %; our replicas serve `replica_cores` calls at once, so the
    default target is `replica_cores x 0.7`.

    Scale to zero (off by default here, on in Knative: unloading makes the next call a cold
    start in the action's `default_mode`, which may be local): when the recommendation is 0
    the action is marked inactive once it has been active for a stable window, and unloaded
    `scale_to_zero_grace_s` after that; until then its count is kept. Without it, 0 is 1.
    """

    Params = KpaParams
    label = "kpa"

    def __init__(self, params: KpaParams | None = None) -> None:
        self.params = params or KpaParams()
        self.reset(0)

    def _new_state(self, stats: ActionStats, now: float) -> _KpaState:
        # "We always start in the panic mode, if the deployment is scaled up over 1 pod":
        # with no history, hold the current scale until the windows fill.
        ready = stats.replicas_ready
        return _KpaState(now, KpaPanic(now, ready) if ready > 1 else KpaPanic())

    def target(self, stats: ActionStats) -> float:
        """Concurrency one replica should hold (Knative's `TargetValue`, at least 0.01)."""
        p = self.params
        total = p.target_concurrency or float(stats.replica_cores)
        return max(0.01, total * p.target_utilisation)

    def _scale(self, state: _KpaState, stats: ActionStats, start: float, now: float,
               interval_s: float) -> tuple[Placement, str]:
        p = self.params
        window = p.stable_window_s
        if stats.replicas_ready > 0:
            state.samples.add(start, now, stats.remote_concurrency)
        state.samples.prune(now, window)
        stable = state.samples.mean(now, window)
        if stats.replicas_ready == 0 or math.isnan(stable):
            return stats.desired, ""
        panic = state.samples.mean(now, window * p.panic_window_percentage / 100.0)
        target = self.target(stats)
        desired, state.panic = kpa_scale(
            ready=stats.replicas_ready, stable=stable, panic=panic, target=target,
            panic_threshold=p.panic_threshold_percentage / 100.0,
            max_scale_up_rate=p.max_scale_up_rate, max_scale_down_rate=p.max_scale_down_rate,
            stable_window_s=window, now=now, state=state.panic)
        desired = min(max(desired, p.min_replicas), p.max_replicas)
        mode = "panic" if state.panic.since is not None else "stable"
        note = f"{mode}: concurrency {stable:.2f} stable, {panic:.2f} panic, target {target:g}"
        if desired > 0:
            state.inactive_since = None
            return Placement.remote(desired), note
        return self._to_zero(state, stats, now, note)

    def _to_zero(self, state: _KpaState, stats: ActionStats, now: float,
                 note: str) -> tuple[Placement, str]:
        """`handleScaleToZero`: the recommendation is 0."""
        p = self.params
        if not p.scale_to_zero:
            return Placement.remote(1), note
        if state.inactive_since is None:
            if now - state.active_since < p.stable_window_s:
                return Placement.remote(1), note  # not active for a stable window yet
            state.inactive_since = now  # mark inactive; the scale stays
        if now - state.inactive_since >= p.scale_to_zero_grace_s:
            return Placement.unloaded(), f"{note}; inactive for {p.scale_to_zero_grace_s:g} s"
        return stats.desired, ""


# ============================================================================ Ray Serve


def ray_desired(total_ongoing: float, running: int, target_ongoing: float) -> float:
    """`_core_replica_queue_length_policy`: running x (total / (target x running))."""
    error_ratio = total_ongoing / (target_ongoing * running)
    return running * error_ratio


def ray_apply_scaling_factors(desired: float, current: int, upscaling_factor: float,
                              downscaling_factor: float) -> int:
    """`_apply_scaling_factors`: move `factor` of the way from `current` to `desired`; a
    scale-down stuck by a small factor still removes one replica."""
    delta = desired - current
    factor = upscaling_factor if delta > 0 else downscaling_factor
    scaled = _ceil(current + factor * delta)
    if _ceil(desired) < current and scaled == current:
        scaled -= 1
    return scaled


def ray_apply_delay(desired: int, target: int, counter: int, upscale_periods: int,
                    downscale_periods: int) -> tuple[int, int]:
    """`_apply_delay_logic`: change the target only after more than `upscale_periods`
    consecutive scale-up decisions (more than `downscale_periods` scale-down ones); a
    decision the other way, or none, resets the count. Returns (replicas, counter)."""
    if desired > target:
        counter = max(counter, 0) + 1
        if counter > upscale_periods:
            return desired, 0
        return target, counter
    if desired < target:
        counter = min(counter, 0) - 1
        if counter < -downscale_periods:
            return max(1, desired), 0
        return target, counter
    return target, 0


@dataclass(frozen=True)
class RayServeParams(CheckedParams):
    target_ongoing_requests: float = param(2.0, "calls in the system per running replica",
                                           minimum=0.001)
    min_replicas: int = param(1, "fewest replicas", minimum=1)
    max_replicas: int = param(100, "most replicas (Ray's AutoscalingConfig.default())",
                              minimum=1)
    upscale_delay_s: float = param(30.0, "consecutive scale-up decisions needed",
                                   minimum=0.0)
    downscale_delay_s: float = param(600.0, "consecutive scale-down decisions needed",
                                     minimum=0.0)
    upscaling_factor: float = param(1.0, "gain on scale-ups (Ray's smoothing factor)",
                                    minimum=0.001)
    downscaling_factor: float = param(1.0, "gain on scale-downs (smoothing factor)",
                                      minimum=0.001)
    look_back_period_s: float = param(30.0, "window the ongoing calls are averaged over",
                                      minimum=0.001)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bounds("ray_serve", self.min_replicas, self.max_replicas)


@dataclass
class _RayState:
    samples: Samples = field(default_factory=Samples)
    counter: int = 0  # consecutive scale-up (> 0) or scale-down (< 0) decisions


def _periods(delay_s: float, interval_s: float) -> int:
    return _floor(delay_s / interval_s) if interval_s > 0 else 0


@register("ray_serve")
class RayServe(_Autoscaler[_RayState]):
    """Ray Serve's default autoscaling policy (`replica_queue_length_autoscaling_policy`).

    Sources: ray-project/ray python/ray/serve/autoscaling_policy.py
    (`_core_replica_queue_length_policy`, `_apply_scaling_factors`, `_apply_bounds`,
    `_apply_delay_logic`, the zero-replica path), python/ray/serve/config.py
    (`AutoscalingConfig`: target_ongoing_requests 2, upscale_delay_s 30, downscale_delay_s
    600, smoothing factor 1.0, look_back_period_s 30, min_replicas 1; max_replicas 100 as
    in `AutoscalingConfig.default()`).

    Per remote action and every observation (Ray's control loop runs every 0.1 s; the
    delays count consecutive decisions, `delay / interval_s` of them): total ongoing calls =
    the mean of `remote_concurrency` over `look_back_period_s`; desired = total / target;
    the scaling factors apply against the running (ready) replicas, then min/max, then the
    delay against the current target (the desired count). With no replica running the
    target is kept. `min_replicas` is at least 1: Ray's scale to zero is not offered.
    """

    Params = RayServeParams
    label = "ray_serve"

    def __init__(self, params: RayServeParams | None = None) -> None:
        self.params = params or RayServeParams()
        self.reset(0)

    def _new_state(self, stats: ActionStats, now: float) -> _RayState:
        return _RayState()

    def _scale(self, state: _RayState, stats: ActionStats, start: float, now: float,
               interval_s: float) -> tuple[Placement, str]:
        p = self.params
        running, target = stats.replicas_ready, stats.desired.replicas
        if running > 0:
            state.samples.add(start, now, stats.remote_concurrency)
        state.samples.prune(now, p.look_back_period_s)
        total = state.samples.mean(now, p.look_back_period_s)
        if running == 0 or math.isnan(total):
            return stats.desired, ""
        wanted = ray_desired(total, running, p.target_ongoing_requests)
        scaled = ray_apply_scaling_factors(wanted, running, p.upscaling_factor,
                                           p.downscaling_factor)
        bounded = max(p.min_replicas, min(p.max_replicas, scaled))
        replicas, state.counter = ray_apply_delay(
            bounded, target, state.counter, _periods(p.upscale_delay_s, interval_s),
            _periods(p.downscale_delay_s, interval_s))
        return Placement.remote(replicas), f"ongoing {total:.2f} for {p.target_ongoing_requests:g}"

