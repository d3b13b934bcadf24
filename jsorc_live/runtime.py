"""The live runtime: walkers making action calls, and one router per action.

A *walker* (an app of JSORC's loadtest, or one a user adds) is a sequence of action calls.
Each call goes through its action's `Router`, which sends it to the placement that is ready:
the local module (imported into this process) or remote replicas (action servers, dealt
round-robin). A move never fails a call: calls keep using the old placement until the new one
answers, then the old one is drained (its in-flight calls finish) before it is unloaded.

Every call is a row of the simulator's `calls` table and every walker run a row of its
`requests` table, so the live log and the simulated one can be read with the same code.
What the controller observes comes from events instead: the routers and walkers report
each call, replica, local copy and request to the runtime's `observations`
(`jsorc_live.signals.LiveSignals`), the one builder both worlds use.

Threads, not asyncio: local calls are CPU work and the action client is synchronous, so the
API runs walkers in its thread pool, and each router moves in a worker thread of its own.
The router's only lock is a `threading.Condition`; no call holds it while it runs.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from jsorc_live.signals import LiveSignals, machine_memory_mb, node_cores
from policies import Mode, Placement
from policies.observe import LOCAL, REMOTE
from policies.observe import ActionInfo as Sizes

if TYPE_CHECKING:
    from jsorc_live.actions.config import KubernetesSpec

log = logging.getLogger(__name__)

# The simulator's table columns (jsorc_sim/recorder.py), repeated here because jsorc_live
# may not import jsorc_sim; tests check the two stay equal.
CALL_COLUMNS = ("ts", "request_id", "app", "action", "placement", "replica", "wait_ms",
                "service_ms", "network_ms", "latency_ms", "ok", "cold", "error")
REQUEST_COLUMNS = ("ts", "request_id", "app", "latency_ms", "ok", "error")
LATENCY_KEYS = (("50th_latency", 50), ("90th_latency", 90), ("95th_latency", 95),
                ("99th_latency", 99))

# JSORC's loadtest apps: the actions each walker calls, in order.
LOADTEST_APPS: dict[str, tuple[str, ...]] = {
    "zeroshot_faq_bot": ("text_seg", "use_qa"),
    "sentence_pairing": ("sbert_sim", "bi_enc"),
    "discussion_analysis": ("bi_enc", "cl_summer"),
    "flight_chatbot": ("use_qa", "ent_ext"),
    "restaurant_chatbot": ("bi_enc", "tfm_ner"),
    "virtual_assistant": ("text_seg", "bi_enc", "tfm_ner", "sbert_sim", "use_qa"),
    "flow_analysis": ("text_seg", "tfm_ner", "use_enc"),
    "weather_and_time_assistance": ("vc_tts", "stt", "bi_enc"),
}

# What each loadtest walker calls of an action (jsorc_live.actions.examples), and which ctx
# keys feed the parameters. A ctx without them gets the defaults below.
_SILENCE = "AAAA" * 800  # base64 of 1200 zero 16-bit samples: 0.15 s of silence at 8 kHz
CTX_DEFAULTS: dict[str, Any] = {
    "text": "Where is my flight? I booked it last week. The weather is nice today.",
    "text2": "When does my plane leave?",
    "answers": ["It leaves at noon.", "The gate is B4.", "It is sunny."],
    "audio": _SILENCE,
}
LOADTEST_CALLS: dict[str, tuple[str, dict[str, str]]] = {
    "text_seg": ("get_segments", {"text": "text"}),
    "use_qa": ("qa_classify", {"question": "text", "answers": "answers"}),
    "sbert_sim": ("get_text_sim", {"text1": "text", "text2": "text2"}),
    "bi_enc": ("cos_sim_score", {"q": "text", "a": "text2"}),
    "cl_summer": ("summarize", {"text": "text"}),
    "ent_ext": ("entity_detection", {"text": "text"}),
    "tfm_ner": ("extract_entity", {"text": "text"}),
    "use_enc": ("encode", {"text": "text"}),
    "vc_tts": ("synthesize", {"text": "text"}),
    "stt": ("transcribe", {"audio": "audio"}),
}


def loadtest_walkers() -> list[Walker]:
    """JSORC's eight loadtest apps as walkers over the example actions."""
    walkers = []
    for app, actions in LOADTEST_APPS.items():
        steps = []
        for action in actions:
            function, args = LOADTEST_CALLS[action]
            steps.append(Step(action, function, args,
                              {param: CTX_DEFAULTS[key] for param, key in args.items()}))
        walkers.append(Walker(app, tuple(steps)))
    return walkers


class RuntimeRefusal(ValueError):
    """A request the runtime refuses (unknown action or walker, bad mode...): a 4xx."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class CallFailed(RuntimeError):
    """An action call that failed (the action raised, or no placement answered in time)."""


# --------------------------------------------------------------------------- injected parts


class LocalHandle(Protocol):
    """An action module loaded into this process (jsorc_live.actions.loader.LocalModule)."""

    @property
    def memory_mb(self) -> float: ...

    def call(self, name: str, kwargs: dict[str, Any]) -> Any: ...

    def unload(self) -> object: ...


class RemoteClient(Protocol):
    """A client of one action server (jsorc_live.actions.client.RemoteActions)."""

    def call(self, name: str, kwargs: dict[str, Any]) -> Any: ...


@dataclass(frozen=True, slots=True)
class Replica:
    """One remote replica: an action server at `url`.

    A backend names the replicas it runs: the process backend by `pid`, the Kubernetes
    backend by `pod` (a pod's processes are not ours to measure). A replica with neither is
    an attached server: not ours to stop.
    """

    action: str
    url: str
    pid: int | None = None
    pod: str | None = None

    @property
    def owned(self) -> bool:
        """A backend started it (and stops it); False for an attached server."""
        return self.pid is not None or self.pod is not None


class ReplicaSource(Protocol):
    """What the router needs of a backend (see backend.Backend)."""

    def start_replica(self, info: ActionInfo) -> Replica: ...

    def stop_replica(self, replica: Replica) -> None: ...

    def healthy(self, replica: Replica) -> bool: ...


class TransportError(Exception):
    """Raised by a remote invoker when the replica did not answer at all (dead, refused,
    timed out): the call may be retried on another replica. An error the action itself
    returned is not a TransportError and is not retried."""


@dataclass(frozen=True, slots=True)
class ActionInfo:
    """What the runtime knows of a configured action (from an ActionConfig)."""

    name: str
    module: str
    local_memory_mb: float = 0.0
    remote_memory_mb: float = 0.0
    default_mode: Mode = Mode.LOCAL
    setup: Mapping[str, Any] = field(default_factory=dict)  # the module's setup() arguments
    replica_cores: int = 1  # cores of one remote replica: the calls it serves at once
    kubernetes: KubernetesSpec | None = None  # a Kubernetes replica's container

    def __post_init__(self) -> None:
        cores = self.replica_cores
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
            raise ValueError(f"action {self.name!r}: replica_cores must be an int >= 1, "
                             f"got {cores!r}")


@dataclass(frozen=True, slots=True)
class Step:
    """One action call of a walker: `action.function(**kwargs)` with kwargs from the ctx.

    `args` maps a parameter name to the ctx key it takes its value from; a key missing from
    the ctx gives `defaults[param]`.
    """

    action: str
    function: str
    args: Mapping[str, str] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def kwargs(self, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {param: ctx.get(key, self.defaults.get(param)) for param, key in self.args.items()}


@dataclass(frozen=True, slots=True)
class Walker:
    name: str
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class CallTiming:
    """How long a call took where it ran: `service_ms` inside the action, `network_ms` the
    rest of a remote round trip (NaN when the server did not say how long it worked)."""

    service_ms: float
    network_ms: float


Invoker = Callable[[str, dict[str, Any]], tuple[Any, CallTiming]]


# --------------------------------------------------------------------------- placements


class _Target:
    """A placement that calls can go to, with the calls it is serving."""

    placement: Placement

    def __init__(self) -> None:
        self.in_flight = 0
        self.retiring = False


class _LocalTarget(_Target):
    def __init__(self, handle: LocalHandle) -> None:
        super().__init__()
        self.handle = handle
        self.placement = Placement.local()


class _Link:
    """A replica with its invoker and the calls it is serving."""

    def __init__(self, replica: Replica, invoke: Invoker) -> None:
        self.replica = replica
        self.invoke = invoke
        self.in_flight = 0
        self.retiring = False
        self.dead = False


class _RemoteTarget(_Target):
    def __init__(self, attached: bool) -> None:
        super().__init__()
        self.links: list[_Link] = []
        self.attached = attached  # an action server we were given a URL of: never stopped
        self._turn = itertools.count()

    @property
    def placement(self) -> Placement:  # type: ignore[override]
        return Placement.remote(max(1, len(self.ready)))

    @property
    def ready(self) -> list[_Link]:
        return [link for link in self.links if not link.retiring and not link.dead]

    def next_link(self) -> _Link | None:
        ready = self.ready
        return ready[next(self._turn) % len(ready)] if ready else None


def _same(a: Placement, b: Placement) -> bool:
    return a.mode is b.mode and a.replicas == b.replicas


class _Attempt:
    """One call's progress, for its events: its token, where it was dispatched (-1: not
    yet), whether it waited for a first placement (cold)."""

    __slots__ = ("cold", "token", "where")

    def __init__(self, token: int) -> None:
        self.token = token
        self.where = -1
        self.cold = False


def _for_memory(exc: BaseException) -> bool:
    """A MemoryError anywhere in the chain (the loader wraps what setup() raised)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MemoryError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


# --------------------------------------------------------------------------- router


class Router:
    """Where one action's calls go, and its moves between placements.

    `set_placement` records the wish and returns at once; a worker thread makes it true
    (load the new placement, switch calls to it once it answers, drain the old one, unload
    it) and keeps going until the wish and the placement agree, so the last wish wins.

    Every call, replica and local copy is reported to `signals` as it happens: a replica is
    ready when it joins the target that serves calls, retiring when it leaves balancing
    (scaled down, moved away, dead), gone once stopped (or let go, when attached).
    """

    def __init__(self, info: ActionInfo, *, load_local: Callable[[ActionInfo], LocalHandle],
                 replicas: ReplicaSource | None, connect: Callable[[Replica], Invoker],
                 clock: Callable[[], float], signals: LiveSignals,
                 ready_timeout_s: float = 60.0) -> None:
        self.info = info
        self._signals = signals
        self._load_local = load_local
        self._replicas = replicas
        self._connect = connect
        self._clock = clock
        self._ready_timeout_s = ready_timeout_s
        self._cond = threading.Condition()
        self._active: _Target | None = None
        self._draining: list[_Target] = []
        self._desired = Placement.unloaded()
        self._attach_url: str | None = None
        self._worker: threading.Thread | None = None
        self._closed = False
        self.last_error = ""
        self.local_memory_mb = info.local_memory_mb
        self.events: list[dict[str, Any]] = []
        self._announce()

    def _announce(self) -> None:
        """Tell the observations the action's sizes (again once a load measured them)."""
        info = self.info
        self._signals.add_action(self.name, Sizes(
            self.local_memory_mb, info.remote_memory_mb or self.local_memory_mb,
            info.replica_cores))

    # ----------------------------------------------------------------- state

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def placement(self) -> Placement:
        """Where calls go now (unloaded while nothing is ready)."""
        with self._cond:
            return self._active.placement if self._active else Placement.unloaded()

    @property
    def desired(self) -> Placement:
        with self._cond:
            return self._desired

    @property
    def in_flight(self) -> int:
        with self._cond:
            return sum(t.in_flight for t in self._targets())

    @property
    def replicas_ready(self) -> int:
        with self._cond:
            active = self._active
            return len(active.ready) if isinstance(active, _RemoteTarget) else 0

    @property
    def transition(self) -> bool:
        with self._cond:
            return self._moving()

    def state(self) -> tuple[Placement, Placement, bool]:
        """(placement, desired, transition), read at one moment."""
        with self._cond:
            have = self._active.placement if self._active else Placement.unloaded()
            return have, self._desired, self._moving()

    @property
    def local_loaded(self) -> bool:
        """A local copy is on the node (serving or draining): it takes memory."""
        with self._cond:
            return any(isinstance(t, _LocalTarget) for t in self._targets())

    def _targets(self) -> list[_Target]:
        return ([self._active] if self._active else []) + self._draining

    def _moving(self) -> bool:
        """Not yet what was asked, or still draining: an old target, or replicas a scale-down
        took out of balancing that are not stopped yet."""
        active = self._active
        have = active.placement if active else Placement.unloaded()
        if not _same(have, self._desired) or self._draining:
            return True
        return isinstance(active, _RemoteTarget) and any(link.retiring for link in active.links)

    def status(self) -> dict[str, Any]:
        """JSORC's `action_status`: mode (what was asked: module, remote or unloaded), with
        where calls go now, and the remote replicas' URL and status."""
        with self._cond:
            desired = self._desired
            active = self._active
            mode = {Mode.LOCAL: "module", Mode.REMOTE: "remote",
                    Mode.UNLOADED: "unloaded"}[desired.mode]
            out: dict[str, Any] = {
                "name": self.name,
                "mode": mode,
                "placement": str(active.placement if active else Placement.unloaded()),
                "desired": str(desired),
                "transition": self._moving(),
                "in_flight": sum(t.in_flight for t in self._targets()),
                "module": self.info.module,
            }
            remote = next((t for t in self._targets() if isinstance(t, _RemoteTarget)), None)
            if desired.mode is Mode.REMOTE or remote is not None:
                ready = remote.ready if remote else []
                ready_now = isinstance(active, _RemoteTarget) and bool(ready)
                out["remote"] = {
                    "url": ready[0].replica.url if ready else self._attach_url,
                    "status": "READY" if ready_now else "STARTING",
                    "replicas": [link.replica.url for link in ready],
                    "attached": self._attach_url is not None,
                }
            if self.last_error:
                out["error"] = self.last_error
            return out

    # ----------------------------------------------------------------- moves

    def set_placement(self, placement: Placement, *, url: str | None = None) -> None:
        """Ask for `placement`; `url` attaches an already-running action server as the one
        remote replica. Returns at once (wait_settled waits)."""
        with self._cond:
            if self._closed:
                raise RuntimeRefusal(f"action {self.name!r} is shut down", 409)
            if placement.mode is Mode.REMOTE:
                if url is not None and url != self._attach_url:
                    # Attaching replaces whatever remote replicas we had.
                    self._attach_url = url
                    self._retire_remote()
                elif url is None and self._attach_url is not None:
                    self._attach_url = None
                    self._retire_remote()
                if self._attach_url is not None:
                    placement = Placement.remote(1)
            self._desired = placement
            self.last_error = ""
            self._kick()

    def _retire_remote(self) -> None:
        # The active remote target stays until the new one answers; only flag it so the
        # worker does not scale it into the new shape.
        if isinstance(self._active, _RemoteTarget):
            self._active.retiring = True

    def _kick(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._reconcile, name=f"move-{self.name}",
                                             daemon=True)
            self._worker.start()
        self._cond.notify_all()

    def wait_settled(self, timeout_s: float) -> bool:
        """Wait until the placement is what was asked and nothing drains; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._moving() and not self.last_error:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return not self._moving()

    def _reconcile(self) -> None:
        while True:
            with self._cond:
                want, active = self._desired, self._active
                if self._closed or self.last_error:
                    # A failed move keeps the placement; a new set_placement retries.
                    self._worker = None
                    self._cond.notify_all()
                    return
                have = active.placement if active else Placement.unloaded()
                if _same(have, want):
                    self._worker = None
                    self._cond.notify_all()
                    return
                scalable = (isinstance(active, _RemoteTarget) and not active.retiring
                            and want.mode is Mode.REMOTE)
            try:
                if want.mode is Mode.UNLOADED:
                    self._drain_and_release(self._activate(None))
                elif want.mode is Mode.LOCAL:
                    self._drain_and_release(self._activate(self._build_local()))
                elif scalable:
                    assert isinstance(active, _RemoteTarget)
                    self._scale(active, want.replicas)
                else:
                    self._move_remote(want.replicas)
            except Exception as exc:  # loading user code can fail in any way
                message = f"{type(exc).__name__}: {exc}"
                with self._cond:
                    if not _same(self._desired, want):
                        continue  # superseded while it ran: go after the new wish
                    log.warning("move of %s to %s failed: %s", self.name, want, message)
                    self.last_error = f"move to {want} failed: {message}"
                    self._event("move_failed", self.last_error)
                    self._cond.notify_all()

    def _build_local(self) -> _LocalTarget:
        self._signals.local(self.name, "loading")
        try:
            handle = self._load_local(self.info)
        except BaseException as exc:
            self._signals.local(self.name, "none")
            if _for_memory(exc):
                # The node had no room for the copy: the live world's out-of-memory event
                # (the load is refused, the runtime keeps serving).
                self._signals.out_of_memory()
            raise
        measured = float(getattr(handle, "memory_mb", 0.0) or 0.0)
        if measured > 0:
            self.local_memory_mb = measured
            self._announce()
        return _LocalTarget(handle)

    def _move_remote(self, replicas: int) -> None:
        """Start `replicas` replicas; switch calls to them when the first answers, let the
        others join as they answer, then drain and release the old placement."""
        if self._attach_url is not None:
            target = _RemoteTarget(attached=True)
            replica = Replica(self.name, self._attach_url, None)
            target.links.append(_Link(replica, self._connect(replica)))
            self._drain_and_release(self._activate(target))
            return
        target = _RemoteTarget(attached=False)
        with ThreadPoolExecutor(max_workers=replicas,
                                thread_name_prefix=f"start-{self.name}") as pool:
            pending: set[Future[None]] = {pool.submit(self._start_link, target)
                                          for _ in range(replicas)}
            errors: list[str] = []
            old: _Target | None = None
            switched = False
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                errors += [f"{type(f.exception()).__name__}: {f.exception()}"
                           for f in done if f.exception() is not None]
                with self._cond:
                    first = not switched and bool(target.links) and not target.retiring
                if first:
                    old, switched = self._activate(target), True
        if not switched:
            with self._cond:
                target.retiring = True
            for link in target.links:
                self._stop_replica(link.replica)
            raise CallFailed("no replica started: " + "; ".join(errors))
        self._drain_and_release(old)

    def _start_link(self, target: _RemoteTarget) -> None:
        if self._replicas is None:
            raise RuntimeRefusal("no backend to start replicas with; attach a url", 409)
        replica = self._replicas.start_replica(self.info)
        # The backend names a replica only once it answers, so "starting" comes here.
        self._signals.replica_starting(self.name, replica.url)
        link = _Link(replica, self._connect(replica))
        with self._cond:
            # Superseded while it started (closed, retired, or the wish is no longer remote).
            orphan = (self._closed or target.retiring
                      or self._desired.mode is not Mode.REMOTE)
            if not orphan:
                target.links.append(link)
                if target is self._active:
                    self._signals.replica_ready(self.name, replica.url)
                self._cond.notify_all()
        if orphan:
            self._stop_replica(replica)

    def _activate(self, new: _Target | None) -> _Target | None:
        """Make `new` where calls go; return the old target (now retiring) to drain."""
        with self._cond:
            old = self._active
            self._active = new
            if old is not None:
                old.retiring = True
                self._draining.append(old)
                self._report(old, serving=False)
            if new is not None:
                self._report(new, serving=True)
            self._event("placement", str(new.placement if new else Placement.unloaded()))
            self._cond.notify_all()
            return old

    def _report(self, target: _Target, *, serving: bool) -> None:
        """`target` starts or stops taking calls (called holding the condition)."""
        if isinstance(target, _LocalTarget):
            self._signals.local(self.name, "ready" if serving else "draining")
        elif isinstance(target, _RemoteTarget):
            for link in target.ready:
                if serving:
                    self._signals.replica_ready(self.name, link.replica.url)
                else:
                    self._signals.replica_retiring(self.name, link.replica.url)

    def _drain_and_release(self, old: _Target | None) -> None:
        if old is None:
            return
        with self._cond:
            while old.in_flight > 0:
                self._cond.wait(0.5)
        try:
            if isinstance(old, _LocalTarget):
                old.handle.unload()
                self._signals.local(self.name, "none")
            elif isinstance(old, _RemoteTarget):
                for link in old.links:
                    self._stop_replica(link.replica)  # an attached one is only let go
        finally:
            with self._cond:
                if old in self._draining:
                    self._draining.remove(old)
                self._cond.notify_all()

    def _stop_replica(self, replica: Replica) -> None:
        """Stop a replica of ours (an attached one is not ours to stop)."""
        if self._replicas is not None and replica.owned:
            try:
                self._replicas.stop_replica(replica)
            except Exception:  # stopping is best effort; the backend's shutdown sweeps
                log.exception("stopping %s", replica)
        self._signals.replica_gone(self.name, replica.url)

    def _scale(self, target: _RemoteTarget, replicas: int) -> None:
        """Grow or shrink a serving remote target; removed replicas drain first."""
        with self._cond:
            ready = target.ready
            surplus = ready[replicas:]
            for link in surplus:
                link.retiring = True
                self._signals.replica_retiring(self.name, link.replica.url)
            grow = replicas - len(ready)
        for link in surplus:
            with self._cond:
                while link.in_flight > 0:
                    self._cond.wait(0.5)
            self._stop_replica(link.replica)
            with self._cond:  # settled only once it is stopped (see _moving)
                target.links.remove(link)
                self._cond.notify_all()
        if grow > 0:
            with ThreadPoolExecutor(max_workers=grow) as pool:
                futures = [pool.submit(self._start_link, target) for _ in range(grow)]
            errors = [f"{type(f.exception()).__name__}: {f.exception()}"
                      for f in futures if f.exception() is not None]
            if errors:
                raise CallFailed("replica start failed: " + "; ".join(errors))

    def replica_died(self, replica: Replica) -> None:
        """A replica's process is gone: take it out of rotation and start a replacement."""
        with self._cond:
            found = None
            for target in self._targets():
                if isinstance(target, _RemoteTarget):
                    for link in target.links:
                        if link.replica == replica and not link.dead:
                            link.dead, found = True, (target, link)
            if found is None:
                return
            target, link = found
            self._signals.replica_retiring(self.name, replica.url)
            self._event("replica_died", replica.url)
            target.links.remove(link)
            if target is self._active and not target.attached and not target.retiring:
                # The reconciler sees fewer ready replicas than asked for and starts one
                # (one place decides replica counts, so a death never doubles a start).
                self._kick()
            self._cond.notify_all()
        # It may still be running (hung rather than dead): stop it.
        threading.Thread(target=self._stop_replica, args=(replica,), daemon=True).start()

    def _event(self, kind: str, detail: str) -> None:
        self.events.append({"ts": self._clock(), "action": self.name, "kind": kind,
                            "detail": detail})

    # ----------------------------------------------------------------- calls

    def call(self, function: str, kwargs: dict[str, Any], timeout_s: float = 120.0,
             app: str = "") -> tuple[Any, dict[str, Any]]:
        """Run one call where the action is placed now: (result, call-row fields).

        Raises CallFailed when the action raised or nothing answered within `timeout_s`.
        A call to an unloaded action loads it in its default mode and waits (cold). `app`
        is the walker calling (for the observations' calls per request).
        """
        start = time.perf_counter()
        attempt = _Attempt(self._signals.issued(self.name))
        try:
            result, row = self._run(function, kwargs, start, time.monotonic() + timeout_s,
                                    attempt)
        except BaseException:
            latency = (time.perf_counter() - start) * 1000.0
            self._signals.finished(self.name, attempt.token, False, latency, math.nan,
                                   math.nan, attempt.cold, app)
            raise
        self._signals.finished(self.name, attempt.token, True, row["latency_ms"],
                               row["service_ms"], row["network_ms"], row["cold"], app)
        return result, row

    def _run(self, function: str, kwargs: dict[str, Any], start: float, deadline: float,
             attempt: _Attempt) -> tuple[Any, dict[str, Any]]:
        tries = 0
        while True:
            target, link = self._acquire(deadline, attempt)
            began = time.perf_counter()
            try:
                if isinstance(target, _LocalTarget):
                    result = target.handle.call(function, kwargs)
                    service = (time.perf_counter() - began) * 1000.0
                    timing = CallTiming(service, 0.0)
                else:
                    assert link is not None
                    result, timing = link.invoke(function, kwargs)
            except TransportError as exc:
                self._release(target, link)
                tries += 1
                if link is not None and self._link_gone(link):
                    self.replica_died(link.replica)
                if tries >= 3 or time.monotonic() > deadline:
                    raise CallFailed(f"{self.name}.{function}: {exc}") from exc
                continue
            except Exception as exc:
                self._release(target, link)
                raise CallFailed(f"{self.name}.{function}: {type(exc).__name__}: {exc}") \
                    from exc
            self._release(target, link)
            end = time.perf_counter()
            latency = (end - start) * 1000.0
            wait_ms = (began - start) * 1000.0
            remote = isinstance(target, _RemoteTarget)
            replica = -1
            if remote and link is not None:
                replica = link.replica.pid or 0
            network = timing.network_ms if remote else 0.0
            return result, {"placement": "remote" if remote else "local", "replica": replica,
                            "wait_ms": wait_ms, "service_ms": timing.service_ms,
                            "network_ms": network, "latency_ms": latency,
                            "cold": attempt.cold}

    def _link_gone(self, link: _Link) -> bool:
        """A replica of ours that did not answer and that the backend finds unhealthy.
        An attached server (not ours) stays in rotation: we cannot replace it."""
        if not link.replica.owned or self._replicas is None:
            return False
        return not self._replicas.healthy(link.replica)

    def _acquire(self, deadline: float, attempt: _Attempt) -> tuple[_Target, _Link | None]:
        """A target for the call (and its replica when remote), counted in flight and
        reported as the call's placement; waits while none is ready."""
        with self._cond:
            if self._closed:
                raise CallFailed(f"action {self.name!r} is shut down")
            while True:
                target = self._active
                link = target.next_link() if isinstance(target, _RemoteTarget) else None
                if target is not None and (link is not None or isinstance(target, _LocalTarget)):
                    target.in_flight += 1
                    where = LOCAL if link is None else REMOTE
                    if link is not None:
                        link.in_flight += 1
                    # Under the condition, so no replica event can come between the pick
                    # and the report (a replica is never gone before its calls started).
                    self._signals.placed(self.name, attempt.token, where,
                                         None if link is None else link.replica.url,
                                         where != attempt.where)
                    attempt.where = where
                    return target, link
                if target is None and self._desired.mode is Mode.UNLOADED:
                    attempt.cold = True
                    self._desired = (Placement.remote(1) if self.info.default_mode
                                     is Mode.REMOTE else Placement.local())
                    self._event("cold_start", str(self._desired))
                    self._kick()
                if target is None and not self._moving():
                    raise CallFailed(f"action {self.name!r} is not loaded")
                if self.last_error and target is None:
                    raise CallFailed(self.last_error)
                attempt.cold = attempt.cold or target is None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CallFailed(f"no placement of {self.name!r} answered in time")
                self._cond.wait(min(left, 0.2))

    def _release(self, target: _Target, link: _Link | None) -> None:
        with self._cond:
            target.in_flight -= 1
            if link is not None:
                link.in_flight -= 1
            if target.retiring or (link is not None and link.retiring):
                self._cond.notify_all()

    def close(self) -> None:
        """Unload everything (drained first); the router refuses calls afterwards."""
        with self._cond:
            self._closed = True
            self._desired = Placement.unloaded()
            worker = self._worker
            self._cond.notify_all()
        if worker is not None:
            worker.join(timeout=self._ready_timeout_s)
        self._drain_and_release(self._activate(None))


# --------------------------------------------------------------------------- logs


class RowLog:
    """Append-only rows with cursors, keeping at most `limit` (the oldest are dropped)."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self._rows: list[tuple[Any, ...]] = []
        self._base = 0  # index of _rows[0] since the start
        self._limit = limit
        self._lock = threading.Lock()

    def append(self, row: tuple[Any, ...]) -> None:
        with self._lock:
            self._rows.append(row)
            if len(self._rows) > self._limit:
                drop = len(self._rows) - self._limit // 2
                del self._rows[:drop]
                self._base += drop

    @property
    def cursor(self) -> int:
        with self._lock:
            return self._base + len(self._rows)

    def since(self, cursor: int) -> tuple[list[tuple[Any, ...]], int]:
        with self._lock:
            start = max(cursor - self._base, 0)
            return self._rows[start:], self._base + len(self._rows)


def latency_report(latencies: Sequence[float], span_s: float) -> dict[str, float | None]:
    """One app's entry of JSORC's benchmark report (latency in ms, throughput per second)."""
    values = np.asarray(latencies, dtype=float)
    out: dict[str, float | None] = {
        "throughput": round(len(values) / span_s, 4) if span_s > 0 else None}
    if len(values) == 0:
        out["average_latency"] = None
        out.update({key: None for key, _ in LATENCY_KEYS})
        return out
    out["average_latency"] = round(float(values.mean()), 3)
    for (key, _), value in zip(LATENCY_KEYS, np.percentile(values, [q for _, q in LATENCY_KEYS]),
                               strict=True):
        out[key] = round(float(value), 3)
    return out


@dataclass
class WalkerResult:
    request_id: int
    app: str
    report: list[Any]
    latency_ms: float
    ok: bool
    error: str = ""


# --------------------------------------------------------------------------- runtime


class Runtime:
    """Walkers, per-action routers, the call and request logs, benchmark and tracking.

    `observations` receives every event of the runtime (its routers' calls, replicas and
    local copies, its walkers' requests) for the controller's observer; the node it
    describes is this process on this machine (the cores it may use, the machine's memory;
    no live setting sizes the node).
    """

    def __init__(self, *, load_local: Callable[[ActionInfo], LocalHandle],
                 connect: Callable[[Replica], Invoker], replicas: ReplicaSource | None = None,
                 walkers: Iterable[Walker] = (), ready_timeout_s: float = 60.0,
                 call_timeout_s: float = 120.0) -> None:
        self._load_local = load_local
        self._connect = connect
        self._replica_source = replicas
        self._ready_timeout_s = ready_timeout_s
        self.call_timeout_s = call_timeout_s
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self.routers: dict[str, Router] = {}
        self.walkers: dict[str, Walker] = {w.name: w for w in walkers}
        self.calls = RowLog()
        self.requests = RowLog()
        self._ids = itertools.count(1)
        self._in_system = 0
        self._benchmark: dict[str, Any] = {"active": False, "start": None, "stop": None,
                                           "cursor": 0}
        self._track: dict[str, Any] = {"active": False, "cursor": 0}
        self._counts: dict[tuple[str, str, bool], int] = {}
        self.observations = LiveSignals(self.now, cores=node_cores(),
                                        memory_total_mb=machine_memory_mb(),
                                        apps=sorted(self.walkers))
        self.observations.runtime(True)

    def now(self) -> float:
        """Seconds since the runtime started (the `ts` of every row)."""
        return time.monotonic() - self._t0

    # ----------------------------------------------------------------- configuration

    def configure(self, info: ActionInfo) -> None:
        """Add an action, or update one that is not loaded."""
        with self._lock:
            router = self.routers.get(info.name)
            if router is not None and (router.placement.mode is not Mode.UNLOADED
                                       or router.transition):
                raise RuntimeRefusal(f"action {info.name!r} is loaded; unload it before "
                                     "configuring it again", 409)
            self.routers[info.name] = Router(
                info, load_local=self._load_local, replicas=self._replica_source,
                connect=self._connect, clock=self.now, signals=self.observations,
                ready_timeout_s=self._ready_timeout_s)

    def router(self, name: str) -> Router:
        router = self.routers.get(name)
        if router is None:
            known = ", ".join(sorted(self.routers)) or "none"
            raise RuntimeRefusal(f"unknown action {name!r} (configured: {known}); "
                                 "run `jsorc actions config` first", 404)
        return router

    def add_walker(self, walker: Walker) -> None:
        self.walkers[walker.name] = walker
        self.observations.add_app(walker.name)

    def replica_died(self, replica: Replica) -> None:
        router = self.routers.get(replica.action)
        if router is not None:
            router.replica_died(replica)

    # ----------------------------------------------------------------- walkers

    @property
    def in_system(self) -> int:
        return self._in_system

    def run_walker(self, name: str, ctx: Mapping[str, Any] | None = None) -> WalkerResult:
        walker = self.walkers.get(name)
        if walker is None:
            raise RuntimeRefusal(f"unknown walker {name!r} (walkers: "
                                 f"{', '.join(sorted(self.walkers))})", 404)
        missing = sorted({s.action for s in walker.steps} - set(self.routers))
        if missing:
            raise RuntimeRefusal(f"walker {name!r} calls unconfigured action(s) "
                                 f"{', '.join(missing)}; run `jsorc actions config` first", 409)
        ctx = dict(ctx or {})
        rid = next(self._ids)
        ts = self.now()
        start = time.perf_counter()
        report: list[Any] = []
        error = ""
        with self._lock:
            self._in_system += 1
        self.observations.request_arrived(name)
        completed = False  # no exception escaped (an error of a call is not one)
        try:
            for step in walker.steps:
                call_ts = self.now()
                try:
                    result, row = self.routers[step.action].call(
                        step.function, step.kwargs(ctx), self.call_timeout_s, name)
                except CallFailed as exc:
                    error = str(exc)
                    self._log_call((call_ts, rid, name, step.action, "", -1, math.nan,
                                    math.nan, math.nan, math.nan, False, False, error))
                    break
                self._log_call((call_ts, rid, name, step.action, row["placement"],
                                row["replica"], row["wait_ms"], row["service_ms"],
                                row["network_ms"], row["latency_ms"], True, row["cold"], ""))
                report.append(result)
            completed = True
        finally:
            with self._lock:
                self._in_system -= 1
            latency = (time.perf_counter() - start) * 1000.0
            ok = completed and not error
            self.observations.request_finished(name, latency, ok)
        self.requests.append((ts, rid, name, latency, ok, error))
        return WalkerResult(rid, name, report, latency, ok, error)

    def _log_call(self, row: tuple[Any, ...]) -> None:
        self.calls.append(row)
        key = (row[3], row[4] or "none", bool(row[10]))
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def call_counts(self) -> dict[tuple[str, str, bool], int]:
        """Calls since the start by (action, placement, ok), for /metrics."""
        with self._lock:
            return dict(self._counts)

    # ----------------------------------------------------------------- benchmark, tracking

    def benchmark_start(self) -> None:
        self._benchmark = {"active": True, "start": self.now(), "stop": None,
                           "cursor": self.requests.cursor}

    def benchmark_stop(self) -> dict[str, Any]:
        if not self._benchmark["active"]:
            raise RuntimeRefusal("no benchmark is running", 409)
        self._benchmark["stop"] = self.now()
        self._benchmark["active"] = False
        return self.benchmark_report()

    def benchmark_report(self) -> dict[str, Any]:
        """JSORC's benchmark report over the requests since `benchmark start` that
        succeeded (to `benchmark stop`, or now while it runs)."""
        bench = self._benchmark
        if bench["start"] is None:
            raise RuntimeRefusal("no benchmark was started", 409)
        end = bench["stop"] if bench["stop"] is not None else self.now()
        rows, _ = self.requests.since(bench["cursor"])
        rows = [r for r in rows if r[0] <= end and r[4]]
        span = end - bench["start"]
        by_app: dict[str, list[float]] = {}
        for row in rows:
            by_app.setdefault(row[2], []).append(row[3])
        walker_run = {app: latency_report(lat, span) for app, lat in sorted(by_app.items())}
        walker_run["all"] = latency_report([r[3] for r in rows], span)
        return {"walker_run": walker_run}

    @property
    def benchmark_active(self) -> bool:
        return bool(self._benchmark["active"])

    def track_start(self) -> None:
        self._track = {"active": True, "cursor": self.calls.cursor}

    def track_stop(self) -> list[dict[str, Any]]:
        """The call rows since `trackact start`, as dicts of the `calls` columns."""
        if not self._track["active"]:
            raise RuntimeRefusal("trackact is not running", 409)
        rows, _ = self.calls.since(self._track["cursor"])
        self._track = {"active": False, "cursor": 0}
        return [dict(zip(CALL_COLUMNS, row, strict=True)) for row in rows]

    @property
    def track_active(self) -> bool:
        return bool(self._track["active"])

    # ----------------------------------------------------------------- shutdown

    def close(self) -> None:
        self.observations.runtime(False)
        for router in list(self.routers.values()):
            try:
                router.close()
            except Exception:
                log.error("closing %s: %s", router.name, traceback.format_exc())
