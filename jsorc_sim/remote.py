"""An action's remote replicas: starting, serving, retiring.

Shared queue (the default, M/M/c): a `TokenQueue` holds one token per free replica core;
a call takes a token (FIFO among waiting calls), so it starts on whichever server frees
first, and the token names the replica that serves it; a call takes the token that was put
back first. A `simpy.Resource` cannot do this: its capacity is fixed at creation and its
slots have no identity, while replicas here come and go under load.

Per-replica queues (`remote_queue = "per_replica"`): each replica is its own
`simpy.Resource(remote_cores)` and calls are dealt round-robin onto the ready ones, as a
Kubernetes Service without session affinity would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import simpy
from simpy.events import Event

from jsorc_sim.distributions import Sampler
from jsorc_sim.meter import Meter
from policies.observe import ActionSignals


class ReplicaState(Enum):
    STARTING = "starting"
    READY = "ready"
    RETIRING = "retiring"  # serves what it has, takes nothing new, then is gone


@dataclass(eq=False)
class Replica:
    id: int
    state: ReplicaState
    busy: int = 0  # calls it is serving
    # Shared queue: its tokens not in the store -- held by calls, or handed to a waiting call
    # that has not resumed yet. A retiring replica is gone only when all are back.
    out: int = 0
    queue: simpy.Resource | None = None  # per_replica mode only


class TokenQueue:
    """A `simpy.Store` of replica tokens, with the Store's exact event order at half of its
    cost (a get and a put in a loop: 1.8 us against 3.9; every remote call takes and gives
    back a token, so this is the hot path).

    As in the Store, a get is granted at once when a token is free (its event succeeds, so
    the call resumes after the events already due now), else it waits, FIFO; a put adds the
    token and schedules an event whose processing hands the oldest free token to the oldest
    waiting get. Keeping that second step an event, rather than handing the token over
    inside `put`, keeps the order of simultaneous events, and so every result, the Store's.
    `items` (free tokens, oldest first) and `get_queue` (waiting gets, oldest first) keep the
    Store's names and meaning."""

    __slots__ = ("_env", "get_queue", "items")

    def __init__(self, env: simpy.Environment) -> None:
        self._env = env
        self.items: list[int] = []
        self.get_queue: list[Event] = []

    def get(self) -> Event:
        """An event whose value is the token the call is given."""
        event = Event(self._env)
        if self.items and not self.get_queue:
            event.succeed(self.items.pop(0))
        else:
            self.get_queue.append(event)
            if self.items:  # a put's hand-over is due: the oldest waiting get goes first
                self.get_queue.pop(0).succeed(self.items.pop(0))
        return event

    def cancel(self, event: Event) -> None:
        """A get given up (its call was interrupted); a no-op once it was granted."""
        if not event.triggered:
            self.get_queue.remove(event)

    def put(self, token: int) -> None:
        self.items.append(token)
        handover = Event(self._env)
        handover.callbacks.append(self._hand_over)
        handover.succeed()

    def _hand_over(self, _event: Event) -> None:
        if self.get_queue and self.items:
            self.get_queue.pop(0).succeed(self.items.pop(0))


class RemotePool:
    """The replicas of one action and the queue in front of them."""

    def __init__(
        self,
        env: simpy.Environment,
        *,
        cores: int,
        memory_mb: float,
        start_time: Sampler,
        per_replica: bool,
        memory: Meter,
        replica_cores: Meter,
        on_ready: Callable[[], None],
        signals: ActionSignals,
    ) -> None:
        self.env = env
        self.cores = cores
        self.memory_mb = memory_mb
        self.start_time = start_time
        self.per_replica = per_replica
        self.slots = TokenQueue(env)
        self.replicas: dict[int, Replica] = {}
        self._memory = memory
        self._replica_cores = replica_cores
        self._on_ready = on_ready
        self._signals = signals  # replica lifecycle events for the observation builder
        self._next_id = 0
        self._rr = 0
        self._counted = 0  # replicas already added to the shared meters
        self._ready = 0

    # ------------------------------------------------------------------ sizes

    @property
    def active(self) -> int:
        """Replicas starting or ready: what the pool is heading for."""
        return sum(r.state is not ReplicaState.RETIRING for r in self.replicas.values())

    @property
    def ready(self) -> int:
        """Replicas ready (kept as a count: every remote call asks)."""
        return self._ready

    @property
    def queued(self) -> int:
        if self.per_replica:
            return sum(len(r.queue.queue) for r in self.replicas.values() if r.queue)
        return len(self.slots.get_queue)

    # ------------------------------------------------------------------ scaling

    def scale_to(self, count: int) -> None:
        """Start or retire replicas so that `count` are starting or ready."""
        active = [r for r in self.replicas.values() if r.state is not ReplicaState.RETIRING]
        instant = [r for r in (self._start() for _ in range(count - len(active))) if r]
        # Replicas with no start-up time become ready only now: readiness calls back into the
        # action's reconcile, which would otherwise scale again in the middle of this loop.
        for replica in instant:
            self._become_ready(replica)
        if len(active) > count:
            # Retire the ones not yet ready first, then the newest (as a ReplicaSet does).
            order = sorted(active, key=lambda r: (r.state is ReplicaState.READY, -r.id))
            for replica in order[: len(active) - count]:
                self._retire(replica)

    def _start(self) -> Replica | None:
        """Start one replica; returns it if it is ready at once (no start-up time)."""
        replica = Replica(self._next_id, ReplicaState.STARTING)
        self._next_id += 1
        self.replicas[replica.id] = replica
        self._signals.replica_starting(self.env.now, replica.id)
        self._account()
        delay = self.start_time()
        if delay > 0:
            self.env.timeout(delay).callbacks.append(lambda _e: self._become_ready(replica))
            return None
        return replica

    def _become_ready(self, replica: Replica) -> None:
        if replica.state is not ReplicaState.STARTING:
            return  # retired before it was ready
        replica.state = ReplicaState.READY
        self._ready += 1
        self._signals.replica_ready(self.env.now, replica.id)
        if self.per_replica:
            replica.queue = simpy.Resource(self.env, capacity=self.cores)
        else:
            for _ in range(self.cores):
                self._give(replica)
        self._on_ready()

    def _retire(self, replica: Replica) -> None:
        was_ready = replica.state is ReplicaState.READY
        replica.state = ReplicaState.RETIRING
        self._ready -= was_ready
        self._signals.replica_retiring(self.env.now, replica.id)
        if was_ready and not self.per_replica:
            # What is not idle in the queue now is held by, or granted to, a call. (An idle
            # token whose hand-over is due is idle: taking it away voids that hand-over.)
            idle = self.slots.items.count(replica.id)
            self.slots.items = [t for t in self.slots.items if t != replica.id]
            replica.out = self.cores - idle
        self._maybe_remove(replica)

    def _maybe_remove(self, replica: Replica) -> None:
        # per_replica: a call granted a slot but not yet resumed is in `users`, not `queue`
        # (and not yet `busy`): the replica must wait for it too.
        if replica.state is ReplicaState.RETIRING and replica.busy == 0 and replica.out == 0 \
                and (replica.queue is None
                     or not (replica.queue.queue or replica.queue.users)):
            del self.replicas[replica.id]
            self._signals.replica_gone(self.env.now, replica.id)
            self._account()

    def _account(self) -> None:
        # The meters are shared by every action's pool: add this pool's change, not its level.
        delta = len(self.replicas) - self._counted
        self._counted = len(self.replicas)
        if delta:
            self._memory.add(delta * self.memory_mb)
            self._replica_cores.add(delta * self.cores)

    # ------------------------------------------------------------------ serving

    def pick(self) -> Replica | None:
        """per_replica mode: the next ready replica, round-robin."""
        ready = [r for r in self.replicas.values() if r.state is ReplicaState.READY]
        if not ready:
            return None
        self._rr += 1
        return ready[self._rr % len(ready)]

    def acquired(self, replica_id: int) -> None:
        self.replicas[replica_id].busy += 1

    def release(self, replica_id: int) -> None:
        """A call on `replica_id` ended: hand its core back, or let a retiring replica go."""
        replica = self.replicas[replica_id]
        replica.busy -= 1
        self._take_back(replica)

    def give_back(self, replica_id: int) -> None:
        """A token comes back to the pool (a call ended, or never started)."""
        self._take_back(self.replicas[replica_id])

    def _take_back(self, replica: Replica) -> None:
        if self.per_replica:
            self._maybe_remove(replica)
        elif replica.state is ReplicaState.READY or (self.slots.get_queue and not self._ready):
            # A retiring replica keeps serving the calls already queued when no ready
            # replica is left to take them (a move away from remote drains the queue).
            self.slots.put(replica.id)
        else:
            replica.out -= 1
            self._maybe_remove(replica)

    def _give(self, replica: Replica) -> None:
        self.slots.put(replica.id)
