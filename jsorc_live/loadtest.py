"""`jsorc loadtest`: JSORC's loadtest against a running jsorc server.

    jsorc loadtest --app NAME [--clients N] [--think-ms MS] [--duration S] [--grace S]
                   [--trace FILE [--trace-format F] [--time-scale X] [--seed N]] [--out DIR]

Closed loop (JSORC's design, the default): `--clients` threads each run the walker back to
back for `--duration` seconds. Trace replay (`--trace`): every arrival of the trace runs the
walker at its time (time 0 is the trace's first arrival, read by the same readers as the
simulator, a window at a time: `jsorc_traces.read_windows`), whatever is still running;
`--duration` cuts the trace.

`--duration` is a hard bound in both modes: no walker run is sent after it, and answers are
awaited `--grace` seconds more (default: `--timeout`, the time one request may take), so a
run lasts at most duration + grace. What the bound cut off is counted, not dropped: trace
arrivals the client could not send in time are "not sent", runs without an answer by the end
are "unfinished" (rows of requests.parquet with the error "unfinished: ..."). When the server
answered less than ANSWERED_WARN of what was offered, or the client fell more than LAG_WARN_S
behind the trace, a warning giving both rates goes to stderr and into report.json and
run.json (`warnings`). A progress line goes to stderr every few seconds.

It drives the load and prints JSORC's benchmark report (the server's measurement) with the
client's own counts. The report and the action calls are read by cursors into the server's
logs (`/jsorc/benchmark/window`, `/jsorc/trackact/calls`), so a `jsorc benchmark` or
`jsorc trackact` session the user started runs on untouched.
With `--out` it writes `report.json`, `calls.parquet` (the action-call trace, the simulator's
`calls` columns, which `jsorc-sim` can replay), `requests.parquet` (the client's view: its
latency beside the server's `server_ms` of the same walker run, by `request_id`; the
difference is the HTTP round trip) and `run.json` (what the run was: the workload, the
placements and policy at the start and their changes, the action configs, the machine, and
the server clock at the start that aligns the tables; jsorc_live.run_record).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from jsorc_live import run_record
from jsorc_live.load_clients import Bounds, ClientLog, Outcome, Times, closed_loop, replay

REQUEST_COLUMNS = ("ts", "app", "latency_ms", "ok", "error", "request_id", "server_ms")
OUT_FILES = "report.json, calls.parquet, requests.parquet, run.json"
ANSWERED_WARN = 0.9  # warn when the server answered (ok) less than this share of the offered
LAG_WARN_S = 1.0  # warn when a trace's walker run went out more than this late


def add_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    p = sub.add_parser("loadtest", parents=[client],
                       help="drive a walker (closed loop or a trace) and report",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--app", required=True, help="the walker to run")
    p.add_argument("--clients", type=int, default=None,
                   help="closed-loop clients (default 1; not with --trace, whose arrivals "
                        "set the load)")
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds of load, a hard bound (default 60)")
    p.add_argument("--grace", type=float, default=None, metavar="S",
                   help="seconds to wait for answers after --duration (default: --timeout); "
                        "runs still unanswered then are counted unfinished")
    p.add_argument("--think-ms", type=float, default=0.0, help="pause between a client's runs")
    p.add_argument("--trace", help="replay this trace's arrivals instead of closed loop")
    p.add_argument("--trace-format", default="auto",
                   help="auto | requests | azure2019 | azure2021 | azure_llm2023 | calls "
                        "(jsorc_traces; default auto)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply trace times (0.5 replays twice as fast)")
    p.add_argument("--seed", type=int, default=0, help="seed for spreading per-minute counts")
    p.add_argument("--spread", default="uniform",
                   help="how a per-minute count becomes arrival times: uniform (random in "
                        "the minute) | even (default uniform; jsorc_traces)")
    p.add_argument("--stream", action="append", default=[], metavar="NAME",
                   help="replay only this stream of the trace (a function, an app; "
                        "repeatable; default every stream, merged)")
    p.add_argument("--start", type=float, default=0.0, metavar="S",
                   help="begin this many seconds into the trace, on its own clock (before "
                        "--time-scale; default 0, its first arrival)")
    p.add_argument("--out", help=f"write {OUT_FILES} here")


class LoadtestError(Exception):
    """Bad arguments or a trace that cannot be read: one line, exit code 2."""


@dataclass(frozen=True)
class Trace:
    """The arrivals to replay, a window at a time, on the replay's clock (seconds from its
    start, time-scaled, before the end of the duration)."""

    windows: Callable[[], Iterator[Times]]


def run(args: argparse.Namespace,
        post: Callable[[argparse.Namespace, str, dict[str, Any]], dict[str, Any]]) -> int:
    """Drive the load; `post(args, path, body)` is the CLI's admin call (raises on refusal)."""
    bounds = _check(args)
    trace = _trace(args) if args.trace else None
    out = Path(args.out) if args.out else None
    if out is not None:
        _check_out(out)
    # An unknown walker would fail every run: say so now, with the walkers the server has.
    walkers = post(args, "/jsorc/status", {}).get("walkers")
    if isinstance(walkers, list) and args.app not in walkers:
        raise LoadtestError(f"--app {args.app!r}: the server has no such walker (its walkers: "
                            f"{', '.join(map(str, walkers)) or 'none'})")
    try:
        return _run(args, post, bounds, trace, out)
    finally:
        if out is not None:
            with contextlib.suppress(OSError):  # our own folder, empty unless saved
                _tmp_dir(out).rmdir()


def _run(args: argparse.Namespace,
         post: Callable[[argparse.Namespace, str, dict[str, Any]], dict[str, Any]],
         bounds: Bounds, trace: Trace | None, out: Path | None) -> int:
    admin: run_record.Post = lambda path, body: post(args, path, body)  # noqa: E731
    # The record's reads (state before and after, the decision log while the load runs)
    # happen only with --out: a plain loadtest asks the server nothing more than it needs.
    before = run_record.read_state(admin) if out is not None else None
    watch = run_record.DecisionWatch(admin, before.decisions if before else ())
    # A cursor into the call log, not `trackact start`: that would restart (and our stop
    # end) a tracking session the user has running.
    mark = post(args, "/jsorc/trackact/calls", {}).get("cursor")
    # The same for the benchmark: a window over the request log, so a user's `benchmark
    # start` session runs on untouched.
    window = post(args, "/jsorc/benchmark/window", {})
    wall_start, clock_start = run_record.wall_now(), time.perf_counter()
    server_start = window.get("now")
    log = ClientLog()
    url = args.server.rstrip("/") + "/walker_run"
    if out is not None:
        watch.start()
    try:
        if trace is None:
            outcome = closed_loop(url, args.app, clients=args.clients, think_ms=args.think_ms,
                                  timeout_s=args.timeout, bounds=bounds, log=log)
        else:
            outcome = replay(url, args.app, trace.windows(), timeout_s=args.timeout,
                             bounds=bounds, log=log)
    finally:
        report = post(args, "/jsorc/benchmark/window",
                      {"since": window.get("cursor"), "start": server_start})
        tracked = post(args, "/jsorc/trackact/calls", {"since": mark})
        calls = tracked.get("calls", [])
    client = client_counts(log, outcome, bounds)
    warnings = [w for w in (overload_warning(client), lost_warning(tracked, report),
                            empty_warning(client, trace is not None)) if w]
    for warning in warnings:
        print(f"jsorc loadtest: warning: {warning}", file=sys.stderr)
    summary = {"app": args.app, "mode": "trace" if trace is not None else "closed",
               "clients": args.clients, "duration_s": args.duration,
               "grace_s": bounds.grace_s, "walker_runs": client["sent"],
               "failed": client["failed"], "unfinished": client["unfinished"],
               "not_sent": client["not_sent"], "calls_tracked": len(calls),
               "calls_lost": int(tracked.get("lost", 0) or 0),
               "client": client, "warnings": warnings, "benchmark": report.get("report", report)}
    if out is not None and before is not None:
        elapsed = time.perf_counter() - clock_start
        base = _number(server_start)
        record = run_record.build(
            workload=_workload(args, bounds, trace is not None, client, warnings),
            server=args.server,
            start=before, end=run_record.read_state(admin), decisions=watch.stop(),
            calls=calls,
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


# Options that only mean something with --trace, and their defaults.
TRACE_ONLY: Final = {"trace_format": "auto", "time_scale": 1.0, "seed": 0, "spread": "uniform",
                     "stream": [], "start": 0.0}


def _check(args: argparse.Namespace) -> Bounds:
    if not args.trace:
        given = [name for name, default in TRACE_ONLY.items()
                 if getattr(args, name, default) != default]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise LoadtestError(f"{flags}: only with --trace (this is a closed loop)")
        if args.clients is None:
            args.clients = 1
    elif args.clients is not None:
        raise LoadtestError("--clients is for the closed loop: with --trace the trace's "
                            "arrivals set the load")
    if args.clients is not None and args.clients < 1:
        raise LoadtestError(f"--clients must be >= 1, got {args.clients}")
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise LoadtestError(f"--timeout must be a number of seconds > 0, got {args.timeout}")
    if not (args.duration > 0 and math.isfinite(args.duration)):
        raise LoadtestError(f"--duration must be a number of seconds > 0, got {args.duration}")
    grace = args.timeout if args.grace is None else args.grace
    if not (grace >= 0 and math.isfinite(grace)):
        raise LoadtestError(f"--grace must be a number of seconds >= 0, got {grace}")
    if not (args.time_scale > 0 and math.isfinite(args.time_scale)):
        raise LoadtestError(f"--time-scale must be a number > 0, got {args.time_scale}")
    start = getattr(args, "start", 0.0)
    if not (start >= 0 and math.isfinite(start)):
        raise LoadtestError(f"--start must be a number of seconds >= 0, got {start}")
    think = getattr(args, "think_ms", 0.0)
    if not (think >= 0 and math.isfinite(think)):
        raise LoadtestError(f"--think-ms must be a number of ms >= 0, got {think}")
    return Bounds(duration_s=float(args.duration), grace_s=float(grace))


def client_counts(log: ClientLog, outcome: Outcome, bounds: Bounds) -> dict[str, Any]:
    """The client's side of the run (pure but for the log's lock): walker runs offered,
    sent, answered ok, failed, unfinished and not sent, the offered and answered rates over
    the duration, and how far behind its schedule the client was at worst."""
    counts = log.counts()
    offered = max(outcome.offered, counts["sent"])
    return {"offered": offered, "sent": counts["sent"], "ok": counts["ok"],
            "failed": counts["failed"], "unfinished": counts["unfinished"],
            "not_sent": outcome.not_sent,
            "offered_per_s": round(offered / bounds.duration_s, 3),
            "answered_per_s": round(counts["ok"] / bounds.duration_s, 3),
            "max_lag_s": round(outcome.max_lag_s, 3)}


def empty_warning(client: dict[str, Any], replayed: bool) -> str | None:
    """A sentence when nothing was offered at all (a trace window with no arrivals, or no
    client got a run out); None otherwise (pure)."""
    if client["offered"] > 0:
        return None
    if replayed:
        return ("the trace has no arrivals in the window replayed (check --start, --stream "
                "and --duration against `jsorc-sim trace info`): nothing was sent")
    return "no client sent a walker run before the end of --duration: nothing was measured"


def lost_warning(tracked: dict[str, Any], report: dict[str, Any]) -> str | None:
    """A sentence when the server's logs (their newest 1 M rows) dropped calls or walker
    runs of this load test before it read them; None otherwise (pure)."""
    calls = int(tracked.get("lost", 0) or 0)
    runs = int(report.get("report", report).get("requests_lost", 0) or 0)
    if not (calls or runs):
        return None
    return (f"the server's logs dropped {calls} calls and {runs} walker runs of this load test "
            "before it read them (they keep the newest 1 M rows): calls_tracked and the "
            "benchmark cover the rest only")


def overload_warning(client: dict[str, Any]) -> str | None:
    """A sentence when the server answered less than ANSWERED_WARN of what was offered, or
    the client fell behind a trace by more than LAG_WARN_S; None otherwise (pure)."""
    offered, ok = client["offered"], client["ok"]
    short = offered > 0 and ok < ANSWERED_WARN * offered
    behind = client["max_lag_s"] > LAG_WARN_S
    if not (short or behind):
        return None
    share = ok / offered if offered else 1.0
    text = (f"the server answered {client['answered_per_s']:g} walker runs/s of the "
            f"{client['offered_per_s']:g}/s offered ({share:.0%}): {client['sent']} sent, "
            f"{client['ok']} ok, {client['failed']} failed, {client['unfinished']} "
            f"unfinished, {client['not_sent']} not sent")
    if behind:
        text += f"; the client fell up to {client['max_lag_s']:g} s behind the trace"
    return text


def _workload(args: argparse.Namespace, bounds: Bounds, replayed: bool,
              client: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    closed = not replayed
    return {"app": args.app, "mode": "closed" if closed else "trace",
            "clients": args.clients if closed else None,
            "think_ms": args.think_ms if closed else None,
            "duration_s": args.duration, "grace_s": bounds.grace_s, "seed": args.seed,
            "trace": None if closed else os.path.abspath(args.trace),
            "trace_format": None if closed else args.trace_format,
            "time_scale": None if closed else args.time_scale,
            "start_s": None if closed else getattr(args, "start", 0.0),
            "streams": None if closed else (list(getattr(args, "stream", [])) or None),
            "spread": None if closed else getattr(args, "spread", "uniform"),
            "trace_arrivals": None if closed else client["offered"],
            "client": client, "warnings": warnings}


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _trace(args: argparse.Namespace) -> Trace:
    """The trace, checked now (before the server is asked anything), read later a window at
    a time."""
    import jsorc_traces

    scale, duration = float(args.time_scale), float(args.duration)
    start = float(getattr(args, "start", 0.0))
    streams = list(getattr(args, "stream", []))
    # Only the window is read (a day of per-minute counts is otherwise expanded whole); a hair
    # past it so no arrival with (t - start) * time_scale < duration is lost to rounding.
    max_s = (start + duration / scale) * (1 + 1e-9)
    try:
        windows = jsorc_traces.read_windows(args.trace, args.trace_format, seed=args.seed,
                                            spread=getattr(args, "spread", "uniform"),
                                            max_s=max_s)
    except (jsorc_traces.TraceError, ValueError) as exc:
        raise LoadtestError(str(exc)) from None
    codes = _stream_codes(windows.key_names, streams, args.trace)

    def scaled() -> Iterator[Times]:
        for window in windows.windows():
            times = window.ts
            if codes is not None:
                times = times[np.isin(window.key_code, codes)]
            times = (times[times >= start] - start) * scale
            times = times[times < duration]
            if times.size:
                yield times

    return Trace(scaled)


def _stream_codes(names: tuple[str, ...], streams: list[str],
                  trace: str) -> npt.NDArray[np.int32] | None:
    """The codes of the --stream names in the trace (None: every stream), or a
    LoadtestError naming the unknown ones and some the trace has."""
    if not streams:
        return None
    index = {name: code for code, name in enumerate(names)}
    unknown = [name for name in streams if name not in index]
    if unknown:
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        raise LoadtestError(f"--stream {', '.join(map(repr, unknown))}: not a stream of "
                            f"{trace} (its streams: {shown})")
    return np.asarray([index[name] for name in streams], dtype=np.int32)


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
             f"{summary['failed']} failed, {summary['unfinished']} unfinished, "
             f"{summary['not_sent']} not sent, {summary['calls_tracked']} action calls "
             "tracked"]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _tmp_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.{os.getpid()}.tmp")


def _check_out(out: Path) -> None:
    """Refuse an --out that is a file or a folder with files in it, and make the folder the
    results are written to before they are swapped in: one that cannot be made fails now,
    before the run, not after it with the results lost."""
    if out.exists() and not out.is_dir():
        raise LoadtestError(f"--out {out} is a file: give a folder (new or empty)")
    if out.is_dir() and any(out.iterdir()):
        raise LoadtestError(f"--out {out} is not empty")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _tmp_dir(out).mkdir()
    except OSError as exc:
        raise LoadtestError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def _save(out: Path, summary: dict[str, Any], calls: list[dict[str, Any]],
          log: ClientLog, record: dict[str, Any]) -> None:
    """Write everything to the folder `_check_out` made beside `out`, then swap it in:
    nothing half-written."""
    import pandas as pd

    from jsorc_live.runtime import CALL_COLUMNS

    tmp = _tmp_dir(out)
    (tmp / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (tmp / "run.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    pd.DataFrame(calls, columns=list(CALL_COLUMNS)).to_parquet(tmp / "calls.parquet",
                                                               index=False)
    pd.DataFrame(log.rows, columns=list(REQUEST_COLUMNS)).to_parquet(
        tmp / "requests.parquet", index=False)
    if out.exists():
        out.rmdir()  # empty (checked before the run)
    os.replace(tmp, out)
