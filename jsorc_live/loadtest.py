"""`jsorc loadtest`: JSORC's loadtest against a running jsorc server.

    jsorc loadtest --app NAME [--clients N] [--duration S] [--trace FILE [--trace-format F]
                   [--time-scale X]] [--out DIR]

Closed loop (JSORC's design, the default): `--clients` threads each run the walker back to
back for `--duration` seconds. Trace replay (`--trace`): every arrival of the trace runs the
walker at its time (time 0 is the trace's first arrival, read by the same readers as the
simulator: `jsorc_traces`), whatever is still running; `--duration` cuts the trace.

It starts the server's benchmark and call tracking, drives the load, and prints JSORC's
benchmark report (the server's measurement) with the client's own count of failures. With
`--out` it writes `report.json`, `calls.parquet` (the action-call trace, the simulator's
`calls` columns, which `jsorc-sim` can replay), `requests.parquet` (the client's view: its
latency beside the server's `server_ms` of the same walker run, by `request_id`; the
difference is the HTTP round trip) and `run.json` (what the run was: the workload, the
placements and policy at the start and their changes, the action configs, the machine, and
the server clock at the start that aligns the tables; jsorc_live.run_record).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from jsorc_live import run_record

REQUEST_COLUMNS = ("ts", "app", "latency_ms", "ok", "error", "request_id", "server_ms")
OUT_FILES = "report.json, calls.parquet, requests.parquet, run.json"


@dataclass
class ClientLog:
    """The client's view of every walker run it asked for (thread-safe appends)."""

    started: float = field(default_factory=time.perf_counter)
    rows: list[tuple[float, str, float, bool, str, int, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sent: float, app: str, answered: float, ok: bool, error: str,
            answer: Any = None) -> None:
        """One walker run; `answer` is the server's JSON answer (its request_id and its own
        latency_ms), when there was one."""
        rid, server_ms = -1, math.nan
        if isinstance(answer, dict):
            if isinstance(answer.get("request_id"), int):
                rid = answer["request_id"]
            if isinstance(answer.get("latency_ms"), int | float):
                server_ms = float(answer["latency_ms"])
        with self.lock:
            self.rows.append((sent - self.started, app, (answered - sent) * 1000.0, ok, error,
                              rid, server_ms))

    @property
    def failures(self) -> int:
        return sum(1 for row in self.rows if not row[3])


def add_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    p = sub.add_parser("loadtest", parents=[client], help="drive a walker and report",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--app", required=True, help="the walker to run")
    p.add_argument("--clients", type=int, default=1, help="closed-loop clients (default 1)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--think-ms", type=float, default=0.0, help="pause between a client's runs")
    p.add_argument("--trace", help="replay this trace's arrivals instead of closed loop")
    p.add_argument("--trace-format", default="auto",
                   help="auto | requests | azure2019 | azure2021 | azure_llm2023")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply trace times (0.5 replays twice as fast)")
    p.add_argument("--seed", type=int, default=0, help="seed for spreading per-minute counts")
    p.add_argument("--out", help=f"write {OUT_FILES} here")


class LoadtestError(Exception):
    """Bad arguments or a trace that cannot be read: one line, exit code 2."""


def run(args: argparse.Namespace,
        post: Callable[[argparse.Namespace, str, dict[str, Any]], dict[str, Any]]) -> int:
    """Drive the load; `post(args, path, body)` is the CLI's admin call (raises on refusal)."""
    if args.clients < 1:
        raise LoadtestError(f"--clients must be >= 1, got {args.clients}")
    if not args.duration > 0:
        raise LoadtestError(f"--duration must be > 0 seconds, got {args.duration}")
    arrivals = _arrivals(args) if args.trace else None
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and any(out.iterdir()):
        raise LoadtestError(f"--out {out} is not empty")
    admin: run_record.Post = lambda path, body: post(args, path, body)  # noqa: E731
    # The record's reads (state before and after, the decision log while the load runs)
    # happen only with --out: a plain loadtest asks the server nothing more than it did.
    before = run_record.read_state(admin) if out is not None else None
    watch = run_record.DecisionWatch(admin, before.decisions if before else ())
    wall_start, clock_start = run_record.wall_now(), time.perf_counter()
    server_start = post(args, "/jsorc/benchmark/start", {}).get("now")
    post(args, "/jsorc/trackact/start", {})
    log = ClientLog()
    if out is not None:
        watch.start()
    try:
        if arrivals is None:
            _closed_loop(args, log)
        else:
            asyncio.run(_replay(args, arrivals, log))
    finally:
        report = post(args, "/jsorc/benchmark/report", {})
        calls = post(args, "/jsorc/trackact/stop", {}).get("calls", [])
        post(args, "/jsorc/benchmark/stop", {})
    benchmark = report.get("report", report)
    summary = {"app": args.app, "mode": "trace" if arrivals is not None else "closed",
               "clients": args.clients, "duration_s": args.duration,
               "walker_runs": len(log.rows), "failed": log.failures,
               "calls_tracked": len(calls), "benchmark": benchmark}
    if out is not None and before is not None:
        elapsed = time.perf_counter() - clock_start
        base = _number(server_start)
        record = run_record.build(
            workload=_workload(args, arrivals), server=args.server, start=before,
            end=run_record.read_state(admin), decisions=watch.stop(), calls=calls,
            # Both clocks are monotonic: the end is the start plus what the client measured.
            server_now=(base, None if base is None else base + elapsed),
            wall=(wall_start, run_record.wall_now(), elapsed))
        _save(out, summary, calls, log, record)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
        if out is not None:
            print(f"\nwrote {out}/: {OUT_FILES}")
    return 0


def _workload(args: argparse.Namespace, arrivals: list[float] | None) -> dict[str, Any]:
    closed = arrivals is None
    return {"app": args.app, "mode": "closed" if closed else "trace",
            "clients": args.clients if closed else None,
            "think_ms": args.think_ms if closed else None,
            "duration_s": args.duration, "seed": args.seed,
            "trace": None if closed else os.path.abspath(args.trace),
            "trace_format": None if closed else args.trace_format,
            "time_scale": None if closed else args.time_scale,
            "trace_arrivals": None if arrivals is None else len(arrivals)}


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _arrivals(args: argparse.Namespace) -> list[float]:
    import jsorc_traces

    # Only the window is read (a day of per-minute counts is otherwise expanded whole); a hair
    # past it so no arrival with t * time_scale < duration is lost to rounding.
    max_s = args.duration / args.time_scale * (1 + 1e-9) if args.time_scale > 0 else None
    try:
        trace = jsorc_traces.read_trace(args.trace, args.trace_format, seed=args.seed,
                                        max_s=max_s)
    except (jsorc_traces.TraceError, ValueError) as exc:
        raise LoadtestError(str(exc)) from None
    times = [t * args.time_scale for t in trace.ts.tolist()]
    return [t for t in times if t < args.duration]


def _closed_loop(args: argparse.Namespace, log: ClientLog) -> None:
    url = args.server.rstrip("/") + "/walker_run"
    deadline = time.perf_counter() + args.duration

    def client() -> None:
        with httpx.Client(timeout=args.timeout) as http:
            while time.perf_counter() < deadline:
                _one(http, url, args.app, log)
                if args.think_ms:
                    time.sleep(args.think_ms / 1000.0)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    _progress(deadline, args.duration, log)
    for thread in threads:
        thread.join(timeout=args.timeout + 5)


def _one(http: httpx.Client, url: str, app: str, log: ClientLog) -> None:
    sent = time.perf_counter()
    answer = None
    try:
        response = http.post(url, json={"name": app, "ctx": {}})
        ok = response.status_code < 400
        error = "" if ok else f"HTTP {response.status_code}: {response.text[:120]}"
        answer = _answer(response)
    except httpx.HTTPError as exc:
        ok, error = False, f"{type(exc).__name__}: {exc}"
    log.add(sent, app, time.perf_counter(), ok, error, answer)


def _answer(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:  # not JSON (a proxy's error page): no server figures for this run
        return None


async def _replay(args: argparse.Namespace, arrivals: list[float], log: ClientLog) -> None:
    url = args.server.rstrip("/") + "/walker_run"
    limits = httpx.Limits(max_connections=256)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as http:

        async def one() -> None:
            sent = time.perf_counter()
            answer = None
            try:
                response = await http.post(url, json={"name": args.app, "ctx": {}})
                ok = response.status_code < 400
                error = "" if ok else f"HTTP {response.status_code}: {response.text[:120]}"
                answer = _answer(response)
            except httpx.HTTPError as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
            log.add(sent, args.app, time.perf_counter(), ok, error, answer)

        tasks = []
        start = time.perf_counter()
        for at in arrivals:
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)


def _progress(deadline: float, duration: float, log: ClientLog) -> None:
    """A line on stderr every few seconds while the clients run (when it is a terminal)."""
    tty = sys.stderr.isatty()
    while (left := deadline - time.perf_counter()) > 0:
        time.sleep(min(left, 5.0))
        if tty:
            print(f"\rloadtest: {duration - max(left, 0):5.0f}/{duration:g} s, "
                  f"{len(log.rows)} walker runs, {log.failures} failed", end="",
                  file=sys.stderr, flush=True)
    if tty:
        print(file=sys.stderr)


def format_summary(summary: dict[str, Any]) -> str:
    keys = ("throughput", "average_latency", "50th_latency", "90th_latency", "95th_latency",
            "99th_latency")
    header = ("walker", "throughput/s", "mean ms", "p50 ms", "p90 ms", "p95 ms", "p99 ms")
    rows = [header]
    for app, stats in (summary["benchmark"].get("walker_run") or {}).items():
        rows.append((app, *(_fmt(stats.get(k)) for k in keys)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"loadtest {summary['app']} ({summary['mode']}, {summary['clients']} client(s), "
             f"{summary['duration_s']:g} s): {summary['walker_runs']} walker runs, "
             f"{summary['failed']} failed, {summary['calls_tracked']} action calls tracked"]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _save(out: Path, summary: dict[str, Any], calls: list[dict[str, Any]],
          log: ClientLog, record: dict[str, Any]) -> None:
    """Write everything to a folder beside `out`, then swap it in: nothing half-written."""
    import pandas as pd

    from jsorc_live.runtime import CALL_COLUMNS

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.mkdir()
    (tmp / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (tmp / "run.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    pd.DataFrame(calls, columns=list(CALL_COLUMNS)).to_parquet(tmp / "calls.parquet",
                                                               index=False)
    pd.DataFrame(log.rows, columns=list(REQUEST_COLUMNS)).to_parquet(
        tmp / "requests.parquet", index=False)
    if out.exists():
        out.rmdir()  # empty (checked before the run)
    os.replace(tmp, out)
