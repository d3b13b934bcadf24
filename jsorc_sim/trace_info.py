"""`jsorc-sim trace info FILE`: what a trace holds, before a replay.

Format, streams (how many, the busiest by calls with their share), total calls, span, mean and
peak rate, and the rate over time (a sparkline and a table of up to 24 buckets). Everything is
counted per minute: an azure2019 file *is* per-minute counts, read without expanding them (the
20.8 M calls of the single-function day take ~0.2 s), and a per-arrival trace is binned into
minutes from its first arrival. So the peak is a busiest minute's calls / 60 s, and the span
runs from the first to the last arrival (azure2019: from the start of the first minute with a
call to the end of the last). Times are on the trace's own clock (`Arrivals.origin`: seconds
from minute 1 for azure2019, Unix seconds for the LLM trace, the file's numbers otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["StreamShare", "TraceInfo", "format_info", "plot_rate", "trace_info"]

MINUTE: Final = 60.0
# Bucket widths (s) for the rate over time: the narrowest giving at most MAX_BUCKETS rows.
BUCKETS_S: Final = (60, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400)
MAX_BUCKETS: Final = 24
_SPARKS: Final = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class StreamShare:
    name: str
    calls: int
    share: float  # of all calls, 0..1


@dataclass(frozen=True)
class TraceInfo:
    """What `trace_info` found; `per_minute[i]` is the calls of minute i from `first_s`'s
    minute (azure2019: the file's minutes from the first with a call)."""

    source: str
    fmt: str
    streams: int
    top: tuple[StreamShare, ...]
    calls: int
    first_s: float  # the first arrival (azure2019: the start of its minute), trace clock
    last_s: float  # the last arrival (azure2019: the end of its minute)
    minutes: str  # azure2019: the file's minute columns ("480..959"); else ""
    per_minute: tuple[int, ...]

    @property
    def span_s(self) -> float:
        return self.last_s - self.first_s

    @property
    def mean_rate(self) -> float:
        """Calls per second over the span (nan when the span is 0)."""
        return self.calls / self.span_s if self.span_s > 0 else math.nan

    @property
    def peak_rate(self) -> float:
        """The busiest minute's calls per second; a trace shorter than a minute is its own
        busiest stretch, over its span (so the peak is never below the mean)."""
        if len(self.per_minute) == 1 and 0 < self.span_s < MINUTE:
            return self.calls / self.span_s
        return max(self.per_minute) / MINUTE

    @property
    def peak_at_s(self) -> float:
        """Where the busiest minute starts, on the trace's clock."""
        return self.first_s + MINUTE * int(np.argmax(self.per_minute))

    @property
    def bucket_s(self) -> int:
        n = len(self.per_minute) * MINUTE
        return next((b for b in BUCKETS_S if math.ceil(n / b) <= MAX_BUCKETS), BUCKETS_S[-1])

    def buckets(self) -> list[tuple[float, int]]:
        """(start on the trace's clock, calls) per `bucket_s` bucket."""
        width = self.bucket_s // int(MINUTE)
        minutes = np.asarray(self.per_minute, dtype=np.int64)
        padded = np.pad(minutes, (0, -len(minutes) % width))
        sums = padded.reshape(-1, width).sum(axis=1)
        return [(self.first_s + i * self.bucket_s, int(c)) for i, c in enumerate(sums)]

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "format": self.fmt, "streams": self.streams,
            "top": [{"name": s.name, "calls": s.calls, "share": s.share} for s in self.top],
            "calls": self.calls, "first_s": self.first_s, "last_s": self.last_s,
            "span_s": self.span_s, "minutes": self.minutes,
            "mean_rate_per_s": None if math.isnan(self.mean_rate) else self.mean_rate,
            "peak_rate_per_s": self.peak_rate, "peak_at_s": self.peak_at_s,
            "bucket_s": self.bucket_s,
            "buckets": [{"start_s": t, "calls": c} for t, c in self.buckets()],
        }


def trace_info(path: str | Path, fmt: str = "auto", *, top: int = 10) -> TraceInfo:
    """Read `path` and say what it holds (see the module docstring). Raises TraceError."""
    from jsorc_traces.readers import detect_format, read_minute_counts, read_trace

    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "azure2019":
        table = read_minute_counts(path)
        per_row = table.counts.sum(axis=1)
        calls = np.bincount(table.row_code, weights=per_row, minlength=len(table.names))
        totals = table.counts.sum(axis=0)
        busy = np.flatnonzero(totals)
        if busy.size == 0:
            from jsorc_traces import TraceError

            raise TraceError(f"{path}: no arrivals in the trace")
        first, last = int(busy[0]), int(busy[-1])
        n_min = table.counts.shape[1]
        return _info(path, fmt, table.names, calls, table.base_s + MINUTE * first,
                     table.base_s + MINUTE * (last + 1),
                     f"{table.first_minute}..{table.first_minute + n_min - 1}",
                     totals[first:last + 1], top)
    arrivals = read_trace(path, fmt)
    calls = np.bincount(arrivals.key_code, minlength=len(arrivals.key_names))
    minute = np.floor(arrivals.ts / MINUTE).astype(np.int64)
    return _info(path, arrivals.fmt, arrivals.key_names, calls, arrivals.origin,
                 arrivals.origin + float(arrivals.ts[-1]), "", np.bincount(minute), top)


def _info(path: str | Path, fmt: str, names: tuple[str, ...], calls: npt.NDArray[Any],
          first_s: float, last_s: float, minutes: str, per_minute: npt.NDArray[Any],
          top: int) -> TraceInfo:
    total = int(calls.sum())
    # Busiest first; ties keep the trace's order (a stable sort of the negated counts).
    order = np.argsort(-calls, kind="stable")[:top]
    shares = tuple(StreamShare(names[i], int(calls[i]), float(calls[i]) / total) for i in order)
    return TraceInfo(str(path), fmt, len(names), shares, total, float(first_s), float(last_s),
                     minutes, tuple(int(c) for c in per_minute))


def sparkline(values: list[int]) -> str:
    """One block character per value, scaled to the largest (an empty bucket is a space)."""
    high = max(values, default=0)
    if high == 0:
        return " " * len(values)
    top = len(_SPARKS) - 1
    return "".join(" " if v == 0 else _SPARKS[min(top, top * v // high)] for v in values)


def format_info(info: TraceInfo) -> str:
    """The info as text a person reads."""
    lines = [f"trace   {info.source}",
             f"format  {info.fmt}" + (f" (minute columns {info.minutes})" if info.minutes else ""),
             f"calls   {info.calls:,}",
             f"streams {info.streams:,}" + ("" if info.streams <= len(info.top)
                                           else f" (top {len(info.top)} by calls below)"),
             f"span    {_clock(info.first_s)} .. {_clock(info.last_s)} on the trace's clock "
             f"({info.span_s:,.0f} s = {info.span_s / 3600:.2f} h)",
             f"rate    mean {_rate(info.mean_rate)}/s, peak {_rate(info.peak_rate)}/s "
             f"(the minute from {_clock(info.peak_at_s)})", ""]
    width = max(len(_label(s.name)) for s in info.top)
    lines.append(f"  {'stream':<{width}}  {'calls':>12}  share")
    for s in info.top:
        lines.append(f"  {_label(s.name):<{width}}  {s.calls:>12,}  {100 * s.share:5.1f} %")
    buckets = info.buckets()
    counts = [c for _, c in buckets]
    lines += ["", f"rate over time, per {_width(info.bucket_s)}: |{sparkline(counts)}|"]
    high = max(counts)
    for start, c in buckets:
        bar = "#" * round(30 * c / high) if high else ""
        lines.append(f"  {_clock(start):>10}  {c:>12,}  {_rate(c / info.bucket_s):>9}/s  {bar}")
    return "\n".join(lines)


def plot_rate(info: TraceInfo, path: str | Path) -> None:
    """Calls per second, minute by minute, against hours on the trace's clock, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = np.asarray(info.per_minute, dtype=np.float64)
    hours = (info.first_s + MINUTE * np.arange(len(minutes))) / 3600.0
    fig, ax = plt.subplots(figsize=(8, 3), layout="constrained")
    ax.step(hours, minutes / MINUTE, where="post", lw=0.8)
    ax.set_xlabel("hours on the trace's clock")
    ax.set_ylabel("calls/s (per minute)")
    ax.set_title(f"{Path(info.source).name}: {info.calls:,} calls, {info.streams} stream(s)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _clock(seconds: float) -> str:
    """Seconds on the trace's clock as d+hh:mm:ss (a clock past 100 days, Unix time, as UTC)."""
    if abs(seconds) >= 100 * 86400:
        from datetime import UTC, datetime

        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    sign = "-" if seconds < 0 else ""
    s = int(abs(seconds))
    days, s = divmod(s, 86400)
    text = f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return sign + (f"{days}+{text}" if days else text)


def _label(name: str) -> str:
    return name[:20] if name else "(one stream)"


def _rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.2f}"


def _width(seconds: int) -> str:
    return f"{seconds // 3600} h" if seconds >= 3600 else f"{seconds // 60} min"
