"""`LogSketch` against numpy on the raw values: exact counts and means, and quantiles within
the stated bound |sketch - exact| <= alpha * max(x_(floor h), x_(ceil h)), h = q (n - 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jsorc_sim.sketch import MIN_VALUE, LogSketch

QS = np.array([0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0])


def assert_within_bound(sketch: LogSketch, values: np.ndarray) -> None:
    ordered = np.sort(values)
    h = QS * (len(values) - 1)
    around = np.maximum(ordered[np.floor(h).astype(int)], ordered[np.ceil(h).astype(int)])
    exact = np.quantile(values, QS)
    estimate = sketch.quantiles(QS)
    # A hair of slack for rounding in log() at a bucket's edge (both neighbours are alpha off);
    # values below MIN_VALUE count as 0, within MIN_VALUE.
    bound = sketch.relative_error * around * (1 + 1e-9) + MIN_VALUE
    assert np.all(np.abs(estimate - exact) <= bound), (QS, estimate, exact, bound)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3000),
       kind=st.sampled_from(["lognormal", "exponential"]),
       alpha=st.sampled_from([0.005, 0.01, 0.05]))
def test_quantiles_are_within_the_relative_bound(seed: int, n: int, kind: str,
                                                 alpha: float) -> None:
    rng = np.random.default_rng(seed)
    values = rng.lognormal(3.0, 1.5, n) if kind == "lognormal" else rng.exponential(100.0, n)
    sketch = LogSketch.of(values, alpha)
    assert sketch.count == n
    assert sketch.mean == pytest.approx(float(values.mean()), rel=1e-12)
    assert_within_bound(sketch, values)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), parts=st.integers(2, 6))
def test_merging_sketches_of_parts_is_the_sketch_of_the_whole(seed: int, parts: int) -> None:
    rng = np.random.default_rng(seed)
    # Parts of very different scales, so that merging has to grow the bucket array both ways.
    chunks = [rng.lognormal(rng.uniform(-3, 8), 1.0, rng.integers(1, 500)) for _ in range(parts)]
    whole = np.concatenate(chunks)
    merged = LogSketch.merged(LogSketch.of(c) for c in chunks)
    added = LogSketch()
    for c in chunks:
        added.add(c)
    direct = LogSketch.of(whole)
    for sketch in (merged, added):
        assert sketch.count == len(whole)
        np.testing.assert_array_equal(sketch.quantiles(QS), direct.quantiles(QS))
        assert sketch.total == pytest.approx(float(whole.sum()), rel=1e-12)
    assert_within_bound(merged, whole)


def test_zeros_and_tiny_values_count_as_zero_and_the_ends_are_exact() -> None:
    values = np.array([0.0, 0.0, MIN_VALUE / 10, 5.0, 7.0, 1000.0])
    sketch = LogSketch.of(values)
    assert sketch.zeros == 3
    q = sketch.quantiles([0.0, 1.0])
    assert list(q) == [0.0, 1000.0], "clamped to the exact minimum and maximum"
    assert_within_bound(sketch, values)


def test_memory_is_bounded_by_the_range_not_the_count() -> None:
    rng = np.random.default_rng(1)
    sketch = LogSketch()
    for _ in range(20):
        sketch.add(rng.uniform(1.0, 1000.0, 100_000))
    # ln(1000) / ln((1 + a) / (1 - a)) buckets, a = 0.005: about 691.
    assert sketch.count == 2_000_000
    assert sketch.nbytes <= 8 * (math.log(1000.0) / math.log(1.005 / 0.995) + 2)


def test_an_empty_sketch_gives_nan() -> None:
    assert np.isnan(LogSketch().quantiles([0.5])).all()
    assert math.isnan(LogSketch().mean)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_values_it_cannot_count_are_refused_naming_them(bad: float) -> None:
    with pytest.raises(ValueError, match=repr(bad).replace("inf", "inf")):
        LogSketch().add(np.array([1.0, bad]))


def test_sketches_of_different_accuracy_do_not_merge() -> None:
    with pytest.raises(ValueError, match=r"relative error 0\.01"):
        LogSketch(0.005).merge(LogSketch.of([1.0], 0.01))
    with pytest.raises(ValueError, match="relative_error must be in"):
        LogSketch(1.5)
