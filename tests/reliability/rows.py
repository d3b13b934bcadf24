"""A row of the fault suite while it runs (`Row`) and once done (`RowResult`), the budgets
that size rows, and `serving`, which ties a server's life to a row."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.reliability.counting import Kind, Load, Outcome
from tests.reliability.harness import STOP_BOUND_S, Operator, Server


@dataclass(frozen=True)
class Budget:
    """How long a row runs: ``warmup_s`` of load before the fault, at most ``settle_s`` for
    recovery after it, ``tail_s`` more load once recovered; rows 1-2 and 16 size by the
    other fields."""

    name: str
    warmup_s: float
    settle_s: float
    tail_s: float
    moves: int
    scale_cycles: int
    busy_s: float


SHORT = Budget("short", warmup_s=1.0, settle_s=20.0, tail_s=1.0, moves=4, scale_cycles=1,
               busy_s=6.0)
LONG = Budget("long", warmup_s=8.0, settle_s=90.0, tail_s=15.0, moves=100, scale_cycles=3,
              busy_s=45.0)


@dataclass(frozen=True)
class RowResult:
    """One row of the table. ``problems`` empty means the row passed."""

    row: int
    name: str
    clients: int
    seconds: float
    sent: int
    completed: int
    failed: int
    aborted: int
    lost: int
    recovery_s: float | None
    restored_s: float | None
    admin_max_s: float | None
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    messages: Mapping[str, int] = field(default_factory=dict)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems and not self.skipped

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "name": self.name, "clients": self.clients,
                "seconds": round(self.seconds, 2), "sent": self.sent,
                "completed": self.completed, "failed": self.failed, "aborted": self.aborted,
                "lost": self.lost, "recovery_s": _round(self.recovery_s),
                "restored_s": _round(self.restored_s), "admin_max_s": _round(self.admin_max_s),
                "ok": self.ok, "problems": list(self.problems), "notes": list(self.notes),
                "messages": dict(self.messages), "skipped": self.skipped}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


@dataclass
class Row:
    """What a scenario gathers while it runs, turned into a RowResult by :meth:`result`."""

    row: int
    name: str
    load: Load | None = None
    began: float = field(default_factory=time.monotonic)
    recovery_s: float | None = None
    restored_s: float | None = None
    operator: Operator | None = None
    max_failed: int = 0
    max_aborted: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: list[Outcome] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def result(self) -> RowResult:
        outcomes = self.load.snapshot() if self.load else []
        counts = Counter(o.kind for o in outcomes)
        sent = self.load.sent if self.load else 0
        failed, aborted, lost = counts[Kind.FAILED], counts[Kind.ABORTED], counts[Kind.LOST]
        if sent != len(outcomes):
            self.problem(f"harness: {sent} sent but {len(outcomes)} outcomes")
        if lost:
            self.problem(f"lost {lost} (must be 0)")
        if failed > self.max_failed:
            self.problem(f"failed {failed} > {self.max_failed} allowed")
        if aborted > self.max_aborted:
            self.problem(f"aborted {aborted} > {self.max_aborted} allowed")
        messages = Counter(_shorten(o.message) for o in outcomes if o.kind is not Kind.COMPLETED)
        admin = self.operator.max_latency if self.operator else None
        if self.operator and self.operator.errors:
            self.note(f"admin errors: {len(self.operator.errors)}, first: "
                      f"{self.operator.errors[0]}")
        return RowResult(self.row, self.name, self.load.clients if self.load else 0,
                         time.monotonic() - self.began, sent, counts[Kind.COMPLETED], failed,
                         aborted, lost, self.recovery_s, self.restored_s, admin,
                         tuple(self.problems), tuple(self.notes),
                         dict(messages.most_common(5)))


def _shorten(message: str) -> str:
    """A message without the parts that differ per request (ids, ports, timings)."""
    text = re.sub(r"\b[0-9a-f]{8,}\b", "<id>", message)
    text = re.sub(r"127\.0\.0\.1:\d+", "LOOPBACK", text)
    text = re.sub(r"\d+\.\d+", "<n>", text).replace("LOOPBACK", "127.0.0.1:<port>")
    return text[:240]


@contextlib.contextmanager
def serving(workdir: Path, args: Sequence[str] = (), row: Row | None = None,
            **kw: Any) -> Iterator[Server]:
    """A started server with the suite's walkers; stopped and swept afterwards. A server
    that outlives the stop bound, or children that outlive their server, fail the row: the
    issue asks for bounded shutdown and no orphans whatever the fault."""
    server = Server(workdir, args, **kw)
    try:
        server.start()
        server.define_walkers()
        yield server
    finally:
        stopped = server.stop()
        left = server.survivors()
        if row is not None:
            if stopped is None:
                row.problem(f"server did not exit within {STOP_BOUND_S:g} s of SIGTERM "
                            "(SIGKILLed)")
            if left:
                row.problem(f"{len(left)} child(ren) outlived the server's stop: "
                            + ", ".join(sorted({t.name for t in left})))
        server.sweep()


def dumps(results: Sequence[RowResult]) -> str:
    return json.dumps([r.as_dict() for r in results], indent=2)


@dataclass(frozen=True)
class RunContext:
    """Where a run keeps each row's server log and state, and how long rows run."""

    budget: Budget
    root: Path

    def dir(self, row: int) -> Path:
        path = self.root / f"row{row:02d}"
        path.mkdir(parents=True, exist_ok=True)
        return path
