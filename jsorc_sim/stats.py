"""What the report needs from the calls and requests, gathered chunk by chunk as a run goes.

The recorder feeds every chunk of rows here whatever it keeps of the tables, so a run that
keeps no table (or streams them to disk) still reports: exact counts, exact sums for the
means, and a `LogSketch` per app for the percentiles (see jsorc_sim.sketch for its bound).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from jsorc_sim.sketch import DEFAULT_RELATIVE_ERROR, LogSketch


@dataclass
class RunStatistics:
    """Running tallies over every row recorded so far. Requests count by arrival time (`ts`):
    `finished[app]` holds the latencies of requests that arrived at or after `warmup_s` and
    succeeded (walker_run), `arrived[app]` those of every request that arrived then and
    finished, succeeded or failed (unfinished()'s lower bound); both indexed by app code."""

    apps: Sequence[str]
    warmup_s: float = 0.0
    relative_error: float = DEFAULT_RELATIVE_ERROR
    requests: int = 0
    failed_requests: int = 0
    calls: int = 0
    failed_calls: int = 0
    cold_starts: int = 0
    finished: list[LogSketch] = field(init=False)
    arrived: list[LogSketch] = field(init=False)

    def __post_init__(self) -> None:
        self.finished = [LogSketch(self.relative_error) for _ in self.apps]
        self.arrived = [LogSketch(self.relative_error) for _ in self.apps]

    def add_requests(self, ts: np.ndarray, app: np.ndarray, latency_ms: np.ndarray,
                     ok: np.ndarray) -> None:
        """One chunk of request rows, as columns of equal length."""
        self.requests += len(ok)
        self.failed_requests += len(ok) - int(np.count_nonzero(ok))
        after = ts >= self.warmup_s
        self._by_app(self.arrived, app[after], latency_ms[after])
        done = after & ok.astype(bool, copy=False)
        self._by_app(self.finished, app[done], latency_ms[done])

    def add_calls(self, ok: np.ndarray, cold: np.ndarray) -> None:
        self.calls += len(ok)
        self.failed_calls += len(ok) - int(np.count_nonzero(ok))
        self.cold_starts += int(np.count_nonzero(cold))

    def merged(self, sketches: Sequence[LogSketch]) -> LogSketch:
        """Every app's values in one sketch (for `all`)."""
        return LogSketch.merged(sketches, self.relative_error)

    @property
    def nbytes(self) -> int:
        """Memory the tallies hold (their bucket arrays): bounded by the range of latencies,
        not by the number of rows."""
        return sum(s.nbytes for s in (*self.finished, *self.arrived))

    @staticmethod
    def _by_app(sketches: list[LogSketch], app: np.ndarray, values: np.ndarray) -> None:
        if len(app) == 0:
            return
        first = int(app[0])
        if np.all(app == first):  # the common case: one app, or a chunk of one
            sketches[first].add(values)
            return
        # Group by code once (a stable sort), rather than one mask per app: a trace may name
        # hundreds of apps.
        order = np.argsort(app, kind="stable")
        codes, starts = np.unique(app[order], return_index=True)
        ends = [*starts[1:], len(order)]
        for code, start, end in zip(codes, starts, ends, strict=True):
            sketches[int(code)].add(values[order[start:end]])
