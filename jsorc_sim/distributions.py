"""Service and start-up time samplers, each on its own seeded random stream.

Drawing one number from numpy costs about a microsecond, so samplers draw in batches and
hand out plain Python floats: the simulator's hot path then pays a list index, not a call
into numpy. Batches start small and double up to `BATCH`: a run has one sampler per action
for each source of requests (every closed-loop client), most of which draw only a few
numbers, and a full batch each would cost time and, with many clients, memory. The batch
schedule is fixed, so a stream yields the same sequence in every run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jsorc_sim.scenario import Dist, ScenarioError

BATCH = 4096
FIRST_BATCH = 16


class Sampler:
    """Yields one sample per call from `draw(n)`, refilled in batches of 16, 32, ... 4096."""

    __slots__ = ("_buf", "_draw", "_i", "_n", "mean")

    def __init__(self, draw: Callable[[int], np.ndarray], mean: float) -> None:
        self._draw = draw
        self._buf: list[float] = []
        self._i = 0
        self._n = FIRST_BATCH
        self.mean = mean

    def __call__(self) -> float:
        i = self._i
        buf = self._buf
        if i >= len(buf):
            n = self._n
            buf = self._buf = self._draw(n).tolist()
            self._n = min(2 * n, BATCH)
            i = 0
        self._i = i + 1
        return buf[i]

    def take(self, n: int) -> np.ndarray:
        """The next `n` samples as an array: the same numbers `n` calls would give, drawn in
        the same batches (the fast path draws a stretch's service times at once, and a run
        that switches between it and one-at-a-time draws must see one stream)."""
        parts: list[np.ndarray] = []
        need = n
        while need > 0:
            i, buf = self._i, self._buf
            if i >= len(buf):
                batch = self._n
                buf = self._buf = self._draw(batch).tolist()
                self._n = min(2 * batch, BATCH)
                i = 0
            got = min(need, len(buf) - i)
            parts.append(np.array(buf[i:i + got], dtype=float))
            self._i = i + got
            need -= got
        return np.concatenate(parts) if parts else np.empty(0)


def constant(value: float) -> Sampler:
    return Sampler(lambda n: np.full(n, value), value)


def lognormal_params(mean: float, cv: float) -> tuple[float, float]:
    """mu and sigma of the underlying normal for a lognormal of this mean and cv."""
    sigma2 = math.log1p(cv * cv)
    return math.log(mean) - sigma2 / 2, math.sqrt(sigma2)


ServiceMaker = Callable[[np.random.Generator], Sampler]


def service_maker(dist: Dist, base_dir: Path) -> ServiceMaker:
    """Makes samplers of service times in ms for one action's distribution, one per random
    stream (each source of requests has its own); an empirical file is read once, here."""
    mean = dist.mean_ms
    if dist.dist == "const" or (dist.dist in ("lognormal", "gamma") and dist.cv == 0):
        return lambda _rng: constant(mean)
    if dist.dist == "exp":
        return lambda rng: Sampler(lambda n: rng.exponential(mean, n), mean)
    if dist.dist == "lognormal":
        mu, sigma = lognormal_params(mean, dist.cv)
        return lambda rng: Sampler(lambda n: rng.lognormal(mu, sigma, n), mean)
    if dist.dist == "gamma":
        # shape k = 1/cv^2 and scale = mean * cv^2 give this mean and cv.
        shape, scale = 1.0 / (dist.cv * dist.cv), mean * dist.cv * dist.cv
        return lambda rng: Sampler(lambda n: rng.gamma(shape, scale, n), mean)
    if dist.dist == "empirical":
        samples = read_samples(base_dir / dist.file, dist.column)
        sample_mean = float(samples.mean())
        return lambda rng: Sampler(lambda n: rng.choice(samples, n), sample_mean)
    if dist.dist == "percentiles":
        from jsorc_sim.trace_streams import percentile_sampler

        return percentile_sampler(base_dir / dist.file, dist.function)
    raise ValueError(f"unknown distribution {dist.dist!r}")


def startup_sampler(mean_s: float, cv: float, rng: np.random.Generator) -> Sampler:
    """Load or start-up times in seconds: constant, or lognormal when cv > 0."""
    if cv == 0 or mean_s == 0:
        return constant(mean_s)
    mu, sigma = lognormal_params(mean_s, cv)
    return Sampler(lambda n: rng.lognormal(mu, sigma, n), mean_s)


def read_samples(path: Path, column: str = "") -> np.ndarray:
    """Service-time samples (ms) from a file: one number per line, or a CSV column."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, header=0 if column else None)
    except (OSError, ValueError) as exc:
        raise ScenarioError(str(path), [f"cannot read service-time samples: {exc}"]) from None
    if column:
        if column not in frame.columns:
            raise ScenarioError(str(path), [f"no column {column!r} (columns: "
                                            f"{', '.join(map(str, frame.columns))})"])
        series = frame[column]
    else:
        series = frame.iloc[:, 0]
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna() | (values < 0)
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        line = row + (2 if column else 1)
        raise ScenarioError(f"{path}:{line}", [f"expected a service time >= 0 in ms, "
                                               f"got {series.iloc[row]!r}"])
    if len(values) == 0 or not values.mean() > 0:
        # All-zero service times would let a closed-loop client spin at one instant forever.
        raise ScenarioError(str(path), ["needs samples with a positive mean"])
    return values.to_numpy(dtype=float)
