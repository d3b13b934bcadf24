"""The live runtime: walkers making action calls, and one router per action.

A *walker* (an app of JSORC's loadtest, or one a user adds) is a sequence of action calls.
Each call goes through its action's `Router` (jsorc_live.router), which sends it to the
placement that is ready: the local module (imported into this process) or remote replicas
(action servers, the least-loaded first), each call within its deadline. A move never fails a
call: calls keep using the old placement until the new one answers, then the old one is
drained (its in-flight calls finish, or reach their deadline) before it is unloaded.

Every call is a row of the simulator's `calls` table and every walker run a row of its
`requests` table, so the live log and the simulated one can be read with the same code.
What the controller observes comes from events instead: the routers and walkers report
each call, replica, local copy and request to the runtime's `observations`
(`jsorc_live.signals.LiveSignals`), the one builder both worlds use.

The types shared with the routers and backends live in jsorc_live.runtime_types and are
re-exported here, as is the Router.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jsorc_live.router import Router
from jsorc_live.runtime_types import (
    ActionInfo,
    CallFailed,
    CallTiming,
    Invoker,
    LocalHandle,
    Probe,
    RemoteClient,
    Replica,
    ReplicaSource,
    RuntimeRefusal,
    TransportError,
    check_timeout,
)
from jsorc_live.signals import LiveSignals, machine_memory_mb, node_cores
from jsorc_live.targets import HealthPolicy, RetryPolicy
from policies import Mode

__all__ = [
    "CALL_COLUMNS",
    "LOADTEST_APPS",
    "REQUEST_COLUMNS",
    "ActionInfo",
    "CallFailed",
    "CallTiming",
    "HealthPolicy",
    "Invoker",
    "LocalHandle",
    "Probe",
    "RemoteClient",
    "Replica",
    "ReplicaSource",
    "RetryPolicy",
    "Router",
    "RowLog",
    "Runtime",
    "RuntimeRefusal",
    "Step",
    "TransportError",
    "Walker",
    "WalkerResult",
    "latency_report",
    "loadtest_walkers",
]

#: A runtime's default deadline of one call (an action's `call_timeout_s` overrides it).
DEFAULT_CALL_TIMEOUT_S = 30.0
#: A runtime's default cap on the replicas of one action.
DEFAULT_MAX_REPLICAS = 32
#: How long Runtime.close waits beyond the longest drain for its routers to close.
CLOSE_GRACE_S = 5.0

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


# --------------------------------------------------------------------------- logs


class RowLog:
    """Append-only rows with cursors, keeping at most `limit`: past it the oldest half is
    dropped, and `lost(cursor)` says how many rows a reader at `cursor` can no longer get,
    so a reader reports the gap instead of passing a partial log off as whole."""

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

    def lost(self, cursor: int) -> int:
        """How many rows after `cursor` were dropped before it read them."""
        with self._lock:
            return max(self._base - cursor, 0)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value)


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

    `call_timeout_s` is the deadline of a call to an action that has none of its own;
    `max_replicas` caps the replicas of any one action (both settable while it runs).
    `health` and `retry` tune the routers' replica checks and resends; `probe` checks an
    attached server (default: an HTTP GET of its spec).
    """

    def __init__(self, *, load_local: Callable[[ActionInfo], LocalHandle],
                 connect: Callable[[Replica], Invoker], replicas: ReplicaSource | None = None,
                 walkers: Iterable[Walker] = (), ready_timeout_s: float = 60.0,
                 call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                 max_replicas: int = DEFAULT_MAX_REPLICAS,
                 health: HealthPolicy | None = None, retry: RetryPolicy | None = None,
                 probe: Probe | None = None) -> None:
        self._load_local = load_local
        self._connect = connect
        self._replica_source = replicas
        self._ready_timeout_s = ready_timeout_s
        self.call_timeout_s = call_timeout_s
        self.max_replicas = max_replicas
        self._health = health or HealthPolicy()
        self._retry = retry or RetryPolicy()
        self._probe = probe
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
        self._track_lost = 0
        self._counts: dict[tuple[str, str, bool], int] = {}
        self.observations = LiveSignals(self.now, cores=node_cores(),
                                        memory_total_mb=machine_memory_mb(),
                                        apps=sorted(self.walkers))
        self.observations.runtime(True)

    def now(self) -> float:
        """Seconds since the runtime started (the `ts` of every row)."""
        return time.monotonic() - self._t0

    @property
    def call_timeout_s(self) -> float:
        return self._call_timeout_s

    @call_timeout_s.setter
    def call_timeout_s(self, value: float) -> None:
        check_timeout(value, "call_timeout_s")
        self._call_timeout_s = float(value)

    @property
    def max_replicas(self) -> int:
        return self._max_replicas

    @max_replicas.setter
    def max_replicas(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_replicas must be an int >= 1, got {value!r}")
        self._max_replicas = value

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
                ready_timeout_s=self._ready_timeout_s,
                call_timeout_s=lambda: self.call_timeout_s,
                max_replicas=lambda: self.max_replicas, health=self._health,
                retry=self._retry, probe=self._probe)

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
                        step.function, step.kwargs(ctx), app=name)
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
        return self.walker_report(bench["cursor"], bench["start"], end)

    def walker_report(self, cursor: int, start: float, end: float) -> dict[str, Any]:
        """JSORC's benchmark report over the request rows after `cursor` that succeeded and
        ended by `end`, their throughput over `end - start`. When the request log (its
        newest 1 M rows) dropped some of them, `requests_lost` says how many: the report
        then covers the rest only, and its throughput is low by that many."""
        rows, _ = self.requests.since(cursor)
        rows = [r for r in rows if r[0] <= end and r[4]]
        span = end - start
        by_app: dict[str, list[float]] = {}
        for row in rows:
            by_app.setdefault(row[2], []).append(row[3])
        walker_run = {app: latency_report(lat, span) for app, lat in sorted(by_app.items())}
        walker_run["all"] = latency_report([r[3] for r in rows], span)
        lost = self.requests.lost(cursor)
        return {"walker_run": walker_run, **({"requests_lost": lost} if lost else {})}

    @property
    def benchmark_active(self) -> bool:
        return bool(self._benchmark["active"])

    def track_start(self) -> int | None:
        """Start a trackact session; a running one is started again (JSORC's behaviour):
        how many calls it held and are no longer tracked, None when none ran."""
        active, held = self.track_session()
        self._track = {"active": True, "cursor": self.calls.cursor, "carried": []}
        return len(held) if active else None

    def track_stop(self) -> list[dict[str, Any]]:
        """The call rows since `trackact start`, as dicts of the `calls` columns (the oldest
        are missing when the session outran the call log: `track_lost` says how many)."""
        if not self._track["active"]:
            raise RuntimeRefusal("trackact is not running", 409)
        rows, _ = self.calls.since(self._track["cursor"])
        self._track_lost = self.calls.lost(self._track["cursor"])
        carried = self._track.get("carried", [])
        self._track = {"active": False, "cursor": 0}
        return [dict(zip(CALL_COLUMNS, row, strict=True)) for row in [*carried, *rows]]

    @property
    def track_lost(self) -> int:
        """Calls the last stopped trackact session recorded but the call log (its newest
        1 M rows) no longer held when it stopped."""
        return self._track_lost

    def track_session(self) -> tuple[bool, list[tuple[Any, ...]]]:
        """Whether trackact runs, and the call rows it holds so far (jsorc_live.store)."""
        track = self._track
        if not track["active"]:
            return False, []
        rows, _ = self.calls.since(track["cursor"])
        return True, [*track.get("carried", []), *rows]

    def track_resume(self, rows: Sequence[tuple[Any, ...]],
                     clock_origin: float | None = None) -> None:
        """Go on with a trackact session a previous server ran: `rows` (its calls) come
        first in what `trackact stop` answers, on this runtime's clock and with request ids
        below every one this runtime gives, so one table holds one clock and one walker
        run per id. `clock_origin` is that server's `clock_origin()`: without it the rows
        keep their old `ts` (said in the store's problems)."""
        carried = list(rows)
        if clock_origin is not None and math.isfinite(clock_origin):
            shift = clock_origin - self.clock_origin()
            carried = [(row[0] + shift, *row[1:]) if _number(row[0]) else row
                       for row in carried]
        ids = [row[1] for row in carried if isinstance(row[1], int)]
        with self._lock:
            self._ids = itertools.count(max([next(self._ids), *(i + 1 for i in ids)]))
        self._track = {"active": True, "cursor": self.calls.cursor, "carried": carried}

    def clock_origin(self) -> float:
        """The wall-clock time (Unix seconds) at which `now()` was 0: what puts another
        runtime's `ts` on this one's clock."""
        return time.time() - self.now()

    @property
    def track_active(self) -> bool:
        return bool(self._track["active"])

    def calls_since(self, cursor: int | None) -> tuple[list[dict[str, Any]], int, int]:
        """The call rows after `cursor` (none when it is None), the cursor now, and how many
        rows after `cursor` the call log dropped before this read. A reader of its own
        window (jsorc loadtest) so leaves a user's `trackact` session alone."""
        if cursor is None:
            return [], self.calls.cursor, 0
        lost = self.calls.lost(cursor)
        rows, now = self.calls.since(cursor)
        return [dict(zip(CALL_COLUMNS, row, strict=True)) for row in rows], now, lost

    # ----------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Close every router at once (each drain is bounded by its action's deadline), so
        the runtime is down within the longest drain whatever its calls do."""
        self.observations.runtime(False)
        routers = list(self.routers.values())

        def close(router: Router) -> None:
            try:
                router.close()
            except Exception:
                log.error("closing %s: %s", router.name, traceback.format_exc())

        threads = [threading.Thread(target=close, args=(r,), name=f"close-{r.name}",
                                    daemon=True) for r in routers]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + max((r.drain_s for r in routers), default=0.0) \
            + CLOSE_GRACE_S
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        late = [r.name for r, t in zip(routers, threads, strict=True) if t.is_alive()]
        if late:
            log.warning("runtime closed with routers still closing: %s", ", ".join(late))
