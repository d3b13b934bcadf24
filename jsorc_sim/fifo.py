"""A FIFO multi-server queue computed by recursion instead of events (the fast path's kernel).

With arrivals in order and a fixed set of servers, customer n starts at
max(arrival_n, the earliest time a server is free) on that server, which is then free at
start + service: the Kiefer-Wolfowitz recursion (Lindley's with one server), O(c) per
customer. Which server takes a customer matters to the tables (a replica id per call), so
servers are "tokens" exactly as jsorc_sim.remote's shared queue hands them out: a free token
goes back to the end of the line, a customer takes the token that has been free longest (ties
by the order they came back), and when all are busy the first one to come back.

Compiled with numba when it is there (70-80x a Python loop here; `python -m jsorc_sim.fifo`
measures both); `serve_python` is the same loop uncompiled, kept as the reference the tests
and the benchmark hold the compiled one to.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def serve_python(arrival: np.ndarray, service: np.ndarray, free: np.ndarray,
                 order: np.ndarray, counter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Start time and token of each customer (arrivals sorted, service in seconds).

    `free[k]` is when token k is next free and `order[k]` when it came back (a counter, for
    ties); both are updated in place, so a later call continues the same queue. Returns the
    starts, the tokens and the counter after the last return."""
    n = arrival.shape[0]
    c = free.shape[0]
    start = np.empty(n)
    token = np.empty(n, dtype=np.int64)
    for i in range(n):
        k = 0
        best = free[0]
        best_order = order[0]
        for j in range(1, c):
            f = free[j]
            if f < best or (f == best and order[j] < best_order):
                k = j
                best = f
                best_order = order[j]
        a = arrival[i]
        s = a if a > best else best
        start[i] = s
        token[i] = k
        free[k] = s + service[i]
        order[k] = counter
        counter += 1
    return start, token, counter


def _compiled() -> Callable[..., tuple[np.ndarray, np.ndarray, int]]:
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken
        return serve_python  # install working, slowly
    jitted: Callable[..., tuple[np.ndarray, np.ndarray, int]] = numba.njit(
        cache=True, nogil=True)(serve_python)
    return jitted


_serve: Callable[..., tuple[np.ndarray, np.ndarray, int]] | None = None


def serve(arrival: np.ndarray, service: np.ndarray, free: np.ndarray, order: np.ndarray,
          counter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """`serve_python`, compiled on first use (numba caches the machine code on disk)."""
    global _serve  # one compiled function per process: compiling takes ~1 s
    if _serve is None:
        _serve = _compiled()
    return _serve(np.ascontiguousarray(arrival, dtype=np.float64),
                  np.ascontiguousarray(service, dtype=np.float64), free, order, int(counter))


def _measure(n: int = 1_000_000, servers: int = 4) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    arrival = np.cumsum(rng.exponential(1 / 30, n))
    service = rng.exponential(0.1, n)
    out: dict[str, Any] = {}
    for name, fn in (("compiled", serve), ("python", serve_python)):
        fn(arrival[:10], service[:10], np.zeros(servers), np.arange(servers), servers)
        started = time.perf_counter()
        fn(arrival, service, np.zeros(servers), np.arange(servers), servers)
        out[name] = n / (time.perf_counter() - started)
    return out


if __name__ == "__main__":
    rates = _measure()
    print(", ".join(f"{k} {v:,.0f} customers/s" for k, v in rates.items()))
