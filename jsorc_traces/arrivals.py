"""`Arrivals`: the arrivals of one trace, as the readers (jsorc_traces.readers) return them.

Each arrival's stream is held as a code: an int32 index into `key_names`, the distinct stream
ids of the trace. A day of one function is 20.8 M arrivals of a single key; as Python objects
that column costs 8 bytes an arrival and every question about it ("which streams are there?",
"which arrivals are stream s?") hashes or compares millions of objects. As codes the names are
a short tuple, and selecting a stream's arrivals is one integer comparison per arrival.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = ["FORMATS", "SPREADS", "Arrivals", "CodeArray", "FloatArray", "ObjectArray"]

FORMATS: Final[tuple[str, ...]] = ("requests", "azure2019", "azure2021", "azure_llm2023",
                                   "calls")
SPREADS: Final[tuple[str, ...]] = ("uniform", "even")
# Per-arrival formats have nothing to spread; this value says so in `Arrivals.spread`.
EXACT: Final = "exact"

FloatArray = npt.NDArray[np.float64]
CodeArray = npt.NDArray[np.int32]
ObjectArray = npt.NDArray[np.object_]


@dataclass(frozen=True, eq=False)
class Arrivals:
    """The arrivals of one trace, sorted by time, time 0 being the first arrival.

    `key_names` are the streams of the whole trace that have at least one arrival, in order of
    their first arrival; `key_code[i]` is arrival i's index into them. A window of the trace
    (`until`, or `read_trace(..., max_s=...)`) keeps every name, so a code means the same stream
    in any window and a check of stream names sees the whole trace; a name may then have no
    arrival in the window.

    `eq=False`: element-wise numpy comparison has no single truth value, so two `Arrivals` are
    equal only if they are the same object; compare the arrays to compare contents.
    """

    ts: FloatArray  # seconds since the trace's first arrival: sorted, ts[0] == 0.0
    key_code: CodeArray  # each arrival's stream, an index into key_names
    key_names: tuple[str, ...]  # the trace's distinct stream ids, in order of first arrival
    size: FloatArray  # size of each arrival; nan where the trace gives none
    fmt: str  # the format that was read
    spread: str  # "uniform" or "even" for per-minute counts, "exact" for per-arrival formats
    source: str  # the path read
    # The shift that made ts[0] == 0, i.e. the first arrival on the trace's own clock. Without
    # it the shift cannot be undone (to find the minute an azure2019 arrival came from, or the
    # wall clock of an LLM call).
    origin: float = 0.0

    @classmethod
    def from_keys(cls, ts: npt.ArrayLike, key: npt.ArrayLike, size: npt.ArrayLike, *, fmt: str,
                  spread: str, source: str, origin: float = 0.0) -> Arrivals:
        """Arrivals from one stream id per arrival (names in order of first appearance)."""
        codes, names = pd.factorize(np.asarray(key, dtype=object))
        return cls(ts=np.asarray(ts, dtype=np.float64), key_code=codes.astype(np.int32),
                   key_names=tuple(str(n) for n in names), size=np.asarray(size, np.float64),
                   fmt=fmt, spread=spread, source=source, origin=origin)

    def __post_init__(self) -> None:
        ts = np.asarray(self.ts, dtype=np.float64)
        code = np.asarray(self.key_code)
        size = np.asarray(self.size, dtype=np.float64)
        if ts.ndim != 1 or code.shape != ts.shape or size.shape != ts.shape:
            raise ValueError(
                f"ts, key_code and size must be 1-D of one length, got shapes "
                f"{ts.shape}, {code.shape}, {size.shape}"
            )
        if code.dtype != np.int32:
            raise ValueError(f"key_code must be int32, got {code.dtype}")
        names = self.key_names
        if not isinstance(names, tuple) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"key_names must be a tuple of str, got {names!r:.80}")
        if len(set(names)) != len(names):
            dups = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"key_names must be distinct, got {dups!r:.80} more than once")
        # An empty Arrivals could not honour ts[0] == 0; readers raise TraceError instead.
        if ts.size == 0:
            raise ValueError("Arrivals needs at least one arrival")
        low, high = int(code.min()), int(code.max())
        if low < 0 or high >= len(names):
            bad = low if low < 0 else high
            raise ValueError(f"key_code {bad} is not an index into {len(names)} key_names")
        if ts[0] != 0.0 or not np.isfinite(ts[-1]) or not bool(np.all(ts[1:] >= ts[:-1])):
            raise ValueError("ts must be finite, sorted non-decreasing and start at 0.0")
        if self.fmt not in FORMATS:
            raise ValueError(f"unknown fmt {self.fmt!r}: expected one of {', '.join(FORMATS)}")
        if self.spread not in (*SPREADS, EXACT):
            raise ValueError(
                f"unknown spread {self.spread!r}: expected one of {', '.join((*SPREADS, EXACT))}"
            )
        # The dataclass is frozen, so its arrays should be too. Read-only *views* keep the
        # caller's own arrays writable and cost no copy.
        for name, arr in (("ts", ts), ("key_code", code), ("size", size)):
            view = arr.view()
            view.setflags(write=False)
            object.__setattr__(self, name, view)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @property
    def key(self) -> ObjectArray:
        """Each arrival's stream id (str), built on demand: 8 bytes an arrival while it lives,
        so code that can work on `key_code` and `key_names` should."""
        key = np.asarray(self.key_names, dtype=object)[self.key_code]
        key.setflags(write=False)
        return key

    def keys(self) -> list[str]:
        """Distinct keys of the whole trace, in order of first appearance (see the class)."""
        return list(self.key_names)

    def until(self, max_s: float) -> Arrivals:
        """The arrivals with ts < max_s (max_s > 0, so the first arrival is always kept)."""
        if not max_s > 0:
            raise ValueError(f"max_s must be > 0, got {max_s!r}")
        n = int(np.searchsorted(self.ts, max_s, side="left"))
        if n == len(self):
            return self
        return replace(self, ts=self.ts[:n], key_code=self.key_code[:n], size=self.size[:n])
