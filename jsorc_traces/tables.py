"""The machinery the trace readers share: a CSV read as text by Arrow, typed casts that name the
first bad cell (file, line, column, value), and the errors they raise.

Used by jsorc_traces.readers (the generic and LLM formats) and jsorc_traces.azure (the Azure
Functions formats); no reader of its own.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

# pyarrow ships no type stubs; `unused-ignore` keeps this line clean both under the project's
# mypy config (which reports the untyped import) and under --ignore-missing-imports (which
# does not, and would then call a bare ignore unused).
import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
import pyarrow.compute as pc  # type: ignore[import-untyped, unused-ignore]
import pyarrow.csv as pacsv  # type: ignore[import-untyped, unused-ignore]

from jsorc_traces.arrivals import CodeArray, FloatArray

PARQUET_SUFFIXES: Final = (".parquet", ".pq")
# Arrow parses a CSV in blocks and a record may not straddle two of them; a full-day azure2019
# row is ~10 kB, so 16 MiB leaves room for much wider files at a modest memory cost.
_BLOCK_BYTES: Final = 1 << 24
_CLIP: Final = 80
NO_CODES: Final = np.empty(0, dtype=np.int32)

IntArray = npt.NDArray[np.int64]


class TraceError(ValueError):
    """A trace file that cannot be read: the message names the file (and line, column, value)."""


@dataclass(frozen=True)
class Raw:
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
class Problem:
    """One thing wrong in a table; the earliest (row, col) is the one reported."""

    row: int  # 0-based data row; a CSV line is row + 2
    col: int  # position in the header, -1 for a whole-line problem (it wins ties)
    text: str


@dataclass(frozen=True)
class Table:
    path: Path
    data: Any  # pa.Table
    is_csv: bool  # CSV tables have line numbers, Parquet ones only rows
    problems: tuple[Problem, ...] = ()  # found while parsing (wrong number of fields)
    # Name -> position, built once: Arrow looks names up by a linear scan, which made the
    # 1,440 minute columns of an azure2019 file cost quadratic time.
    positions: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        names = self.data.column_names
        object.__setattr__(self, "positions", {str(n): i for i, n in enumerate(names)})

    def where(self, row: int) -> str:
        return f"{self.path}:{row + 2}" if self.is_csv else f"{self.path}: row {row + 1}"

    def fail_first(self, problems: list[Problem | None]) -> None:
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


def check_choice(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}: expected one of {', '.join(valid)}")


def require_file(p: Path) -> None:
    if not p.exists():
        raise TraceError(f"{p}: no such file")
    if not p.is_file():
        raise TraceError(f"{p}: not a file")


def clip(text: str) -> str:
    return text if len(text) <= _CLIP else text[: _CLIP - 3] + "..."


def read_header(p: Path) -> list[str]:
    # utf-8-sig: a byte-order mark would otherwise glue itself to the first column name.
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except (UnicodeDecodeError, csv.Error) as e:
        raise TraceError(f"{p}:1: not a readable CSV header: {e}") from e
    if header is None:
        raise TraceError(f"{p}: empty file, no header line")
    return header



def check_names(
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


def read_csv(p: Path, header: list[str]) -> Table:
    """Every column as text; lines with the wrong number of fields become problems."""
    problems: list[Problem] = []

    def on_invalid_row(row: Any) -> str:
        # Called by Arrow for each bad line; an exception raised here would be swallowed, so
        # keep the first and skip the rest. row.number is the 1-based line (header = 1) as
        # long as parsing is single-threaded.
        if not problems:
            problems.append(
                Problem(
                    int(row.number) - 2,
                    -1,
                    f"expected {row.expected_columns} fields, got {row.actual_columns}: "
                    f"{clip(str(row.text))!r}",
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
    return Table(p, data, is_csv=True, problems=tuple(problems))


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


def first_true(mask: npt.NDArray[np.bool_]) -> int | None:
    return int(np.argmax(mask)) if bool(mask.any()) else None


def value_at(col: Any, row: int) -> object:
    return col[row].as_py()


def column(table: Table, name: str) -> tuple[Any, int]:
    pos = table.positions[name]
    return table.data.column(pos), pos


def texts(table: Table, name: str) -> tuple[CodeArray, tuple[str, ...], Problem | None]:
    """A key column as codes into its distinct values; empty or null cells are problems."""
    col, pos = column(table, name)
    if not pa.types.is_string(col.type):
        try:
            col = pc.cast(col, pa.string())
        except pa.ArrowException:
            return NO_CODES, (), Problem(0, pos, f"column {name!r}: expected text")
    bad = np.asarray(pc.fill_null(pc.equal(col, ""), True).to_numpy(), dtype=bool)
    row = first_true(bad)
    if row is not None:
        return NO_CODES, (), Problem(
            row, pos, f"column {name!r}: expected a non-empty id, got {value_at(col, row)!r}"
        )
    # Hashed once, by Arrow, in C: the codes are int32 and the names a short tuple.
    distinct = pc.unique(col)
    index = np.asarray(pc.index_in(col, value_set=distinct).to_numpy(), dtype=np.int32)
    return index, tuple(str(v) for v in distinct.to_pylist()), None


def numbers(
    table: Table,
    name: str,
    *,
    kind: Literal["real", "nonneg", "count"],
    empty_is_nan: bool = False,
) -> tuple[FloatArray, Problem | None]:
    """A numeric column as float64: "real" finite, "nonneg" finite >= 0, "count" an int >= 0.

    Casting is vectorised (Arrow); only when it fails is the first bad cell looked for.
    """
    col, pos = column(table, name)
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
    null_row = None if empty_is_nan else first_true(nulls)
    to = pa.int64() if kind == "count" else pa.float64()
    try:
        cast = pc.cast(col, to)
    except pa.ArrowException:
        uncastable = _first_uncastable(col, to)
        first = uncastable if null_row is None else min(uncastable, null_row)
        return np.empty(0), Problem(
            first, pos, f"column {name!r}: expected {wanted}, got {value_at(source, first)!r}"
        )
    values = np.asarray(cast.to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = ~np.isfinite(values)  # nan, inf, and nulls (which come out as nan)
    if empty_is_nan:
        bad &= ~nulls
    if kind != "real":
        bad |= values < 0
    row = first_true(bad)
    if row is None:
        return values, None
    return values, Problem(
        row, pos, f"column {name!r}: expected {wanted}, got {value_at(source, row)!r}"
    )
