"""A trace read window by window, so a replay holds one window of arrivals, not the trace.

`read_windows` gives the same arrivals as `read_trace` (jsorc_traces.readers), in the same
order and to the bit, cut in consecutive windows of at most `window` arrivals; the names of
every stream of the whole trace are known before the first window is read, so a check of
stream names (a replay's map) still sees the whole trace.

Only an azure2019 file is read lazily: its per-minute counts are a small table (a day of one
function is 1,440 numbers for 20.8 M arrivals), and a window of whole minutes is expanded when
it is asked for (jsorc_traces.spread.spread_window). Minutes are sorted independently of each
other, because every arrival of minute m lies in [60 m, 60 (m + 1)] and a tie at the edge
keeps draw order, which is minute order: so the windows' arrivals are the whole table's. The
other formats give one time per call in rows of any order and are read whole (they are
sorted first); their windows are views of one `Arrivals`, 12 bytes an arrival (16 with sizes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import numpy as np

from jsorc_traces.arrivals import FORMATS, SPREADS, Arrivals, CodeArray, FloatArray
from jsorc_traces.azure import MinuteCounts, read_minute_counts
from jsorc_traces.readers import LLM_SIZES, detect_format, read_trace
from jsorc_traces.spread import IntArray, late_streams, minutes_for_window, spread_window
from jsorc_traces.tables import TraceError, check_choice

__all__ = ["WINDOW", "TraceWindows", "Window", "read_windows"]

# Arrivals a window holds at most (a window of minutes holds at least one minute): ~36 MB of
# transient arrays while it is expanded and replayed, 36 minutes of a 241 calls/s function.
WINDOW: Final = 1 << 19


@dataclass(frozen=True, eq=False)
class Window:
    """Consecutive arrivals of a trace: times on the trace's shifted clock (its first arrival
    at 0, as in `Arrivals.ts`), each arrival's stream as a code into the trace's `key_names`,
    and sizes, or None when the trace gives none (`Arrivals.size` would be all nan)."""

    ts: FloatArray
    key_code: CodeArray
    size: FloatArray | None

    def __len__(self) -> int:
        return int(self.ts.shape[0])


@dataclass(frozen=True, eq=False)
class TraceWindows:
    """A trace's streams, known at once, and its arrivals, a window at a time.

    The fields mean what `Arrivals`' do. `windows()` reads the windows from the first on every
    call; each is non-empty and starts after the one before ends."""

    key_names: tuple[str, ...]  # every stream of the whole trace, in order of first arrival
    fmt: str
    spread: str
    source: str
    origin: float  # the first arrival on the trace's own clock
    windows: Callable[[], Iterator[Window]]

    def keys(self) -> list[str]:
        """Distinct keys of the whole trace, in order of first appearance."""
        return list(self.key_names)


def read_windows(
    path: str | Path,
    fmt: str = "auto",
    *,
    seed: int = 0,
    spread: str = "uniform",
    max_s: float | None = None,
    llm_size: str = "total",
    window: int = WINDOW,
) -> TraceWindows:
    """Read a trace as `read_trace` does (same arguments, same arrivals), a window of at most
    `window` arrivals at a time (azure2019: of whole minutes, at least one)."""
    # Arguments are checked before the file, as read_trace does.
    check_choice("fmt", fmt, ("auto", *FORMATS))
    check_choice("spread", spread, SPREADS)
    check_choice("llm_size", llm_size, LLM_SIZES)
    if max_s is not None and not max_s > 0:
        raise ValueError(f"max_s must be > 0, got {max_s!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a whole number of arrivals >= 1, got {window!r}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt != "azure2019":
        return _whole(read_trace(path, fmt, seed=seed, spread=spread, max_s=max_s,
                                 llm_size=llm_size), window)
    return _by_minutes(read_minute_counts(path), str(path), seed=seed, spread=spread,
                       max_s=max_s, window=window)


def _whole(arrivals: Arrivals, window: int) -> TraceWindows:
    # A trace without sizes holds a broadcast nan (no memory); say "none" rather than slice it.
    size = None if bool(np.isnan(arrivals.size).all()) else arrivals.size

    def windows() -> Iterator[Window]:
        for i in range(0, len(arrivals), window):
            part = slice(i, i + window)
            yield Window(arrivals.ts[part], arrivals.key_code[part],
                         None if size is None else size[part])

    return TraceWindows(arrivals.key_names, arrivals.fmt, arrivals.spread, arrivals.source,
                        arrivals.origin, windows)


def _by_minutes(table: MinuteCounts, source: str, *, seed: int, spread: str,
                max_s: float | None, window: int) -> TraceWindows:
    counts = table.counts
    per_minute = counts.sum(axis=0)
    busy = np.flatnonzero(per_minute)
    if busy.size == 0:
        raise TraceError(f"{source}: no arrivals in the trace")
    # Every function in order of its first call (the whole table as "late"): the names'
    # order, without expanding a minute past each function's first.
    rows = late_streams(counts, 0, spread=spread, seed=seed)
    order = list(dict.fromkeys(int(table.row_code[f]) for f in rows))
    position = {name: i for i, name in enumerate(order)}
    code_of_row = np.array([position.get(int(c), -1) for c in table.row_code], dtype=np.int32)
    first_minute = int(busy[0])
    # Time 0 is the first arrival, which lies in the first busy minute.
    first = float(spread_window(counts, first_minute, first_minute + 1, spread=spread,
                                seed=seed)[0].min())
    stop = counts.shape[1] if max_s is None else minutes_for_window(counts, max_s)
    read = partial(_minute_windows, counts, code_of_row, first_minute, stop, seed=seed,
                   spread=spread, first=first, max_s=max_s, window=window)
    # The origin is on the trace's clock (from minute 1), which a windowed header starts late.
    return TraceWindows(tuple(table.names[i] for i in order), "azure2019", spread, source,
                        table.base_s + first, read)


def _minute_windows(counts: IntArray, code_of_row: CodeArray, start: int, stop: int, *,
                    seed: int, spread: str, first: float, max_s: float | None,
                    window: int) -> Iterator[Window]:
    """Minutes [start, stop) expanded a window of whole minutes at a time."""
    ends = np.cumsum(counts.sum(axis=0))  # arrivals up to the end of each minute
    while start < stop:
        before = int(ends[start - 1]) if start else 0
        # The longest run of minutes within `window` arrivals, and at least one minute.
        fit = int(np.searchsorted(ends[start:stop], before + window, side="right"))
        end = start + max(1, fit)
        ts, func, is_sorted = spread_window(counts, start, end, spread=spread, seed=seed)
        start = end
        if not is_sorted:
            # Stable, as read_trace's sort of the whole table: ties keep draw order.
            by_time = np.argsort(ts, kind="stable")
            ts, func = ts[by_time], func[by_time]
        ts -= first
        code = code_of_row[func]
        if max_s is not None:
            n = int(np.searchsorted(ts, max_s, side="left"))
            if n < ts.size:
                if n:
                    yield Window(ts[:n], code[:n], None)
                return
        if ts.size:
            yield Window(ts, code, None)
