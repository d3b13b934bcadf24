"""Where a request stands when the fast path hands it back to SimPy (jsorc_sim.fastpath).

The SimPy walker (`Runtime.serve`) and call (`ActionRuntime.call`) take one of these and carry
on from that point with the same code a request started by SimPy runs, so that what follows a
hand-back -- a scale-down, a move, an out-of-memory -- treats these requests as any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CallResume:
    """A remote call under way: issued at `issued`, at the replica queue from `queued` (on
    the wire until then), and -- when `replica` is set -- in service there since `start`,
    holding one of its tokens. `token` is its token in the observation builder."""

    position: int
    issued: float
    queued: float
    token: int
    service_ms: float
    replica: int | None = None
    start: float = 0.0
    # Waiting at the replica queue: its request for a token, made at the hand-back, so it is
    # in that queue (in its place) before the change that caused the hand-back applies.
    get: Any = None


@dataclass(frozen=True)
class Resume:
    """A walker request under way: computing on a core since `compute_start` (NaN: waiting
    for one), or past its compute with `call` under way."""

    rid: int
    arrival: float
    compute_start: float | None = None
    call: CallResume | None = None
