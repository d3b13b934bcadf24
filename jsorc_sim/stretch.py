"""One stretch of a run with the placement fixed, computed as queues, not events.

Between two policy decisions nothing moves: each request takes the same path through the
same FIFO multi-server queues -- the node's cores for its walker compute, then for each call
the wire and the action's shared replica queue -- so every wait follows the Kiefer-Wolfowitz
recursion (jsorc_sim.fifo). A request's path is a chain of queues; when no app's chain loops
back (the `Paths` check), the queues are solved one after another in a topological order,
each on the arrivals its upstream queues produced.

`Table` holds the requests still in the system: those arriving in the stretch and those
carried over from the last one. `Table.advance(end)` solves every queue for the customers
arriving before `end` (their starts and ends may lie beyond it: with the placement still
fixed after `end` those are right, and if it changes, the fast path hands the requests back
to SimPy in the state they are in at `end`). Times are seconds, service and wire in ms as the
SimPy path has them, and each time is computed with the same float operations as SimPy's
clock (`start + service_ms / 1000`), so both paths agree to the last bits, not just closely.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jsorc_sim import fifo
from jsorc_sim.arrivals import Block, call_grid

NAN = np.nan
CORES = -1  # the node's cores, as a queue; actions are queues 0..n-1 by code


@dataclass(frozen=True)
class Paths:
    """Each app's chain of queues, and an order to solve them in.

    `calls[app]` are the action codes it calls, in order; `compute_s[app]` its walker compute
    (on the node's cores first, when > 0); `order` the queues upstream first."""

    calls: tuple[tuple[int, ...], ...]
    compute_s: tuple[float, ...]
    order: tuple[int, ...]

    @classmethod
    def of(cls, calls: Sequence[Sequence[int]], compute_s: Sequence[float],
           names: Sequence[str], apps: Sequence[str]) -> Paths | str:
        """The paths, or why these apps' queues cannot be solved one after another."""
        edges: dict[int, set[int]] = {}
        nodes: set[int] = set()
        for app, chain, compute in zip(apps, calls, compute_s, strict=True):
            path = ([CORES] if compute > 0 else []) + list(chain)
            if len(set(path)) < len(path):
                twice = next(q for q in path if path.count(q) > 1)
                return (f"app {app!r} calls {_queue_name(twice, names)} twice (a request "
                        "would queue behind itself)")
            nodes.update(path)
            for a, b in itertools.pairwise(path):
                edges.setdefault(a, set()).add(b)
        order: list[int] = []
        indegree = {q: 0 for q in nodes}
        for targets in edges.values():
            for b in targets:
                indegree[b] += 1
        ready = sorted(q for q, d in indegree.items() if d == 0)
        while ready:
            q = ready.pop(0)
            order.append(q)
            for b in sorted(edges.get(q, ())):
                indegree[b] -= 1
                if indegree[b] == 0:
                    ready.append(b)
        if len(order) < len(nodes):
            loop = sorted(q for q, d in indegree.items() if d > 0)
            return ("the apps call " + ", ".join(_queue_name(q, names) for q in loop)
                    + " in orders that loop (one app calls A then B, another B then A)")
        return cls(tuple(tuple(c) for c in calls), tuple(float(c) for c in compute_s),
                   tuple(order))


def _queue_name(queue: int, names: Sequence[str]) -> str:
    return "the node's cores" if queue == CORES else f"action {names[queue]!r}"


@dataclass
class Servers:
    """One queue's servers as the kernel keeps them (see jsorc_sim.fifo): when each token is
    next free, and its place in the line; `replica[k]` is token k's replica id (-1 for a
    core). `returned`/`returned_order` are the same as of the last boundary only (the
    hand-back's free-token order)."""

    free: np.ndarray
    order: np.ndarray
    replica: np.ndarray
    counter: int
    returned: np.ndarray
    returned_order: np.ndarray

    @classmethod
    def idle(cls, replicas: Sequence[int], now: float) -> Servers:
        """All tokens free at `now`, in this order (a pool's store, or the cores)."""
        n = len(replicas)
        order = np.arange(n, dtype=np.int64)
        at = np.full(n, float(now))  # float: SimPy's clock starts at the int 0
        return cls(at, order, np.asarray(replicas, dtype=np.int64), n, at.copy(),
                   order.copy())


class Table:
    """The requests in the system during fast stretches, one row each (structure of arrays).

    Per call position j: `issued` (its start of wait, s), `queued` (after the wire), `start`
    and `end` of service, `token` and its place in the token line (`order`). NaN until known.
    """

    def __init__(self, paths: Paths, service_per_size_ms: Sequence[float],
                 network_ms: Sequence[float], width: int) -> None:
        self.paths = paths
        self.per_size = np.asarray(service_per_size_ms, dtype=float)
        self.network_ms = np.asarray(network_ms, dtype=float)
        self.width = width
        self.grid = call_grid(paths.calls)
        self.n_calls = np.array([len(c) for c in paths.calls], dtype=np.int64)
        self.compute = np.asarray(paths.compute_s, dtype=float)
        self.rid = np.empty(0, dtype=np.int64)
        self.app = np.empty(0, dtype=np.int64)
        self.arrival = np.empty(0)
        self.size = np.empty(0)
        self.draws = np.empty((0, width))
        self.c_start = np.empty(0)
        self.c_end = np.empty(0)
        self.issued = np.empty((0, width))
        self.queued = np.empty((0, width))
        self.start = np.empty((0, width))
        self.end = np.empty((0, width))
        self.token = np.empty((0, width), dtype=np.int64)
        self.order = np.empty((0, width), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rid)

    def add(self, block: Block, first_rid: int) -> None:
        n = len(block)
        w = self.width
        self.rid = np.concatenate((self.rid, first_rid + np.arange(n, dtype=np.int64)))
        self.app = np.concatenate((self.app, block.app))
        self.arrival = np.concatenate((self.arrival, block.ts))
        self.size = np.concatenate((self.size, block.size))
        self.draws = np.concatenate((self.draws, block.draws.reshape(n, w)))
        none = np.full(n, NAN)
        self.c_start = np.concatenate((self.c_start, none))
        self.c_end = np.concatenate((self.c_end, none))
        for name in ("issued", "queued", "start", "end"):
            setattr(self, name, np.concatenate((getattr(self, name), np.full((n, w), NAN))))
        for name in ("token", "order"):
            setattr(self, name, np.concatenate((getattr(self, name),
                                                np.full((n, w), -1, dtype=np.int64))))

    def keep(self, rows: np.ndarray) -> None:
        """Keep only these rows (a boolean mask): the requests still in the system."""
        for name in ("rid", "app", "arrival", "size", "draws", "c_start", "c_end", "issued",
                     "queued", "start", "end", "token", "order"):
            setattr(self, name, getattr(self, name)[rows])

    # ------------------------------------------------------------------ solving

    def advance(self, end: float, servers: dict[int, Servers]) -> None:
        """Solve every queue for the customers that reach it before `end`."""
        for queue in self.paths.order:
            if queue == CORES:
                self._cores(end, servers[CORES])
            else:
                self._pool(queue, end, servers[queue])

    def _cores(self, end: float, servers: Servers) -> None:
        compute = self.compute[self.app]
        rows = np.flatnonzero((compute > 0) & np.isnan(self.c_start) & (self.arrival < end))
        if not len(rows):
            return
        rows = rows[np.lexsort((self.rid[rows], self.arrival[rows]))]
        start, _, servers.counter = fifo.serve(self.arrival[rows], compute[rows],
                                               servers.free, servers.order, servers.counter)
        self.c_start[rows] = start
        self.c_end[rows] = start + compute[rows]

    def _pool(self, action: int, end: float, servers: Servers) -> None:
        grid = self.grid[self.app]
        rows, cols = np.nonzero((grid == action) & np.isnan(self.start))
        if not len(rows):
            return
        # When the call is issued: the end of the stage before it (compute, or the call
        # before), or the arrival. Unknown (NaN) while that stage is unsolved.
        before = np.where(cols > 0, self.end[rows, np.maximum(cols - 1, 0)],
                          np.where(self.compute[self.app[rows]] > 0, self.c_end[rows],
                                   self.arrival[rows]))
        network = self.network_ms[action]
        queued = before + network / 1000.0 if network else before
        # Issued (and on the wire) from the end of the stage before; NaN compares False,
        # so a call whose stage before is unsolved waits, as does one still on the wire.
        issued = before < end
        self.issued[rows[issued], cols[issued]] = before[issued]
        ready = queued < end
        rows, cols, before, queued = rows[ready], cols[ready], before[ready], queued[ready]
        if not len(rows):
            return
        sort = np.lexsort((self.rid[rows], queued))
        rows, cols, before, queued = rows[sort], cols[sort], before[sort], queued[sort]
        service_ms = self.service_ms(rows, cols, action)
        first_order = servers.counter
        start, token, servers.counter = fifo.serve(queued, service_ms / 1000.0, servers.free,
                                                   servers.order, servers.counter)
        self.queued[rows, cols] = queued
        self.start[rows, cols] = start
        self.end[rows, cols] = start + service_ms / 1000.0
        self.token[rows, cols] = token
        self.order[rows, cols] = first_order + np.arange(len(rows), dtype=np.int64)

    def service_ms(self, rows: np.ndarray, cols: np.ndarray, action: int) -> np.ndarray:
        """The calls' service ms: the base draw plus size x per_size_ms (as the call adds
        it; remote calls have no local slowdown)."""
        base: np.ndarray = self.draws[rows, cols]
        per = self.per_size[action]
        return base + self.size[rows] * per if per else base

    def finished_at(self) -> np.ndarray:
        """Each request's end (its last call's, or its compute's); NaN while unsolved."""
        if self.width == 0:  # no app makes a call: a request ends with its compute
            return self.c_end.copy()
        last = self.n_calls[self.app] - 1
        ends = self.end[np.arange(len(self)), np.maximum(last, 0)]
        return np.where(last >= 0, ends, self.c_end)
