"""`check_policy`: the conformance checker every policy runs through (like Gymnasium's
`check_env`).

    check_policy(policy)                    # raises PolicyCheckError naming the broken check

It checks, in this order, that the policy

- implements the protocol (`reset`, `decide`, `params`) and its `params` is a frozen dataclass;
- decides without raising, returning a `Decision` whose placements are `Placement`s for
  actions of that observation only (and a `str` reason); an error at an observation that
  shows an action for the first time fails "copes with an action it has never seen";
- is deterministic: a fresh instance (`type(policy)(policy.params)`, when the class follows
  the registry's convention) and the same instance reset again, both with the same seed and
  the same observations, give equal decisions;
- copes with `Observation.empty()` (and then may only return an empty decision);
- copes with an action it has never seen appearing mid-sequence (`with_new_action`);
- reads no wall clock (`time.time`, `time.monotonic`, `time.perf_counter`, `time.time_ns`
  and their kin, `datetime.now`/`utcnow`/`today`), does no I/O (`open`, `print`, `os.open`,
  `os.listdir`, socket connects) and draws nothing from the `random` module's shared
  generator, during `reset` or `decide`.

Detection of those calls uses a profile hook (`sys.setprofile`), which sees every call into
a C function however it was imported (`from time import time` included); it is installed
only around each `reset`/`decide` call and the previous hook is restored afterwards, even
when the policy raises. Nothing else is patched. Calls made by `logging`, `linecache` and
the import machinery are not held against the policy.

The default observations (`synthetic_observations`) are a scripted, seeded run of a small
world: actions of 0.3 to 4 GB, cold starts, placements moving with transitions, traffic that
starts, spikes and stops (NaN statistics where there is no sample), an out-of-memory and a
restart, and a new action appearing halfway.

Test utility: this module is not a policy and may do what policies may not.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import datetime
import inspect
import io
import math
import os
import random
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import StrEnum
from types import FrameType
from typing import Any

from policies.contract import (
    ActionStats,
    AppStats,
    Decision,
    LatencyStats,
    Mode,
    NodeStats,
    Observation,
    Placement,
    Policy,
    Totals,
)


class Check(StrEnum):
    PROTOCOL = "implements reset, decide and params"
    FROZEN_PARAMS = "params is a frozen dataclass"
    REBUILD = "builds again from its params"
    EMPTY = "copes with an empty observation"
    NO_RAISE = "decides without raising"
    VALID = "returns a valid Decision"
    DETERMINISM = "is deterministic"
    UNSEEN = "copes with an action it has never seen"
    NO_CLOCK = "reads no wall clock"
    NO_IO = "does no I/O"
    NO_GLOBAL_RANDOM = "uses no shared random generator"


class PolicyCheckError(AssertionError):
    """A policy broke the contract: names the check, the observation time and what happened."""

    def __init__(self, policy: str, check: Check, detail: str, at: float | None = None) -> None:
        self.policy = policy
        self.check = check
        self.detail = detail
        self.at = at
        when = f" at t={at:g} s" if at is not None else ""
        super().__init__(f"policy {policy} fails check {check.value!r}{when}: {detail}")


def check_policy(policy: Policy, observations: Iterable[Observation] | None = None,
                 seed: int = 0) -> None:
    """Run every check on `policy` with `observations` (default: `synthetic_observations()`).

    Returns None when the policy passes; raises PolicyCheckError naming the first failure.
    """
    label = repr(getattr(policy, "policy_name", type(policy).__name__))
    _check_protocol(policy, label)
    sequence = list(synthetic_observations() if observations is None else observations)
    runner = _Runner(label)
    first = runner.run(policy, sequence, seed)
    fresh = _rebuild(policy, label)
    if fresh is not None:
        _compare(label, first, runner.run(fresh, sequence, seed), sequence, "a fresh instance")
    _compare(label, first, runner.run(policy, sequence, seed), sequence,
             "the same instance after reset")
    runner.reset(policy, seed)
    runner.decide(policy, Observation.empty(), Check.EMPTY)
    runner.run(policy, with_new_action(sequence), seed, Check.UNSEEN)


# ----------------------------------------------------------------------------- the checks


def _check_protocol(policy: object, label: str) -> None:
    missing = [name for name in ("reset", "decide") if not callable(getattr(policy, name, None))]
    if not hasattr(policy, "params"):
        missing.append("params")
    if missing:
        raise PolicyCheckError(label, Check.PROTOCOL, f"missing {', '.join(missing)}")
    params = getattr(policy, "params")  # noqa: B009  (`policy` is any object here)
    if not dataclasses.is_dataclass(params) or isinstance(params, type):
        raise PolicyCheckError(label, Check.FROZEN_PARAMS,
                               f"params must be a frozen dataclass instance, got "
                               f"{type(params).__name__}: {params!r:.80}")
    if not type(params).__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise PolicyCheckError(label, Check.FROZEN_PARAMS,
                               f"{type(params).__name__} is a dataclass but not frozen: "
                               "declare it @dataclass(frozen=True)")


def _rebuild(policy: Policy, label: str) -> Policy | None:
    """A second instance, when the class follows the registry's convention
    (`Params` and `__init__(self, params)`); None when it does not."""
    cls: Any = type(policy)
    ptype = getattr(cls, "Params", None)
    if not isinstance(ptype, type) or not isinstance(policy.params, ptype):
        return None
    try:
        first = next(iter(inspect.signature(cls).parameters), None)
    except (TypeError, ValueError):
        return None
    if first != "params":
        return None
    try:
        other: Policy = cls(policy.params)
    except Exception as exc:
        raise PolicyCheckError(label, Check.REBUILD,
                               f"{cls.__name__}(policy.params) raised "
                               f"{type(exc).__name__}: {exc}") from exc
    return other


Snapshot = tuple[dict[str, Placement], str]


def _compare(label: str, expected: list[Snapshot], got: list[Snapshot],
             sequence: list[Observation], how: str) -> None:
    for observation, want, have in zip(sequence, expected, got, strict=True):
        if want != have:
            raise PolicyCheckError(
                label, Check.DETERMINISM,
                f"with the same seed and observations, {how} decided {_show(have)} instead "
                f"of {_show(want)}", observation.now)


def _show(snapshot: Snapshot) -> str:
    placements, reason = snapshot
    table = ", ".join(f"{a}={p}" for a, p in sorted(placements.items())) or "nothing"
    return f"{{{table}}} ({reason!r})" if reason else f"{{{table}}}"


class _Runner:
    """Calls the policy under watch and checks what it returns."""

    def __init__(self, label: str) -> None:
        self.label = label

    def run(self, policy: Policy, sequence: list[Observation], seed: int,
            check: Check = Check.NO_RAISE) -> list[Snapshot]:
        # A copy per run: a policy that mutated an observation cannot change the next run's.
        self.reset(policy, seed)
        out: list[Snapshot] = []
        seen: set[str] = set()
        for i, observation in enumerate(copy.deepcopy(sequence)):
            new = i > 0 and not seen.issuperset(observation.actions)
            out.append(self.decide(policy, observation, Check.UNSEEN if new else check))
            seen.update(observation.actions)
        return out

    def reset(self, policy: Policy, seed: int) -> None:
        self._watched(lambda: policy.reset(seed), Check.NO_RAISE, None, "reset()")

    def decide(self, policy: Policy, observation: Observation, check: Check) -> Snapshot:
        decision = self._watched(lambda: policy.decide(observation), check, observation.now,
                                 "decide()")
        return self._validate(decision, observation)

    def _watched(self, call: Callable[[], Any], check: Check, at: float | None,
                 what: str) -> Any:
        watch = _Watch()
        try:
            with watch:
                result = call()
        except Exception as exc:
            watch.raise_found(self.label, at, what)  # a forbidden call may be the cause
            raise PolicyCheckError(self.label, check, f"{what} raised {type(exc).__name__}: "
                                   f"{exc}{_origin(exc)}", at) from exc
        watch.raise_found(self.label, at, what)
        return result

    def _validate(self, decision: object, observation: Observation) -> Snapshot:
        at, bad = observation.now, Check.VALID
        if not isinstance(decision, Decision):
            raise PolicyCheckError(self.label, bad, f"decide() returned "
                                   f"{type(decision).__name__}, not a Decision: "
                                   f"{decision!r:.80}", at)
        if not isinstance(decision.placements, Mapping):
            raise PolicyCheckError(self.label, bad, "Decision.placements is not a mapping", at)
        placements = dict(decision.placements)  # a snapshot: later mutation cannot hide
        for name, placement in placements.items():
            if not isinstance(placement, Placement):
                raise PolicyCheckError(self.label, bad, f"placement for {name!r} is "
                                       f"{placement!r}, not a Placement", at)
            if name not in observation.actions:
                known = ", ".join(observation.actions) or "none"
                raise PolicyCheckError(self.label, bad, f"decision names unknown action "
                                       f"{name!r} (actions: {known})", at)
        if not isinstance(decision.reason, str):
            raise PolicyCheckError(self.label, bad, f"Decision.reason must be a str, got "
                                   f"{decision.reason!r}", at)
        return placements, decision.reason


def _origin(exc: BaseException) -> str:
    frames = inspect.getinnerframes(exc.__traceback__, context=0) if exc.__traceback__ else []
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {os.path.basename(last.filename)}:{last.lineno})"


# ----------------------------------------------------------------------------- forbidden calls

_CLOCK = frozenset({
    "time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns",
    "process_time", "process_time_ns", "thread_time", "thread_time_ns", "clock_gettime",
    "clock_gettime_ns",
})
_DATE_CLOCK = frozenset({"now", "utcnow", "today"})
_OS_IO = frozenset({"open", "listdir", "scandir", "remove", "unlink", "rename", "mkdir",
                    "write", "read"})
_SOCKET_IO = frozenset({"connect", "connect_ex", "bind", "sendto", "sendall", "send"})
_OS_MODULE = getattr(os.open, "__self__", None)  # posix / nt: where os's C functions live
_IO_MODULE = getattr(io.open, "__self__", None)  # _io
_SHARED_RANDOM = getattr(random, "_inst", None)
# Modules whose own calls are not the policy's: logging stamps records with time.time(),
# linecache reads source for tracebacks and warnings, the import machinery opens files.
_EXEMPT = ("logging", "linecache", "tokenize", "importlib", "<frozen importlib")


def _forbidden(fn: Any) -> tuple[Check, str] | None:
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", "")
    if owner is time and name in _CLOCK:
        return Check.NO_CLOCK, f"time.{name}"
    if isinstance(owner, type) and issubclass(owner, datetime.date) and name in _DATE_CLOCK:
        return Check.NO_CLOCK, f"{owner.__module__}.{owner.__name__}.{name}"
    if fn is builtins.print:
        return Check.NO_IO, "print"
    if owner is _IO_MODULE and name in ("open", "open_code"):
        return Check.NO_IO, "open"
    if owner is _OS_MODULE and name in _OS_IO:
        return Check.NO_IO, f"os.{name}"
    if isinstance(owner, socket.socket) and name in _SOCKET_IO:
        return Check.NO_IO, f"socket.{name}"
    if _SHARED_RANDOM is not None and owner is _SHARED_RANDOM:
        return Check.NO_GLOBAL_RANDOM, (
            f"random.{name} (the random module's shared generator; use "
            "random.Random(seed) made in reset)")
    return None


class _Watch:
    """Records forbidden C calls made while it is active (a `sys.setprofile` hook)."""

    def __init__(self) -> None:
        self.found: list[tuple[Check, str, str]] = []
        self._previous: Any = None

    def __enter__(self) -> _Watch:
        self._previous = sys.getprofile()
        sys.setprofile(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(self._previous)

    def _hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "c_call":
            return
        found = _forbidden(arg)
        if found is None:
            return
        filename = frame.f_code.co_filename
        module = frame.f_globals.get("__name__", "")
        if module.startswith(_EXEMPT) or filename.startswith("<frozen importlib"):
            return
        self.found.append((*found, f"{os.path.basename(filename)}:{frame.f_lineno}"))

    def raise_found(self, label: str, at: float | None, what: str) -> None:
        if self.found:
            check, call, where = self.found[0]
            raise PolicyCheckError(label, check, f"{what} called {call} (at {where})", at)


# ----------------------------------------------------------------------------- observations

NEW_ACTION = "checker_new_action"


def with_new_action(sequence: list[Observation], name: str = NEW_ACTION) -> list[Observation]:
    """`sequence` with an action no observation had before appearing halfway, unloaded and
    called from then on (cold starts, NaN latency). The name gets a suffix if it is taken."""
    taken = {a for o in sequence for a in o.actions}
    while name in taken:
        name += "_"
    start = len(sequence) // 2
    out = list(sequence[:start])
    for i, observation in enumerate(sequence[start:]):
        stats = ActionStats(name, Placement.unloaded(), Placement.unloaded(),
                            calls=i, call_rate=i / max(observation.interval_s, 1e-9),
                            cold_starts=min(i, 1), in_flight=min(i, 2),
                            local_memory_mb=750.0, replica_memory_mb=1000.0)
        out.append(dataclasses.replace(observation, actions={**observation.actions,
                                                             name: stats}))
    return out



# The little world of `synthetic_observations`: (local MB, replica MB, service ms) per action
# (jaseci_ai_kit's memory figures), and the calls of each app.
_WORLD_ACTIONS: Mapping[str, tuple[float, float, float]] = {
    "bi_enc": (334.0, 630.0, 15.0),
    "tfm_ner": (1014.0, 1300.0, 35.0),
    "text_seg": (1706.0, 2000.0, 60.0),
    "use_enc": (3998.0, 4300.0, 30.0),
    "sbert_sim": (1209.0, 1500.0, 25.0),  # appears halfway
}
_WORLD_APPS: Mapping[str, tuple[str, ...]] = {
    "flow_analysis": ("text_seg", "tfm_ner", "use_enc"),
    "restaurant_chatbot": ("bi_enc", "tfm_ner"),
    "sentence_pairing": ("sbert_sim", "bi_enc"),  # from halfway
}
_STEPS = 40
_HALF = _STEPS // 2
_OOM_AT, _RESTARTED_AT = 11, 13  # the runtime is down in between
_SPIKE = range(24, 30)  # four times the traffic
_IDLE = (*range(0, 2), *range(34, _STEPS))  # no traffic: every statistic NaN
_NODE_MB, _RUNTIME_MB, _CORES, _NETWORK_MS, _COMPUTE_MS = 4096.0, 300.0, 4, 8.0, 5.0

# step -> action -> (placement, desired); what is not listed keeps its state.
_SCRIPT: Mapping[int, Mapping[str, tuple[str, str]]] = {
    2: {"bi_enc": ("unloaded", "local"), "tfm_ner": ("unloaded", "local"),  # cold starts
        "text_seg": ("unloaded", "local"), "use_enc": ("unloaded", "remote:1")},
    3: {"bi_enc": ("local", "local"), "tfm_ner": ("local", "local"),
        "text_seg": ("local", "local")},
    5: {"use_enc": ("remote:1", "remote:1")},
    7: {"text_seg": ("local", "remote:2")},  # moving: calls stay local until a replica is up
    9: {"text_seg": ("remote:2", "remote:2")},
    10: {"use_enc": ("remote:1", "local")},  # loading 4 GB beside the rest: out of memory
    _OOM_AT: {"bi_enc": ("unloaded", "unloaded"), "tfm_ner": ("unloaded", "unloaded"),
              "use_enc": ("unloaded", "unloaded")},
    _RESTARTED_AT: {"bi_enc": ("unloaded", "local"), "tfm_ner": ("unloaded", "local"),
                    "use_enc": ("unloaded", "remote:1")},
    14: {"bi_enc": ("local", "local"), "tfm_ner": ("local", "local")},
    16: {"use_enc": ("remote:1", "remote:1")},
    _HALF: {"sbert_sim": ("unloaded", "local")},  # first seen: called, so loading
    _HALF + 1: {"sbert_sim": ("local", "local")},
    25: {"use_enc": ("remote:1", "remote:3")},  # scale-up under the spike
    27: {"use_enc": ("remote:3", "remote:3")},
    31: {"text_seg": ("remote:1", "remote:1"), "use_enc": ("remote:3", "remote:1")},
    32: {"use_enc": ("remote:1", "remote:1")},
}


def synthetic_observations(seed: int = 0, interval_s: float = 10.0) -> Iterator[Observation]:
    """Forty observations of a scripted world, every `interval_s` from t = 0 (seeded jitter).

    A 4-core, 4 GB node with a 300 MB runtime; actions of 334 MB to 4 GB; three apps.
    Idle at first (NaN everywhere), then cold starts, a move to remote with its transition,
    an out-of-memory (a 4 GB load) and a restart, an action never seen before appearing
    halfway, a traffic spike with a scale-up and queues, a scale-down, and idle again.
    """
    rng = random.Random(seed)
    state: dict[str, tuple[Placement, Placement]] = {}
    served: dict[str, dict[str, float]] = {}  # action -> "local"/"remote"/"network" -> ms
    so_far = [0, 0]  # requests, failures
    for step in range(_STEPS):
        for action, (where, desired) in _SCRIPT.get(step, {}).items():
            state[action] = (Placement.parse(where), Placement.parse(desired))
        if step == 0:
            state.update({a: (Placement.unloaded(), Placement.unloaded())
                          for a in _WORLD_ACTIONS if a != "sbert_sim"})
        down = _OOM_AT <= step < _RESTARTED_AT
        load = 0.0 if step in _IDLE else (4.0 if step in _SPIKE else 1.0)
        app_rate = {app: load * 2.0 * rng.uniform(0.8, 1.2) for app, calls in _WORLD_APPS.items()
                    if all(a in state for a in calls)}
        actions = {a: _world_action(a, state[a], app_rate, interval_s, down, step in _SPIKE,
                                    served, rng) for a in state}
        apps = {app: _world_app(app, rate, actions, interval_s, down)
                for app, rate in app_rate.items()}
        yield _world_observation(step * interval_s, interval_s, state, actions, apps, down,
                                 step >= _OOM_AT, so_far)


def _world_action(name: str, where: tuple[Placement, Placement], app_rate: Mapping[str, float],
                  interval_s: float, down: bool, spike: bool, served: dict[str, dict[str, float]],
                  rng: random.Random) -> ActionStats:
    local_mb, replica_mb, service_ms = _WORLD_ACTIONS[name]
    placement, desired = where
    rate = sum(r * _WORLD_APPS[app].count(name) for app, r in app_rate.items())
    calls = round(rate * interval_s)
    # Calls to an unloaded action wait for its load (cold starts) and then run there.
    mode = desired.mode if placement.mode is Mode.UNLOADED else placement.mode
    ready = placement.replicas if placement.mode is Mode.REMOTE else 0
    failures = calls if down and mode is not Mode.REMOTE else 0
    stats: dict[str, LatencyStats] = {}
    queued, in_flight, concurrency, utilisation = 0, 0, 0.0, math.nan
    if calls > failures and mode is not Mode.UNLOADED:
        service = service_ms * rng.uniform(0.9, 1.1)
        mean = service + (_NETWORK_MS if mode is Mode.REMOTE else 0.0)
        if spike and mode is Mode.REMOTE and ready == 1:
            mean += 2 * service  # waiting for the one replica
            queued = 3
        if placement.mode is Mode.UNLOADED:
            mean += 1500.0  # the load, for the first calls
        ok = calls - failures
        stats[mode.value] = LatencyStats(ok, mean, 0.9 * mean, 1.8 * mean, 2.5 * mean)
        seen = served.setdefault(name, {})
        seen[mode.value] = service
        in_flight = round(rate * mean / 1000.0)
        if mode is Mode.REMOTE:
            seen["network"] = _NETWORK_MS
            concurrency = rate * mean / 1000.0
            utilisation = min(1.0, rate * service / 1000.0 / ready) if ready else math.nan
    seen = served.get(name, {})
    overall = next(iter(stats.values()), LatencyStats())
    return ActionStats(
        name=name, placement=placement, desired=desired, replicas_ready=ready,
        transition=placement != desired, calls=calls, call_rate=rate, failures=failures,
        cold_starts=min(calls, 2) if placement.mode is Mode.UNLOADED and not down else 0,
        latency=overall, latency_local=stats.get("local", LatencyStats()),
        latency_remote=stats.get("remote", LatencyStats()), in_flight=in_flight, queued=queued,
        local_memory_mb=local_mb, replica_memory_mb=replica_mb, replica_cores=1,
        remote_concurrency=concurrency, remote_utilisation=utilisation,
        local_service_ms=seen.get("local", math.nan),
        remote_service_ms=seen.get("remote", math.nan),
        network_ms=seen.get("network", math.nan),
    )


def _world_app(name: str, rate: float, actions: Mapping[str, ActionStats], interval_s: float,
               down: bool) -> AppStats:
    requests = round(rate * interval_s)
    calls = _WORLD_APPS[name]
    if down or not requests:
        return AppStats(name, requests, requests if down else 0)
    mean = _COMPUTE_MS + sum(actions[a].latency.mean_ms for a in calls)
    if math.isnan(mean):
        return AppStats(name, requests, requests)
    per_request = {a: float(calls.count(a)) for a in calls}
    return AppStats(name, requests, 0, mean, 1.5 * mean, per_request)


def _world_observation(now: float, interval_s: float,
                       state: Mapping[str, tuple[Placement, Placement]],
                       actions: dict[str, ActionStats], apps: dict[str, AppStats], down: bool,
                       after_oom: bool, so_far: list[int]) -> Observation:
    holding = [a for a, (p, d) in state.items() if Mode.LOCAL in (p.mode, d.mode)]
    memory = _RUNTIME_MB + sum(_WORLD_ACTIONS[a][0] for a in holding) if not down \
        else _RUNTIME_MB
    if memory > _NODE_MB:  # the load that runs the node out of memory has not started yet
        memory = _RUNTIME_MB + sum(_WORLD_ACTIONS[a][0] for a, (p, _) in state.items()
                                   if p.mode is Mode.LOCAL)
    busy = sum(s.call_rate * _WORLD_ACTIONS[a][2] / 1000.0 for a, s in actions.items()
               if s.placement.mode is Mode.LOCAL)
    busy += sum(app.requests / interval_s * _COMPUTE_MS / 1000.0 for app in apps.values())
    node = NodeStats(cores=_CORES, memory_total_mb=_NODE_MB, memory_used_mb=memory,
                     cpu_utilisation=0.0 if down else min(1.0, busy / _CORES),
                     runtime_up=not down, oom_events=int(after_oom))
    requests = sum(a.requests for a in apps.values())
    failures = sum(a.failures for a in apps.values())
    so_far[0] += requests
    so_far[1] += failures
    done = [a for a in apps.values() if a.requests > a.failures]
    mean = (sum(a.mean_ms * (a.requests - a.failures) for a in done)
            / sum(a.requests - a.failures for a in done)) if done else math.nan
    p95 = max((a.p95_ms for a in done), default=math.nan)
    totals = Totals(requests, failures, mean, p95, so_far[0], so_far[1])
    return Observation(now, interval_s, node, actions, apps, totals)
