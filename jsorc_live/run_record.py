"""`run.json`: what a `jsorc loadtest --out DIR` run was, for a reader that was not there.

`jsorc-sim calibrate` and `jsorc-sim validate` read it beside `calls.parquet` to rebuild the
run in the simulator: the workload (app, closed-loop clients or a trace, think time,
duration), where every action was placed and by which policy at the start, what the
controller changed while the load ran, each action's configuration, and the machine.

Two clocks meet here. The server's `now()` (seconds since `jsorc serve` started) stamps the
call rows (`calls.parquet` ts) and the controller's decisions; the loadtest's own
`requests.parquet` ts counts from the client's start. `ts_base.server_now_at_start` is the
server's clock when the load test began (it opens its benchmark window), so
`t = ts - server_now_at_start` puts calls and decisions on the run's time axis (every row
here carries that `t` already), and the client's ts ≈ t (the client starts its clock right
after that window opens; the gap is one admin call, a few ms).

Layout (format "jsorc-run/1"; every key is always present, unknown values are null):

    format, app, mode ("closed" | "trace"), clients, think_ms, duration_s, seed,
    trace (null, or the trace file's absolute path), trace_format, time_scale,
    trace_arrivals (the arrivals replayed, after --duration cut the trace),
    grace_s (answers awaited after the duration), client: {offered, sent, ok, failed,
    unfinished, not_sent, offered_per_s, answered_per_s, max_lag_s}, warnings (sentences:
    the server answered too little of what was offered; jsorc_live.loadtest),
    placements (= placements_at_start), policy (null, or {name, params, interval_s} when
    the controller is on with a policy that places actions), changes (the decisions that
    changed a placement, from the start on),
    server, jsorc_version, machine: {cores, memory_mb, platform, python},
    wall_start, wall_end (ISO 8601, UTC), wall_seconds,
    ts_base: {server_now_at_start, server_now_at_end},
    policy_at_start, policy_at_end: {name, params, automation, interval_s},
    placements_at_start, placements_at_end: {action: "local" | "remote:N" | "unloaded"},
    actions: {action: {module, call_timeout_s, local_memory_mb, remote_memory_mb,
                       replica_cores, placement, desired, replicas}},
    decisions: [{ts, t, action, placement, previous, source, reason, error}],
    placement_changes: {action: [{ts, t, placement, previous}]}  (from the call rows: when
                       calls first went to a new placement)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FORMAT = "jsorc-run/1"
POLL_S = 1.0  # how often the decision log is read while the load runs (it keeps 20 rows)

Post = Callable[[str, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ServerState:
    """The server at one moment: policy, settings and every action's status."""

    policy: dict[str, Any]
    placements: dict[str, str]
    actions: dict[str, dict[str, Any]]
    decisions: tuple[dict[str, Any], ...]


def read_state(post: Post) -> ServerState:
    """`/jsorc/status` and `/jsorc/actionpolicy/get`, in the shapes run.json keeps."""
    status = post("/jsorc/status", {})
    policy = post("/jsorc/actionpolicy/get", {})
    config = status.get("config") or {}
    actions = {name: _action(s) for name, s in sorted((status.get("actions") or {}).items())}
    return ServerState(
        policy={"name": policy.get("policy", status.get("policy")),
                "params": policy.get("params") or {},
                "automation": config.get("automation"),
                "interval_s": config.get("backoff_interval")},
        placements={name: str(a["placement"]) for name, a in actions.items()},
        actions=actions,
        decisions=tuple(policy.get("decisions") or ()))


def _action(status: Mapping[str, Any]) -> dict[str, Any]:
    remote = status.get("remote") or {}
    return {"module": status.get("module"), "call_timeout_s": status.get("call_timeout_s"),
            "local_memory_mb": status.get("local_memory_mb"),
            "remote_memory_mb": status.get("remote_memory_mb"),
            "replica_cores": status.get("replica_cores"),
            "placement": status.get("placement"), "desired": status.get("desired"),
            "replicas": len(remote.get("replicas") or ())}


class DecisionWatch:
    """Reads the controller's decision log every POLL_S while the load runs and keeps every
    row it saw: `actionpolicy get` answers only the last 20, and a busy policy (evaluation
    trying combinations) writes more than that in a run."""

    def __init__(self, post: Post, first: Iterable[Mapping[str, Any]] = ()) -> None:
        self._post = post
        self._rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.add(first)

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            for row in rows:
                key = tuple(str(row.get(k)) for k in ("ts", "action", "placement", "previous",
                                                      "source", "reason", "error"))
                self._rows.setdefault(key, dict(row))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[dict[str, Any]]:
        """Stop polling, read the log once more, and return every row in time order."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._poll()
        with self._lock:
            return sorted(self._rows.values(), key=lambda r: float(r.get("ts") or 0.0))

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            self._poll()

    def _poll(self) -> None:
        # A missed poll loses nothing the next one (or the last, in stop) reads.
        with contextlib.suppress(Exception):
            self.add(self._post("/jsorc/actionpolicy/get", {}).get("decisions") or ())


def policy_in_force(policy: Mapping[str, Any]) -> dict[str, Any] | None:
    """The policy as the simulator's `[policy]` table, or None when the controller is off or
    its policy places nothing (JSORC's default: the placements hold)."""
    if not policy.get("automation") or policy.get("name") in (None, "", "none", "default"):
        return None
    return {"name": policy["name"], "params": policy.get("params") or {},
            "interval_s": policy.get("interval_s")}


def placement_changes(calls: Sequence[Mapping[str, Any]], base: float | None
                      ) -> dict[str, list[dict[str, Any]]]:
    """Per action, each time its calls went to another placement than the call before
    (pure): the moment a move took effect for traffic, which the decision log cannot say
    (a move to remote switches when the first replica answers)."""
    out: dict[str, list[dict[str, Any]]] = {}
    last: dict[str, str] = {}
    for row in sorted(calls, key=lambda r: float(r["ts"])):
        action, where = str(row["action"]), str(row.get("placement") or "")
        if not where:  # a failed call went nowhere
            continue
        before = last.get(action)
        if before is not None and where != before:
            out.setdefault(action, []).append({"ts": row["ts"], "t": _t(row["ts"], base),
                                               "placement": where, "previous": before})
        last[action] = where
    return out


def with_t(rows: Iterable[Mapping[str, Any]], base: float | None) -> list[dict[str, Any]]:
    return [{**row, "t": _t(row.get("ts"), base)} for row in rows]


def _t(ts: Any, base: float | None) -> float | None:
    if base is None or not isinstance(ts, int | float) or not math.isfinite(ts):
        return None
    return round(float(ts) - base, 6)


def machine() -> dict[str, Any]:
    import psutil

    return {"cores": os.cpu_count(), "memory_mb": round(psutil.virtual_memory().total / 2**20),
            "platform": platform.platform(), "python": platform.python_version()}


def version() -> str | None:
    try:
        return importlib.metadata.version("jsorc")
    except importlib.metadata.PackageNotFoundError:
        return None


def wall_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def build(*, workload: Mapping[str, Any], server: str, start: ServerState, end: ServerState,
          decisions: Sequence[Mapping[str, Any]], calls: Sequence[Mapping[str, Any]],
          server_now: tuple[float | None, float | None], wall: tuple[str, str, float]
          ) -> dict[str, Any]:
    """The run.json document (pure but for the machine and version it reads)."""
    base = server_now[0]
    decided = with_t(decisions, base)
    return {
        "format": FORMAT, **workload,
        # The short forms jsorc_sim.live_runs reads: the start's placements, the policy in
        # force (null when none places actions), the placement changes while the load ran.
        "placements": start.placements, "policy": policy_in_force(start.policy),
        "changes": [row for row in decided if row.get("action") and not row.get("error")
                    and (row["t"] is None or row["t"] >= 0)],
        "server": server, "jsorc_version": version(),
        "machine": machine(), "wall_start": wall[0], "wall_end": wall[1],
        "wall_seconds": round(wall[2], 3),
        "ts_base": {"server_now_at_start": base, "server_now_at_end": server_now[1]},
        "policy_at_start": start.policy, "policy_at_end": end.policy,
        "placements_at_start": start.placements, "placements_at_end": end.placements,
        "actions": start.actions,
        "decisions": decided,
        "placement_changes": placement_changes(calls, base),
    }
