"""Readers of real arrival traces.

`read_trace` turns a trace file into `Arrivals` (jsorc_traces.arrivals): one arrival time per
call (seconds), the trace's stream of each call (`key_code` into `key_names`, or `key` as
strings) and a size where the trace gives one. Four formats
are read; `detect_format` picks one from the header line (and the `.parquet`/`.pq` suffix).

Formats
-------
``requests``
    This project's generic format: CSV, or Parquet when the suffix is `.parquet` or `.pq`.
    Columns `ts` (seconds, a finite number, rows in any order: they are sorted stably) and
    `app` (text, the key), and optionally `size` (a finite number >= 0; an empty cell, or a
    null in Parquet, means "no size" and reads as nan). Any other column is an error:
    a misspelt column is more likely a mistake than something to drop silently.
``azure2019``
    Azure Functions trace 2019 (Shahrad et al., USENIX ATC 2020): one row per function with
    the number of its invocations in each minute. Two header variants are read, the original
    `HashOwner,HashApp,HashFunction,Trigger,1,2,...,1440` and the one in vhive-serverless/
    invitro's samples, `HashFunction,HashApp,HashOwner,minute_1,...,minute_N`; minute columns
    must be numbered 1..N in order. Key = `HashFunction`. Counts must be non-negative
    integers written as digits.
``azure2021``
    Azure Functions trace 2021, one row per invocation: `app,func,end_timestamp,duration`
    (seconds). The trace records when a call ended, so the arrival is
    `end_timestamp - duration`; `duration` must be >= 0. Key = `func`. No size.
``azure_llm2023``
    Azure LLM inference trace 2023 (Patel et al., Splitwise, ISCA 2024):
    `TIMESTAMP,ContextTokens,GeneratedTokens`, TIMESTAMP like `2023-11-16 18:17:03.9799600`
    (up to 9 fractional digits, read as UTC). Key = "" (one stream). Size = tokens per call,
    chosen by `llm_size`: "total" (context + generated, the default), "context" or
    "generated".

The spread rule (azure2019 only)
--------------------------------
A per-minute count says how many calls fell in a minute, not when. Minute column k covers
[60(k-1), 60k) seconds on the trace's clock. With `spread="uniform"` (the default) the n calls
of a minute are placed at n i.i.d. uniform times inside it, drawn from
`np.random.default_rng(seed)`: this is exactly a Poisson process conditioned on the observed
count, so every count is preserved and the same seed gives the same arrivals. With
`spread="even"` they are placed deterministically at 60(m + (i + 0.5)/n) for i = 0..n-1, m the
0-based minute. `Arrivals.spread` records which rule was used ("exact" for the formats that
give one time per call).

The time-zero rule
------------------
For every format, time 0 is the trace's first arrival: all times are shifted so that
`ts[0] == 0.0`, and `Arrivals.origin` keeps the amount subtracted (the first arrival on the
trace's own clock: seconds into the day for azure2019, Unix seconds for azure_llm2023, the file's
own seconds otherwise). Only then does `max_s` apply: it keeps the arrivals with `ts < max_s`.
An azure2019 file is then expanded only as far as the window needs, with the same arrivals
there as the whole day would give (see jsorc_traces.spread); `key_names` still lists every
stream of the whole trace.

Errors
------
A file that cannot be read as its format raises `TraceError` (a `ValueError`) whose message
names the file and, when one line is at fault, the line (1-based, the header being line 1),
the column and the offending value, e.g. `trace.csv:17: column 'ts': expected a number, got
'abc'`. Parquet has no lines, so its messages name the 1-based data row instead. Line numbers
assume one record per line (no line breaks inside quoted fields). A trace with no arrivals is a
`TraceError`; a bad argument (`fmt`, `spread`, `llm_size`, `max_s`) is a plain `ValueError`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

# pyarrow ships no type stubs; `unused-ignore` keeps this line clean both under the project's
# mypy config (which reports the untyped import) and under --ignore-missing-imports (which
# does not, and would then call a bare ignore unused).
import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
import pyarrow.compute as pc  # type: ignore[import-untyped, unused-ignore]
import pyarrow.csv as pacsv  # type: ignore[import-untyped, unused-ignore]
import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]

from jsorc_traces.arrivals import EXACT as _EXACT
from jsorc_traces.arrivals import FORMATS, SPREADS, Arrivals, CodeArray, FloatArray
from jsorc_traces.spread import late_streams, minutes_for_window, spread_counts

__all__ = [
    "FORMATS",
    "LLM_SIZES",
    "SPREADS",
    "Arrivals",
    "MinuteCounts",
    "TraceError",
    "detect_format",
    "read_minute_counts",
    "read_trace",
]

# A call table (the simulator's `calls`, `jsorc trackact stop --out`, `jsorc loadtest --out`):
# one arrival per request, at its first call, of its app. Other columns are the table's own.
_CALLS_REQUIRED: Final[tuple[str, ...]] = ("ts", "request_id", "app", "action")
LLM_SIZES: Final[tuple[str, ...]] = ("total", "context", "generated")

_PARQUET_SUFFIXES: Final = (".parquet", ".pq")
_AZ2019_ORIGINAL: Final = ("HashOwner", "HashApp", "HashFunction", "Trigger")
_AZ2019_INVITRO: Final = ("HashFunction", "HashApp", "HashOwner")
_AZ2021_COLUMNS: Final = ("app", "func", "end_timestamp", "duration")
_LLM_COLUMNS: Final = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_LLM_STAMP: Final = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,9})?$"
# Arrow parses a CSV in blocks and a record may not straddle two of them; a full-day azure2019
# row is ~10 kB, so 16 MiB leaves room for much wider files at a modest memory cost.
_BLOCK_BYTES: Final = 1 << 24
_CLIP: Final = 80
_NO_CODES: Final = np.empty(0, dtype=np.int32)

IntArray = npt.NDArray[np.int64]


class TraceError(ValueError):
    """A trace file that cannot be read: the message names the file (and line, column, value)."""


def detect_format(path: str | Path) -> str:
    """The format of `path`, from its header line (Parquet files are always `requests`)."""
    p = Path(path)
    _require_file(p)
    if p.suffix.lower() in _PARQUET_SUFFIXES:
        try:
            names = pq.read_schema(p).names
        except (pa.ArrowException, OSError) as e:
            raise TraceError(f"{p}: cannot read as Parquet: {e}") from e
        return "calls" if {"request_id", "action"} <= set(names) else "requests"
    header = _read_header(p)
    fmt = _format_of_header(header)
    if fmt is None:
        raise TraceError(
            f"{p}:1: header fits none of the formats {', '.join(FORMATS)}: "
            f"{_clip(','.join(header))!r}"
        )
    return fmt


def read_trace(
    path: str | Path,
    fmt: str = "auto",
    *,
    seed: int = 0,
    spread: str = "uniform",
    max_s: float | None = None,
    llm_size: str = "total",
) -> Arrivals:
    """Read a trace file as `Arrivals` (see the module docstring for formats and rules)."""
    # Arguments are checked before the file so a typo is reported as such, whatever the file.
    _check_choice("fmt", fmt, ("auto", *FORMATS))
    _check_choice("spread", spread, SPREADS)
    _check_choice("llm_size", llm_size, LLM_SIZES)
    if max_s is not None and not max_s > 0:
        raise ValueError(f"max_s must be > 0, got {max_s!r}")
    p = Path(path)
    _require_file(p)
    if fmt == "auto":
        fmt = detect_format(p)
    if fmt == "requests":
        raw = _read_requests(p)
    elif fmt == "azure2019":
        raw = _read_azure2019(p, seed=seed, spread=spread, max_s=max_s)
    elif fmt == "azure2021":
        raw = _read_azure2021(p)
    elif fmt == "calls":
        raw = _read_calls(p)
    else:
        raw = _read_llm2023(p, llm_size=llm_size)
    return _finish(raw, fmt=fmt, source=str(path), max_s=max_s)


# --- shared machinery ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Raw:
    """A reader's result before sorting, shifting and cutting."""

    ts: FloatArray  # arrival times in seconds on some clock, in any order
    code: CodeArray  # each arrival's index into `names`
    names: tuple[str, ...]  # distinct, in any order; some may have no arrival
    size: FloatArray | None  # None: the trace gives no sizes
    spread: str
    is_sorted: bool = False  # lets a reader that built sorted times skip the argsort
    base: float = 0.0  # the clock of `ts` plus `base` is the trace's own clock
    # Names whose first arrival lies past the part of the trace expanded into `ts`, in order
    # of that arrival (an azure2019 file read for a window): they follow the others.
    late: tuple[int, ...] = ()


@dataclass(frozen=True, order=True)
class _Problem:
    """One thing wrong in a table; the earliest (row, col) is the one reported."""

    row: int  # 0-based data row; a CSV line is row + 2
    col: int  # position in the header, -1 for a whole-line problem (it wins ties)
    text: str


@dataclass(frozen=True)
class _Table:
    path: Path
    data: Any  # pa.Table
    is_csv: bool  # CSV tables have line numbers, Parquet ones only rows
    problems: tuple[_Problem, ...] = ()  # found while parsing (wrong number of fields)
    # Name -> position, built once: Arrow looks names up by a linear scan, which made the
    # 1,440 minute columns of an azure2019 file cost quadratic time.
    positions: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        names = self.data.column_names
        object.__setattr__(self, "positions", {str(n): i for i, n in enumerate(names)})

    def where(self, row: int) -> str:
        return f"{self.path}:{row + 2}" if self.is_csv else f"{self.path}: row {row + 1}"

    def fail_first(self, problems: list[_Problem | None]) -> None:
        """Raise the earliest problem, if any, so the user fixes the file top to bottom."""
        found = [q for q in (*self.problems, *problems) if q is not None]
        if not found:
            return
        first = min(found)
        text = first.text
        # A blank CSV line reads as a row of empty fields; saying so beats "got ''".
        if self.is_csv and first.col >= 0 and first.row < self.data.num_rows:
            values = self.data.slice(first.row, 1).to_pylist()[0].values()
            if all(v == "" for v in values):
                text = "blank line"
        raise TraceError(f"{self.where(first.row)}: {text}")


def _check_choice(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}: expected one of {', '.join(valid)}")


def _require_file(p: Path) -> None:
    if not p.exists():
        raise TraceError(f"{p}: no such file")
    if not p.is_file():
        raise TraceError(f"{p}: not a file")


def _clip(text: str) -> str:
    return text if len(text) <= _CLIP else text[: _CLIP - 3] + "..."


def _read_header(p: Path) -> list[str]:
    # utf-8-sig: a byte-order mark would otherwise glue itself to the first column name.
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except (UnicodeDecodeError, csv.Error) as e:
        raise TraceError(f"{p}:1: not a readable CSV header: {e}") from e
    if header is None:
        raise TraceError(f"{p}: empty file, no header line")
    return header


def _format_of_header(header: list[str]) -> str | None:
    # Detection looks for one distinctive column; the reader then checks the whole header, so
    # a near miss gets a precise message ("missing column 'app'") instead of "fits none".
    if tuple(header[:4]) == _AZ2019_ORIGINAL or tuple(header[:3]) == _AZ2019_INVITRO:
        return "azure2019"
    if "end_timestamp" in header:
        return "azure2021"
    if "TIMESTAMP" in header:
        return "azure_llm2023"
    if "request_id" in header and "action" in header:
        return "calls"
    if "ts" in header or "app" in header:
        return "requests"
    return None


def _check_names(
    where: str, header: list[str], required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    expected = ", ".join(required) + "".join(f"[, {c}]" for c in optional)
    dups = sorted({c for c in header if header.count(c) > 1})
    missing = [c for c in required if c not in header]
    unknown = [c for c in header if c not in required and c not in optional]
    faults = []
    if dups:
        faults.append("duplicate column(s) " + ", ".join(map(repr, dups)))
    if missing:
        faults.append("missing column(s) " + ", ".join(map(repr, missing)))
    if unknown:
        faults.append("unknown column(s) " + ", ".join(map(repr, unknown)))
    if faults:
        raise TraceError(f"{where}: {'; '.join(faults)} (expected {expected})")


def _read_csv(p: Path, header: list[str]) -> _Table:
    """Every column as text; lines with the wrong number of fields become problems."""
    problems: list[_Problem] = []

    def on_invalid_row(row: Any) -> str:
        # Called by Arrow for each bad line; an exception raised here would be swallowed, so
        # keep the first and skip the rest. row.number is the 1-based line (header = 1) as
        # long as parsing is single-threaded.
        if not problems:
            problems.append(
                _Problem(
                    int(row.number) - 2,
                    -1,
                    f"expected {row.expected_columns} fields, got {row.actual_columns}: "
                    f"{_clip(str(row.text))!r}",
                )
            )
        return "skip"

    try:
        data = pacsv.read_csv(
            p,
            read_options=pacsv.ReadOptions(
                use_threads=False, skip_rows=1, column_names=header, block_size=_BLOCK_BYTES
            ),
            # Keeping empty lines (as rows of empty fields) keeps row i on line i + 2.
            parse_options=pacsv.ParseOptions(
                invalid_row_handler=on_invalid_row, ignore_empty_lines=False
            ),
            # Text first, numbers later: our own casts can say which cell is bad.
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header}),
        )
    except (pa.ArrowException, OSError) as e:
        raise TraceError(f"{p}: cannot read as CSV: {e}") from e
    return _Table(p, data, is_csv=True, problems=tuple(problems))


def _castable(col: Any, to: Any) -> bool:
    try:
        pc.cast(col, to)
    except pa.ArrowException:
        return False
    return True


def _first_uncastable(col: Any, to: Any) -> int:
    """Index of the first element that does not cast, by bisection (O(n) work in total)."""
    lo, hi = 0, len(col)  # invariant: col[:lo] casts, col[lo:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _castable(col.slice(lo, mid - lo), to):
            lo = mid
        else:
            hi = mid
    return lo


def _first_true(mask: npt.NDArray[np.bool_]) -> int | None:
    return int(np.argmax(mask)) if bool(mask.any()) else None


def _value(col: Any, row: int) -> object:
    return col[row].as_py()


def _column(table: _Table, name: str) -> tuple[Any, int]:
    pos = table.positions[name]
    return table.data.column(pos), pos


def _texts(table: _Table, name: str) -> tuple[CodeArray, tuple[str, ...], _Problem | None]:
    """A key column as codes into its distinct values; empty or null cells are problems."""
    col, pos = _column(table, name)
    if not pa.types.is_string(col.type):
        try:
            col = pc.cast(col, pa.string())
        except pa.ArrowException:
            return _NO_CODES, (), _Problem(0, pos, f"column {name!r}: expected text")
    bad = np.asarray(pc.fill_null(pc.equal(col, ""), True).to_numpy(), dtype=bool)
    row = _first_true(bad)
    if row is not None:
        return _NO_CODES, (), _Problem(
            row, pos, f"column {name!r}: expected a non-empty id, got {_value(col, row)!r}"
        )
    # Hashed once, by Arrow, in C: the codes are int32 and the names a short tuple.
    distinct = pc.unique(col)
    index = np.asarray(pc.index_in(col, value_set=distinct).to_numpy(), dtype=np.int32)
    return index, tuple(str(v) for v in distinct.to_pylist()), None


def _numbers(
    table: _Table,
    name: str,
    *,
    kind: Literal["real", "nonneg", "count"],
    empty_is_nan: bool = False,
) -> tuple[FloatArray, _Problem | None]:
    """A numeric column as float64: "real" finite, "nonneg" finite >= 0, "count" an int >= 0.

    Casting is vectorised (Arrow); only when it fails is the first bad cell looked for.
    """
    col, pos = _column(table, name)
    wanted = {
        "real": "a number",
        "nonneg": "a number >= 0",
        "count": "a non-negative integer count",
    }[kind]
    source = col
    if pa.types.is_string(col.type):
        # An empty cell is a missing value: allowed (as nan) only where the format says so.
        col = pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)
    nulls = np.asarray(col.is_null().to_numpy(), dtype=bool)
    null_row = None if empty_is_nan else _first_true(nulls)
    to = pa.int64() if kind == "count" else pa.float64()
    try:
        cast = pc.cast(col, to)
    except pa.ArrowException:
        uncastable = _first_uncastable(col, to)
        first = uncastable if null_row is None else min(uncastable, null_row)
        return np.empty(0), _Problem(
            first, pos, f"column {name!r}: expected {wanted}, got {_value(source, first)!r}"
        )
    values = np.asarray(cast.to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = ~np.isfinite(values)  # nan, inf, and nulls (which come out as nan)
    if empty_is_nan:
        bad &= ~nulls
    if kind != "real":
        bad |= values < 0
    row = _first_true(bad)
    if row is None:
        return values, None
    return values, _Problem(
        row, pos, f"column {name!r}: expected {wanted}, got {_value(source, row)!r}"
    )


def _finish(raw: _Raw, *, fmt: str, source: str, max_s: float | None) -> Arrivals:
    if raw.ts.size == 0:
        raise TraceError(f"{source}: no arrivals in the trace")
    size = raw.size
    if raw.is_sorted:
        ts, code = raw.ts, raw.code
    else:
        # Stable, so equal times keep file order (documented for `requests`, and it makes
        # ties between functions in the `even` spread deterministic).
        order = np.argsort(raw.ts, kind="stable")
        ts, code = raw.ts[order], raw.code[order]
        size = None if size is None else size[order]
    first = float(ts[0])
    if ts.flags.writeable:  # in place: a day of arrivals is 166 MB a copy
        ts -= first
    else:
        ts = ts - first
    code, names = _by_first_arrival(code, raw.names, raw.late)
    if max_s is not None:
        n = int(np.searchsorted(ts, max_s, side="left"))
        ts, code = ts[:n], code[:n]
        size = None if size is None else size[:n]
    return Arrivals(
        ts=ts,
        key_code=code,
        key_names=names,
        # No sizes: one nan seen at every arrival (a read-only, stride-0 view, no memory).
        size=np.broadcast_to(np.float64(math.nan), ts.shape) if size is None else size,
        fmt=fmt,
        spread=raw.spread,
        source=source,
        origin=raw.base + first,
    )


def _by_first_arrival(
    code: CodeArray, names: tuple[str, ...], late: tuple[int, ...]
) -> tuple[CodeArray, tuple[str, ...]]:
    """Renumber the names in order of first arrival (`code` sorted by time), then the late
    ones; names with no arrival are dropped."""
    if len(names) == 1:
        return code, names  # there is an arrival, so it is this name's
    # pd.unique hashes int32 codes (fast) and keeps first-appearance order, unlike np.unique.
    seen = [int(c) for c in pd.unique(code)]
    order = list(dict.fromkeys([*seen, *late]))
    if order == list(range(len(names))):
        return code, names
    renumber = np.full(len(names), -1, dtype=np.int32)
    renumber[order] = np.arange(len(order), dtype=np.int32)
    return renumber[code], tuple(names[i] for i in order)


# --- the formats -----------------------------------------------------------------------------


def _read_requests(p: Path) -> _Raw:
    if p.suffix.lower() in _PARQUET_SUFFIXES:
        try:
            data = pq.read_table(p)
        except (pa.ArrowException, OSError) as e:
            raise TraceError(f"{p}: cannot read as Parquet: {e}") from e
        header: list[str] = list(data.column_names)
        _check_names(str(p), header, ("ts", "app"), ("size",))
        table = _Table(p, data, is_csv=False)
    else:
        header = _read_header(p)
        _check_names(f"{p}:1", header, ("ts", "app"), ("size",))
        table = _read_csv(p, header)
    ts, ts_bad = _numbers(table, "ts", kind="real")
    code, names, key_bad = _texts(table, "app")
    size: FloatArray | None = None
    size_bad = None
    if "size" in header:
        size, size_bad = _numbers(table, "size", kind="nonneg", empty_is_nan=True)
    table.fail_first([ts_bad, key_bad, size_bad])
    return _Raw(ts, code, names, size, _EXACT)


def _read_calls(p: Path) -> _Raw:
    """One arrival per request of a call table: its first call's `ts`, its `app`."""
    if p.suffix.lower() in _PARQUET_SUFFIXES:
        try:
            data = pq.read_table(p)
        except (pa.ArrowException, OSError) as e:
            raise TraceError(f"{p}: cannot read as Parquet: {e}") from e
        header: list[str] = list(data.column_names)
        where = str(p)
        table = _Table(p, data, is_csv=False)
    else:
        header = _read_header(p)
        where = f"{p}:1"
        table = None
    missing = [c for c in _CALLS_REQUIRED if c not in header]
    if missing:
        raise TraceError(f"{where}: a call table needs column(s) "
                         f"{', '.join(map(repr, missing))}")
    if table is None:
        table = _read_csv(p, header)
    ts, ts_bad = _numbers(table, "ts", kind="real")
    rid, rid_bad = _numbers(table, "request_id", kind="real")
    code, names, key_bad = _texts(table, "app")
    table.fail_first([ts_bad, rid_bad, key_bad])
    # The first call of each request is its arrival (a walker calls in order).
    order = np.lexsort((ts, rid))
    first = order[np.r_[True, rid[order][1:] != rid[order][:-1]]] if rid.size else order
    return _Raw(ts[first], code[first], names, None, _EXACT)


def _read_azure2021(p: Path) -> _Raw:
    header = _read_header(p)
    _check_names(f"{p}:1", header, _AZ2021_COLUMNS)
    table = _read_csv(p, header)
    code, names, key_bad = _texts(table, "func")
    end, end_bad = _numbers(table, "end_timestamp", kind="real")
    duration, duration_bad = _numbers(table, "duration", kind="nonneg")
    table.fail_first([key_bad, end_bad, duration_bad])
    # The 2021 trace logs completions; the call arrived `duration` seconds earlier.
    return _Raw(end - duration, code, names, None, _EXACT)


def _read_llm2023(p: Path, *, llm_size: str) -> _Raw:
    header = _read_header(p)
    _check_names(f"{p}:1", header, _LLM_COLUMNS)
    table = _read_csv(p, header)
    col, pos = _column(table, "TIMESTAMP")
    # The regex pins the layout (pandas' ISO8601 parser would also take dates alone or time
    # zones); to_datetime then rejects impossible dates such as month 13.
    shaped = np.asarray(pc.match_substring_regex(col, _LLM_STAMP).to_numpy(), dtype=bool)
    stamps = pd.to_datetime(
        pd.Series(col.to_numpy(zero_copy_only=False), dtype=object),
        format="ISO8601",
        errors="coerce",
    )
    row = _first_true(~shaped | stamps.isna().to_numpy())
    stamp_bad = None
    if row is not None:
        stamp_bad = _Problem(
            row,
            pos,
            f"column 'TIMESTAMP': expected a time like "
            f"'2023-11-16 18:17:03.9799600', got {_value(col, row)!r}",
        )
    context, context_bad = _numbers(table, "ContextTokens", kind="count")
    generated, generated_bad = _numbers(table, "GeneratedTokens", kind="count")
    table.fail_first([stamp_bad, context_bad, generated_bad])
    # Differences in integer nanoseconds: Unix seconds as float64 would keep only ~0.2 µs of
    # the trace's 100 ns resolution.
    ns = stamps.to_numpy(dtype="datetime64[ns]").view(np.int64)
    base = int(ns.min()) if ns.size else 0
    ts = (ns - base) / 1e9
    size = {"total": context + generated, "context": context, "generated": generated}[llm_size]
    return _Raw(ts, np.zeros(ts.size, dtype=np.int32), ("",), size, _EXACT, base=base / 1e9)


@dataclass(frozen=True, eq=False)
class MinuteCounts:
    """An azure2019 file as read, before its counts are placed in time (jsorc_traces.spread).

    `eq=False`: the counts are an array; compare them to compare contents."""

    counts: IntArray  # functions (rows of the file) x minutes
    row_code: CodeArray  # each row's index into `names` (a HashFunction may repeat)
    names: tuple[str, ...]  # the distinct HashFunction values


def read_minute_counts(path: str | Path) -> MinuteCounts:
    """Read and check a whole azure2019 file, without expanding its counts into arrivals."""
    p = Path(path)
    _require_file(p)
    header = _read_header(p)
    if tuple(header[:4]) == _AZ2019_ORIGINAL:
        n_meta, prefix = 4, ""
    elif tuple(header[:3]) == _AZ2019_INVITRO:
        n_meta, prefix = 3, "minute_"
    else:
        raise TraceError(
            f"{p}:1: expected header {','.join(_AZ2019_ORIGINAL)},1,...,N or "
            f"{','.join(_AZ2019_INVITRO)},minute_1,...,minute_N, got {_clip(','.join(header))!r}"
        )
    minutes = header[n_meta:]
    if not minutes:
        raise TraceError(f"{p}:1: no minute columns after {','.join(header)!r}")
    for i, got in enumerate(minutes):
        if got != f"{prefix}{i + 1}":
            raise TraceError(
                f"{p}:1: column {n_meta + i + 1}: expected '{prefix}{i + 1}', got {got!r}"
            )
    table = _read_csv(p, header)
    row_code, names, key_bad = _texts(table, "HashFunction")
    columns = [_numbers(table, m, kind="count") for m in minutes]
    table.fail_first([key_bad, *(bad for _, bad in columns)])
    if table.data.num_rows == 0:
        return MinuteCounts(np.zeros((0, len(minutes)), dtype=np.int64), _NO_CODES, ())
    counts = np.stack([values for values, _ in columns], axis=1).astype(np.int64)
    return MinuteCounts(counts, row_code, names)


def _read_azure2019(p: Path, *, seed: int, spread: str, max_s: float | None) -> _Raw:
    table = read_minute_counts(p)
    counts, row_code, names = table.counts, table.row_code, table.names
    if counts.shape[0] == 0:
        return _Raw(np.empty(0), _NO_CODES, (), None, spread)
    # The whole file is checked above; only the minutes the window needs are expanded.
    expanded = counts.shape[1] if max_s is None else minutes_for_window(counts, max_s)
    ts, func, already_sorted = spread_counts(counts[:, :expanded], spread=spread, seed=seed)
    late = late_streams(counts, expanded, spread=spread, seed=seed)
    # Rows and names coincide unless a HashFunction repeats (or one row: skip a 83 MB gather).
    same = np.array_equal(row_code, np.arange(row_code.size))
    return _Raw(ts, func if same else row_code[func], names, None, spread,
                is_sorted=already_sorted, late=tuple(int(row_code[f]) for f in late))
