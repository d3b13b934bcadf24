"""Per-function execution times and per-app memory from the Azure Functions 2019 files that go
with an invocation trace: `durations.csv` (invitro: `run.csv`) and `memory.csv` (`mem.csv`).

Durations
---------
One row per function, keyed by `HashFunction`, with `percentile_Average_{0,1,25,50,75,99,100}`
in ms (other columns, `HashOwner, HashApp, Average, Count, Minimum, Maximum`, are allowed, in
any order: the original files and invitro's order them differently). The percentiles are of
the function's execution times as Azure aggregated them (each sample the average over a short
interval; cold starts excluded), so they describe a call's service time only approximately.

A function's service distribution is the **piecewise-linear inverse CDF** through its seven
(percentile, value) points: a call's time is `np.interp(100 u, levels, values)` for u uniform
on [0, 1). It reproduces every published percentile (p0, p1, p25, p50, p75, p99, p100) as the
number of draws grows, never leaves [p0, p100], and assumes no shape: a lognormal fitted to p50
and p99 would miss p25 and p75 of a bimodal function and put mass above the observed maximum.
Its mean, `mean_of_points`, is the area under the curve and differs from the row's `Average`
(the average of the averages), which is not matched: the tail between p99 and p100 is only
known at its ends, and a linear segment is the least informative guess there.

Memory
------
One row per app, keyed by `HashApp` (the original 2019 files and invitro's `mem.csv`), or per
function where the file also has `HashFunction`: `SampleCount, AverageAllocatedMb,
AverageAllocatedMb_pct{1,5,25,50,75,95,99,100}` (MB). `MEMORY_STATS` names the column used.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Final

import numpy as np

from jsorc_traces.arrivals import FloatArray
from jsorc_traces.tables import (
    Problem,
    TraceError,
    check_names,
    numbers,
    read_csv,
    read_header,
    require_file,
    texts,
)

__all__ = ["DURATION_LEVELS", "MEMORY_STATS", "Durations", "Memory", "mean_of_points",
           "read_durations", "read_memory"]

DURATION_LEVELS: Final[tuple[float, ...]] = (0.0, 1.0, 25.0, 50.0, 75.0, 99.0, 100.0)
_DURATION_COLUMNS: Final = tuple(f"percentile_Average_{int(q)}" for q in DURATION_LEVELS)
_DURATION_OTHER: Final = ("HashOwner", "HashApp", "Average", "Count", "Minimum", "Maximum")
#: memory stat name -> the column of a memory file it reads.
MEMORY_STATS: Final[dict[str, str]] = {
    "average": "AverageAllocatedMb",
    "p50": "AverageAllocatedMb_pct50",
    "p95": "AverageAllocatedMb_pct95",
    "p99": "AverageAllocatedMb_pct99",
    "max": "AverageAllocatedMb_pct100",
}
_MEMORY_COLUMNS: Final = ("AverageAllocatedMb", *(f"AverageAllocatedMb_pct{q}"
                                                   for q in (1, 5, 25, 50, 75, 95, 99, 100)))


@dataclass(frozen=True, eq=False)
class Durations:
    """A durations file: per function, its percentile points (ms), non-decreasing."""

    source: str
    functions: tuple[str, ...]  # HashFunction of each row, distinct
    values_ms: FloatArray  # rows x len(DURATION_LEVELS)

    def points(self, function: str) -> FloatArray:
        """The row of `function` (KeyError if it has none)."""
        row: FloatArray = self.values_ms[self.functions.index(function)]
        return row


@dataclass(frozen=True, eq=False)
class Memory:
    """A memory file: one value per key (MB), of the column `MEMORY_STATS[stat]`."""

    source: str
    key_column: str  # "HashFunction" when the file has it, else "HashApp"
    keys: tuple[str, ...]
    values_mb: FloatArray


def mean_of_points(levels: FloatArray, values: FloatArray) -> float:
    """The mean of the piecewise-linear inverse CDF through (levels %, values): the trapezoid
    area under it, levels read as probabilities."""
    p = np.asarray(levels, dtype=np.float64) / 100.0
    v = np.asarray(values, dtype=np.float64)
    return float(np.sum(np.diff(p) * (v[1:] + v[:-1]) / 2.0))


def read_durations(path: str | Path) -> Durations:
    """Read a durations file (cached by path, size and modification time: per-function
    scenarios ask it once per function)."""
    p = Path(path)
    require_file(p)
    stat = p.stat()
    return _read_durations(str(p.resolve()), stat.st_size, stat.st_mtime_ns)


def read_memory(path: str | Path, stat: str = "p99") -> Memory:
    """Read a memory file's `stat` column (see MEMORY_STATS)."""
    if stat not in MEMORY_STATS:
        raise ValueError(f"unknown memory stat {stat!r}: expected one of {', '.join(MEMORY_STATS)}")
    p = Path(path)
    require_file(p)
    header = read_header(p)
    key = "HashFunction" if "HashFunction" in header else "HashApp"
    others = tuple(c for c in ("HashOwner", "HashApp", "HashFunction", "SampleCount")
                   if c != key)
    check_names(f"{p}:1", header, (key, *_MEMORY_COLUMNS), others)
    table = read_csv(p, header)
    code, names, key_bad = texts(table, key)
    values, bad = numbers(table, MEMORY_STATS[stat], kind="nonneg")
    dup = _first_repeat(code)
    dup_bad = None if dup is None else Problem(
        dup, header.index(key), f"column {key!r}: {names[int(code[dup])]!r} has a row already")
    table.fail_first([key_bad, bad, dup_bad])
    return Memory(str(p), key, tuple(names[int(c)] for c in code), values)


@lru_cache(maxsize=8)
def _read_durations(path: str, _size: int, _mtime_ns: int) -> Durations:
    p = Path(path)
    header = read_header(p)
    check_names(f"{p}:1", header, ("HashFunction", *_DURATION_COLUMNS), _DURATION_OTHER)
    table = read_csv(p, header)
    code, names, key_bad = texts(table, "HashFunction")
    columns = [numbers(table, c, kind="nonneg") for c in _DURATION_COLUMNS]
    dup = _first_repeat(code)
    dup_bad = None if dup is None else Problem(
        dup, header.index("HashFunction"),
        f"column 'HashFunction': {names[int(code[dup])]!r} has a row already")
    table.fail_first([key_bad, dup_bad, *(b for _, b in columns)])
    values = (np.stack([v for v, _ in columns], axis=1) if table.data.num_rows
              else np.zeros((0, len(DURATION_LEVELS))))
    # A percentile below the one before it is a corrupt row: the inverse CDF must not go down.
    down = np.diff(values, axis=1) < 0
    if down.any():
        row, step = (int(i) for i in np.argwhere(down)[0])
        col = _DURATION_COLUMNS[step + 1]
        raise TraceError(f"{p}:{row + 2}: column {col!r}: {values[row, step + 1]:g} is below "
                         f"{_DURATION_COLUMNS[step]} = {values[row, step]:g} (percentiles "
                         "must not decrease)")
    values.setflags(write=False)
    return Durations(str(p), tuple(names[int(c)] for c in code), values)


def _first_repeat(code: np.ndarray) -> int | None:
    """The first row whose key an earlier row has, or None."""
    _, first = np.unique(code, return_index=True)
    if first.size == code.size:
        return None
    repeated = np.ones(code.size, dtype=bool)
    repeated[first] = False
    return int(np.argmax(repeated))
