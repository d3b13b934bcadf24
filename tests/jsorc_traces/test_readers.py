"""Trace readers against the real traces in ../shared/traces and small files made here.

Expected values are computed independently of the reader (with the csv module and plain
Python), so a shared mistake in pandas/Arrow parsing cannot hide in both.
"""

from __future__ import annotations

import csv
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jsorc_traces.readers import (
    FORMATS,
    SPREADS,
    Arrivals,
    TraceError,
    detect_format,
    read_trace,
)

LLM = "azure_llm_inference_2023_code.csv"
SINGLE = "azure_functions_2019_single/invocations.csv"
SAMPLE10 = "azure_functions_2019_sample10/inv.csv"
# The README (and the brief) say 8,818 calls, but the file holds 8,819 data rows: `wc -l`
# reports 8,818 because its last line has no newline. Counted independently below as well.
LLM_CALLS = 8819


# --- independent parsing ---------------------------------------------------------------------


def csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def minute_table(path: Path) -> tuple[list[str], np.ndarray]:
    """(HashFunction per row, counts[function, minute]) of an azure2019 file, via csv."""
    header, *rows = csv_rows(path)
    n_meta = 4 if header[0] == "HashOwner" else 3
    key_at = header.index("HashFunction")
    keys = [row[key_at] for row in rows]
    counts = np.array([[int(x) for x in row[n_meta:]] for row in rows], dtype=np.int64)
    return keys, counts


def counts_by_minute(arr: Arrivals, keys: list[str], n_min: int) -> np.ndarray:
    """Arrivals per (key, minute of the trace's clock): the shift undone with `origin`."""
    minute = np.floor((arr.ts + arr.origin) / 60.0).astype(np.int64)
    assert minute.min() >= 0
    assert minute.max() < n_min
    index = {k: i for i, k in enumerate(keys)}
    func = np.array([index[k] for k in arr.key], dtype=np.int64)
    flat = np.bincount(func * n_min + minute, minlength=len(keys) * n_min)
    return flat.reshape(len(keys), n_min)


def unix_seconds(stamp: str) -> float:
    """'2023-11-16 18:17:03.9799600' as UTC Unix seconds (7 digits: beyond strptime's %f)."""
    whole, _, frac = stamp.partition(".")
    t = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return t.timestamp() + (int(frac) / 10 ** len(frac) if frac else 0.0)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def assert_sorted_from_zero(arr: Arrivals) -> None:
    assert arr.ts.dtype == np.float64
    assert arr.ts[0] == 0.0
    assert np.all(np.diff(arr.ts) >= 0)


def invitro_csv(keys: list[str], counts: list[list[int]]) -> str:
    n_min = len(counts[0])
    lines = [
        ",".join(
            ["HashFunction", "HashApp", "HashOwner"] + [f"minute_{m + 1}" for m in range(n_min)]
        )
    ]
    lines += [
        ",".join([k, "app", "owner", *map(str, row)]) for k, row in zip(keys, counts, strict=True)
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def single_uniform(traces_dir: Path) -> Arrivals:
    # 20.8 million arrivals: read once for the tests that only look at it.
    return read_trace(traces_dir / SINGLE)


# --- the real traces -------------------------------------------------------------------------


def test_llm_trace_reads_every_call(traces_dir: Path) -> None:
    path = traces_dir / LLM
    header, *rows = csv_rows(path)
    assert header == ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
    assert len(rows) == LLM_CALLS

    arr = read_trace(path)

    assert (len(arr), arr.fmt, arr.spread, arr.source) == (
        LLM_CALLS,
        "azure_llm2023",
        "exact",
        str(path),
    )
    assert_sorted_from_zero(arr)
    assert arr.keys() == [""]
    first = unix_seconds(rows[0][0])
    assert arr.origin == pytest.approx(first, abs=1e-6)
    # The file is in time order, so arrival i is row i.
    expected_ts = [unix_seconds(r[0]) - first for r in rows]
    np.testing.assert_allclose(arr.ts, expected_ts, atol=1e-6)
    np.testing.assert_array_equal(arr.size, [int(r[1]) + int(r[2]) for r in rows])


@pytest.mark.parametrize(
    ("llm_size", "columns"), [("total", (1, 2)), ("context", (1,)), ("generated", (2,))]
)
def test_llm_size_choices(traces_dir: Path, llm_size: str, columns: tuple[int, ...]) -> None:
    path = traces_dir / LLM
    rows = csv_rows(path)[1:]
    arr = read_trace(path, llm_size=llm_size)
    np.testing.assert_array_equal(arr.size, [sum(int(r[c]) for c in columns) for r in rows])


def test_llm_size_unknown_is_value_error(traces_dir: Path) -> None:
    with pytest.raises(ValueError, match="'prompt'") as err:
        read_trace(traces_dir / LLM, llm_size="prompt")
    assert "total" in str(err.value) and "generated" in str(err.value)


def test_azure2019_single_counts_preserved(traces_dir: Path, single_uniform: Arrivals) -> None:
    keys, counts = minute_table(traces_dir / SINGLE)
    assert counts.shape == (1, 1440)

    arr = single_uniform
    assert len(arr) == int(counts.sum()) == 20_820_188
    assert (arr.fmt, arr.spread) == ("azure2019", "uniform")
    assert_sorted_from_zero(arr)
    assert arr.keys() == keys
    assert np.isnan(arr.size).all()
    np.testing.assert_array_equal(counts_by_minute(arr, keys, 1440), counts)


@pytest.mark.parametrize("spread", SPREADS)
def test_azure2019_sample10_counts_preserved(traces_dir: Path, spread: str) -> None:
    path = traces_dir / SAMPLE10
    keys, counts = minute_table(path)
    assert counts.shape[0] == 10

    arr = read_trace(path, spread=spread)

    assert len(arr) == int(counts.sum())
    assert (arr.fmt, arr.spread) == ("azure2019", spread)
    assert_sorted_from_zero(arr)
    # Functions in order of their first call; those never called do not appear.
    called = [k for k in keys if counts[keys.index(k)].sum() > 0]
    assert sorted(arr.keys()) == sorted(called)
    np.testing.assert_array_equal(counts_by_minute(arr, keys, counts.shape[1]), counts)


def test_uniform_spread_same_seed_same_arrivals(traces_dir: Path) -> None:
    path = traces_dir / SAMPLE10
    a, b = read_trace(path, seed=7), read_trace(path, seed=7)
    np.testing.assert_array_equal(a.ts, b.ts)
    np.testing.assert_array_equal(a.key, b.key)
    assert a.origin == b.origin


def test_uniform_spread_other_seed_other_times_same_counts(traces_dir: Path) -> None:
    path = traces_dir / SAMPLE10
    keys, counts = minute_table(path)
    a, b = read_trace(path, seed=1), read_trace(path, seed=2)
    assert len(a) == len(b)
    assert not np.array_equal(a.ts, b.ts)
    for arr in (a, b):
        np.testing.assert_array_equal(counts_by_minute(arr, keys, counts.shape[1]), counts)


def test_even_spread_is_deterministic(traces_dir: Path) -> None:
    path = traces_dir / SAMPLE10
    a = read_trace(path, spread="even", seed=1)
    b = read_trace(path, spread="even", seed=2)  # the seed plays no part
    np.testing.assert_array_equal(a.ts, b.ts)
    np.testing.assert_array_equal(a.key, b.key)


def test_even_spread_places_calls_at_cell_midpoints(tmp_path: Path) -> None:
    # Minute 1: 2 calls at 15, 45 s; minute 3: 3 calls at 130, 150, 170 s.
    path = write(tmp_path, "even.csv", invitro_csv(["f"], [[2, 0, 3]]))
    arr = read_trace(path, spread="even")
    assert arr.origin == 15.0
    np.testing.assert_allclose(arr.ts + arr.origin, [15, 45, 130, 150, 170])


def test_even_spread_ties_keep_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, "ties.csv", invitro_csv(["b", "a"], [[1, 2], [1, 2]]))
    arr = read_trace(path, spread="even")
    np.testing.assert_array_equal(arr.ts + arr.origin, [30, 30, 75, 75, 105, 105])
    assert list(arr.key) == ["b", "a"] * 3
    assert arr.keys() == ["b", "a"]


@pytest.mark.parametrize(
    ("name", "fmt"), [(LLM, "azure_llm2023"), (SINGLE, "azure2019"), (SAMPLE10, "azure2019")]
)
def test_detect_real_formats(traces_dir: Path, name: str, fmt: str) -> None:
    assert detect_format(traces_dir / name) == fmt
    assert detect_format(str(traces_dir / name)) == fmt


def test_detect_generated_formats(tmp_path: Path) -> None:
    csv_path = write(tmp_path, "r.csv", "app,ts\nx,1\n")
    parquet = tmp_path / "r.parquet"
    pd.DataFrame({"ts": [1.0], "app": ["x"]}).to_parquet(parquet)
    az21 = write(tmp_path, "a.csv", "app,func,end_timestamp,duration\na,f,2.0,1.0\n")
    assert detect_format(csv_path) == "requests"
    assert detect_format(parquet) == "requests"
    assert detect_format(az21) == "azure2021"
    assert {read_trace(p).fmt for p in (csv_path, parquet, az21)} == {"requests", "azure2021"}
    calls = tmp_path / "calls.parquet"
    pd.DataFrame({"ts": [1.0], "request_id": [0], "app": ["x"], "action": ["y"]}).to_parquet(calls)
    assert detect_format(calls) == "calls"
    assert set(FORMATS) == {"requests", "azure2019", "azure2021", "azure_llm2023", "calls"}


# --- the generic requests format and azure2021 -----------------------------------------------


REQUESTS = {"ts": [5.0, 1.0, 5.0, 3.0], "app": ["a", "b", "c", "a"], "size": [10.0, 2.0, None, 4.0]}


def check_requests(arr: Arrivals) -> None:
    # Sorted stably (the two 5.0 keep file order a, c), shifted by the first arrival (1.0).
    assert (arr.fmt, arr.spread, arr.origin) == ("requests", "exact", 1.0)
    np.testing.assert_array_equal(arr.ts, [0.0, 2.0, 4.0, 4.0])
    assert list(arr.key) == ["b", "a", "a", "c"]
    np.testing.assert_array_equal(arr.size, [2.0, 4.0, 10.0, np.nan])
    assert arr.keys() == ["b", "a", "c"]


def test_requests_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "req.csv", "ts,app,size\n5,a,10\n1,b,2\n5.0,c,\n3e0,a,4\n")
    check_requests(read_trace(path, "requests"))
    check_requests(read_trace(path))


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_requests_parquet(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"req{suffix}"
    pd.DataFrame(REQUESTS).to_parquet(path)
    check_requests(read_trace(path))


def test_requests_without_size(tmp_path: Path) -> None:
    path = write(tmp_path, "nosize.csv", "app,ts\nx,2.5\ny,0.5\n")
    arr = read_trace(path)
    np.testing.assert_array_equal(arr.ts, [0.0, 2.0])
    assert np.isnan(arr.size).all()


def test_azure2021_arrival_is_end_minus_duration(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "az21.csv",
        "app,func,end_timestamp,duration\n"
        "a1,f1,10.5,0.5\n"  # arrives at 10.0
        "a1,f2,10.0,4.0\n"  # arrives at 6.0: first, despite ending last but one
        "a2,f3,12.0,0.0\n",  # arrives at 12.0
    )
    arr = read_trace(path)
    assert (arr.fmt, arr.spread, arr.origin) == ("azure2021", "exact", 6.0)
    np.testing.assert_allclose(arr.ts, [0.0, 4.0, 6.0])
    assert list(arr.key) == ["f2", "f1", "f3"]
    assert np.isnan(arr.size).all()


# --- max_s and until -------------------------------------------------------------------------


def test_max_s_matches_until(traces_dir: Path) -> None:
    path = traces_dir / SAMPLE10
    full = read_trace(path, seed=3)
    cut = read_trace(path, seed=3, max_s=3600.0)
    assert 0 < len(cut) < len(full)
    assert cut.ts.max() < 3600.0
    assert len(cut) == int(np.sum(full.ts < 3600.0))
    later = full.until(3600.0)
    np.testing.assert_array_equal(cut.ts, later.ts)
    np.testing.assert_array_equal(cut.key, later.key)
    np.testing.assert_array_equal(cut.size, later.size)
    np.testing.assert_array_equal(cut.key_code, later.key_code)
    assert cut.key_names == later.key_names == full.key_names
    assert (later.fmt, later.spread, later.source, later.origin) == (
        full.fmt,
        full.spread,
        full.source,
        full.origin,
    )


def test_until_is_strict_and_keeps_first_arrival(tmp_path: Path) -> None:
    arr = read_trace(write(tmp_path, "r.csv", "ts,app\n0,a\n1,b\n2,c\n"))
    assert list(arr.until(2.0).key) == ["a", "b"]
    assert list(arr.until(1e-9).key) == ["a"]
    assert arr.until(99.0) is arr
    assert len(read_trace(arr.source, max_s=2.0)) == 2
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="max_s"):
            arr.until(bad)
        with pytest.raises(ValueError, match="max_s"):
            read_trace(arr.source, max_s=bad)


def test_arrivals_arrays_are_read_only(tmp_path: Path) -> None:
    arr = read_trace(write(tmp_path, "r.csv", "ts,app\n0,a\n1,b\n"))
    with pytest.raises(ValueError, match="read-only"):
        arr.ts[0] = 5.0
    assert len(arr) == 2


# --- bad input -------------------------------------------------------------------------------


def raises_trace_error(path: Path, *parts: str, fmt: str = "auto") -> str:
    with pytest.raises(TraceError) as err:
        read_trace(path, fmt)
    message = str(err.value)
    assert path.name in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def test_malformed_number_names_line_column_value(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", "ts,app\n1,a\n2,b\nabc,c\n4,d\n")
    raises_trace_error(path, "bad.csv:4:", "column 'ts'", "'abc'")


def test_non_finite_number_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "inf.csv", "ts,app\n1,a\ninf,b\n")
    raises_trace_error(path, "inf.csv:3:", "'inf'")


def test_negative_count_names_line_column_value(tmp_path: Path) -> None:
    path = write(tmp_path, "neg.csv", invitro_csv(["f", "g"], [[1, 2, 3], [4, -3, 5]]))
    raises_trace_error(path, "neg.csv:3:", "column 'minute_2'", "'-3'")


def test_fractional_count_is_an_error(tmp_path: Path) -> None:
    text = "HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1,2.5\n"
    raises_trace_error(write(tmp_path, "frac.csv", text), "frac.csv:2:", "column '2'", "'2.5'")


def test_wrong_number_of_fields_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "short.csv", "ts,app,size\n1,a,1\n2,b\n3,c,3\n")
    raises_trace_error(path, "short.csv:3:", "expected 3 fields, got 2")
    # Too many fields on the first data row (which pandas would take as an index column).
    path = write(tmp_path, "long.csv", "ts,app\n1,a,9\n2,b\n")
    raises_trace_error(path, "long.csv:2:", "expected 2 fields, got 3")


def test_earliest_problem_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "two.csv", "ts,app\n1,a\n2,\n3,c,x\nzz,d\n")
    raises_trace_error(path, "two.csv:3:", "column 'app'")
    path = write(tmp_path, "two2.csv", "ts,app\n1,a\n2,b,x\nzz,d\n")
    raises_trace_error(path, "two2.csv:3:", "expected 2 fields")


def test_blank_line_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "blank.csv", "ts,app\n1,a\n\n3,c\n")
    raises_trace_error(path, "blank.csv:3:", "blank line")


def test_bad_llm_timestamp(tmp_path: Path) -> None:
    text = (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,1,2\n"
        "2023-13-16 18:17:04.0000000,1,2\n"
    )
    raises_trace_error(
        write(tmp_path, "llm.csv", text),
        "llm.csv:3:",
        "column 'TIMESTAMP'",
        "'2023-13-16 18:17:04.0000000'",
    )
    text = "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n"
    raises_trace_error(write(tmp_path, "llm2.csv", text), "llm2.csv:2:", "'yesterday'")


def test_negative_duration_azure2021(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "app,func,end_timestamp,duration\na,f,3,1\na,f,3,-1\n")
    raises_trace_error(path, "d.csv:3:", "column 'duration'", "'-1'")


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"ts": ["1", "x"], "app": ["a", "b"]}).to_parquet(path)
    raises_trace_error(path, "row 2", "column 'ts'", "'x'")


def test_wrong_azure2019_header(tmp_path: Path) -> None:
    path = write(
        tmp_path, "hdr.csv", "HashFunction,HashApp,HashOwner,minute_1,minute_3\nf,a,o,1,2\n"
    )
    raises_trace_error(path, "hdr.csv:1:", "column 5: expected 'minute_2', got 'minute_3'")
    path = write(tmp_path, "hdr2.csv", "HashApp,HashFunction,1,2\na,f,1,2\n")
    raises_trace_error(path, "hdr2.csv:1:", "HashOwner", fmt="azure2019")


def test_header_fitting_no_format(tmp_path: Path) -> None:
    path = write(tmp_path, "what.csv", "when,who\n1,a\n")
    message = raises_trace_error(path, "what.csv:1:", "'when,who'")
    assert all(f in message for f in FORMATS)
    with pytest.raises(TraceError, match=r"what\.csv"):
        detect_format(path)


def test_unknown_extra_column_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "extra.csv", "ts,app,colour,size\n1,a,red,2\n")
    raises_trace_error(path, "extra.csv:1:", "unknown column(s) 'colour'")
    parquet = tmp_path / "extra.parquet"
    pd.DataFrame({"ts": [1.0], "app": ["a"], "colour": ["red"]}).to_parquet(parquet)
    raises_trace_error(parquet, "'colour'")


def test_missing_required_column(tmp_path: Path) -> None:
    raises_trace_error(
        write(tmp_path, "noapp.csv", "ts,size\n1,2\n"), "noapp.csv:1:", "missing column(s) 'app'"
    )
    raises_trace_error(
        write(tmp_path, "nots.csv", "app\na\n"), "missing column(s) 'ts'", fmt="requests"
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.csv"
    raises_trace_error(path, "no such file")
    with pytest.raises(TraceError, match=r"nowhere\.csv"):
        detect_format(path)


def test_empty_traces(tmp_path: Path) -> None:
    raises_trace_error(write(tmp_path, "header_only.csv", "ts,app\n"), "no arrivals")
    raises_trace_error(write(tmp_path, "zeros.csv", invitro_csv(["f"], [[0, 0]])), "no arrivals")
    raises_trace_error(write(tmp_path, "nothing.csv", ""), "empty file")


@pytest.mark.parametrize(("argument", "value"), [("fmt", "azure2020"), ("spread", "poisson")])
def test_bad_choice_is_value_error(traces_dir: Path, argument: str, value: str) -> None:
    path = traces_dir / SAMPLE10
    with pytest.raises(ValueError) as err:
        if argument == "fmt":
            read_trace(path, fmt=value)
        else:
            read_trace(path, spread=value)
    assert err.type is ValueError  # a bad argument, not a bad file
    message = str(err.value)
    assert repr(value) in message
    valid = FORMATS if argument == "fmt" else SPREADS
    assert all(v in message for v in valid)


# --- property --------------------------------------------------------------------------------


@st.composite
def count_tables(draw: st.DrawFn) -> list[list[int]]:
    n_func = draw(st.integers(1, 4))
    n_min = draw(st.integers(1, 8))
    row = st.lists(st.integers(0, 25), min_size=n_min, max_size=n_min)
    table = draw(st.lists(row, min_size=n_func, max_size=n_func))
    if sum(map(sum, table)) == 0:
        table[0][draw(st.integers(0, n_min - 1))] = 1  # an empty trace is an error, not a case
    return table


@settings(max_examples=60, deadline=None)
@given(table=count_tables(), seed=st.integers(0, 2**32 - 1))
def test_every_count_is_preserved(table: list[list[int]], seed: int) -> None:
    keys = [f"fn{i}" for i in range(len(table))]
    counts = np.array(table, dtype=np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "inv.csv", invitro_csv(keys, table))
        for spread in SPREADS:
            arr = read_trace(path, spread=spread, seed=seed)
            assert len(arr) == int(counts.sum())
            assert_sorted_from_zero(arr)
            np.testing.assert_array_equal(counts_by_minute(arr, keys, counts.shape[1]), counts)


# ----------------------------------------------------------------------------- call tables


def test_a_call_table_replays_one_arrival_per_request_at_its_first_call(tmp_path: Path) -> None:
    calls = tmp_path / "calls.csv"
    calls.write_text(
        "ts,request_id,app,action,placement,latency_ms,ok\n"
        "10.5,1,a,x,local,3,True\n"
        "10.0,0,b,x,remote,4,True\n"
        "10.2,0,b,y,remote,4,True\n"  # request 0's second call
        "12.0,2,a,y,local,1,False\n"
    )
    arrivals = read_trace(calls)
    assert arrivals.fmt == "calls"
    assert arrivals.ts.tolist() == [0.0, 0.5, 2.0]
    assert arrivals.key.tolist() == ["b", "a", "a"]
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,request_id,action\n1,0,x\n")
    with pytest.raises(TraceError, match=r"bad\.csv:1: a call table needs column\(s\) 'app'"):
        read_trace(bad, "calls")
    broken = tmp_path / "broken.csv"
    broken.write_text("ts,request_id,app,action\n1,0,a,x\nsoon,1,a,x\n")
    with pytest.raises(TraceError, match=r"broken\.csv:3: column 'ts'"):
        read_trace(broken)


# ----------------------------------------------------------------------------- keys as codes


def assert_same_arrivals(a: Arrivals, b: Arrivals) -> None:
    np.testing.assert_array_equal(a.ts, b.ts)
    np.testing.assert_array_equal(a.key_code, b.key_code)
    np.testing.assert_array_equal(a.size, b.size)
    assert a.key_names == b.key_names
    assert (a.fmt, a.spread, a.source, a.origin) == (b.fmt, b.spread, b.source, b.origin)


@pytest.mark.parametrize("spread", SPREADS)
def test_keys_are_codes_into_names_in_order_of_first_arrival(traces_dir: Path,
                                                             spread: str) -> None:
    arr = read_trace(traces_dir / SAMPLE10, spread=spread, seed=4)
    assert arr.key_code.dtype == np.int32
    assert arr.key_code.nbytes == 4 * len(arr)
    key = arr.key
    assert key.dtype == object and key.shape == arr.ts.shape
    assert [str(k) for k in pd.unique(key)] == arr.keys() == list(arr.key_names)
    # Arrival i's name, looked up independently of the codes: through the minute table.
    keys, counts = minute_table(traces_dir / SAMPLE10)
    np.testing.assert_array_equal(counts_by_minute(arr, keys, counts.shape[1]), counts)


def test_a_window_keeps_every_name_of_the_trace(tmp_path: Path) -> None:
    arr = read_trace(write(tmp_path, "r.csv", "ts,app\n0,a\n1,b\n2,c\n"))
    cut = arr.until(1.5)
    assert cut.key.tolist() == ["a", "b"]
    assert cut.keys() == ["a", "b", "c"], "c has no arrival in the window but is a stream"
    assert read_trace(arr.source, max_s=1.5).keys() == ["a", "b", "c"]


def test_a_repeated_hash_function_is_one_stream(tmp_path: Path) -> None:
    path = write(tmp_path, "dup.csv", invitro_csv(["g", "f", "g"], [[0, 1], [1, 0], [1, 1]]))
    arr = read_trace(path, spread="even")
    assert arr.keys() == ["f", "g"]
    np.testing.assert_allclose(arr.ts + arr.origin, [30, 30, 90, 90])
    assert arr.key.tolist() == ["f", "g", "g", "g"]


def test_traces_without_sizes_hold_no_size_per_arrival(single_uniform: Arrivals) -> None:
    assert np.isnan(single_uniform.size).all()
    assert single_uniform.size.strides == (0,), "one nan seen at every arrival"


def test_a_window_of_the_day_is_the_days_start(traces_dir: Path,
                                               single_uniform: Arrivals) -> None:
    cut = read_trace(traces_dir / SINGLE, max_s=7200.0)
    assert 1_000_000 < len(cut) < len(single_uniform) // 10
    assert_same_arrivals(cut, single_uniform.until(7200.0))


@pytest.mark.parametrize("spread", SPREADS)
@pytest.mark.parametrize("max_s", [1.0, 59.0, 600.0, 4000.0, 90000.0])
def test_a_window_of_sample10_is_its_start(traces_dir: Path, spread: str, max_s: float) -> None:
    path = traces_dir / SAMPLE10
    full = read_trace(path, spread=spread, seed=9)
    assert_same_arrivals(read_trace(path, spread=spread, seed=9, max_s=max_s), full.until(max_s))


@st.composite
def sparse_tables(draw: st.DrawFn) -> list[list[int]]:
    """Mostly empty cells, so streams start late and several start in the same minute."""
    n_func = draw(st.integers(1, 4))
    n_min = draw(st.integers(1, 12))
    cell = st.sampled_from([0, 0, 0, 0, 1, 2, 7])
    table = draw(st.lists(st.lists(cell, min_size=n_min, max_size=n_min),
                          min_size=n_func, max_size=n_func))
    if sum(map(sum, table)) == 0:
        table[0][draw(st.integers(0, n_min - 1))] = 1
    return table


@settings(max_examples=150, deadline=None)
@given(table=st.one_of(count_tables(), sparse_tables()), seed=st.integers(0, 2**32 - 1),
       max_s=st.floats(1e-3, 600.0), names=st.sampled_from([("a", "b", "c", "d"),
                                                            ("b", "a", "b", "a")]))
def test_a_window_is_the_whole_traces_start(table: list[list[int]], seed: int, max_s: float,
                                            names: tuple[str, ...]) -> None:
    """Whatever the counts (streams starting late, ties, repeated names), reading a window
    gives the whole trace's arrivals there and its names in the same order."""
    keys = list(names[: len(table)])
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "inv.csv", invitro_csv(keys, table))
        for spread in SPREADS:
            full = read_trace(path, spread=spread, seed=seed)
            assert full.keys() == [str(k) for k in pd.unique(full.key)]
            assert_same_arrivals(read_trace(path, spread=spread, seed=seed, max_s=max_s),
                                 full.until(max_s))


@pytest.mark.parametrize("seed", range(6))
def test_streams_first_called_in_one_minute_past_the_window_keep_their_order(
        tmp_path: Path, seed: int) -> None:
    # Three streams first called in minute 5, far past a 1 s window: which comes first
    # depends on the uniform draws of that minute, which the window never expands.
    path = write(tmp_path, "late.csv", invitro_csv(["a", "b", "c", "d"],
                                                   [[1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 3, 1],
                                                    [0, 0, 0, 0, 0, 4, 0], [0, 0, 0, 0, 0, 2, 9]]))
    for spread in SPREADS:
        full = read_trace(path, spread=spread, seed=seed)
        cut = read_trace(path, spread=spread, seed=seed, max_s=1.0)
        assert len(cut) == 1
        assert cut.keys() == full.keys() == [str(k) for k in pd.unique(full.key)]
