"""A mergeable latency sketch with a relative error bound (DDSketch's log buckets).

A run too long to keep every request still needs JSORC's percentiles. `LogSketch` keeps a
count per logarithmic bucket: bucket i holds the values in (gamma^(i-1), gamma^i] with
gamma = (1 + alpha) / (1 - alpha), and stands for 2 gamma^i / (gamma + 1), which is within a
relative `alpha` of every value in the bucket (Masson, Rim and Lee, "DDSketch", VLDB 2019).
The buckets are one numpy array, so a chunk of values goes in with one `np.bincount`, and two
sketches of the same alpha merge by adding their arrays: a sketch per app sums to `all`.

Count, sum, minimum and maximum are kept exactly beside the buckets, so counts and means are
exact; only quantiles are approximate.

**Bound.** `quantile(q)` reads the order statistics of ranks floor(h) and ceil(h), h = q (n-1),
as their buckets' values clamped to [minimum, maximum], and interpolates between them as
numpy's default ("linear") method does (ranks 0 and n - 1 are the exact minimum and
maximum). Each is within a relative alpha of the exact order
statistic (clamping to a range that holds the exact value only moves closer to it), so

    |quantile(q) - np.quantile(x, q)| <= alpha * max(x_(floor h), x_(ceil h)).

Values below `MIN_VALUE` (1e-9, in the unit of the values: a picosecond for latencies in ms)
count in a zero bucket that stands for 0 (clamped likewise): their error is below MIN_VALUE.
Negative, NaN or infinite values are refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

DEFAULT_RELATIVE_ERROR = 0.005
MIN_VALUE = 1e-9


class LogSketch:
    """Counts of values in log buckets of relative width `relative_error`; mergeable."""

    __slots__ = ("_counts", "_inv_log_gamma", "_log_gamma", "_offset", "count", "high", "low",
                 "relative_error", "total", "zeros")

    def __init__(self, relative_error: float = DEFAULT_RELATIVE_ERROR) -> None:
        if not 0.0 < relative_error < 1.0:
            raise ValueError(f"relative_error must be in (0, 1), got {relative_error!r}")
        self.relative_error = float(relative_error)
        self._log_gamma = math.log((1.0 + relative_error) / (1.0 - relative_error))
        self._inv_log_gamma = 1.0 / self._log_gamma
        self._counts = np.zeros(0, dtype=np.int64)  # bucket self._offset + j at index j
        self._offset = 0
        self.zeros = 0  # values below MIN_VALUE
        self.count = 0
        self.total = 0.0  # exact sum, for the mean
        self.low = math.inf
        self.high = -math.inf

    @classmethod
    def of(cls, values: np.ndarray | Sequence[float],
           relative_error: float = DEFAULT_RELATIVE_ERROR) -> LogSketch:
        sketch = cls(relative_error)
        sketch.add(np.asarray(values, dtype=np.float64))
        return sketch

    @classmethod
    def merged(cls, sketches: Iterable[LogSketch],
               relative_error: float = DEFAULT_RELATIVE_ERROR) -> LogSketch:
        """A new sketch holding every value of `sketches` (which all have `relative_error`)."""
        out = cls(relative_error)
        for sketch in sketches:
            out.merge(sketch)
        return out

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def nbytes(self) -> int:
        return int(self._counts.nbytes)

    def add(self, values: np.ndarray) -> None:
        """Count every value of the 1-D float array `values`."""
        if len(values) == 0:
            return
        low, high = float(values.min()), float(values.max())
        if not (low >= 0.0 and high < math.inf):  # also catches NaN
            bad = values[~(np.isfinite(values) & (values >= 0.0))][0]
            raise ValueError(f"a sketch counts finite values >= 0, got {float(bad)!r}")
        self.count += len(values)
        self.total += float(values.sum())
        self.low = min(self.low, low)
        self.high = max(self.high, high)
        positive = values[values >= MIN_VALUE] if low < MIN_VALUE else values
        self.zeros += len(values) - len(positive)
        if len(positive) == 0:
            return
        index = np.ceil(np.log(positive) * self._inv_log_gamma).astype(np.int64)
        first, last = int(index.min()), int(index.max())
        self._cover(first, last)
        start = first - self._offset
        self._counts[start:start + last - first + 1] += np.bincount(index - first)

    def merge(self, other: LogSketch) -> None:
        """Add every value `other` counted (same relative error only)."""
        if other.relative_error != self.relative_error:
            raise ValueError(f"cannot merge a sketch of relative error {other.relative_error} "
                             f"into one of {self.relative_error}")
        if other.count == 0:
            return
        self.count += other.count
        self.total += other.total
        self.zeros += other.zeros
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        if len(other._counts):
            first = other._offset
            self._cover(first, first + len(other._counts) - 1)
            start = first - self._offset
            self._counts[start:start + len(other._counts)] += other._counts

    def quantiles(self, qs: Sequence[float] | np.ndarray) -> np.ndarray:
        """Estimates of np.quantile(values, qs) (qs in [0, 1]; NaN when empty): see the bound
        in the module's docstring."""
        q = np.asarray(qs, dtype=np.float64)
        if np.any((q < 0.0) | (q > 1.0)):
            raise ValueError(f"quantiles must be in [0, 1], got {qs!r}")
        if self.count == 0:
            return np.full(q.shape, math.nan)
        h = q * (self.count - 1)
        below, above = np.floor(h), np.ceil(h)
        lo = self._order_statistics(below.astype(np.int64))
        hi = self._order_statistics(above.astype(np.int64))
        return np.asarray(lo + (h - below) * (hi - lo), dtype=np.float64)

    def percentiles(self, ps: Sequence[float] | np.ndarray) -> np.ndarray:
        return self.quantiles(np.asarray(ps, dtype=np.float64) / 100.0)

    def _order_statistics(self, ranks: np.ndarray) -> np.ndarray:
        """The value standing for the rank-k smallest value (0-based) of each k in `ranks`."""
        out = np.zeros(ranks.shape, dtype=np.float64)
        counted = ranks >= self.zeros
        if np.any(counted):
            cumulative = np.cumsum(self._counts)
            bucket = np.searchsorted(cumulative, ranks[counted] - self.zeros, side="right")
            gamma = math.exp(self._log_gamma)
            out[counted] = 2.0 * np.exp((bucket + self._offset) * self._log_gamma) / (gamma + 1)
        out = np.clip(out, self.low, self.high)
        # The smallest and largest are known exactly.
        out[ranks == 0] = self.low
        out[ranks == self.count - 1] = self.high
        return out

    def _cover(self, first: int, last: int) -> None:
        """Grow the bucket array to hold buckets first..last."""
        if len(self._counts) == 0:
            self._counts = np.zeros(last - first + 1, dtype=np.int64)
            self._offset = first
            return
        end = self._offset + len(self._counts)
        if first >= self._offset and last < end:
            return
        new_offset = min(first, self._offset)
        grown = np.zeros(max(last + 1, end) - new_offset, dtype=np.int64)
        start = self._offset - new_offset
        grown[start:start + len(self._counts)] = self._counts
        self._counts, self._offset = grown, new_offset
