"""Fitting a service-time distribution to measured samples: lognormal or gamma, else empirical.

Both families are fitted by maximum likelihood with the location fixed at 0 (a service time
has no offset the scenario format could carry) and judged by a Kolmogorov-Smirnov test
against the fitted distribution. The KS p-value with estimated parameters is optimistic
(Lilliefors), so the lognormal is also checked by Anderson-Darling on log(samples), whose
p-values for the normal (interpolated from Stephens' tables, which scipy clips to
0.01..0.15) do account for estimated parameters. A family passes when its KS p is at least
`ALPHA` (and, for the lognormal, so is its Anderson-Darling p); of those that pass, the
higher KS p wins. When neither
passes the samples themselves are the distribution ("empirical"), which reproduces any shape.

Pure functions: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05  # goodness-of-fit level: a fit whose KS p is below this is rejected
MIN_SAMPLES = 30  # fewer samples than this: no fit, the given value is kept
FAMILIES = ("lognormal", "gamma")


class FitError(ValueError):
    """Samples that cannot be fitted (none, negative or not finite)."""


@dataclass(frozen=True)
class FamilyFit:
    """One family's maximum-likelihood fit and its goodness of fit."""

    family: str
    mean_ms: float
    cv: float
    ks_stat: float
    ks_p: float
    ad_stat: float = math.nan  # Anderson-Darling (lognormal: on log samples), NaN if not run
    ad_p: float = math.nan

    @property
    def passes(self) -> bool:
        if not self.ks_p >= ALPHA:
            return False
        return math.isnan(self.ad_p) or self.ad_p >= ALPHA

    def describe(self) -> str:
        text = f"{self.family} KS D={self.ks_stat:.3f} p={self.ks_p:.3g}"
        if not math.isnan(self.ad_stat):
            text += f", AD A2={self.ad_stat:.2f} p={self.ad_p:.3g}"
        return text


@dataclass(frozen=True)
class ServiceFit:
    """The chosen distribution of one set of samples, and why.

    `family` is lognormal, gamma or empirical; `mean_ms` and `cv` are the chosen
    distribution's (the sample mean and cv for empirical); `candidates` every family tried."""

    family: str
    n: int
    mean_ms: float
    cv: float
    sample_mean_ms: float
    sample_cv: float
    candidates: tuple[FamilyFit, ...]
    reason: str

    @property
    def ks_p(self) -> float:
        for fit in self.candidates:
            if fit.family == self.family:
                return fit.ks_p
        return math.nan


def check_samples(samples: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(samples, dtype=float)
    if values.size == 0:
        raise FitError(f"{what}: no samples to fit")
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        raise FitError(f"{what}: sample {values[np.argmax(bad)]!r} is not a time >= 0")
    return values


def fit_lognormal(x: np.ndarray) -> FamilyFit:
    # floc=0 gives the closed-form MLE: sigma and log(scale) are the std and mean of log x.
    positive = x[x > 0]
    s, _loc, scale = stats.lognorm.fit(positive, floc=0)
    ks = stats.kstest(x, "lognorm", args=(s, 0.0, scale))
    ad = stats.anderson(np.log(positive), dist="norm", method="interpolate")
    return FamilyFit("lognormal", float(scale * math.exp(s * s / 2)),
                     float(math.sqrt(math.expm1(s * s))), float(ks.statistic), float(ks.pvalue),
                     float(ad.statistic), float(ad.pvalue))


def fit_gamma(x: np.ndarray) -> FamilyFit:
    positive = x[x > 0]
    shape, _loc, scale = stats.gamma.fit(positive, floc=0)
    ks = stats.kstest(x, "gamma", args=(shape, 0.0, scale))
    return FamilyFit("gamma", float(shape * scale), float(1.0 / math.sqrt(shape)),
                     float(ks.statistic), float(ks.pvalue))


def fit_service(samples: np.ndarray, what: str = "samples") -> ServiceFit:
    """The best passing family of lognormal and gamma for `samples` (ms), else empirical.

    Needs at least MIN_SAMPLES samples (FitError otherwise); a sample set whose values are
    all equal is "const"-like: both families fail and the result is empirical."""
    x = check_samples(samples, what)
    if x.size < MIN_SAMPLES:
        raise FitError(f"{what}: {x.size} samples, fewer than {MIN_SAMPLES}")
    mean = float(x.mean())
    cv = float(x.std(ddof=1) / mean) if mean > 0 else math.nan
    if not (x > 0).sum() >= MIN_SAMPLES or not cv > 0:
        return ServiceFit("empirical", int(x.size), mean, cv, mean, cv, (),
                          "too few positive or distinct samples for a parametric fit")
    candidates = (fit_lognormal(x), fit_gamma(x))
    passing = [fit for fit in candidates if fit.passes]
    if passing:
        best = max(passing, key=lambda fit: fit.ks_p)
        others = [f.describe() for f in candidates if f is not best]
        reason = f"{best.describe()} passes at {ALPHA:g}; best KS p of " \
                 f"{len(passing)} passing (also tried: {'; '.join(others)})"
        return ServiceFit(best.family, int(x.size), best.mean_ms, best.cv, mean, cv,
                          candidates, reason)
    reason = "no family passes at " + f"{ALPHA:g}: " + "; ".join(f.describe() for f in candidates)
    return ServiceFit("empirical", int(x.size), mean, cv, mean, cv, candidates, reason)


def mean_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """A t confidence interval of the mean (for notes; NaN bounds below 2 samples)."""
    x = np.asarray(samples, dtype=float)
    if x.size < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return float(x.mean()) - half, float(x.mean()) + half


# ----------------------------------------------------------------------------- node cores

CORES_P = 0.01  # an F-test p below this says the service times did grow with concurrency


@dataclass(frozen=True)
class CoresFit:
    """The node's effective cores, from how local service times grew with concurrency.

    On one machine the live runtime's threads share the cores by time-slicing: calls do not
    wait for a core, their service time stretches. Model: a local call that ran while k
    local calls were in service took base * max(1, k / c). `cores` is the c that fits best
    (least squares on log service time, one base per action) when an F-test against "no
    growth" says the growth is real (`identified`); otherwise the data cannot tell c from any
    value >= the highest concurrency seen, and `cores` is None."""

    cores: int | None
    identified: bool
    n: int
    max_concurrency: int
    p_value: float
    reason: str


def concurrency(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """For each interval, how many of the intervals were in progress at its midpoint."""
    mid = (start + end) / 2
    starts, ends = np.sort(start), np.sort(end)
    inside: np.ndarray = (np.searchsorted(starts, mid, side="right")
                          - np.searchsorted(ends, mid, side="right"))
    return inside


def contention_factor(k: np.ndarray, cores: int | None) -> np.ndarray:
    if cores is None:
        return np.ones(len(k))
    return np.maximum(1.0, np.asarray(k, dtype=float) / cores)


def fit_cores(groups: np.ndarray, k: np.ndarray, service_ms: np.ndarray) -> CoresFit:
    """Fit the effective cores c from local calls: `groups` (an action code per call), `k`
    (local calls in service at the call's midpoint, itself included) and `service_ms`."""
    keep = service_ms > 0
    groups, k, logs = groups[keep], k[keep], np.log(service_ms[keep])
    n = int(logs.size)
    top = int(k.max()) if n else 0
    if top <= 1:
        return CoresFit(None, False, n, top, math.nan,
                        f"never more than {top} local call(s) in service at once: "
                        "contention not observed")

    def sse(c: int) -> float:
        resid = logs - np.log(contention_factor(k, c))
        means = {g: resid[groups == g].mean() for g in np.unique(groups)}
        return float(sum(((resid[groups == g] - m) ** 2).sum() for g, m in means.items()))

    table = {c: sse(c) for c in range(1, top + 1)}
    best = min(table, key=lambda c: table[c])
    none = table[top]  # c >= the most calls seen at once: no call was slowed
    dof = n - len(np.unique(groups)) - 1
    if best == top or dof <= 0 or table[best] <= 0:
        return CoresFit(None, False, n, top, math.nan,
                        f"service times did not grow with up to {top} local calls at once")
    f_stat = (none - table[best]) / (table[best] / dof)
    p = float(stats.f.sf(f_stat, 1, dof))
    if p >= CORES_P:
        return CoresFit(None, False, n, top, p,
                        f"growth with concurrency not significant (F-test p={p:.3g})")
    return CoresFit(best, True, n, top, p,
                    f"local service time grew as max(1, k/{best}) with k local calls in service "
                    f"(up to {top}; F-test against no growth p={p:.3g})")
