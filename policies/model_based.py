"""`model_based`: predict the walker latency of candidate placements with a queueing model,
and move to the best one that fits. No trial-and-error phases.

What it estimates, from the observations alone:
- per action: mean local and remote service time and network time (the world's "observed so
  far" means; an unseen mode borrows the other's, scaled by the local/remote ratio seen on
  other actions), calls per request (the apps' `calls_per_request`, smoothed), its memory;
- per request: the walker's own compute on the node (node busy time minus local calls);
- the request population, by Little's law (request rate x mean latency, smoothed, >= 1);
- per action, how long a placement change takes (timed on the observed transitions).

How it predicts: a candidate placement is a closed queueing network solved by approximate
MVA (`policies.queueing.closed_network`): the node's cores are one multi-server station
(compute plus every local call), each remote action's replicas another (replicas x
`replica_cores` servers), the network a delay. One client gives exact sums of service
times; many clients see contention for the node's cores and the replicas.

How it chooses: every subset of the actions in use that fits under `memory_cap` of the node
(beside the runtime) is a candidate local set (a greedy search beyond 8 actions); remote
actions get replicas greedily while a replica saves more than `replica_price_ms` of mean
latency (within `max_replicas` and `replica_budget`). It moves only if the predicted gain,
after amortising the changes' start-up time over `horizon_s`, exceeds `min_gain` of the
current prediction; it plans again every `replan_s`, or at once after an out-of-memory.

How it moves without running out of memory: remote changes first; a local load is asked for
only when it fits beside everything the node holds now (copies still draining included).
Before any call is seen it packs the smallest actions locally under the cap and the rest
remote, so no action is ever cold-started into a node it does not fit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from policies.contract import ActionStats, Decision, Mode, Observation, Placement
from policies.queueing import Station, closed_network
from policies.registry import CheckedParams, param, register

GREEDY_ABOVE = 8  # actions in use beyond which local sets are chosen greedily, not enumerated


@dataclass(frozen=True)
class ModelBasedParams(CheckedParams):
    memory_cap: float = param(0.9, "fraction of node memory that local copies and the runtime "
                              "may use", minimum=0.1, maximum=1.0)
    replica_price_ms: float = param(1.0, "mean walker latency (ms) a replica must save to be "
                                    "worth adding", minimum=0.0)
    max_replicas: int = param(8, "replicas of one action at most", minimum=1)
    replica_budget: int = param(0, "replicas of all actions at most (0: no budget)", minimum=0)
    horizon_s: float = param(600.0, "a change's start-up time is amortised over this horizon",
                             minimum=1.0)
    min_gain: float = param(0.02, "move only for a predicted gain above this fraction",
                            minimum=0.0, maximum=1.0)
    replan_s: float = param(30.0, "plan again at most this often (and after out-of-memory)",
                            minimum=0.0)
    smoothing: float = param(0.3, "weight of the newest window in smoothed estimates",
                             minimum=0.01, maximum=1.0)
    network_prior_ms: float = param(10.0, "network time assumed for an action never seen "
                                    "remote while no action has been", minimum=0.0)
    startup_prior_s: float = param(30.0, "change time assumed until one is observed",
                                   minimum=0.0)
    runtime_memory_mb: float = param(300.0, "runtime memory assumed until measured",
                                     minimum=0.0)


@dataclass
class _Action:
    """What the policy has learnt of one action (its own mutable state)."""

    memory_mb: float = 0.0
    replica_cores: int = 1
    visits: float = 0.0  # smoothed calls per request
    local_ms: float = math.nan
    remote_ms: float = math.nan
    network_ms: float = math.nan
    switch_s: float = math.nan  # smoothed duration of its placement changes
    moving_since: float | None = None


@dataclass
class _State:
    actions: dict[str, _Action] = field(default_factory=dict)
    population: float = 0.0  # smoothed; 0 until the first window with requests
    compute_ms: float = 0.0
    runtime_mb: float = math.nan
    target: dict[str, Placement] = field(default_factory=dict)
    planned_at: float = -math.inf
    oom_seen: int = 0
    seen_traffic: bool = False


@register("model_based")
class ModelBased:
    """Predicts walker latency with a queueing model; picks placement and replicas (ours)."""

    Params = ModelBasedParams

    def __init__(self, params: ModelBasedParams | None = None) -> None:
        self.params = params or ModelBasedParams()
        self._s = _State()

    def reset(self, seed: int) -> None:
        self._s = _State()  # deterministic: the seed is not needed

    # ------------------------------------------------------------------ decide

    def decide(self, observation: Observation) -> Decision:
        s = self._s
        self._learn(observation)
        moving = any(a.transition for a in observation.actions.values())
        oom = observation.node.oom_events > s.oom_seen
        s.oom_seen = observation.node.oom_events
        reason = "model: holding"
        if not s.target and observation.actions:
            s.target = self._initial_plan(observation)
            s.planned_at = observation.now
            reason = "model: initial packing by memory (no calls seen yet)"
        elif s.seen_traffic and (oom or observation.now - s.planned_at >= self.params.replan_s):
            # While a change is under way only replicas may be added: a burst must not wait
            # for the last scale-up to finish, but nothing else moves on half-known effects.
            reason = self._replan(observation, grow_only=moving and not oom) or reason
        return Decision(self._stage(observation), reason)

    # ------------------------------------------------------------------ learning

    def _learn(self, obs: Observation) -> None:
        s, w = self._s, self.params.smoothing
        for name, stats in obs.actions.items():
            a = s.actions.setdefault(name, _Action())
            a.memory_mb, a.replica_cores = stats.local_memory_mb, max(stats.replica_cores, 1)
            a.local_ms = _known(stats.local_service_ms, a.local_ms)
            a.remote_ms = _known(stats.remote_service_ms, a.remote_ms)
            a.network_ms = _known(stats.network_ms, a.network_ms)
            self._time_moves(a, stats, obs.now)
        requests = {n: app.requests for n, app in obs.apps.items() if app.requests}
        total = sum(requests.values())
        if total:
            s.seen_traffic = True
            visits: dict[str, float] = {}
            for app_name, count in requests.items():
                for action, per in obs.apps[app_name].calls_per_request.items():
                    visits[action] = visits.get(action, 0.0) + per * count / total
            for name, a in s.actions.items():
                a.visits = _ewma(a.visits, visits.get(name, 0.0), w)
            rate = obs.totals.requests / obs.interval_s if obs.interval_s > 0 else 0.0
            # A window with cold starts holds requests that waited for a load or a replica
            # start: their latency says nothing about contention, so the population (by
            # Little's law) is learnt from the others only.
            cold = any(st.cold_starts for st in obs.actions.values())
            if math.isfinite(obs.totals.mean_ms) and not cold:
                sample = rate * obs.totals.mean_ms / 1000
            else:  # the calls in the system right now (each request is at one action)
                sample = float(sum(st.in_flight + st.queued for st in obs.actions.values()))
            s.population = _ewma(s.population, max(1.0, sample), w)
            busy_ms = obs.node.cpu_utilisation * obs.node.cores * obs.interval_s * 1000.0
            local_ms = sum(st.latency_local.count * _or(st.local_service_ms, 0.0)
                           for st in obs.actions.values())
            s.compute_ms = _ewma(s.compute_ms, max(0.0, (busy_ms - local_ms) / total), w)
        if not any(st.transition for st in obs.actions.values()):
            held = sum(st.local_memory_mb for st in obs.actions.values()
                       if st.placement.mode is Mode.LOCAL)
            s.runtime_mb = max(0.0, obs.node.memory_used_mb - held)

    def _time_moves(self, a: _Action, stats: ActionStats, now: float) -> None:
        if stats.transition and a.moving_since is None:
            a.moving_since = now
        elif not stats.transition and a.moving_since is not None:
            took = now - a.moving_since
            a.switch_s = took if math.isnan(a.switch_s) else _ewma(a.switch_s, took, 0.5)
            a.moving_since = None

    # ------------------------------------------------------------------ planning

    def _initial_plan(self, obs: Observation) -> dict[str, Placement]:
        room = self._room(obs)
        plan = {}
        for name, stats in sorted(obs.actions.items(), key=lambda kv: kv[1].local_memory_mb):
            if stats.local_memory_mb <= room:
                plan[name] = Placement.local()
                room -= stats.local_memory_mb
            else:
                plan[name] = Placement.remote(1)
        return plan

    def _room(self, obs: Observation) -> float:
        runtime = self._s.runtime_mb
        if math.isnan(runtime):
            runtime = self.params.runtime_memory_mb
        return self.params.memory_cap * obs.node.memory_total_mb - runtime

    def _replan(self, obs: Observation, grow_only: bool = False) -> str:
        s, p = self._s, self.params
        s.planned_at = obs.now
        in_use = [n for n, a in s.actions.items() if a.visits > 0 and self._known(a)]
        if not in_use:
            return ""
        current = {n: s.target.get(n, obs.actions[n].desired) for n in in_use
                   if n in obs.actions}
        fixed_mb = sum(obs.actions[n].local_memory_mb for n in obs.actions
                       if n not in in_use and s.target.get(n, obs.actions[n].desired).mode
                       is Mode.LOCAL)
        room = self._room(obs) - fixed_mb
        if grow_only:
            best = self._with_replicas(dict(current), obs.node.cores)
            best_cost = self._cost(best, obs.node.cores)
        else:
            best, best_cost = self._search(in_use, room, obs.node.cores)
        now_cost = self._cost(current, obs.node.cores)
        changed = [n for n in in_use if best[n] != current.get(n)]
        if not changed:
            return ""
        switch = max(_or(s.actions[n].switch_s, p.startup_prior_s) for n in changed)
        gain = (now_cost - best_cost) * max(0.0, 1.0 - switch / p.horizon_s)
        if not (math.isinf(now_cost) or gain > p.min_gain * now_cost):
            return ""
        s.target.update(best)
        shown = ", ".join(f"{n}={best[n]}" for n in sorted(changed))
        return f"model: {shown} (predicted {best_cost:.1f} ms, was {now_cost:.1f} ms)"

    def _search(self, names: list[str], room: float, cores: int) -> tuple[dict[str, Placement],
                                                                            float]:
        """The best placement of `names` whose local copies fit in `room` MB."""
        best: dict[str, Placement] = {}
        best_cost = math.inf
        for local in self._local_sets(names, room, cores):
            plan = self._with_replicas({n: Placement.local() if n in local
                                        else Placement.remote(1) for n in names}, cores)
            cost = self._cost(plan, cores)
            if cost < best_cost - 1e-9:
                best, best_cost = plan, cost
        if not best:  # nothing fits locally: all remote
            best = self._with_replicas({n: Placement.remote(1) for n in names}, cores)
            best_cost = self._cost(best, cores)
        return best, best_cost

    def _local_sets(self, names: list[str], room: float, cores: int) -> Iterable[frozenset[str]]:
        memory = {n: self._s.actions[n].memory_mb for n in names}
        if len(names) <= GREEDY_ABOVE:
            for k in range(len(names) + 1):
                for combo in itertools.combinations(names, k):
                    if sum(memory[n] for n in combo) <= room:
                        yield frozenset(combo)
            return
        # Greedy: move to local the action saving most predicted latency per MB, while it fits.
        chosen: set[str] = set()
        yield frozenset()
        while True:
            base = self._cost({n: Placement.local() if n in chosen else Placement.remote(1)
                               for n in names}, cores)
            options = []
            for n in names:
                if n in chosen or sum(memory[m] for m in chosen) + memory[n] > room:
                    continue
                trial = {m: Placement.local() if m in chosen or m == n else Placement.remote(1)
                         for m in names}
                options.append(((base - self._cost(trial, cores)) / max(memory[n], 1.0), n))
            if not options or max(options)[0] <= 0:
                return
            chosen.add(max(options)[1])
            yield frozenset(chosen)

    def _with_replicas(self, plan: dict[str, Placement], cores: int) -> dict[str, Placement]:
        """Add replicas greedily while one saves more than it costs."""
        p = self.params
        plan = dict(plan)
        total = sum(pl.replicas for pl in plan.values())
        cost = self._cost(plan, cores)
        while not p.replica_budget or total < p.replica_budget:
            trials = []
            for name, pl in plan.items():
                if pl.mode is Mode.REMOTE and pl.replicas < p.max_replicas:
                    trial = {**plan, name: Placement.remote(pl.replicas + 1)}
                    trials.append((self._cost(trial, cores), name))
            if not trials:
                break
            trial_cost, name = min(trials)
            if trial_cost >= cost:
                break
            plan[name] = Placement.remote(plan[name].replicas + 1)
            cost, total = trial_cost, total + 1
        return plan

    def _cost(self, plan: Mapping[str, Placement], cores: int) -> float:
        """Predicted mean walker latency (ms) plus the price of the replicas."""
        latency = self.predict(plan, cores)
        replicas = sum(pl.replicas for pl in plan.values())
        return latency + self.params.replica_price_ms * replicas

    def predict(self, plan: Mapping[str, Placement], cores: int) -> float:
        """Mean walker latency (ms) of `plan` under the current estimates; inf if unplaced."""
        s = self._s
        node_demand = s.compute_ms
        stations = []
        delay = 0.0
        for name, placement in plan.items():
            a = s.actions[name]
            if not a.visits:
                continue
            if placement.mode is Mode.LOCAL:
                node_demand += a.visits * self._local_ms(a)
            elif placement.mode is Mode.REMOTE:
                stations.append(Station(a.visits * self._remote_ms(a),
                                        placement.replicas * a.replica_cores))
                delay += a.visits * self._network_ms(a)
            else:
                return math.inf  # a call to it would be a cold start
        stations.append(Station(node_demand, max(cores, 1)))
        return closed_network(stations, s.population, delay).response

    # ------------------------------------------------------------------ estimates

    @staticmethod
    def _known(a: _Action) -> bool:
        return not (math.isnan(a.local_ms) and math.isnan(a.remote_ms))

    def _ratio(self) -> float:
        """Local over remote service time, on actions seen both ways (1.0 if none)."""
        pairs = [(a.local_ms, a.remote_ms) for a in self._s.actions.values()
                 if not (math.isnan(a.local_ms) or math.isnan(a.remote_ms)) and a.remote_ms > 0]
        if not pairs:
            return 1.0
        return sum(lo for lo, _ in pairs) / sum(re for _, re in pairs)

    def _local_ms(self, a: _Action) -> float:
        return a.local_ms if not math.isnan(a.local_ms) else a.remote_ms * self._ratio()

    def _remote_ms(self, a: _Action) -> float:
        return a.remote_ms if not math.isnan(a.remote_ms) else a.local_ms / self._ratio()

    def _network_ms(self, a: _Action) -> float:
        if not math.isnan(a.network_ms):
            return a.network_ms
        seen = [x.network_ms for x in self._s.actions.values() if not math.isnan(x.network_ms)]
        return sum(seen) / len(seen) if seen else self.params.network_prior_ms

    # ------------------------------------------------------------------ staging

    def _stage(self, obs: Observation) -> dict[str, Placement]:
        """The target as far as it is safe now: remote changes at once, a local load only
        when it fits beside what the node holds now."""
        target = self._s.target
        out: dict[str, Placement] = {}
        free = self.params.memory_cap * obs.node.memory_total_mb - obs.node.memory_used_mb
        loads = []
        for name, placement in target.items():
            stats = obs.actions.get(name)
            if stats is None:
                continue
            if placement.mode is Mode.LOCAL and stats.desired.mode is not Mode.LOCAL:
                loads.append((stats.local_memory_mb, name))
            else:
                out[name] = placement
        for memory, name in sorted(loads):
            if memory <= free:
                out[name] = Placement.local()
                free -= memory
        return out


def _known(new: float, old: float) -> float:
    return old if math.isnan(new) else new


def _or(value: float, default: float) -> float:
    return default if math.isnan(value) else value


def _ewma(old: float, new: float, weight: float) -> float:
    return new if old == 0.0 else (1 - weight) * old + weight * new
