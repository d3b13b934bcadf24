"""Azure Functions files as they come: minute headers that are a window of a day or several
days, the 2021 trace over several days, and the durations and memory files.

Fixtures are written here from the real traces' rows; expected values come from the csv
module and numpy on the raw cells, not from the readers.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from jsorc_traces.profiles import DURATION_LEVELS, read_durations, read_memory
from jsorc_traces.readers import TraceError, read_stream_apps, read_trace
from jsorc_traces.windows import read_windows

SINGLE = "azure_functions_2019_single/invocations.csv"
SAMPLE10 = "azure_functions_2019_sample10"


def rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def write_rows(path: Path, table: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(table)
    return path


def sample10_counts(traces_dir: Path) -> tuple[list[list[str]], np.ndarray]:
    """(meta cells HashFunction, HashApp, HashOwner per row, counts[row, minute 1..1440])."""
    _, *body = rows(traces_dir / SAMPLE10 / "inv.csv")
    return [r[:3] for r in body], np.array([[int(x) for x in r[3:]] for r in body])


def windowed(tmp_path: Path, traces_dir: Path, first: int, last: int, *,
             prefix: str = "") -> tuple[Path, np.ndarray]:
    """The sample's rows, minutes first..last, in the original header; and those counts."""
    meta, counts = sample10_counts(traces_dir)
    part = counts[:, first - 1:last]
    header = ["HashOwner", "HashApp", "HashFunction", "Trigger",
              *(f"{prefix}{m}" for m in range(first, last + 1))]
    table = [header] + [[m[2], m[1], m[0], "http", *map(str, c)]
                        for m, c in zip(meta, part, strict=True)]
    return write_rows(tmp_path / f"w{first}_{last}.csv", table), part


def per_minute(ts: np.ndarray, origin: float, first_minute: int, n: int) -> np.ndarray:
    """Arrivals per file column, from times on the trace's clock (minute k at 60 (k - 1))."""
    column = np.floor((ts + origin) / 60.0).astype(np.int64) - (first_minute - 1)
    assert column.min() >= 0 and column.max() < n
    return np.bincount(column, minlength=n)


@pytest.mark.parametrize("prefix", ["", "minute_"])
def test_a_window_of_the_day_reads_with_minutes_on_the_days_clock(
        tmp_path: Path, traces_dir: Path, prefix: str) -> None:
    path, part = windowed(tmp_path, traces_dir, 480, 959, prefix=prefix)
    arrivals = read_trace(path, seed=3)
    assert arrivals.fmt == "azure2019"
    assert len(arrivals) == int(part.sum())
    assert arrivals.ts[0] == 0.0  # time 0 stays the file's first arrival
    busy = int(np.flatnonzero(part.sum(axis=0))[0])
    assert 60.0 * (479 + busy) <= arrivals.origin < 60.0 * (480 + busy)
    got = per_minute(arrivals.ts, arrivals.origin, 480, part.shape[1])
    np.testing.assert_array_equal(got, part.sum(axis=0))
    # Window by window, the same arrivals and the same origin.
    windows = read_windows(path, seed=3, window=500)
    assert windows.origin == arrivals.origin
    ts = np.concatenate([w.ts for w in windows.windows()])
    np.testing.assert_array_equal(ts, arrivals.ts)


def test_a_row_of_the_single_function_day_cut_to_a_window(tmp_path: Path,
                                                            traces_dir: Path) -> None:
    header, row = rows(traces_dir / SINGLE)
    cut = [*header[:4], *header[4 + 479:4 + 489]], [*row[:4], *row[4 + 479:4 + 489]]
    path = write_rows(tmp_path / "single480.csv", list(cut))
    arrivals = read_trace(path, spread="even")
    expected = np.array([int(x) for x in row[4 + 479:4 + 489]])
    np.testing.assert_array_equal(per_minute(arrivals.ts, arrivals.origin, 480, 10), expected)


def test_several_days_of_minutes(tmp_path: Path, traces_dir: Path) -> None:
    meta, counts = sample10_counts(traces_dir)
    days = np.concatenate([counts, counts[:, ::-1], counts], axis=1)  # 4,320 minutes
    header = ["HashFunction", "HashApp", "HashOwner", *(f"minute_{m}" for m in range(1, 4321))]
    path = write_rows(tmp_path / "three_days.csv",
                      [header] + [[*m, *map(str, c)] for m, c in zip(meta, days, strict=True)])
    arrivals = read_trace(path, seed=1)
    assert len(arrivals) == int(days.sum())
    got = per_minute(arrivals.ts, arrivals.origin, 1, 4320)
    np.testing.assert_array_equal(got, days.sum(axis=0))
    assert arrivals.origin + arrivals.ts[-1] > 2 * 86400  # the third day is there


@pytest.mark.parametrize(("minutes", "column", "want", "got"), [
    (["480", "481", "483"], 7, "'482'", "'483'"),
    (["480", "479"], 6, "'481'", "'479'"),
    (["480", "480"], 6, "'481'", "'480'"),
    (["minute_5", "6"], 6, "'minute_6'", "'6'"),
])
def test_minute_headers_that_skip_or_go_back_name_the_first_bad_column(
        tmp_path: Path, minutes: list[str], column: int, want: str, got: str) -> None:
    path = write_rows(tmp_path / "bad.csv", [["HashOwner", "HashApp", "HashFunction", "Trigger",
                                              *minutes], ["o", "a", "f", "http",
                                                          *("1" * len(minutes))]])
    with pytest.raises(TraceError) as info:
        read_trace(path)
    message = str(info.value)
    assert f"bad.csv:1: column {column}: expected {want}, got {got}" in message
    assert "\n" not in message


@pytest.mark.parametrize("first", ["0", "x", "-1", "01"])
def test_a_first_minute_that_is_not_a_minute_number(tmp_path: Path, first: str) -> None:
    path = write_rows(tmp_path / "bad.csv", [["HashFunction", "HashApp", "HashOwner", first],
                                             ["f", "a", "o", "1"]])
    with pytest.raises(TraceError, match=f"column 4: expected a minute number >= 1.*'{first}'"):
        read_trace(path, fmt="azure2019")


def test_azure2021_over_several_days(tmp_path: Path) -> None:
    ends = [10.0, 90_000.5, 200_000.25, 250_000.0]  # day 1, 2, 3, 3
    durations = [1.0, 0.5, 2.25, 0.0]
    table = [["app", "func", "end_timestamp", "duration"]] + [
        ["a", f"f{i % 2}", repr(e), repr(d)] for i, (e, d) in enumerate(zip(ends, durations,
                                                                             strict=True))]
    path = write_rows(tmp_path / "2021.csv", table)
    arrivals = read_trace(path)
    starts = np.sort(np.array(ends) - np.array(durations))
    np.testing.assert_allclose(arrivals.ts + arrivals.origin, starts)
    assert read_stream_apps(path).apps == ("a", "a")


def test_durations_and_memory_files_as_published(traces_dir: Path) -> None:
    for name in ("azure_functions_2019_single/durations.csv", f"{SAMPLE10}/run.csv"):
        header, *body = rows(traces_dir / name)
        durations = read_durations(traces_dir / name)
        key = header.index("HashFunction")
        cols = [header.index(f"percentile_Average_{int(q)}") for q in DURATION_LEVELS]
        for r in body:
            np.testing.assert_array_equal(durations.points(r[key]), [float(r[c]) for c in cols])
    header, *body = rows(traces_dir / SAMPLE10 / "mem.csv")
    memory = read_memory(traces_dir / SAMPLE10 / "mem.csv", "average")
    assert memory.key_column == "HashApp"
    col = header.index("AverageAllocatedMb")
    assert memory.values_mb.tolist() == [float(r[col]) for r in body]
    single = read_memory(traces_dir / "azure_functions_2019_single/memory.csv", "p99")
    assert single.key_column == "HashFunction"


def test_durations_whose_percentiles_go_down_are_refused(tmp_path: Path) -> None:
    cols = [f"percentile_Average_{int(q)}" for q in DURATION_LEVELS]
    path = write_rows(tmp_path / "d.csv", [["HashFunction", *cols], ["f", "1", "2", "3", "2",
                                                                     "5", "6", "7"]])
    with pytest.raises(TraceError, match=r"d\.csv:2: column 'percentile_Average_50': 2 is below"):
        read_durations(path)
    path = write_rows(tmp_path / "dup.csv", [["HashFunction", *cols], ["f", *"1234567"],
                                             ["f", *"1234567"]])
    with pytest.raises(TraceError, match=r"dup\.csv:3: column 'HashFunction': 'f' has a row"):
        read_durations(path)
