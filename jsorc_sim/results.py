"""What a run produced: its tables, JSORC's benchmark report, and what it cost.

The report is exact when the requests table is in memory (record "calls" or "requests",
no sink): the same numbers as ever. Otherwise (record "none", or tables streamed to a folder)
it comes from the recorder's streaming statistics: counts and means exact, percentiles from a
log-bucket sketch within a stated relative error (jsorc_sim.sketch); the report's
`statistics` key says which.

pandas is imported only where a DataFrame is built, so a run that keeps no table does not pay
its import.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tomli_w

from jsorc_sim import outputs
from jsorc_sim.recorder import ParquetStream, Recorder, Sink
from jsorc_sim.scenario import Scenario
from jsorc_sim.sketch import LogSketch

if TYPE_CHECKING:
    import pandas as pd

LATENCY_KEYS = (("50th_latency", 50), ("90th_latency", 90), ("95th_latency", 95),
                ("99th_latency", 99))
# The metrics of a report: JSORC's walker_run keys, then the cost keys (see Result.cost).
WALKER_METRICS = ("throughput", "average_latency", *(key for key, _ in LATENCY_KEYS))
TABLE_NAMES = ("calls", "requests", "decisions", "timeline", "events")
RUN_FILES = (*(f"{t}.parquet" for t in TABLE_NAMES), "report.json", "scenario.toml")
RUN_KIND = "jsorc-sim run"
RESOLVED_HEADER = "# Resolved by jsorc "
COST_METRICS = ("node_memory_gb_s", "replica_memory_gb_s", "replica_core_s",
                "peak_node_memory_mb", "placement_changes", "cold_starts", "failed_requests",
                "failed_calls", "oom_events", "policy_errors", "arrivals", "unfinished_requests")


def version() -> str:
    try:
        return metadata.version("jsorc")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Meters:
    """Time integrals and counts taken from the runtime when the run ended."""

    node_memory_mb_s: float
    replica_memory_mb_s: float
    replica_core_s: float
    peak_memory_mb: float
    oom_events: int
    arrivals: int
    ended_s: float  # simulated time the run ended (duration_s, or earlier if it was stopped)
    # (arrival time, app code) of every request still in the system when the run ended (in
    # flight or waiting at the door), as the runtime kept them: not arrivals minus rows.
    unfinished_arrivals: tuple[tuple[float, int], ...] = ()

    @property
    def unfinished(self) -> int:
        """Requests still in the system when the run ended."""
        return len(self.unfinished_arrivals)


@dataclass
class Result:
    """Tables of one run (pandas DataFrames, built on first use) and its report."""

    scenario: Scenario
    policy: str
    policy_params: dict[str, Any]
    recorder: Recorder
    meters: Meters
    status: str = "ok"  # or the policy failure that stopped the run
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def calls(self) -> pd.DataFrame:
        return self.recorder.calls_frame()

    @cached_property
    def requests(self) -> pd.DataFrame:
        return self.recorder.requests_frame()

    @cached_property
    def decisions(self) -> pd.DataFrame:
        return self.recorder.decisions_frame()

    @cached_property
    def timeline(self) -> pd.DataFrame:
        return self.recorder.timeline_frame()

    @cached_property
    def events(self) -> pd.DataFrame:
        return self.recorder.events_frame()

    # ------------------------------------------------------------------ report

    @property
    def percentiles_exact(self) -> bool:
        """Whether the report's percentiles are exact: the requests table is in memory."""
        return self.recorder.request_table.in_memory

    def statistics(self) -> dict[str, Any]:
        """How the report's latency statistics were computed (its `statistics` key)."""
        if self.percentiles_exact:
            return {"percentiles": "exact"}
        return {"percentiles": "sketch",
                "relative_error": self.recorder.statistics.relative_error}

    def report(self) -> dict[str, Any]:
        """JSORC's benchmark shape, plus `cost`, `unfinished`, `statistics` and `engine` (which
        path ran: SimPy or the fast path, for how long, and why not). Latency in ms
        of requests arriving after warm-up that succeeded; throughput is those per second of
        (end - warm-up), the end being `duration_s` or the moment a stopped run stopped.
        Percentiles are exact or from the sketch, as `statistics` says; counts and means are
        exact either way."""
        s = self.scenario
        self.recorder.flush()
        span = max(min(s.duration_s, self.meters.ended_s) - s.warmup_s, 0.0)
        walker_run: dict[str, dict[str, float | None]] = {}
        if self.percentiles_exact:
            cols = self.recorder.request_table.columns()
            kept = (cols["ts"] >= s.warmup_s) & cols["ok"]
            latency, apps = cols["latency_ms"][kept], cols["app"][kept]
            for code, app in enumerate(s.apps):
                walker_run[app] = _latency_report(latency[apps == code], span)
            walker_run["all"] = _latency_report(latency, span)
        else:
            st = self.recorder.statistics
            for code, app in enumerate(s.apps):
                walker_run[app] = _sketch_latency_report(st.finished[code], span)
            walker_run["all"] = _sketch_latency_report(st.merged(st.finished), span)
        report: dict[str, Any] = {"walker_run": walker_run, "cost": self.cost(),
                                  "unfinished": self.unfinished(),
                                  "statistics": self.statistics()}
        if "engine" in self.extra:  # which path ran (jsorc_sim.fastpath): how, not what
            report["engine"] = self.extra["engine"]
        warning = warmup_warning(s, self.meters.arrivals,
                                 report["unfinished"]["all_arrivals_lower_bound"]["all"]
                                 ["arrivals"], self._last_arrival_s())
        if warning:  # the key only when there is one: a sound run's report keeps its shape
            report["warnings"] = [warning]
        return report

    def _last_arrival_s(self) -> float | None:
        """The last request's arrival time, when the requests table is in memory."""
        if not self.percentiles_exact:
            return None
        ts = [float(t) for t, _ in self.meters.unfinished_arrivals]
        column = self.recorder.request_table.columns()["ts"]
        if len(column):
            ts.append(float(column.max()))
        return max(ts, default=None)

    def unfinished(self) -> dict[str, Any]:
        """What `walker_run` leaves out: the requests still in the system at the end.

        `count`: requests unfinished when the run ended, per app and `all` (whatever their
        arrival time). `all_arrivals_lower_bound`: per app and `all`, the number of requests
        that arrived after warm-up and their latency statistics (ms), each finished request
        (succeeded or failed) at its latency and each unfinished one at its age when the run
        ended. An unfinished request's latency is at least its age, so these are lower bounds
        of the latency of every arrival; an overload that finished requests hide shows here."""
        s = self.scenario
        m = self.meters
        self.recorder.flush()
        pending = np.array(m.unfinished_arrivals, dtype=float).reshape(-1, 2)
        later = pending[pending[:, 0] >= s.warmup_s]
        ages_ms = (m.ended_s - later[:, 0]) * 1000.0
        later_codes = later[:, 1].astype(int)
        codes = pending[:, 1].astype(int)
        count: dict[str, int] = {}
        bound: dict[str, dict[str, float | int | None]] = {}
        for code, app in enumerate(s.apps):
            count[app] = int(np.count_nonzero(codes == code))
        count["all"] = len(pending)
        if self.percentiles_exact:
            cols = self.recorder.request_table.columns()
            arrived = cols["ts"] >= s.warmup_s
            latency, apps = cols["latency_ms"][arrived], cols["app"][arrived]
            for code, app in enumerate(s.apps):
                bound[app] = _arrivals_report(np.concatenate([
                    latency[apps == code], ages_ms[later_codes == code]]))
            bound["all"] = _arrivals_report(np.concatenate([latency, ages_ms]))
        else:
            st = self.recorder.statistics
            for code, app in enumerate(s.apps):
                bound[app] = _sketch_arrivals_report(st.arrived[code],
                                                     ages_ms[later_codes == code])
            bound["all"] = _sketch_arrivals_report(st.merged(st.arrived), ages_ms)
        return {"count": count, "all_arrivals_lower_bound": bound}

    def cost(self) -> dict[str, Any]:
        """Over the whole run (warm-up included): memory and cores held, changes, failures."""
        m = self.meters
        rec = self.recorder
        rec.flush()
        st = rec.statistics
        changes = sum(1 for d in rec.decisions if d["placement"] and d["source"] != "scenario")
        cost = {
            "node_memory_gb_s": round(m.node_memory_mb_s / 1024.0, 3),
            "replica_memory_gb_s": round(m.replica_memory_mb_s / 1024.0, 3),
            "replica_core_s": round(m.replica_core_s, 3),
            "peak_node_memory_mb": round(m.peak_memory_mb, 1),
            "placement_changes": changes,
            "cold_starts": st.cold_starts,
            "failed_requests": st.failed_requests,
            "failed_calls": st.failed_calls,
            "oom_events": m.oom_events,
            "policy_errors": sum(1 for e in rec.events if e["kind"] == "policy_error"),
            "arrivals": m.arrivals,
            "unfinished_requests": m.unfinished,
        }
        assert tuple(cost) == COST_METRICS, "keep COST_METRICS in step with cost()"
        return cost

    # ------------------------------------------------------------------ saving

    def save(self, out: str | Path) -> Path:
        """Write every table, the report and the resolved scenario into the folder `out`
        (created if need be), each file atomically, recorded in its manifest.json. Files of
        other names in `out` are left alone; one of these names that jsorc did not write
        raises jsorc_sim.outputs.OutputError before anything is written (see `check_out`).

        A table the record mode left out is not written (and the file of an earlier run
        there, which jsorc wrote, is removed); a table streamed to `out` during the run is
        left as it is; one streamed to another folder is copied from there."""
        folder = Path(out)
        self.recorder.finish()
        writers: dict[str, outputs.Writer] = {}
        keep: list[str] = []
        remove: list[str] = []
        streamed: dict[str, ParquetStream] = {}
        for table in (self.recorder.call_table, self.recorder.request_table):
            name = f"{table.name}.parquet"
            if not table.kept:
                remove.append(name)
            elif table.stream is None:
                writers[name] = _parquet(getattr(self, table.name))
            elif _same_file(table.stream.path, folder / name):
                keep.append(name)
            else:
                streamed[name] = table.stream
        for name in TABLE_NAMES[2:]:
            writers[f"{name}.parquet"] = _parquet(getattr(self, name))
        report = json.dumps(self.report(), indent=2) + "\n"
        scenario = self.resolved_scenario()
        writers["report.json"] = lambda path: path.write_text(report)
        writers["scenario.toml"] = lambda path: path.write_text(scenario)
        for name, stream in streamed.items():  # last: the other writers cannot fail after it
            writers[name] = _linked(stream, out)
        outputs.write(out, writers, RUN_KIND, legacy=_legacy_run, keep=keep, remove=remove)
        for name, stream in streamed.items():
            if stream.path == stream.temp:  # moved into place: the temporary name goes
                stream.temp.unlink(missing_ok=True)
                stream.path = folder / name
        return folder

    def resolved_scenario(self) -> str:
        table = self.scenario.to_dict()
        # Absolute paths: the file is read from the output folder, not the original's.
        for key in ("trace", "durations", "memory"):  # the workload's files
            if table["workload"].get(key):
                table["workload"][key] = str(self.scenario.resolve(table["workload"][key])
                                             .resolve())
        for action in table["actions"].values():
            if action["service"]["file"]:
                action["service"]["file"] = str(self.scenario.resolve(action["service"]["file"])
                                                .resolve())
        table["policy"]["name"] = self.policy
        table["policy"]["params"] = _toml_safe(self.policy_params)
        head = (f"{RESOLVED_HEADER}{version()}: every default filled in, with the seed and\n"
                f"# policy this run used. `jsorc-sim run` on this file repeats the run.\n")
        return head + tomli_w.dumps(_toml_safe(table))


def check_out(out: str | Path) -> Path:
    """Raise OutputError now, before a run, if `Result.save(out)` would overwrite a file jsorc
    did not write (`jsorc-sim run --out` calls this before it simulates)."""
    return outputs.check(out, RUN_FILES, RUN_KIND, legacy=_legacy_run)


def sink(out: str | Path) -> Sink:
    """Where a run streams its tables to `out` (checked now, before the run: `check_out`)."""
    return Sink(check_out(out), RUN_KIND, _legacy_run)


def _legacy_run(folder: Path) -> bool:
    # A run saved before manifests existed: its scenario.toml starts with jsorc's header.
    try:
        with (folder / "scenario.toml").open() as f:
            return f.readline().startswith(RESOLVED_HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def _parquet(frame: pd.DataFrame) -> outputs.Writer:
    return lambda path: frame.to_parquet(path, index=False)


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _linked(stream: ParquetStream, out: str | Path) -> outputs.Writer:
    """A writer that puts the streamed file at the path it is given: a hard link when the
    file is in the same folder (no copy of a large file), else a copy."""
    def write(path: Path) -> None:
        source = stream.path
        if not source.is_file():
            raise outputs.OutputError(
                f"--out {str(out)!r}: {stream.name} was streamed to {source}, which no longer "
                "exists; run again with --out there (or record='calls' to keep it in memory)")
        try:
            os.link(source, path)
        except OSError:
            shutil.copyfile(source, path)
    return write


def warmup_warning(scenario: Scenario, arrivals: int, after_warmup: int,
                   last_arrival_s: float | None = None) -> str:
    """A warning when a trace replay's every arrival came during warm-up, so `walker_run`
    holds no latency and a zero throughput that measure nothing; else "". Pure.

    Only traces can end before warm-up does (Poisson and closed-loop workloads go on to
    `duration_s`). It is a warning, not an error: a trace's span is known only once it is
    read, and the run's cost figures are still true."""
    if scenario.workload.kind != "trace":
        return ""
    if arrivals == 0:  # nothing replayed at all: the window missed the trace, say so too
        return (f"the trace replayed no arrival in the run's {scenario.duration_s:g} s "
                f"({scenario.workload.trace}): walker_run measures nothing; check duration_s, "
                "workload.time_scale, workload.trace_origin and the map")
    if scenario.warmup_s <= 0 or after_warmup > 0:
        return ""
    span = "" if last_arrival_s is None else f", the last at {last_arrival_s:g} s"
    return (f"warmup_s = {scenario.warmup_s:g} s is longer than the trace's span in this run "
            f"(all {arrivals} arrivals came during warm-up{span}): walker_run reports no "
            "latency; shorten warmup_s, or stretch the trace with workload.time_scale")


def _latency_report(values: np.ndarray, span: float) -> dict[str, float | None]:
    throughput = round(len(values) / span, 4) if span else None
    return {"throughput": throughput, **_latency_stats(values)}


def _arrivals_report(values: np.ndarray) -> dict[str, float | int | None]:
    return {"arrivals": len(values), **_latency_stats(values)}


def _sketch_latency_report(sketch: LogSketch, span: float) -> dict[str, float | None]:
    throughput = round(sketch.count / span, 4) if span else None
    return {"throughput": throughput, **_sketch_stats(sketch)}


def _sketch_arrivals_report(sketch: LogSketch,
                            ages_ms: np.ndarray) -> dict[str, float | int | None]:
    """Finished arrivals from the sketch, plus the unfinished ones at their ages."""
    every = LogSketch.merged([sketch, LogSketch.of(ages_ms, sketch.relative_error)],
                             sketch.relative_error)
    return {"arrivals": every.count, **_sketch_stats(every)}


def _sketch_stats(sketch: LogSketch) -> dict[str, float | None]:
    """As _latency_stats, from a sketch: the mean exact, the percentiles within its bound."""
    out: dict[str, float | None] = {}
    if sketch.count == 0:
        out["average_latency"] = None
        out.update({key: None for key, _ in LATENCY_KEYS})
        return out
    out["average_latency"] = round(sketch.mean, 3)
    percentiles = sketch.percentiles([q for _, q in LATENCY_KEYS])
    out.update({key: round(float(v), 3) for (key, _), v in zip(LATENCY_KEYS, percentiles,
                                                              strict=True)})
    return out


def _latency_stats(values: np.ndarray) -> dict[str, float | None]:
    """The mean and JSORC's percentiles of latencies in ms (None when there are none)."""
    out: dict[str, float | None] = {}
    if len(values) == 0:
        out["average_latency"] = None
        out.update({key: None for key, _ in LATENCY_KEYS})
        return out
    out["average_latency"] = round(float(values.mean()), 3)
    percentiles = np.percentile(values, [q for _, q in LATENCY_KEYS])
    out.update({key: round(float(v), 3) for (key, _), v in zip(LATENCY_KEYS, percentiles,
                                                              strict=True)})
    return out


def _toml_safe(value: Any) -> Any:
    """TOML has no null and no NaN: drop None, keep everything else as it is."""
    if isinstance(value, dict):
        return {str(k): _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_toml_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value
