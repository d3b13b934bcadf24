"""The contract between a placement policy and the world it runs in.

Both worlds -- the simulator (`jsorc_sim`) and the live controller (`jsorc_live`) -- build an
`Observation` every control interval, hand it to a `Policy`, and apply the `Decision` it
returns. Everything here is plain data: frozen dataclasses with no behaviour beyond
validation, so an observation recorded in one world can be replayed in the other and a
decision can be compared across them.

Conventions: times in seconds (`now`, `interval_s`) except latencies and service times,
which are milliseconds, as in JSORC's benchmark reports; memory in MB; NaN where a statistic
has no sample (a latency mean over zero calls is NaN, not 0, so a policy cannot mistake
"no data" for "fast").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

NAN = math.nan


class Mode(StrEnum):
    """Where an action runs. `unloaded` is not loaded anywhere: a call to it is a cold start."""

    UNLOADED = "unloaded"
    LOCAL = "local"
    REMOTE = "remote"


class PlacementError(ValueError):
    """A placement or decision that breaks the contract (names the bad value)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one action should run, and with how many replicas when remote.

    `replicas` is 0 unless the mode is remote, where it must be >= 1. Build with
    `Placement.local()`, `Placement.remote(3)`, `Placement.unloaded()` or
    `Placement.parse("remote:3")`.
    """

    mode: Mode
    replicas: int = 0

    def __post_init__(self) -> None:
        try:
            mode = Mode(self.mode)
        except ValueError:
            raise PlacementError(
                f"placement mode must be one of {[m.value for m in Mode]}, got {self.mode!r}"
            ) from None
        object.__setattr__(self, "mode", mode)
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int):
            raise PlacementError(f"replicas must be an int, got {self.replicas!r}")
        if mode is Mode.REMOTE and self.replicas < 1:
            raise PlacementError(f"a remote placement needs replicas >= 1, got {self.replicas}")
        if mode is not Mode.REMOTE and self.replicas != 0:
            raise PlacementError(f"a {mode.value} placement has no replicas, got {self.replicas}")

    @classmethod
    def local(cls) -> Placement:
        return cls(Mode.LOCAL)

    @classmethod
    def remote(cls, replicas: int = 1) -> Placement:
        return cls(Mode.REMOTE, replicas)

    @classmethod
    def unloaded(cls) -> Placement:
        return cls(Mode.UNLOADED)

    @classmethod
    def parse(cls, text: str) -> Placement:
        """`"local"`, `"unloaded"`, `"remote"` (one replica) or `"remote:N"`."""
        word, colon, count = str(text).strip().partition(":")
        try:
            mode = Mode(word)
        except ValueError:
            raise PlacementError(
                f"placement must be local, unloaded, remote or remote:N, got {text!r}"
            ) from None
        if mode is not Mode.REMOTE:
            if colon:
                raise PlacementError(f"only a remote placement takes a replica count: {text!r}")
            return cls(mode)
        if not colon:
            return cls.remote(1)
        try:
            replicas = int(count)
        except ValueError:
            raise PlacementError(f"replica count must be an int, got {text!r}") from None
        return cls.remote(replicas)

    def __str__(self) -> str:
        return f"remote:{self.replicas}" if self.mode is Mode.REMOTE else self.mode.value


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Latency of the calls (or requests) that finished in a window, in ms; NaN if `count` is 0."""

    count: int = 0
    mean_ms: float = NAN
    p50_ms: float = NAN
    p95_ms: float = NAN
    p99_ms: float = NAN


@dataclass(frozen=True, slots=True)
class ActionStats:
    """One action, as seen over the last control window.

    `placement` is where calls go now; `desired` is the placement last asked for. They
    differ while a transition is under way (`transition`), because calls keep using the
    old placement until the new one is ready.
    """

    name: str
    placement: Placement
    desired: Placement
    replicas_ready: int = 0
    transition: bool = False
    calls: int = 0  # calls that finished in the window, ok or failed
    call_rate: float = 0.0  # calls issued per second over the window
    failures: int = 0
    cold_starts: int = 0
    latency: LatencyStats = field(default_factory=LatencyStats)
    latency_local: LatencyStats = field(default_factory=LatencyStats)
    latency_remote: LatencyStats = field(default_factory=LatencyStats)
    # Snapshots at `now` (counts, kept per event: none is lost at a completion instant).
    in_flight: int = 0  # being served: local calls (waiting for a core or running), remote
    #                     calls on a replica
    queued: int = 0  # waiting: for a first placement, on the wire, or for a replica
    oldest_call_age_s: float = 0.0  # age of the oldest unfinished call (a stuck queue), s
    local_memory_mb: float = 0.0  # what a local copy needs on the node
    replica_memory_mb: float = 0.0  # what one remote replica needs
    replica_cores: int = 1  # calls one replica serves at once
    # Time averages over the window (integrals of levels / window length, as Knative's
    # queue-proxies report, never sums over finished calls):
    # remote calls in the system (dispatched to a replica until answered: wire, queue,
    # service) -- the concurrency Knative and Ray Serve scale on;
    remote_concurrency: float = 0.0
    # busy replica-core-seconds / ready replica-core-seconds, 0..1; NaN with no ready replica
    # in the window (HPA's CPU utilisation);
    remote_utilisation: float = NAN
    # busy cores of ready replicas (a time average, in cores): HPA's summed pod usage;
    remote_busy_cores: float = 0.0
    # local calls in the system (waiting for a node core or running), and the share of the
    # node's core-seconds they kept busy (0..1).
    local_concurrency: float = 0.0
    local_utilisation: float = 0.0
    # Measured by the live world (NaN in the simulator): resident memory of all the
    # action's replicas now (MB), and their CPU seconds over ready core-seconds.
    replica_memory_used_mb: float = NAN
    replica_cpu_utilisation: float = NAN
    local_service_ms: float = NAN  # mean service time of local calls observed so far
    remote_service_ms: float = NAN  # mean service time of remote calls observed so far
    network_ms: float = NAN  # mean network time of remote calls observed so far


@dataclass(frozen=True, slots=True)
class NodeStats:
    """The runtime's machine: cores and memory, utilisation over the window."""

    cores: int
    memory_total_mb: float
    memory_used_mb: float
    cpu_utilisation: float = 0.0  # busy core-seconds / (cores x window), 0..1, time-weighted
    runtime_up: bool = True  # False while the runtime restarts after out-of-memory
    oom_events: int = 0  # out-of-memory events so far

    @property
    def memory_free_mb(self) -> float:
        return self.memory_total_mb - self.memory_used_mb


@dataclass(frozen=True, slots=True)
class AppStats:
    """One walker (app): requests that finished in the window."""

    name: str
    requests: int = 0
    failures: int = 0
    mean_ms: float = NAN
    p95_ms: float = NAN
    # Mean calls of each action per request of this app, over the window (what the walker
    # calls, as observed; empty when no request finished).
    calls_per_request: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Totals:
    """Across all apps: requests that finished in the window, and counts since the start."""

    requests: int = 0
    failures: int = 0
    mean_ms: float = NAN
    p95_ms: float = NAN
    requests_so_far: int = 0
    failures_so_far: int = 0


@dataclass(frozen=True, slots=True)
class Observation:
    """What a policy sees at one control step. Built by the world, never by the policy.

    `now` is the world's clock in seconds (simulated or since the controller started) and is
    the only time a policy may use. `actions` lists every action the world knows, called or
    not; `apps` every walker.
    """

    now: float
    interval_s: float
    node: NodeStats
    actions: Mapping[str, ActionStats] = field(default_factory=dict)
    apps: Mapping[str, AppStats] = field(default_factory=dict)
    totals: Totals = field(default_factory=Totals)

    @classmethod
    def empty(cls, now: float = 0.0, interval_s: float = 10.0) -> Observation:
        """An observation with no actions and no traffic (what a world with nothing loaded sees)."""
        return cls(now, interval_s, NodeStats(cores=1, memory_total_mb=0.0, memory_used_mb=0.0))


@dataclass(frozen=True)
class Decision:
    """What a policy wants: action -> placement. An action left out keeps its placement.

    `reason` is free text recorded with the decision (why this, for the decision log).
    """

    placements: Mapping[str, Placement] = field(default_factory=dict)
    reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.placements, Mapping):
            raise PlacementError(
                f"Decision.placements must be a mapping of action -> Placement, "
                f"got {type(self.placements).__name__}"
            )
        for name, placement in self.placements.items():
            if not isinstance(name, str):
                raise PlacementError(f"action names must be str, got {name!r}")
            if not isinstance(placement, Placement):
                raise PlacementError(
                    f"placement for {name!r} must be a Placement, got {placement!r}"
                )

    @classmethod
    def keep(cls, reason: str = "") -> Decision:
        """Change nothing."""
        return cls({}, reason)


def check_decision(decision: object, known: Iterable[str]) -> Decision:
    """The decision if it is valid for these actions; else a PlacementError naming the fault.

    Both worlds call this on whatever a policy returned, before applying any of it."""
    if not isinstance(decision, Decision):
        raise PlacementError(f"decide() must return a Decision, got {type(decision).__name__}: "
                             f"{decision!r:.80}")
    # Checked again, and copied: a policy can build a Decision or a Placement without their
    # __post_init__ (object.__new__), or mutate the mapping after handing it over.
    placements, reason = getattr(decision, "placements", None), getattr(decision, "reason", "")
    if not isinstance(placements, Mapping):
        raise PlacementError(f"Decision.placements must be a mapping, got {placements!r:.80}")
    if not isinstance(reason, str):
        raise PlacementError(f"Decision.reason must be a str, got {reason!r:.80}")
    rebuilt = {}
    for name, placement in list(placements.items()):
        if not isinstance(placement, Placement):
            raise PlacementError(f"placement for {name!r} must be a Placement, got "
                                 f"{placement!r:.80}")
        rebuilt[name] = Placement(getattr(placement, "mode", None),  # type: ignore[arg-type]
                                  getattr(placement, "replicas", None))  # type: ignore[arg-type]
    checked = Decision(rebuilt, reason)
    names = set(known)
    unknown = sorted(set(checked.placements) - names)
    if unknown:
        raise PlacementError(f"decision names unknown action {unknown[0]!r} "
                             f"(actions: {', '.join(sorted(names))})")
    return checked


@runtime_checkable
class Policy(Protocol):
    """A placement policy. Pure: no I/O, no wall clock, no global state.

    The world calls `reset(seed)` once before the first observation, then `decide` once per
    control interval. A policy keeps whatever state it needs on itself between calls; its
    randomness comes only from the seed. `params` is a frozen dataclass, so tuning can make
    variants with `dataclasses.replace`.
    """

    params: Any

    def reset(self, seed: int) -> None: ...

    def decide(self, observation: Observation) -> Decision: ...
