"""A trace read window by window (`read_windows`) against the same trace read whole.

The reference is `read_trace` (tested on its own in test_readers) and, for the expansion of a
window of minutes, the uniform draws laid out by hand with numpy: one generator, cells
minute-major, (m + u) * 60.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jsorc_traces import Arrivals, TraceError, TraceWindows, read_trace, read_windows
from jsorc_traces.spread import spread_window
from tests.jsorc_traces.test_readers import count_tables, invitro_csv, sparse_tables, write

LLM = "azure_llm_inference_2023_code.csv"
SINGLE = "azure_functions_2019_single/invocations.csv"
SAMPLE10 = "azure_functions_2019_sample10/inv.csv"


def joined(trace: TraceWindows, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The windows end to end, after checking each is non-empty and within `window` (or one
    minute of a per-minute trace, which is never split)."""
    parts = list(trace.windows())
    assert parts and all(len(p) for p in parts)
    for p in parts:
        if len(p) > window:
            assert trace.fmt == "azure2019"
            minutes = np.floor((p.ts + trace.origin) / 60.0)
            assert minutes[0] == minutes[-1], "an oversized window is one minute"
    sizes = [p.size for p in parts]
    assert all(s is None for s in sizes) or all(s is not None for s in sizes)
    size = None if sizes[0] is None else np.concatenate([s for s in sizes if s is not None])
    return (np.concatenate([p.ts for p in parts]), np.concatenate([p.key_code for p in parts]),
            size)


def assert_same(trace: TraceWindows, whole: Arrivals, window: int) -> None:
    ts, code, size = joined(trace, window)
    np.testing.assert_array_equal(ts, whole.ts)
    np.testing.assert_array_equal(code, whole.key_code)
    if size is None:
        assert np.isnan(whole.size).all()
    else:
        np.testing.assert_array_equal(size, whole.size)
    assert trace.key_names == whole.key_names
    assert (trace.fmt, trace.spread, trace.source, trace.origin) == \
        (whole.fmt, whole.spread, whole.source, whole.origin)


# --- per-minute counts -----------------------------------------------------------------------


@settings(max_examples=120, deadline=None)
@given(table=st.one_of(count_tables(), sparse_tables()), seed=st.integers(0, 2**32 - 1),
       max_s=st.one_of(st.none(), st.floats(1e-3, 600.0)), window=st.integers(1, 40),
       names=st.sampled_from([("a", "b", "c", "d"), ("b", "a", "b", "a")]))
def test_windows_of_any_table_are_the_whole_read(table: list[list[int]], seed: int,
                                                 max_s: float | None, window: int,
                                                 names: tuple[str, ...]) -> None:
    """Streams starting late, ties, repeated names, idle minutes: the windows joined are the
    whole read, and the names are known before any window is read."""
    keys = list(names[: len(table)])
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "inv.csv", invitro_csv(keys, table))
        for spread in ("uniform", "even"):
            trace = read_windows(path, spread=spread, seed=seed, max_s=max_s, window=window)
            assert_same(trace, read_trace(path, spread=spread, seed=seed, max_s=max_s), window)


@pytest.mark.parametrize("spread", ["uniform", "even"])
@pytest.mark.parametrize("max_s", [None, 59.0, 4000.0])
@pytest.mark.parametrize("window", [1, 100, 5_000])
def test_sample10_windows(traces_dir: Path, spread: str, max_s: float | None,
                          window: int) -> None:
    path = traces_dir / SAMPLE10
    trace = read_windows(path, spread=spread, seed=4, max_s=max_s, window=window)
    assert_same(trace, read_trace(path, spread=spread, seed=4, max_s=max_s), window)


@pytest.mark.parametrize("spread", ["uniform", "even"])
def test_four_hours_of_the_single_function(traces_dir: Path, spread: str) -> None:
    path = traces_dir / SINGLE
    whole = read_trace(path, spread=spread, seed=2, max_s=14_400.0)
    for window in (1, 50_000, 1 << 19):
        trace = read_windows(path, spread=spread, seed=2, max_s=14_400.0, window=window)
        assert_same(trace, whole, window)


def test_the_windows_are_read_afresh_each_time(traces_dir: Path) -> None:
    trace = read_windows(traces_dir / SAMPLE10, seed=1, window=500)
    first, second = joined(trace, 500), joined(trace, 500)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


@settings(max_examples=80, deadline=None)
@given(table=count_tables(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_a_window_of_minutes_takes_its_draws_where_the_minutes_before_end(
        table: list[list[int]], seed: int, data: st.DataObject) -> None:
    counts = np.array(table, dtype=np.int64)
    n_func, n_min = counts.shape
    start = data.draw(st.integers(0, n_min))
    stop = data.draw(st.integers(start, n_min))
    # By hand: one uniform per call of the whole table, cells minute-major.
    u = np.random.default_rng(seed).random(int(counts.sum()))
    at, ts, func = 0, [], []
    for m in range(n_min):
        for f in range(n_func):
            n = int(counts[f, m])
            if start <= m < stop:
                ts += [(m + x) * 60.0 for x in u[at:at + n]]
                func += [f] * n
            at += n
    got_ts, got_func, is_sorted = spread_window(counts, start, stop, spread="uniform",
                                                seed=seed)
    expected_ts, expected_func = np.array(ts, dtype=np.float64), np.array(func, dtype=np.int32)
    if is_sorted:  # one function: sorted by time
        assert n_func == 1
        expected_ts.sort()
    np.testing.assert_array_equal(got_ts, expected_ts)
    np.testing.assert_array_equal(got_func, expected_func)


def test_a_window_outside_the_table_is_refused() -> None:
    with pytest.raises(ValueError, match=r"minutes \[2, 5\) are not within the table's 3"):
        spread_window(np.ones((1, 3), dtype=np.int64), 2, 5, spread="uniform", seed=0)


# --- the formats read whole ------------------------------------------------------------------


def test_llm_windows(traces_dir: Path) -> None:
    path = traces_dir / LLM
    for size in ("total", "context", "generated"):
        whole = read_trace(path, llm_size=size, max_s=1800.0)
        for window in (1, 1000):
            trace = read_windows(path, llm_size=size, max_s=1800.0, window=window)
            assert_same(trace, whole, window)
            assert joined(trace, window)[2] is not None, "the LLM trace has sizes"


@pytest.mark.parametrize(("name", "text"), [
    ("req.csv", "ts,app,size\n5,a,10\n1,b,2\n5.0,c,\n3e0,a,4\n9,b,1\n"),
    ("nosize.csv", "app,ts\nx,2.5\ny,0.5\nx,0.75\n"),
    ("az21.csv", "app,func,end_timestamp,duration\na1,f1,10.5,0.5\na1,f2,10.0,4.0\n"
                 "a2,f3,12.0,0.0\n"),
    ("calls.csv", "ts,request_id,app,action\n10.5,1,a,x\n10.0,0,b,x\n10.2,0,b,y\n12.0,2,a,y\n"),
])
def test_per_arrival_formats(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path, name, text)
    for max_s in (None, 2.1):
        whole = read_trace(path, max_s=max_s)
        for window in (1, 2, 100):
            assert_same(read_windows(path, max_s=max_s, window=window), whole, window)


def test_requests_parquet(tmp_path: Path) -> None:
    path = tmp_path / "req.parquet"
    pd.DataFrame({"ts": [5.0, 1.0, 3.0], "app": ["a", "b", "a"], "size": [1.0, None, 3.0]}
                 ).to_parquet(path)
    assert_same(read_windows(path, window=2), read_trace(path), 2)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [0, -3, 1.5, True])
def test_a_window_that_is_no_count_of_arrivals_is_refused(traces_dir: Path,
                                                          window: object) -> None:
    with pytest.raises(ValueError, match=f"window must be .* got {window!r}"):
        read_windows(traces_dir / SAMPLE10, window=window)  # type: ignore[arg-type]


@pytest.mark.parametrize(("argument", "value"), [("fmt", "azure2020"), ("spread", "poisson"),
                                                 ("llm_size", "all"), ("max_s", 0.0)])
def test_bad_arguments_give_read_traces_message(traces_dir: Path, argument: str,
                                                value: object) -> None:
    path = traces_dir / SAMPLE10
    with pytest.raises(ValueError) as old:
        read_trace(path, **{argument: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError) as new:
        read_windows(path, **{argument: value})  # type: ignore[arg-type]
    assert new.type is old.type is ValueError
    assert str(new.value) == str(old.value)


def test_an_empty_per_minute_trace_is_an_error(tmp_path: Path) -> None:
    for name, text in (("zeros.csv", invitro_csv(["f"], [[0, 0]])),
                       ("header_only.csv", invitro_csv(["f"], [[0]]).splitlines()[0] + "\n")):
        path = write(tmp_path, name, text)
        with pytest.raises(TraceError) as old:
            read_trace(path)
        with pytest.raises(TraceError) as new:
            read_windows(path)
        assert str(new.value) == str(old.value)
        assert "no arrivals" in str(new.value)
