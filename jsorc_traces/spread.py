"""Placing per-minute counts (the azure2019 format) in time, whole or a window of minutes.

Cells (function f, minute m) are laid out minute-major, and with the "uniform" spread cell c's
n calls take the next n draws of one `np.random.default_rng(seed)`. So the arrivals of the
first M minutes are the first draws of the stream whatever follows: expanding only the minutes
a replay window needs gives, draw for draw, the arrivals the whole day would have given there,
and a later window of minutes starts its draws where the earlier minutes' end (`spread_window`).
What the window cannot see, the streams whose first call comes later, `late_streams` orders
without expanding them, by jumping the generator to their first cell (PCG64 `advance`).
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["SECONDS_PER_MINUTE", "late_streams", "minutes_for_window", "spread_counts",
           "spread_window"]

SECONDS_PER_MINUTE: Final = 60.0

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
CodeArray = npt.NDArray[np.int32]


def minutes_for_window(counts: IntArray, max_s: float) -> int:
    """How many leading minutes hold every arrival with ts < max_s after the time-zero shift.

    Time 0 is the first arrival, which lies in the first minute m0 with a call, so the window
    ends before 60 (m0 + 1) + max_s on the trace's clock; one minute more absorbs rounding."""
    busy = np.flatnonzero(counts.sum(axis=0))
    n_min = int(counts.shape[1])
    if busy.size == 0:
        return n_min
    return min(n_min, int(busy[0]) + 2 + math.ceil(max_s / SECONDS_PER_MINUTE))


def spread_counts(
    counts: IntArray, *, spread: str, seed: int
) -> tuple[FloatArray, CodeArray, bool]:
    """Place per-minute counts (functions x minutes) in time; returns (ts, function, sorted).

    Arrivals are generated minute by minute (cells in minute-major order), so the result is
    already grouped by minute and only needs sorting within minutes across functions.
    """
    return spread_window(counts, 0, int(counts.shape[1]), spread=spread, seed=seed)


def spread_window(
    counts: IntArray, start: int, stop: int, *, spread: str, seed: int
) -> tuple[FloatArray, CodeArray, bool]:
    """Minutes [start, stop) of `spread_counts(counts)`: the same arrivals, draw for draw, in
    the same order, so the whole table can be expanded a window at a time.

    The "uniform" draws of minute `start` begin where the draws of the minutes before it end:
    the generator jumps there (PCG64 `advance`, one 64-bit step per double) instead of drawing
    them. Returns (ts, function, sorted) like `spread_counts`.
    """
    n_func, n_min = counts.shape
    if not 0 <= start <= stop <= n_min:
        raise ValueError(f"minutes [{start}, {stop}) are not within the table's {n_min}")
    window = counts[:, start:stop]
    per_cell = window.T.ravel()  # cell c is minute start + c // n_func, function c % n_func
    total = int(per_cell.sum())
    if n_func == 1:
        func = np.zeros(total, dtype=np.int32)
    else:
        func = np.repeat(np.tile(np.arange(n_func, dtype=np.int32), stop - start), per_cell)
    per_minute = window.sum(axis=0)
    if spread == "uniform":
        # default_rng(seed) is Generator(PCG64(seed)); the bit generator is kept to jump with.
        bits = np.random.PCG64(seed)
        skipped = int(counts[:, :start].sum())
        if skipped:
            bits.advance(skipped)
        ts = np.random.Generator(bits).random(total)
        # Minute by minute, in place: a 20.8 M-call day then needs no second array of minutes.
        # (m + u) * 60 is the expression the arrivals have always been placed with.
        end = np.cumsum(per_minute)
        for i in np.flatnonzero(per_minute).tolist():
            part = ts[int(end[i] - per_minute[i]) : int(end[i])]
            part += start + i
            part *= SECONDS_PER_MINUTE
        if n_func == 1:
            # One function: nothing to carry along, and a plain sort is ~3x an argsort.
            ts.sort()
            return ts, func, True
        return ts, func, False
    minute = np.repeat(np.arange(start, stop, dtype=np.int64), per_minute)
    first = np.cumsum(per_cell) - per_cell
    within = np.arange(total, dtype=np.int64) - np.repeat(first, per_cell)
    ts = (minute + (within + 0.5) / np.repeat(per_cell, per_cell)) * SECONDS_PER_MINUTE
    # One function's even times are increasing already; several interleave within a minute.
    return ts, func, n_func == 1


def late_streams(counts: IntArray, expanded: int, *, spread: str, seed: int) -> list[int]:
    """The functions whose first call lies in minute `expanded` or later, in order of that
    call: the order `spread_counts` of the whole table would show them in.

    That order is by time, ties by position in the draw stream (a stable sort of cells laid
    out minute-major); a function's first call is the earliest of its first busy cell's."""
    seen_before = counts[:, :expanded].sum(axis=1) > 0
    later = counts[:, expanded:] > 0
    rows = np.flatnonzero(~seen_before & later.any(axis=1))
    if rows.size == 0:
        return []
    first_minute = expanded + np.argmax(later[rows], axis=1)
    per_minute = counts.sum(axis=0)
    minute_start = np.cumsum(per_minute) - per_minute
    # Where each late function's first cell starts in the draw stream.
    position = np.empty(rows.size, dtype=np.int64)
    for m in np.unique(first_minute).tolist():
        column = counts[:, m]
        before = np.cumsum(column) - column  # the calls of lower functions in minute m
        here = first_minute == m
        position[here] = minute_start[m] + before[rows[here]]
    firsts: list[tuple[float, int, int]] = []
    # default_rng(seed) is Generator(PCG64(seed)); the bit generator is kept to jump with.
    bits = np.random.PCG64(seed)
    rng = np.random.Generator(bits)
    at = 0
    for i in np.argsort(position, kind="stable").tolist():
        f, m, pos = int(rows[i]), int(first_minute[i]), int(position[i])
        n = int(counts[f, m])
        if spread == "uniform":
            bits.advance(pos - at)  # one 64-bit step per double drawn
            draws = rng.random(n)
            at = pos + n
            j = int(np.argmin(draws))
            firsts.append(((m + float(draws[j])) * SECONDS_PER_MINUTE, pos + j, f))
        else:
            firsts.append(((m + 0.5 / n) * SECONDS_PER_MINUTE, pos, f))
    return [f for _, _, f in sorted(firsts)]
