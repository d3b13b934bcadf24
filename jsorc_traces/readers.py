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
    invitro's samples, `HashFunction,HashApp,HashOwner,minute_1,...,minute_N`. The minute
    columns are any contiguous increasing run, bare or `minute_`-prefixed: a day (1..1440), a
    window of it (480..959) or several days (1..4320); see jsorc_traces.azure. Key =
    `HashFunction`. Counts must be non-negative integers written as digits.
``azure2021``
    Azure Functions trace 2021, one row per invocation: `app,func,end_timestamp,duration`
    (seconds). The trace records when a call ended, so the arrival is
    `end_timestamp - duration`; `duration` must be >= 0. Key = `func`. No size. There are no
    minute columns, so nothing is "windowed": a file of several days is read as one clock.
``azure_llm2023``
    Azure LLM inference trace 2023 (Patel et al., Splitwise, ISCA 2024):
    `TIMESTAMP,ContextTokens,GeneratedTokens`, TIMESTAMP like `2023-11-16 18:17:03.9799600`
    (up to 9 fractional digits, read as UTC). Key = "" (one stream). Size = tokens per call,
    chosen by `llm_size`: "total" (context + generated, the default), "context" or
    "generated".

The spread rule (azure2019 only)
--------------------------------
A per-minute count says how many calls fell in a minute, not when. Minute k (the column
headed `k` or `minute_k`) covers [60(k-1), 60k) seconds on the trace's clock. With
`spread="uniform"` (the default) the n calls of a minute are placed at n i.i.d. uniform
times inside it, drawn from `np.random.default_rng(seed)`: this is exactly a Poisson process
conditioned on the observed count, so every count is preserved and the same seed gives the
same arrivals. With `spread="even"` they are placed deterministically at 60(m + (i + 0.5)/n)
for i = 0..n-1, m the 0-based minute. `Arrivals.spread` records which rule was used ("exact"
for the formats that give one time per call).

The time-zero rule
------------------
For every format, time 0 is the trace's first arrival: all times are shifted so that
`ts[0] == 0.0`, and `Arrivals.origin` keeps the amount subtracted (the first arrival on the
trace's own clock: seconds from the start of minute 1 for azure2019 (also when the file's
first minute column is a later one), Unix seconds for azure_llm2023, the file's
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

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

# pyarrow ships no type stubs; `unused-ignore` keeps this line clean both under the project's
# mypy config (which reports the untyped import) and under --ignore-missing-imports (which
# does not, and would then call a bare ignore unused).
import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
import pyarrow.compute as pc  # type: ignore[import-untyped, unused-ignore]
import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]

from jsorc_traces.arrivals import EXACT as _EXACT
from jsorc_traces.arrivals import FORMATS, SPREADS, Arrivals, CodeArray, FloatArray
from jsorc_traces.azure import (
    AZ2019_INVITRO,
    AZ2019_ORIGINAL,
    MinuteCounts,
    azure2021_apps,
    read_azure2019,
    read_azure2021,
    read_minute_counts,
)
from jsorc_traces.tables import (
    PARQUET_SUFFIXES,
    Problem,
    Raw,
    Table,
    TraceError,
    check_choice,
    check_names,
    clip,
    column,
    first_true,
    numbers,
    read_csv,
    read_header,
    require_file,
    texts,
    value_at,
)

__all__ = [
    "FORMATS",
    "LLM_SIZES",
    "SPREADS",
    "Arrivals",
    "MinuteCounts",
    "StreamApps",
    "TraceError",
    "detect_format",
    "read_minute_counts",
    "read_stream_apps",
    "read_trace",
]

# A call table (the simulator's `calls`, `jsorc trackact stop --out`, `jsorc loadtest --out`):
# one arrival per request, at its first call, of its app. Other columns are the table's own.
_CALLS_REQUIRED: Final[tuple[str, ...]] = ("ts", "request_id", "app", "action")
LLM_SIZES: Final[tuple[str, ...]] = ("total", "context", "generated")

_LLM_COLUMNS: Final = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_LLM_STAMP: Final = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,9})?$"


def detect_format(path: str | Path) -> str:
    """The format of `path`, from its header line (Parquet files are always `requests`)."""
    p = Path(path)
    require_file(p)
    if p.suffix.lower() in PARQUET_SUFFIXES:
        try:
            names = pq.read_schema(p).names
        except (pa.ArrowException, OSError) as e:
            raise TraceError(f"{p}: cannot read as Parquet: {e}") from e
        return "calls" if {"request_id", "action"} <= set(names) else "requests"
    header = read_header(p)
    fmt = _format_of_header(header)
    if fmt is None:
        raise TraceError(
            f"{p}:1: header fits none of the formats {', '.join(FORMATS)}: "
            f"{clip(','.join(header))!r}"
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
    check_choice("fmt", fmt, ("auto", *FORMATS))
    check_choice("spread", spread, SPREADS)
    check_choice("llm_size", llm_size, LLM_SIZES)
    if max_s is not None and not max_s > 0:
        raise ValueError(f"max_s must be > 0, got {max_s!r}")
    p = Path(path)
    require_file(p)
    if fmt == "auto":
        fmt = detect_format(p)
    if fmt == "requests":
        raw = _read_requests(p)
    elif fmt == "azure2019":
        raw = read_azure2019(p, seed=seed, spread=spread, max_s=max_s)
    elif fmt == "azure2021":
        raw = read_azure2021(p)
    elif fmt == "calls":
        raw = _read_calls(p)
    else:
        raw = _read_llm2023(p, llm_size=llm_size)
    return _finish(raw, fmt=fmt, source=str(path), max_s=max_s)




def _format_of_header(header: list[str]) -> str | None:
    # Detection looks for one distinctive column; the reader then checks the whole header, so
    # a near miss gets a precise message ("missing column 'app'") instead of "fits none".
    if tuple(header[:4]) == AZ2019_ORIGINAL or tuple(header[:3]) == AZ2019_INVITRO:
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



def _finish(raw: Raw, *, fmt: str, source: str, max_s: float | None) -> Arrivals:
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


def _read_requests(p: Path) -> Raw:
    if p.suffix.lower() in PARQUET_SUFFIXES:
        try:
            data = pq.read_table(p)
        except (pa.ArrowException, OSError) as e:
            raise TraceError(f"{p}: cannot read as Parquet: {e}") from e
        header: list[str] = list(data.column_names)
        check_names(str(p), header, ("ts", "app"), ("size",))
        table = Table(p, data, is_csv=False)
    else:
        header = read_header(p)
        check_names(f"{p}:1", header, ("ts", "app"), ("size",))
        table = read_csv(p, header)
    ts, ts_bad = numbers(table, "ts", kind="real")
    code, names, key_bad = texts(table, "app")
    size: FloatArray | None = None
    size_bad = None
    if "size" in header:
        size, size_bad = numbers(table, "size", kind="nonneg", empty_is_nan=True)
    table.fail_first([ts_bad, key_bad, size_bad])
    return Raw(ts, code, names, size, _EXACT)


def _read_calls(p: Path) -> Raw:
    """One arrival per request of a call table: its first call's `ts`, its `app`."""
    if p.suffix.lower() in PARQUET_SUFFIXES:
        try:
            data = pq.read_table(p)
        except (pa.ArrowException, OSError) as e:
            raise TraceError(f"{p}: cannot read as Parquet: {e}") from e
        header: list[str] = list(data.column_names)
        where = str(p)
        table = Table(p, data, is_csv=False)
    else:
        header = read_header(p)
        where = f"{p}:1"
        table = None
    missing = [c for c in _CALLS_REQUIRED if c not in header]
    if missing:
        raise TraceError(f"{where}: a call table needs column(s) "
                         f"{', '.join(map(repr, missing))}")
    if table is None:
        table = read_csv(p, header)
    ts, ts_bad = numbers(table, "ts", kind="real")
    rid, rid_bad = numbers(table, "request_id", kind="real")
    code, names, key_bad = texts(table, "app")
    table.fail_first([ts_bad, rid_bad, key_bad])
    # The first call of each request is its arrival (a walker calls in order).
    order = np.lexsort((ts, rid))
    first = order[np.r_[True, rid[order][1:] != rid[order][:-1]]] if rid.size else order
    return Raw(ts[first], code[first], names, None, _EXACT)




def _read_llm2023(p: Path, *, llm_size: str) -> Raw:
    header = read_header(p)
    check_names(f"{p}:1", header, _LLM_COLUMNS)
    table = read_csv(p, header)
    col, pos = column(table, "TIMESTAMP")
    # The regex pins the layout (pandas' ISO8601 parser would also take dates alone or time
    # zones); to_datetime then rejects impossible dates such as month 13.
    shaped = np.asarray(pc.match_substring_regex(col, _LLM_STAMP).to_numpy(), dtype=bool)
    stamps = pd.to_datetime(
        pd.Series(col.to_numpy(zero_copy_only=False), dtype=object),
        format="ISO8601",
        errors="coerce",
    )
    row = first_true(~shaped | stamps.isna().to_numpy())
    stamp_bad = None
    if row is not None:
        stamp_bad = Problem(
            row,
            pos,
            f"column 'TIMESTAMP': expected a time like "
            f"'2023-11-16 18:17:03.9799600', got {value_at(col, row)!r}",
        )
    context, context_bad = numbers(table, "ContextTokens", kind="count")
    generated, generated_bad = numbers(table, "GeneratedTokens", kind="count")
    table.fail_first([stamp_bad, context_bad, generated_bad])
    # Differences in integer nanoseconds: Unix seconds as float64 would keep only ~0.2 µs of
    # the trace's 100 ns resolution.
    ns = stamps.to_numpy(dtype="datetime64[ns]").view(np.int64)
    base = int(ns.min()) if ns.size else 0
    ts = (ns - base) / 1e9
    size = {"total": context + generated, "context": context, "generated": generated}[llm_size]
    return Raw(ts, np.zeros(ts.size, dtype=np.int32), ("",), size, _EXACT, base=base / 1e9)



@dataclass(frozen=True)
class StreamApps:
    """A trace's streams and, where the format says, the app each belongs to (Azure's
    HashApp or `app`: what the Azure memory files are keyed by); "" where it does not."""

    names: tuple[str, ...]  # every stream of the trace, in file order
    apps: tuple[str, ...]  # as `names`


def read_stream_apps(path: str | Path, fmt: str = "auto") -> StreamApps:
    """Every stream of a trace and its app, without placing the arrivals in time (an azure2019
    file's counts are read, never expanded)."""
    check_choice("fmt", fmt, ("auto", *FORMATS))
    p = Path(path)
    require_file(p)
    if fmt == "auto":
        fmt = detect_format(p)
    if fmt == "azure2019":
        table = read_minute_counts(p)
        return StreamApps(table.names, table.apps)
    if fmt == "azure2021":
        apps = azure2021_apps(p)
        return StreamApps(tuple(apps), tuple(apps.values()))
    names = read_trace(p, fmt).key_names
    return StreamApps(names, ("",) * len(names))
