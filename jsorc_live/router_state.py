"""A router's state: its targets, what it was asked for, and what can be read of them.

`RouterState` holds what jsorc_live.router.Router changes (the active target, the targets
draining, the wish, the events) and answers every question about it: the placement, whether
it is moving, the step the reconciler takes next, JSORC's `action_status`. Everything here
reads under the router's one condition, and nothing here starts a thread or does I/O.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from jsorc_live.actions.client import spec_answers
from jsorc_live.runtime_types import ActionInfo, Invoker, LocalHandle, Probe, Replica, ReplicaSource
from jsorc_live.signals import LiveSignals
from jsorc_live.targets import HealthPolicy, LocalTarget, RemoteTarget, RetryPolicy, Target
from policies import Mode, Placement
from policies.observe import ActionInfo as Sizes

log = logging.getLogger("jsorc_live.router")

#: What a drain waits beyond the call deadline for calls to hand their target back.
DRAIN_GRACE_S = 2.0


class NextStep(enum.Enum):
    """The reconciler's next step (see RouterState._next_step)."""

    DONE = "done"
    UNLOAD = "unload"
    LOAD_LOCAL = "load_local"
    SCALE = "scale"
    MOVE_REMOTE = "move_remote"



class RouterState:
    """One action's targets and wish (see jsorc_live.router.Router for what changes them).

    `call_timeout_s()` is the deadline of a call when the action has none of its own;
    `max_replicas()` caps the replicas a placement may ask for (with the backend's
    `capacity`, when it has one).
    """

    def __init__(self, info: ActionInfo, *, load_local: Callable[[ActionInfo], LocalHandle],
                 replicas: ReplicaSource | None, connect: Callable[[Replica], Invoker],
                 clock: Callable[[], float], signals: LiveSignals,
                 ready_timeout_s: float = 60.0,
                 call_timeout_s: Callable[[], float] = lambda: 30.0,
                 max_replicas: Callable[[], int] = lambda: 32,
                 health: HealthPolicy | None = None, retry: RetryPolicy | None = None,
                 probe: Probe | None = None, rng: random.Random | None = None) -> None:
        self.info = info
        self._signals = signals
        self._load_local = load_local
        self._replicas = replicas
        self._connect = connect
        self._clock = clock
        self._ready_timeout_s = ready_timeout_s
        self._call_timeout_s = call_timeout_s
        self._max_replicas = max_replicas
        self._health = health or HealthPolicy()
        self._retry = retry or RetryPolicy()
        self._probe = probe or spec_answers
        self._rng = rng or random.Random()
        self._cond = threading.Condition()
        self._active: Target | None = None
        self._draining: list[Target] = []
        self._desired = Placement.unloaded()
        self._attach_url: str | None = None
        self._worker: threading.Thread | None = None
        self._checker: threading.Thread | None = None
        self._stop = threading.Event()
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
    def deadline_s(self) -> float:
        """A call's deadline: the action's own, else the runtime's."""
        own = self.info.call_timeout_s
        return own if own is not None else self._call_timeout_s()

    @property
    def drain_s(self) -> float:
        """The longest a drain waits: the calls it waits for reach their deadline by then."""
        return self.deadline_s + DRAIN_GRACE_S

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
            return len(active.ready) if isinstance(active, RemoteTarget) else 0

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
            return any(isinstance(t, LocalTarget) for t in self._targets())

    def _targets(self) -> list[Target]:
        return ([self._active] if self._active else []) + self._draining

    def _next_step(self) -> NextStep:
        """What the reconciler does next to make the placement the wish (pure: reads the
        targets, held under the condition). A remote target counts its ready replicas, so
        one that lost replicas (dead, unhealthy) is scaled back up."""
        want, active = self._desired, self._active
        if want.mode is Mode.UNLOADED:
            return NextStep.DONE if active is None else NextStep.UNLOAD
        if want.mode is Mode.LOCAL:
            fine = isinstance(active, LocalTarget) and not active.degraded
            return NextStep.DONE if fine else NextStep.LOAD_LOCAL
        if isinstance(active, RemoteTarget) and not active.retiring:
            if active.attached:  # one server, which we cannot replace
                return NextStep.DONE
            return NextStep.DONE if len(active.ready) == want.replicas else NextStep.SCALE
        return NextStep.MOVE_REMOTE

    def _moving(self) -> bool:
        """Not yet what was asked, or still draining: an old target, or replicas a scale-down
        took out of balancing that are not stopped yet."""
        if self._next_step() is not NextStep.DONE or self._draining:
            return True
        active = self._active
        return isinstance(active, RemoteTarget) and any(link.retiring for link in active.links)

    def status(self) -> dict[str, Any]:
        """JSORC's `action_status`: mode (what was asked: module, remote or unloaded), with
        where calls go now, and the remote replicas' URL and status (STARTING while none is
        ready)."""
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
                "call_timeout_s": self.deadline_s,
                # The sizes a simulator needs to reproduce this action (jsorc-sim calibrate).
                "local_memory_mb": self.local_memory_mb,
                "remote_memory_mb": self.info.remote_memory_mb,
                "replica_cores": self.info.replica_cores,
            }
            remote = next((t for t in self._targets() if isinstance(t, RemoteTarget)), None)
            if desired.mode is Mode.REMOTE or remote is not None:
                ready = remote.ready if remote else []
                ready_now = isinstance(active, RemoteTarget) and bool(ready)
                out["remote"] = {
                    "url": ready[0].replica.url if ready else self._attach_url,
                    "status": "READY" if ready_now else "STARTING",
                    "replicas": [link.replica.url for link in ready],
                    "attached": self._attach_url is not None,
                }
            degraded = next((t.degraded for t in self._targets()
                             if isinstance(t, LocalTarget) and t.degraded), "")
            if degraded:
                out["degraded"] = True
                out["degraded_error"] = degraded
            if self.last_error:
                out["error"] = self.last_error
            return out
    def _report(self, target: Target, *, serving: bool) -> None:
        """`target` starts or stops taking calls (called holding the condition)."""
        if isinstance(target, LocalTarget):
            self._signals.local(self.name, "ready" if serving else "draining")
        elif isinstance(target, RemoteTarget):
            for link in target.ready:
                if serving:
                    self._signals.replica_ready(self.name, link.replica.url)
                else:
                    self._signals.replica_retiring(self.name, link.replica.url)
    def _kick(self) -> None:
        """Start the reconciler if it is not running (called holding the condition)."""
        if self._closed:
            return
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._reconcile, name=f"move-{self.name}",
                                            daemon=True)
            self._worker.start()
        self._cond.notify_all()

    def _stop_replica(self, replica: Replica) -> None:
        """Stop a replica of ours (an attached one is not ours to stop)."""
        if self._replicas is not None and replica.owned:
            try:
                self._replicas.stop_replica(replica)
            except Exception:  # stopping is best effort; the backend's shutdown sweeps
                log.exception("stopping %s", replica)
        self._signals.replica_gone(self.name, replica.url)

    def _reconcile(self) -> None:
        """The moves' worker (Router): make the placement what was asked."""
        raise NotImplementedError

    def _event(self, kind: str, detail: str) -> None:
        self.events.append({"ts": self._clock(), "action": self.name, "kind": kind,
                            "detail": detail})
