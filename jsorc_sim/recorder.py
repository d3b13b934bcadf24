"""The run's tables: a short tail of row tuples on the hot path, typed columns behind it.

A call row is one tuple appended to a list: the cheapest record CPython offers on the hot
path (about 0.1 us, against 0.5 us for a dozen `array.append`s). Kept as tuples to the end,
though, a row costs ~590 bytes (a tuple, its floats and the list's pointer): a real day of
20.8 M calls took 12 GB. So the lists are only a TAIL: `flush()` turns it into one chunk of
typed numpy columns (65 bytes a call) with one `np.fromiter` over a structured dtype (the
cheapest conversion measured: ~0.4 us a call row, against ~0.6 us for `np.array` over the
tuples or a generator per column) and empties the list in place (a bound `append` stays
valid). `flusher(env)` is a SimPy process that flushes about every `chunk_rows` rows.

What becomes of the chunks depends on `record` ("calls", "requests" or "none": which tables
are kept; decisions, timeline and events are small and always kept) and on `sink`: a kept
table is held in memory, or, with a sink, streamed chunk by chunk to a Parquet file under a
temporary name, so memory does not grow with the run. Every chunk, kept or not, feeds
`statistics` (jsorc_sim.stats): what the report needs, computed as the run goes.

Strings are small integer codes (`apps`, `actions` and the names below give their names) until
a DataFrame or Parquet file is built. pandas and pyarrow are imported only then: a run that
keeps no table never pays their import.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from jsorc_sim.sketch import DEFAULT_RELATIVE_ERROR
from jsorc_sim.stats import RunStatistics

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
    import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]
    import simpy


class Where(IntEnum):
    LOCAL = 0
    REMOTE = 1


class Failure(IntEnum):
    NONE = 0
    OUT_OF_MEMORY = 1  # the runtime ran out of memory and restarted


WHERE_NAMES = ["local", "remote"]
FAILURE_NAMES = ["", "out_of_memory"]

# Column order of a call row and a request row.
CALL_COLUMNS = ("ts", "request_id", "app", "action", "placement", "replica", "wait_ms",
                "service_ms", "network_ms", "latency_ms", "ok", "cold", "error")
REQUEST_COLUMNS = ("ts", "request_id", "app", "latency_ms", "ok", "error")
# Indices into a call row, for the controller's window statistics.
C_TS, C_RID, C_APP, C_ACTION, C_WHERE, C_REPLICA, C_WAIT, C_SERVICE, C_NETWORK, C_LAT, C_OK, \
    C_COLD, C_ERR = range(13)
R_TS, R_RID, R_APP, R_LAT, R_OK, R_ERR = range(6)

# The dtype of each column once flushed (a structured row dtype, unaligned: 65 bytes a call).
CALL_ROW = np.dtype([
    # int32 codes: a per-function replay of a real day has tens of thousands of apps.
    ("ts", np.float64), ("request_id", np.int64), ("app", np.int32), ("action", np.int32),
    ("placement", np.int16), ("replica", np.int32), ("wait_ms", np.float64),
    ("service_ms", np.float64), ("network_ms", np.float64), ("latency_ms", np.float64),
    ("ok", np.bool_), ("cold", np.bool_), ("error", np.int8)])
REQUEST_ROW = np.dtype([
    ("ts", np.float64), ("request_id", np.int64), ("app", np.int32),
    ("latency_ms", np.float64), ("ok", np.bool_), ("error", np.int8)])
assert CALL_ROW.names == CALL_COLUMNS and REQUEST_ROW.names == REQUEST_COLUMNS

RecordMode = Literal["calls", "requests", "none"]
RECORD_MODES: tuple[RecordMode, ...] = ("calls", "requests", "none")
CHUNK_ROWS = 65_536
# The flusher's period adapts to the row rate (chunk_rows / rows per simulated second), within
# these bounds: often enough that a burst after a quiet hour cannot pile up a day's rows.
FLUSH_MIN_S, FLUSH_MAX_S = 1e-3, 60.0

Columns = dict[str, np.ndarray]


class NotRecorded(LookupError):
    """A table the run's record mode left out."""


@dataclass(frozen=True)
class Sink:
    """A folder the kept tables stream to, with jsorc_sim.outputs' manifest rules for it
    (`kind`, and `legacy` for folders written before manifests existed)."""

    folder: Path
    kind: str
    legacy: Callable[[Path], bool] | None = None


class Recorder:
    """Every table of a run. `apps` and `actions` give the codes' names.

    `record`: "calls" keeps every table (the default), "requests" all but calls, "none"
    neither calls nor requests. `warmup_s` is the report's: `statistics` counts latencies of
    requests arriving from then on. With `sink`, kept calls and requests go to Parquet files
    in its folder instead of memory (`finish()` completes them; jsorc_sim.results moves them
    into place)."""

    def __init__(self, apps: Sequence[str], actions: Sequence[str], *,
                 record: str = "calls", warmup_s: float = 0.0, sink: Sink | None = None,
                 chunk_rows: int = CHUNK_ROWS,
                 relative_error: float = DEFAULT_RELATIVE_ERROR) -> None:
        if record not in RECORD_MODES:
            raise ValueError(f"record must be one of {', '.join(RECORD_MODES)}, got {record!r}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows!r}")
        self.apps = list(apps)
        self.actions = list(actions)
        self.record = record
        self.sink = sink
        self.chunk_rows = chunk_rows
        # The tails: the hot path appends row tuples (CALL_COLUMNS / REQUEST_COLUMNS order).
        self.calls: list[tuple[Any, ...]] = []
        self.requests: list[tuple[Any, ...]] = []
        self.decisions: list[dict[str, Any]] = []
        self.timeline: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []  # out-of-memory, policy errors
        self.policy_steps = 0  # decide() calls, failed ones included (the controller counts)
        self.statistics = RunStatistics(self.apps, warmup_s, relative_error)
        categories = {"app": self.apps, "action": self.actions, "placement": WHERE_NAMES,
                      "error": FAILURE_NAMES}
        self.call_table = Table("calls", CALL_ROW, categories, record == "calls", sink,
                                chunk_rows)
        self.request_table = Table("requests", REQUEST_ROW, categories, record != "none", sink,
                                   chunk_rows)

    def decision(self, ts: float, action: str, placement: str, previous: str, source: str,
                 reason: str, error: str = "") -> None:
        self.decisions.append({"ts": ts, "action": action, "placement": placement,
                               "previous": previous, "source": source, "reason": reason,
                               "error": error})

    def event(self, ts: float, kind: str, detail: str) -> None:
        self.events.append({"ts": ts, "kind": kind, "detail": detail})

    # ------------------------------------------------------------------ chunks

    def flush(self) -> None:
        """Turn the tails into columnar chunks (kept, streamed or only counted) and empty
        them in place."""
        if self.calls:
            rows = self.calls
            if self.call_table.kept:
                self._add_calls(_structured(rows, CALL_ROW))
            else:  # only the counts: two columns, not thirteen
                count = len(rows)
                self.statistics.add_calls(
                    np.fromiter((row[C_OK] for row in rows), dtype=np.bool_, count=count),
                    np.fromiter((row[C_COLD] for row in rows), dtype=np.bool_, count=count))
                self.call_table.rows += count
            rows.clear()
        if self.requests:
            self._add_requests(_structured(self.requests, REQUEST_ROW))
            self.requests.clear()

    def add_calls(self, columns: Mapping[str, np.ndarray]) -> None:
        """Append a ready chunk of calls, a column per name of CALL_COLUMNS (any numeric
        dtype: cast), after the rows of the tail."""
        self.flush()
        self._add_calls(_cast(columns, CALL_ROW, "calls"))

    def add_requests(self, columns: Mapping[str, np.ndarray]) -> None:
        """Append a ready chunk of requests (REQUEST_COLUMNS), after the rows of the tail."""
        self.flush()
        self._add_requests(_cast(columns, REQUEST_ROW, "requests"))

    def flusher(self, env: simpy.Environment,
                first_s: float = 1.0) -> Generator[simpy.Event, Any, None]:
        """A SimPy process: flush, then wait about the time `chunk_rows` rows take at the rate
        just seen. It touches no simulated state, so a run's results do not depend on it."""
        period = first_s
        while True:
            yield env.timeout(period)
            rows = max(len(self.calls), len(self.requests))
            self.flush()
            target = self.chunk_rows * period / rows if rows else 2.0 * period
            period = min(max(target, FLUSH_MIN_S), FLUSH_MAX_S)

    def finish(self) -> None:
        """Flush the tails and complete the tables (a streamed file is then whole, still under
        its temporary name until jsorc_sim.results moves it into place)."""
        self.flush()
        self.call_table.close()
        self.request_table.close()

    def abort(self) -> None:
        """Drop the streamed files of a run that failed."""
        self.call_table.discard()
        self.request_table.discard()

    @property
    def call_count(self) -> int:
        """Call rows recorded so far (the tail's included)."""
        return self.call_table.rows + len(self.calls)

    @property
    def request_count(self) -> int:
        return self.request_table.rows + len(self.requests)

    def retained_bytes(self) -> int:
        """Bytes of the columns and tallies this recorder holds (not counting the tails,
        which the flusher keeps near `chunk_rows` rows)."""
        return self.call_table.nbytes + self.request_table.nbytes + self.statistics.nbytes

    def _add_calls(self, columns: Columns) -> None:
        self.statistics.add_calls(columns["ok"], columns["cold"])
        self.call_table.append(columns)

    def _add_requests(self, columns: Columns) -> None:
        self.statistics.add_requests(columns["ts"], columns["app"], columns["latency_ms"],
                                     columns["ok"])
        self.request_table.append(columns)

    # ------------------------------------------------------------------ tables

    def calls_frame(self) -> pd.DataFrame:
        return self.call_table.frame(self.record)

    def requests_frame(self) -> pd.DataFrame:
        return self.request_table.frame(self.record)

    def decisions_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.decisions, columns=["ts", "action", "placement", "previous",
                                                     "source", "reason", "error"])

    def timeline_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.timeline)

    def events_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.events, columns=["ts", "kind", "detail"])


class Table:
    """One table's rows after the tail: held in memory, streamed to a Parquet file (with a
    sink), or only counted (`kept` false). Small flushes are gathered into chunks of about
    `chunk_rows` rows, so a file's row groups and the chunk list stay few."""

    def __init__(self, name: str, row: np.dtype[Any], categories: Mapping[str, list[str]],
                 kept: bool, sink: Sink | None, chunk_rows: int) -> None:
        self.name = name
        self.row = row
        self.categories = {c: categories[c] for c in row.names or () if c in categories}
        self.kept = kept
        self.stream = ParquetStream(sink.folder, name, self._schema, self.categories) \
            if kept and sink else None
        self.chunk_rows = chunk_rows
        self.rows = 0
        self._chunks: list[Columns] = []
        self._pending: list[Columns] = []
        self._pending_rows = 0

    @property
    def in_memory(self) -> bool:
        return self.kept and self.stream is None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for chunk in (*self._chunks, *self._pending) for a in chunk.values())

    def append(self, columns: Columns) -> None:
        count = len(columns["ts"])
        self.rows += count
        if not self.kept or count == 0:
            return
        self._pending.append(columns)
        self._pending_rows += count
        if self._pending_rows >= self.chunk_rows:
            self._emit()

    def close(self) -> None:
        self._emit()
        if self.stream is not None:
            self.stream.close()

    def discard(self) -> None:
        if self.stream is not None:
            self.stream.discard()

    def columns(self) -> Columns:
        """Every row held in memory, a contiguous array per column (NotRecorded otherwise)."""
        if not self.in_memory:
            raise NotRecorded(self._not_recorded())
        self._emit()
        if len(self._chunks) != 1:
            # Kept as one chunk from now on: asking twice costs no second copy.
            self._chunks = [_concatenate(self._chunks, self.row)]
        return self._chunks[0]

    def frame(self, record: str) -> pd.DataFrame:
        if not self.kept:
            raise NotRecorded(self._not_recorded(record))
        if self.stream is not None:
            return self.stream.read()
        return _frame(self.columns(), self.categories)

    def _emit(self) -> None:
        if not self._pending:
            return
        chunk = _concatenate(self._pending, self.row)
        self._pending, self._pending_rows = [], 0
        if self.stream is not None:
            self.stream.write(chunk)
        else:
            self._chunks.append(chunk)

    def _schema(self) -> pa.Schema:
        import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]

        empty = {name: np.empty(0, dtype=self.row[name]) for name in self.row.names or ()}
        return pa.Schema.from_pandas(_frame(empty, self.categories), preserve_index=False)

    def _not_recorded(self, record: str = "") -> str:
        if self.kept:
            return f"{self.name} were streamed to {self.stream.path if self.stream else '?'}"
        mode = f" (record={record!r})" if record else ""
        needs = "record='calls'" if self.name == "calls" else "record='requests' or 'calls'"
        return f"{self.name} were not recorded{mode}; run with {needs}"


class ParquetStream:
    """One table written chunk by chunk to `folder`/.`name`.parquet.<pid>.stream (a row
    group per chunk); `path` is where the file is now (moved by jsorc_sim.results)."""

    def __init__(self, folder: Path, name: str, schema: Callable[[], pa.Schema],
                 categories: Mapping[str, list[str]]) -> None:
        self.folder = folder
        self.name = f"{name}.parquet"
        self.temp = folder / f".{self.name}.{os.getpid()}.stream"
        self.path = self.temp
        self.categories = categories
        self._schema = schema
        self._writer: pq.ParquetWriter | None = None
        self._fields: list[tuple[str, pa.DataType]] = []
        self._dictionary: dict[str, pa.Array] = {}
        self.closed = False

    def write(self, columns: Columns) -> None:
        import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]

        writer = self._open()
        arrays = []
        for name, kind in self._fields:
            values = columns[name]
            if pa.types.is_dictionary(kind):
                codes = pa.array(values.astype(kind.index_type.to_pandas_dtype(), copy=False))
                arrays.append(pa.DictionaryArray.from_arrays(codes, self._dictionary[name]))
            else:
                arrays.append(pa.array(values, type=kind))
        writer.write_table(pa.Table.from_arrays(arrays, schema=writer.schema))

    def close(self) -> None:
        if self.closed:
            return
        self._open().close()
        self.closed = True

    def discard(self) -> None:
        if self._writer is not None and not self.closed:
            self._writer.close()
        self.closed = True
        self.temp.unlink(missing_ok=True)

    def read(self) -> pd.DataFrame:
        """The file as a DataFrame equal to the in-memory table's (categories as objects)."""
        import pandas as pd

        if not self.closed:
            raise NotRecorded(f"{self.name} is still being written to {self.path}")
        if not self.path.is_file():
            raise NotRecorded(f"{self.name} was streamed to {self.path}, which no longer exists")
        frame = pd.read_parquet(self.path)
        for column, names in self.categories.items():
            # Parquet gives the categories back as str; the in-memory table has objects.
            frame[column] = _categorical(frame[column].cat.codes.to_numpy(), names)
        return frame

    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
            import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]

            schema = self._schema()
            self._fields = [(f.name, f.type) for f in schema]
            # The whole list of names in every row group, so the file reads back with every
            # category, in order, whichever codes a chunk happens to use.
            self._dictionary = {f.name: pa.array(self.categories[f.name], type=f.type.value_type)
                                for f in schema if pa.types.is_dictionary(f.type)}
            self.folder.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, schema)
        return self._writer


def _structured(rows: list[tuple[Any, ...]], row: np.dtype[Any]) -> Columns:
    chunk = np.fromiter(rows, dtype=row, count=len(rows))
    return {name: chunk[name] for name in row.names or ()}


def _cast(columns: Mapping[str, np.ndarray], row: np.dtype[Any], table: str) -> Columns:
    names = row.names or ()
    if set(columns) != set(names):
        missing, extra = set(names) - set(columns), set(columns) - set(names)
        raise ValueError(f"a chunk of {table} needs exactly the columns {', '.join(names)}: "
                         f"missing {sorted(missing)}, unknown {sorted(extra)}")
    lengths = {name: len(columns[name]) for name in names}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"a chunk of {table} has columns of different lengths: {lengths}")
    return {name: np.asarray(columns[name]).astype(row[name], copy=False) for name in names}


def _concatenate(chunks: list[Columns], row: np.dtype[Any]) -> Columns:
    names = row.names or ()
    if not chunks:
        return {name: np.empty(0, dtype=row[name]) for name in names}
    if len(chunks) == 1:  # a structured chunk's columns are strided views: make them compact
        return {name: np.ascontiguousarray(chunks[0][name]) for name in names}
    return {name: np.concatenate([c[name] for c in chunks]) for name in names}


def _frame(columns: Mapping[str, np.ndarray],
           categories: Mapping[str, list[str]]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({name: _categorical(values, categories[name]) if name in categories
                         else values for name, values in columns.items()})


def _categorical(codes: np.ndarray, names: list[str]) -> pd.Categorical:
    import pandas as pd

    categories = pd.Index(names, dtype=object)
    return pd.Categorical.from_codes(codes.astype(np.int32), categories=categories)
