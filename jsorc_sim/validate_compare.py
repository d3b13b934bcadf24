"""The comparisons of `jsorc-sim validate`, simulated against measured (pure functions).

- per run: mean, p50 and p95 walker latency (ms) and throughput (walker runs per second);
- over the held-out runs, per metric: MAPE (mean of |sim - live| / live, in %) and Pearson r
  (scipy.stats.pearsonr);
- the 95 % confidence interval of a run's mean latency by batch means (10 batches of
  consecutive requests: requests of a closed loop are correlated, batches much less so);
- the policy ranking on one workload: the order by mean latency live and simulated, Kendall
  tau (scipy.stats.kendalltau), and for each pair ranked the other way whether the two
  means' intervals overlap (a swap the noise explains) on either side;
- placement changes: the simulated decisions against the live decision log, action by
  action in order, matched when the target is the same and the control interval is the
  same or one off.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

METRICS = ("mean_ms", "p50_ms", "p95_ms", "throughput")
LABELS = {"mean_ms": "mean ms", "p50_ms": "p50 ms", "p95_ms": "p95 ms",
          "throughput": "throughput/s"}
BATCHES = 10


@dataclass(frozen=True)
class Metrics:
    mean_ms: float
    p50_ms: float
    p95_ms: float
    throughput: float

    def get(self, metric: str) -> float:
        return float(getattr(self, metric))

    @classmethod
    def from_report(cls, stats_: Mapping[str, Any]) -> Metrics:
        """From one app's entry of JSORC's benchmark report (`walker_run[app]`)."""
        def number(key: str) -> float:
            value = stats_.get(key)
            return float(value) if isinstance(value, int | float) else math.nan

        return cls(number("average_latency"), number("50th_latency"), number("95th_latency"),
                   number("throughput"))

    @classmethod
    def mean_of(cls, many: Sequence[Metrics]) -> Metrics:
        return cls(*(float(np.mean([m.get(k) for m in many])) for k in METRICS))


@dataclass(frozen=True)
class Interval:
    """A mean and its 95 % confidence interval."""

    mean: float
    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


@dataclass(frozen=True)
class MetricError:
    metric: str
    runs: int
    mape: float  # %
    pearson_r: float
    worst_run: str
    worst_error: float  # signed, %: (sim - live) / live


@dataclass(frozen=True)
class Change:
    t: float  # seconds since the run's start
    action: str
    placement: str


@dataclass(frozen=True)
class ChangeMatch:
    live: tuple[Change, ...]
    sim: tuple[Change, ...]
    matched: int
    interval_s: float

    @property
    def total(self) -> int:
        return max(len(self.live), len(self.sim))


@dataclass(frozen=True)
class Ranking:
    workload: str
    labels: tuple[str, ...]
    live: tuple[Interval, ...]
    sim: tuple[Interval, ...]
    tau: float
    swaps: tuple[tuple[str, str, bool], ...]  # (a, b, explained by overlapping intervals)

    def order(self, side: str) -> list[str]:
        means = [i.mean for i in (self.live if side == "live" else self.sim)]
        return [self.labels[i] for i in np.argsort(means, kind="stable")]

    @property
    def explained(self) -> bool:
        return all(ok for _, _, ok in self.swaps)


def signed_error(sim: float, live: float) -> float:
    """(sim - live) / live in %, NaN when either is missing or live is 0."""
    if not (math.isfinite(sim) and math.isfinite(live)) or live == 0:
        return math.nan
    return 100.0 * (sim - live) / live


def metric_errors(pairs: Sequence[tuple[str, Metrics, Metrics]]) -> dict[str, MetricError]:
    """Per metric over `pairs` of (run name, live, sim): MAPE, Pearson r, the worst run."""
    out: dict[str, MetricError] = {}
    for metric in METRICS:
        rows = [(name, live.get(metric), sim.get(metric)) for name, live, sim in pairs]
        rows = [r for r in rows if math.isfinite(signed_error(r[2], r[1]))]
        errors = [signed_error(s, v) for _, v, s in rows]
        if not rows:
            out[metric] = MetricError(metric, 0, math.nan, math.nan, "", math.nan)
            continue
        worst = int(np.argmax(np.abs(errors)))
        out[metric] = MetricError(metric, len(rows), float(np.mean(np.abs(errors))),
                                  pearson([v for _, v, _ in rows], [s for _, _, s in rows]),
                                  rows[worst][0], errors[worst])
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r, NaN with fewer than 3 points or a constant side (r is undefined)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    from scipy import stats  # ~0.7 s to import: only when validation compares

    return float(stats.pearsonr(x, y).statistic)


def batch_means(values: Sequence[float], batches: int = BATCHES) -> Interval:
    """The mean of `values` (in time order) with a 95 % interval from batch means."""
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if data.size < 2 * batches:
        mean = float(data.mean()) if data.size else math.nan
        return Interval(mean, math.nan, math.nan)
    from scipy import stats

    means = np.array([chunk.mean() for chunk in np.array_split(data, batches)])
    half = float(stats.t.ppf(0.975, batches - 1) * means.std(ddof=1) / math.sqrt(batches))
    mean = float(data.mean())
    return Interval(mean, mean - half, mean + half)


def rank(workload: str, labels: Sequence[str], live: Sequence[Interval],
         sim: Sequence[Interval]) -> Ranking:
    """Kendall tau between the live and simulated orders by mean, and every swapped pair."""
    from scipy import stats

    lm, sm = [i.mean for i in live], [i.mean for i in sim]
    tau = float(stats.kendalltau(lm, sm).statistic) if len(labels) >= 2 else math.nan
    swaps = []
    for a, b in combinations(range(len(labels)), 2):
        if (lm[a] - lm[b]) * (sm[a] - sm[b]) < 0:
            noise = live[a].overlaps(live[b]) or sim[a].overlaps(sim[b])
            swaps.append((labels[a], labels[b], noise))
    return Ranking(workload, tuple(labels), tuple(live), tuple(sim), tau, tuple(swaps))


def changes(rows: Iterable[Mapping[str, Any]], *, t_key: str = "t") -> tuple[Change, ...]:
    """The placement changes among decision rows: rows naming an action, without an error."""
    out = []
    for row in rows:
        t, action, placement = row.get(t_key), row.get("action"), row.get("placement")
        if not action or not placement or row.get("error"):
            continue
        if isinstance(t, int | float) and math.isfinite(t):
            out.append(Change(float(t), str(action), str(placement)))
    return tuple(sorted(out, key=lambda c: c.t))


def match_changes(live: Sequence[Change], sim: Sequence[Change], interval_s: float
                  ) -> ChangeMatch:
    """Action by action, the k-th live change against the k-th simulated one: matched when
    both move to the same placement in the same control interval or the next/previous."""
    matched = 0
    for action in {c.action for c in (*live, *sim)}:
        ours = [c for c in live if c.action == action]
        theirs = [c for c in sim if c.action == action]
        for a, b in zip(ours, theirs, strict=False):
            same_slot = abs(math.floor(a.t / interval_s) - math.floor(b.t / interval_s)) <= 1
            matched += int(a.placement == b.placement and same_slot)
    return ChangeMatch(tuple(live), tuple(sim), matched, interval_s)
