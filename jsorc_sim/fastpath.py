"""The fast path: static stretches of a run computed as queues (jsorc_sim.stretch), not events.

A run is a sequence of stretches between boundaries -- the controller's steps and the
timeline's samples. At a boundary where the run allows it (see `static_reasons` and
`FastPath.dynamic_reasons`: open arrivals, every called action on ready replicas of a shared
queue and nothing moving, the runtime up, no option that couples queues), and once SimPy's
own requests are all done, the fast path takes the arrivals over: it draws each stretch's
requests from the same source (jsorc_sim.arrivals), solves their queues, records their rows,
and hands the observation builder the stretch's events in one batch
(`ActionSignals.remote_batch`), so the controller at the next boundary sees what SimPy would
have shown it. It carries on while the placement stays put. When anything asks for a change
(`before_change`, from `ActionRuntime.apply`), it hands every request still in the system
back to SimPy in the state it is in at that instant (jsorc_sim.resume) and SimPy runs on.

`mode`: "auto" (the default: the fast path where it can, SimPy elsewhere), "off" (SimPy
only) or "on" (as auto, but a scenario the fast path can never run is an error). `summary()`
says which path ran for how long, and why not where it did not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from jsorc_sim.arrivals import OpenSource, arrive
from jsorc_sim.resume import CallResume, Resume
from jsorc_sim.scenario import Scenario
from jsorc_sim.stretch import CORES, Paths, Servers, Table
from policies import Mode
from policies.observe import RemoteWindow

if TYPE_CHECKING:
    from jsorc_sim.runtime import Runtime

MODES = ("auto", "on", "off")
REMOTE = 1


class FastPathError(ValueError):
    """`fast = "on"` for a scenario the fast path cannot run."""


def static_reasons(scenario: Scenario, *, record_events: bool = False) -> list[str]:
    """Why the fast path can never run this scenario (empty when it can, at some point)."""
    reasons = []
    node = scenario.node
    if scenario.workload.kind == "closed":
        reasons.append("closed-loop clients (each request waits for the one before)")
    if record_events:
        reasons.append("record_events keeps every single event")
    if node.replicas_share_cores:
        reasons.append("node.replicas_share_cores couples the replicas' queues to the cores")
    if node.network_holds_core:
        reasons.append("node.network_holds_core couples the wire to the cores")
    if node.runtime_cores is not None and node.runtime_cores < node.cores:
        reasons.append("node.runtime_cores adds a second queue in front of the cores")
    for name, spec in scenario.actions.items():
        if spec.remote_queue == "per_replica":
            reasons.append(f"action {name!r} has per-replica queues")
    paths = _paths(scenario)
    if isinstance(paths, str):
        reasons.append(paths)
    return reasons


def _paths(scenario: Scenario) -> Paths | str:
    names = list(scenario.actions)
    calls = [[names.index(a) for a in app.calls] for app in scenario.apps.values()]
    compute = [app.compute_ms / 1000.0 for app in scenario.apps.values()]
    return Paths.of(calls, compute, names, list(scenario.apps))


@dataclass
class Summary:
    """Which path ran: simulated seconds on each, stretches, switches, and the reasons."""

    mode: str
    fast_s: float = 0.0
    stretches: int = 0
    switches_in: int = 0
    hand_backs: int = 0
    fast_requests: int = 0
    never: tuple[str, ...] = ()  # why it could never run
    # Why it was not running, at the boundaries where it was not: reason -> boundaries.
    reasons: dict[str, int] = field(default_factory=dict)

    def note(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def as_dict(self, duration_s: float) -> dict[str, Any]:
        return {"mode": self.mode, "fast_s": round(self.fast_s, 6),
                "simpy_s": round(max(duration_s - self.fast_s, 0.0), 6),
                "stretches": self.stretches, "switches_in": self.switches_in,
                "hand_backs": self.hand_backs, "fast_requests": self.fast_requests,
                "not_fast_because": list(self.never) or list(self.reasons)}


class FastPath:
    """Switches a run between SimPy and the stretch solver at boundaries (see the module)."""

    def __init__(self, runtime: Runtime, source: OpenSource | None, mode: str = "auto", *,
                 record_events: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"fast must be one of {', '.join(MODES)}, got {mode!r}")
        self.runtime = runtime
        self.env: simpy.Environment = runtime.env
        self.source = source
        scenario = runtime.scenario
        self.end_s = scenario.duration_s
        never = [] if mode != "off" else ["fast = \"off\""]
        never += static_reasons(scenario, record_events=record_events) if mode != "off" else []
        if mode == "on" and never:
            raise FastPathError(f"scenario {scenario.name!r}: the fast path cannot run it: "
                                + "; ".join(never))
        self.summary = Summary(mode, never=tuple(never))
        self.enabled = not never
        self.active = False
        self._next: dict[str, float] = {}
        self._scheduled_at: float | None = None
        self._since = 0.0
        self._table: Table | None = None
        self._servers: dict[int, Servers] = {}
        self._pending: dict[int, list[tuple[int, int]]] = {}  # action -> (row, position)
        self._tokens: dict[int, list[int]] = {}
        self._unfinished: list[int] = []
        self._until = 0.0  # where the last stretch ended
        if self.enabled:
            paths = _paths(scenario)
            assert isinstance(paths, Paths)
            self.paths = paths
            self.actions = list(runtime.actions.values())
            self.used = sorted({code for chain in paths.calls for code in chain})

    # ------------------------------------------------------------------ hooks

    def stepped(self, who: str, next_at: float) -> None:
        """A boundary: `who` (the controller, the timeline) stepped and steps next at
        `next_at`. The next stretch is decided once every step at this instant is done."""
        self._next[who] = next_at
        if not self.enabled or self._scheduled_at == self.env.now:
            return
        self._scheduled_at = self.env.now
        # A zero delay runs after the other steps already due now (they were scheduled
        # earlier), so a decision made at this boundary is in before the next stretch.
        self.env.timeout(0).callbacks.append(self._boundary)

    def before_change(self) -> None:
        """Something is about to change the placement: hand the requests back to SimPy."""
        if self.active:
            self._hand_back()

    def emptied(self) -> None:
        """SimPy's last request in the system finished (the runtime calls this only while
        the fast path waits to take over)."""
        self.runtime.on_empty = None
        if self._scheduled_at == self.env.now:
            return  # a boundary already due now takes over
        self._scheduled_at = self.env.now
        self.env.timeout(0).callbacks.append(self._boundary)

    # ------------------------------------------------------------------ boundaries

    def _boundary(self, _event: Any = None) -> None:
        self._scheduled_at = None
        now = self.env.now
        until = min([*self._next.values(), self.end_s])
        if until <= now or (self.active and self._until >= until):
            return  # nothing to run, or this stretch already ran (two wake-ups at one instant)
        if not self.active:
            reason = self.dynamic_reasons()
            if reason:
                self.summary.note(reason)
                return
            runtime = self.runtime
            if runtime.active or runtime.at_door:
                runtime.on_empty = self.emptied  # take over when SimPy's requests are done
                return
            held = self._held()
            if held:
                self.summary.note(held)
                return
            self._switch_in()
        self._stretch(now, until)

    def dynamic_reasons(self) -> str:
        """Why the fast path cannot take the next stretch ("" when it can)."""
        runtime = self.runtime
        if not runtime.up:
            return "the runtime is restarting"
        if self.source is None:
            return "no open workload"
        for action in self.actions:
            if action.in_transition:
                return f"action {action.name!r} is moving"
        for code in self.used:
            action = self.actions[code]
            if action.route is not Mode.REMOTE:
                return f"action {action.name!r} is not settled on ready replicas"
            if action.pool.slots.get_queue:
                return f"calls wait for action {action.name!r}'s replicas"
        return ""

    def _held(self) -> str:
        """Why not yet, with SimPy's requests done: a call of no request still holds a
        token (a failed request's call finishing after an out-of-memory restart), and the
        stretch would miss that server. "" when every ready server's token is free."""
        for code in self.used:
            pool = self.actions[code].pool
            if len(pool.slots.items) != pool.ready * pool.cores:
                return f"calls of failed requests still hold action {self.actions[code].name!r}"
        return ""

    def _switch_in(self) -> None:
        runtime = self.runtime
        source = self.source
        assert source is not None
        if source.process is not None and source.process.is_alive:
            source.process.interrupt("fast path")
            source.process = None
        now = self.env.now
        self._servers = {CORES: Servers.idle([-1] * runtime.scenario.node.cores, now)}
        for code in self.used:
            self._servers[code] = Servers.idle(list(self.actions[code].pool.slots.items), now)
        widths = [len(chain) for chain in self.paths.calls]
        self._table = Table(self.paths, [a.per_size_ms for a in self.actions],
                            [a.network_ms for a in self.actions], max(widths, default=0))
        self._since = now
        self.active = True
        self.summary.switches_in += 1

    # ------------------------------------------------------------------ a stretch

    def _stretch(self, start: float, end: float) -> None:
        runtime = self.runtime
        table = self._table
        source = self.source
        assert table is not None and source is not None
        block = source.take_until(end)
        table.add(block, runtime.next_request)
        runtime.next_request += len(block)
        runtime.arrivals += len(block)
        self.summary.fast_requests += len(block)
        table.advance(end, self._servers)
        self._apply(table, start, end)
        self._until = end
        self.summary.stretches += 1
        self.summary.fast_s += end - start

    def _apply(self, table: Table, start: float, end: float) -> None:
        """Record the rows and hand the builder the events of [start, end)."""
        runtime = self.runtime
        recorder = runtime.recorder
        apps = recorder.apps
        in_window = (table.end >= start) & (table.end < end)
        rows, cols = np.nonzero(in_window)
        order = np.argsort(table.end[rows, cols], kind="stable")
        rows, cols = rows[order], cols[order]
        actions = table.grid[table.app[rows], cols]
        if len(rows):
            issued, queued = table.issued[rows, cols], table.queued[rows, cols]
            begun, ended = table.start[rows, cols], table.end[rows, cols]
            service = np.empty(len(rows))
            replica = np.empty(len(rows), dtype=np.int64)
            for code in np.unique(actions).tolist():
                at = actions == code
                service[at] = table.service_ms(rows[at], cols[at], code)
                replica[at] = self._servers[code].replica[table.token[rows[at], cols[at]]]
            recorder.add_calls({
                "ts": issued, "request_id": table.rid[rows], "app": table.app[rows],
                "action": actions, "placement": np.full(len(rows), REMOTE),
                "replica": replica, "wait_ms": (0.0 + (begun - queued)) * 1000.0,
                "service_ms": service, "network_ms": (queued - issued) * 1000.0,
                "latency_ms": (ended - issued) * 1000.0, "ok": np.ones(len(rows)),
                "cold": np.zeros(len(rows)), "error": np.zeros(len(rows))})
        # The builder: per action, the calls issued, started and finished in the window.
        builder = runtime.observations
        self._pending = {}
        for code in self.used:
            self._window(table, code, start, end, rows[actions == code],
                         cols[actions == code], builder.action(self.actions[code].name), apps)
        # Requests: those whose last stage ended in the window are done.
        fin = table.finished_at()
        done = fin < end
        done_rows = np.flatnonzero(done)
        done_rows = done_rows[np.argsort(fin[done_rows], kind="stable")]
        latency = (fin[done_rows] - table.arrival[done_rows]) * 1000.0
        n_done = len(done_rows)
        if n_done:
            recorder.add_requests({
                "ts": table.arrival[done_rows], "request_id": table.rid[done_rows],
                "app": table.app[done_rows], "latency_ms": latency,
                "ok": np.ones(n_done), "error": np.zeros(n_done)})
        c_in = (table.c_start >= start) & (table.c_start < end)
        c_out = (table.c_end >= start) & (table.c_end < end)
        finished = {apps[code]: latency[table.app[done_rows] == code]
                    for code in np.unique(table.app[done_rows]).tolist()}
        runtime.node_signals.batch(table.c_start[c_in], table.c_end[c_out], finished)
        # The free tokens' line as of `end`, for a hand-back.
        for code in self.used:
            at = actions == code
            servers = self._servers[code]
            tok, when = table.token[rows[at], cols[at]], table.end[rows[at], cols[at]]
            line = table.order[rows[at], cols[at]]
            by_line = np.argsort(line, kind="stable")
            servers.returned[tok[by_line]] = when[by_line]
            servers.returned_order[tok[by_line]] = line[by_line]
        # Keep the requests still in the system; the runtime counts them as unfinished.
        keep = ~done
        self._reindex_pending(keep)
        table.keep(keep)
        for rid in self._unfinished:
            runtime.unfinished.pop(rid, None)
        self._unfinished = table.rid.tolist()
        for rid, arrival, app in zip(self._unfinished, table.arrival.tolist(),
                                     table.app.tolist(), strict=True):
            runtime.unfinished[rid] = (arrival, app)
        runtime.fast_in_system = len(table)
        waiting = (table.compute[table.app] > 0) & ~(table.c_start < end)
        runtime.fast_cores_queue = int(np.count_nonzero(waiting))

    def _window(self, table: Table, code: int, start: float, end: float, rows: np.ndarray,
                cols: np.ndarray, signals: Any, apps: list[str]) -> None:
        grid = table.grid[table.app] == code
        issued, begun, ended = table.issued[grid], table.start[grid], table.end[grid]
        tokens = table.token[grid]
        servers = self._servers[code]
        started = (begun >= start) & (begun < end)
        finished = (ended >= start) & (ended < end)
        latency = (table.end[rows, cols] - table.issued[rows, cols]) * 1000.0
        queued = table.queued[rows, cols]
        by_app = {apps[a]: int(n) for a, n in
                  zip(*np.unique(table.app[rows], return_counts=True), strict=True)}
        # Unfinished at `end`: issued before it, not ended before it.
        p_rows, p_cols = np.nonzero((table.grid[table.app] == code)
                                    & (table.issued < end) & ~(table.end < end))
        # In the order they were issued, as the builder's calls are (its oldest call first).
        by_issue = np.lexsort((table.rid[p_rows], table.issued[p_rows, p_cols]))
        p_rows, p_cols = p_rows[by_issue], p_cols[by_issue]
        pending = []
        for r, c in zip(p_rows.tolist(), p_cols.tolist(), strict=True):
            is_started = bool(table.start[r, c] < end)
            replica = int(servers.replica[table.token[r, c]]) if is_started else None
            pending.append((float(table.issued[r, c]), is_started, replica))
        window = RemoteWindow(
            issued=issued[(issued >= start) & (issued < end)],
            started=begun[started], started_replica=servers.replica[tokens[started]],
            finished=ended[finished], finished_replica=servers.replica[tokens[finished]],
            latency_ms=latency, service_ms=table.service_ms(rows, cols, code),
            network_ms=(queued - table.issued[rows, cols]) * 1000.0, by_app=by_app,
            pending=tuple(pending))
        self._tokens[code] = signals.remote_batch(window)
        self._pending[code] = list(zip(p_rows.tolist(), p_cols.tolist(), strict=True))

    def _reindex_pending(self, keep: np.ndarray) -> None:
        new_index = np.cumsum(keep) - 1
        for code, cells in self._pending.items():
            self._pending[code] = [(int(new_index[r]), c) for r, c in cells]

    # ------------------------------------------------------------------ hand-back

    def _hand_back(self) -> None:
        """Every request in the system goes back to SimPy as it stands now (see resume.py)."""
        runtime = self.runtime
        env = self.env
        table = self._table
        source = self.source
        assert table is not None and source is not None
        now = env.now
        if now != self._until:
            # Changes come from the controller's steps, which are the stretches' ends; the
            # batch handed to the builder already runs to `_until`.
            raise RuntimeError(f"fast path: a change at t={now!r} inside a stretch that runs "
                               f"to t={self._until!r}")
        self.active = False
        self.summary.hand_backs += 1
        # Tokens: the ones in service stay with their calls; the others go back to each
        # pool's store in the order they came back.
        held: dict[tuple[int, int], int] = {}
        for code in self.used:
            servers = self._servers[code]
            pool = self.actions[code].pool
            serving = np.zeros(len(servers.free), dtype=bool)
            for r, c in self._pending.get(code, []):
                if table.start[r, c] < now:
                    serving[table.token[r, c]] = True
                    held[(r, c)] = int(table.token[r, c])
            free = np.flatnonzero(~serving)
            free = free[np.lexsort((servers.returned_order[free], servers.returned[free]))]
            pool.slots.items = [int(servers.replica[k]) for k in free]
            for replica in pool.replicas.values():
                replica.busy = 0
            for k in np.flatnonzero(serving).tolist():
                pool.replicas[int(servers.replica[k])].busy += 1
        tokens = {(code, cell): token for code, cells in self._pending.items()
                  for cell, token in zip(cells, self._tokens.get(code, []), strict=True)}
        resumes: list[tuple[tuple[int, float, int], int, Resume]] = []
        for r in range(len(table)):
            rid, arrival = int(table.rid[r]), float(table.arrival[r])
            app = int(table.app[r])
            if table.compute[app] > 0 and not table.c_end[r] < now:
                began = float(table.c_start[r]) if table.c_start[r] < now else float("nan")
                # Cores first (holders before waiters, waiters in arrival order).
                rank = (0, 0.0, rid) if began == began else (1, arrival, rid)
                resumes.append((rank, r, Resume(rid, arrival, compute_start=began)))
                continue
            position = int(np.flatnonzero(~(table.end[r] < now))[0])
            code = int(table.grid[app, position])
            issued, queued = float(table.issued[r, position]), float(table.queued[r, position])
            if queued != queued:  # still on the wire: its queue time is not solved yet
                network = self.actions[code].network_ms
                queued = issued + network / 1000.0 if network else issued
            in_service = (r, position) in held
            call = CallResume(
                position, issued, queued, tokens[(code, (r, position))],
                float(table.service_ms(np.array([r]), np.array([position]), code)[0]),
                replica=int(self._servers[code].replica[held[(r, position)]])
                if in_service else None,
                start=float(table.start[r, position]) if in_service else 0.0)
            # Within a queue: the calls in service first, then the waiting ones in the
            # order they queued, then those still on the wire.
            if in_service:
                rank = (2, 0.0, rid)
            elif queued < now:
                rank = (3, 0.0, int(table.order[r, position]))
            else:
                rank = (4, queued, rid)
            resumes.append((rank, r, Resume(rid, arrival, call=call)))
        resumes.sort(key=lambda item: item[0])
        for i, (rank, r, resume) in enumerate(resumes):
            if rank[0] == 3 and resume.call is not None:  # in a replica queue: keep its place
                pool = self.actions[int(table.grid[table.app[r], resume.call.position])].pool
                resumes[i] = (rank, r, dataclasses.replace(
                    resume, call=dataclasses.replace(resume.call, get=pool.slots.get())))
        for _, r, resume in resumes:
            app = int(table.app[r])
            draws = table.draws[r, :table.n_calls[app]].tolist()
            env.process(runtime.serve(app, float(table.size[r]), draws, resume=resume))
        self._table = None
        self._pending, self._tokens = {}, {}
        self._unfinished = []
        runtime.fast_in_system = 0
        runtime.fast_cores_queue = 0
        source.process = env.process(arrive(env, runtime, source))
        self.summary.note("a placement change (the requests in flight went back to SimPy)")
