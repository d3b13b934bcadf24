"""Readers of the Azure Functions invocation traces: 2019 (per-minute counts) and 2021 (one row
per invocation). See jsorc_traces.readers for the formats' rules; this module holds their
parsing.

Minute headers
--------------
An azure2019 file's minute columns are any contiguous, increasing run of minute numbers:
`1..1440` (a day, as Azure published it), `480..959` (a window of a day, as invitro's samples
cut them) or `1..4320` (three days), written bare (`480`) or with invitro's prefix
(`minute_480`), in either header variant. Column k of the run is minute `first + k` of the
trace's clock, which covers [60 (minute - 1), 60 minute) seconds from the start of minute 1:
so `Arrivals.origin` of a file starting at minute 480 counts from minute 1 (28,740 s and a
little), and time 0 of a replay is still the file's first arrival. A header whose minutes
skip, repeat or go back is refused at the first bad column.

The 2021 trace has no minute columns: its `end_timestamp` is seconds on the trace's clock,
over as many days as the file holds, so a multi-day file needs nothing special.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from jsorc_traces.arrivals import EXACT, CodeArray
from jsorc_traces.spread import SECONDS_PER_MINUTE, late_streams, minutes_for_window, spread_counts
from jsorc_traces.tables import (
    NO_CODES,
    IntArray,
    Raw,
    TraceError,
    check_names,
    clip,
    numbers,
    read_csv,
    read_header,
    require_file,
    texts,
)

__all__ = ["AZ2019_INVITRO", "AZ2019_ORIGINAL", "AZ2021_COLUMNS", "MinuteCounts",
           "read_azure2019", "read_azure2021", "read_minute_counts"]

AZ2019_ORIGINAL: Final = ("HashOwner", "HashApp", "HashFunction", "Trigger")
AZ2019_INVITRO: Final = ("HashFunction", "HashApp", "HashOwner")
AZ2021_COLUMNS: Final = ("app", "func", "end_timestamp", "duration")
_MINUTE: Final = re.compile(r"(minute_)?([1-9][0-9]*)")


@dataclass(frozen=True, eq=False)
class MinuteCounts:
    """An azure2019 file as read, before its counts are placed in time (jsorc_traces.spread).

    `eq=False`: the counts are an array; compare them to compare contents."""

    counts: IntArray  # functions (rows of the file) x minutes
    row_code: CodeArray  # each row's index into `names` (a HashFunction may repeat)
    names: tuple[str, ...]  # the distinct HashFunction values
    first_minute: int = 1  # the number of the first minute column (480 for `...,480,...,959`)
    apps: tuple[str, ...] = ()  # each name's HashApp (its first row's), as `names`

    @property
    def base_s(self) -> float:
        """Where column 0 starts on the trace's clock (seconds from the start of minute 1)."""
        return SECONDS_PER_MINUTE * (self.first_minute - 1)


def _first_minute(p: Path, header: list[str], n_meta: int) -> int:
    """The number of the first minute column; the run must go up by one, column by column."""
    minutes = header[n_meta:]
    if not minutes:
        raise TraceError(f"{p}:1: no minute columns after {','.join(header)!r}")
    first = _MINUTE.fullmatch(minutes[0])
    if first is None:
        raise TraceError(f"{p}:1: column {n_meta + 1}: expected a minute number >= 1 (like "
                         f"'1', '480' or 'minute_480'), got {minutes[0]!r}")
    prefix, start = first.group(1) or "", int(first.group(2))
    for i, got in enumerate(minutes):
        if got != f"{prefix}{start + i}":
            raise TraceError(
                f"{p}:1: column {n_meta + i + 1}: expected '{prefix}{start + i}', got "
                f"{clip(got)!r} (minute columns must be consecutive, from {minutes[0]!r})"
            )
    return start


def read_minute_counts(path: str | Path) -> MinuteCounts:
    """Read and check a whole azure2019 file, without expanding its counts into arrivals."""
    p = Path(path)
    require_file(p)
    header = read_header(p)
    if tuple(header[:4]) == AZ2019_ORIGINAL:
        n_meta = 4
    elif tuple(header[:3]) == AZ2019_INVITRO:
        n_meta = 3
    else:
        raise TraceError(
            f"{p}:1: expected header {','.join(AZ2019_ORIGINAL)},1,...,N or "
            f"{','.join(AZ2019_INVITRO)},minute_1,...,minute_N, got {clip(','.join(header))!r}"
        )
    first_minute = _first_minute(p, header, n_meta)
    minutes = header[n_meta:]
    table = read_csv(p, header)
    row_code, names, key_bad = texts(table, "HashFunction")
    app_code, app_names, app_bad = texts(table, "HashApp")
    columns = [numbers(table, m, kind="count") for m in minutes]
    table.fail_first([key_bad, app_bad, *(bad for _, bad in columns)])
    if table.data.num_rows == 0:
        return MinuteCounts(np.zeros((0, len(minutes)), dtype=np.int64), NO_CODES, (),
                            first_minute)
    counts = np.stack([values for values, _ in columns], axis=1).astype(np.int64)
    # Each name's app is its first row's: np.unique's first index of every code.
    _, first_row = np.unique(row_code, return_index=True)
    apps = tuple(app_names[int(app_code[r])] for r in first_row)
    return MinuteCounts(counts, row_code, names, first_minute, apps)


def read_azure2019(p: Path, *, seed: int, spread: str, max_s: float | None) -> Raw:
    table = read_minute_counts(p)
    counts, row_code, names = table.counts, table.row_code, table.names
    if counts.shape[0] == 0:
        return Raw(np.empty(0), NO_CODES, (), None, spread)
    # The whole file is checked above; only the minutes the window needs are expanded.
    expanded = counts.shape[1] if max_s is None else minutes_for_window(counts, max_s)
    ts, func, already_sorted = spread_counts(counts[:, :expanded], spread=spread, seed=seed)
    late = late_streams(counts, expanded, spread=spread, seed=seed)
    # Rows and names coincide unless a HashFunction repeats (or one row: skip a 83 MB gather).
    same = np.array_equal(row_code, np.arange(row_code.size))
    return Raw(ts, func if same else row_code[func], names, None, spread,
               is_sorted=already_sorted, base=table.base_s,
               late=tuple(int(row_code[f]) for f in late))


def read_azure2021(p: Path) -> Raw:
    header = read_header(p)
    check_names(f"{p}:1", header, AZ2021_COLUMNS)
    table = read_csv(p, header)
    code, names, key_bad = texts(table, "func")
    end, end_bad = numbers(table, "end_timestamp", kind="real")
    duration, duration_bad = numbers(table, "duration", kind="nonneg")
    table.fail_first([key_bad, end_bad, duration_bad])
    # The 2021 trace logs completions; the call arrived `duration` seconds earlier.
    return Raw(end - duration, code, names, None, EXACT)


def azure2021_apps(p: Path) -> dict[str, str]:
    """Each `func` of a 2021 file and its `app` (the first row's)."""
    header = read_header(p)
    check_names(f"{p}:1", header, AZ2021_COLUMNS)
    table = read_csv(p, header)
    code, names, key_bad = texts(table, "func")
    app_code, app_names, app_bad = texts(table, "app")
    table.fail_first([key_bad, app_bad])
    _, first_row = np.unique(code, return_index=True)
    return {names[int(code[r])]: app_names[int(app_code[r])] for r in first_row}
