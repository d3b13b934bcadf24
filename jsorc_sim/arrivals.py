"""An open workload's requests in arrival order, for both engines: one at a time for SimPy,
a stretch at a time for the fast path (jsorc_sim.fastpath).

A source owns the workload's random streams (see jsorc_sim.workload): the arrival times and
app picks, and one service-time stream per action. Request i gets the same time, app and
draws whichever engine takes it, so a run that switches engines midway is the run either
engine alone would have made (common random numbers hold across engines too):
- Poisson gaps and app picks are drawn in blocks of BATCH, gaps first, from one generator:
  the order the one-at-a-time generators of earlier versions drew them in;
- each action's service draws are consumed in (request, call position) order, through
  `Sampler.__call__` one at a time or `Sampler.take` for a stretch (same batches).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from jsorc_sim.distributions import Sampler

if TYPE_CHECKING:
    from jsorc_sim.runtime import Runtime

BATCH = 4096


@dataclass(frozen=True)
class Block:
    """Requests arriving in a stretch: times (s), app codes, sizes, and each request's base
    service draws (ms) by call position (NaN past the app's last call)."""

    ts: np.ndarray
    app: np.ndarray
    size: np.ndarray
    draws: np.ndarray  # shape (requests, most calls of any app)

    def __len__(self) -> int:
        return len(self.ts)


class OpenSource:
    """Arrivals of an open workload: `peek()` the next time, `pop()` one request (SimPy), or
    `take_until(t)` every request arriving before `t` (the fast path)."""

    def __init__(self, samplers: Sequence[tuple[Sampler, ...]],
                 app_calls: Sequence[Sequence[int]]) -> None:
        self.samplers = samplers
        self.app_calls = [tuple(calls) for calls in app_calls]
        self.width = max((len(c) for c in self.app_calls), default=0)
        self.grid = call_grid(self.app_calls)
        self._by_action = _distinct_samplers(samplers, self.app_calls)
        self._ts = np.empty(0)
        self._app = np.empty(0, dtype=np.int64)
        self._size = np.empty(0)
        self._i = 0
        self.process: simpy.Process | None = None  # the SimPy arrival process, while it runs

    # ------------------------------------------------------------------ subclasses

    def _more(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The next arrivals (times, apps, sizes), or None when there are no more."""
        return None

    # ------------------------------------------------------------------ reading

    def peek(self) -> float | None:
        """The next arrival's time, or None when the workload has ended."""
        if self._i >= len(self._ts) and not self._fill():
            return None
        return float(self._ts[self._i])

    def pop(self) -> tuple[float, int, float, list[float]]:
        """The next request: its time, app, size and service draws (call `peek` first)."""
        i = self._i
        self._i = i + 1
        app = int(self._app[i])
        return (float(self._ts[i]), app, float(self._size[i]),
                [draw() for draw in self.samplers[app]])

    def take_until(self, end: float) -> Block:
        """Every request arriving before `end`, with its draws, in arrival order."""
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        while True:
            i = self._i
            stop = i + int(np.searchsorted(self._ts[i:], end, side="left"))
            parts.append((self._ts[i:stop], self._app[i:stop], self._size[i:stop]))
            self._i = stop
            if stop < len(self._ts) or not self._fill():
                break
        ts = np.concatenate([p[0] for p in parts])
        app = np.concatenate([p[1] for p in parts])
        size = np.concatenate([p[2] for p in parts])
        draws = np.full((len(ts), self.width), np.nan)
        if len(ts):
            grid = self.grid[app][:, :self.width]
            for code, sampler in self._by_action.items():
                rows, cols = np.nonzero(grid == code)  # row-major: request, then position
                if len(rows):
                    draws[rows, cols] = sampler.take(len(rows))
        return Block(ts, app, size, draws)

    def _fill(self) -> bool:
        """Replace the (read) buffer by the next arrivals; False when there are none."""
        more = self._more()
        if more is None:
            return False
        self._ts, self._app, self._size = more
        self._i = 0
        return True


def call_grid(app_calls: Sequence[Sequence[int]]) -> np.ndarray:
    """Which action each (app, call position) calls; -1 past an app's last call (at least
    one column, so an app with no calls still has a row to index)."""
    width = max([len(calls) for calls in app_calls] + [1])
    grid = np.full((len(app_calls), width), -1, dtype=np.int64)
    for code, calls in enumerate(app_calls):
        grid[code, :len(calls)] = calls
    return grid


def _distinct_samplers(samplers: Sequence[tuple[Sampler, ...]],
                       app_calls: Sequence[Sequence[int]]) -> dict[int, Sampler]:
    """Action code -> its sampler (one per action within a source)."""
    out: dict[int, Sampler] = {}
    for calls, row in zip(app_calls, samplers, strict=True):
        for code, sampler in zip(calls, row, strict=True):
            out[code] = sampler
    return out


class PoissonSource(OpenSource):
    """Poisson arrivals at `rate` per second, apps picked by `mix` (probabilities)."""

    def __init__(self, rate: float, mix: np.ndarray, rng: np.random.Generator,
                 samplers: Sequence[tuple[Sampler, ...]],
                 app_calls: Sequence[Sequence[int]]) -> None:
        super().__init__(samplers, app_calls)
        self.rate = rate
        self.mix = mix
        self.rng = rng
        nonzero = np.flatnonzero(mix)
        self.only = int(nonzero[0]) if len(nonzero) == 1 else None
        self._last = 0.0

    def _more(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        gaps = self.rng.exponential(1.0 / self.rate, BATCH)
        if self.only is None:
            apps = self.rng.choice(len(self.mix), size=BATCH, p=self.mix).astype(np.int64)
        else:
            apps = np.full(BATCH, self.only, dtype=np.int64)
        # A sequential sum, as a clock advanced by each gap would be (np.cumsum is one).
        ts = np.cumsum(np.concatenate(([self._last], gaps)))[1:]
        self._last = float(ts[-1])
        return ts, apps, np.zeros(BATCH)


@dataclass(frozen=True)
class MixPhases:
    """The app mix over time: from `starts[i]` on (`starts[0]` = 0), apps are drawn by row i of
    `cdf` (each row the cumulative probabilities of the apps, ending at 1).

    A draw is one uniform u per request, the app the first whose cumulative probability
    exceeds u: what `Generator.choice(p=...)` does with its uniforms, so an app of weight 0
    is never drawn."""

    starts: np.ndarray
    cdf: np.ndarray  # shape (phases, apps)

    @classmethod
    def of(cls, starts: Sequence[float], weights: Sequence[Sequence[float]]) -> MixPhases:
        cdf = np.cumsum(np.asarray(weights, dtype=float), axis=1)
        return cls(np.asarray(starts, dtype=float), cdf / cdf[:, -1:])

    def phase_at(self, ts: np.ndarray) -> np.ndarray:
        """The phase each time falls in (a phase begins at its start)."""
        phase: np.ndarray = np.searchsorted(self.starts, ts, side="right") - 1
        return phase

    def pick(self, u: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """The app of each request, from its uniform and its phase."""
        apps = np.empty(len(u), dtype=np.int64)
        for p in np.unique(phase):
            where = phase == p
            apps[where] = np.searchsorted(self.cdf[p], u[where], side="right")
        return apps


class PhasedPoissonSource(OpenSource):
    """Poisson arrivals whose rate and mix step at phase starts (`[[workload.phases]]`).

    The arrivals are a unit-rate Poisson process on the operational clock (the integral of the
    rate), mapped back to the run's clock phase by phase: a piecewise-constant-rate Poisson
    process. Per block of BATCH: the unit gaps, then one uniform per request for its app (by
    the mix of the phase it arrives in)."""

    def __init__(self, rates: Sequence[float], mixes: MixPhases, rng: np.random.Generator,
                 samplers: Sequence[tuple[Sampler, ...]],
                 app_calls: Sequence[Sequence[int]]) -> None:
        super().__init__(samplers, app_calls)
        self.rates = np.asarray(rates, dtype=float)
        self.mixes = mixes
        self.rng = rng
        # The operational clock at each phase start.
        self.opened = np.concatenate(([0.0], np.cumsum(np.diff(mixes.starts) * self.rates[:-1])))
        self._last = 0.0  # on the operational clock
        self._last_ts = 0.0

    def _more(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        gaps = self.rng.exponential(1.0, BATCH)
        u = self.rng.random(BATCH)
        clock = np.cumsum(np.concatenate(([self._last], gaps)))[1:]
        self._last = float(clock[-1])
        phase = np.searchsorted(self.opened, clock, side="right") - 1
        ts = self.mixes.starts[phase] + (clock - self.opened[phase]) / self.rates[phase]
        # Rounding at a phase start must not put an arrival before the one before it.
        ts = np.maximum.accumulate(np.maximum(ts, self._last_ts))
        self._last_ts = float(ts[-1])
        return ts, self.mixes.pick(u, phase), np.zeros(BATCH)


class TraceSource(OpenSource):
    """A trace's requests, read a window at a time as the run consumes them, so the run holds
    one window of the trace, not all of it (jsorc_sim.workload.trace_requests).

    `windows` yields (times (s, sorted), app codes, sizes), each window non-empty and after the
    one before."""

    def __init__(self, windows: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 samplers: Sequence[tuple[Sampler, ...]],
                 app_calls: Sequence[Sequence[int]]) -> None:
        super().__init__(samplers, app_calls)
        self._windows = windows

    def _more(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        return next(self._windows, None)


def arrive(env: simpy.Environment, runtime: Runtime,
           source: OpenSource) -> Generator[simpy.Event, Any, None]:
    """The SimPy arrival process: each request of `source` starts a walker at its time.

    Interrupted (the fast path takes over), it stops; the request it was waiting for stays in
    the source, undrawn."""
    timeout, process, serve = env.timeout, env.process, runtime.serve
    try:
        while (t := source.peek()) is not None:
            if t > env.now:
                yield timeout(t - env.now)
            _, app, size, draws = source.pop()
            process(serve(app, size, draws))
    except simpy.Interrupt:
        return
    finally:
        if source.process is env.active_process:
            source.process = None
