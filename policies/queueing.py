"""Queueing formulas the model-based policy predicts with. Pure functions, no state.

- `erlang_c(c, load)`: probability that an arrival waits in an M/M/c queue.
- `mmc_wait(rate, service, c)`: mean wait in queue of an M/M/c queue.
- `closed_network(...)`: Schweitzer's approximate Mean Value Analysis of a closed network
  with multi-server stations (see its docstring for the multi-server step). Exact with one
  request and for one saturated station; within a few percent of exact load-dependent MVA
  on the networks the tests check (Seidmann's transformation, tried first, was up to 27 %
  off when requests and servers are about equal -- the common case of 8 clients on 4 cores).
  It copes with fractional populations >= 1 and saturation, where open-queue formulas
  diverge. References: Schweitzer (1979); Lazowska et al., "Quantitative System
  Performance", ch. 6 and 8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def erlang_c(c: int, load: float) -> float:
    """P(wait) in M/M/c with offered load `load` = rate x service (in servers). 1.0 if saturated."""
    if c < 1:
        raise ValueError(f"servers must be >= 1, got {c}")
    if load <= 0:
        return 0.0
    if load >= c:
        return 1.0
    # Erlang B by its stable recurrence, then C from B.
    b = 1.0
    for k in range(1, c + 1):
        b = load * b / (k + load * b)
    rho = load / c
    return b / (1 - rho + rho * b)


def mmc_wait(rate: float, service: float, c: int) -> float:
    """Mean time in queue (same unit as `service`) of M/M/c; inf when saturated."""
    load = rate * service
    if load >= c:
        return math.inf
    if load <= 0:
        return 0.0
    return erlang_c(c, load) * service / (c - load)


@dataclass(frozen=True)
class Station:
    """A service centre: `demand` is service time per request (all its visits), `servers` >= 1."""

    demand: float
    servers: int = 1


@dataclass(frozen=True)
class NetworkSolution:
    response: float  # mean time a request spends in the network (excluding think time)
    throughput: float  # requests per time unit
    residence: tuple[float, ...]  # per station, queueing included


def closed_network(stations: Sequence[Station], population: float, delay: float = 0.0,
                   think: float = 0.0, tolerance: float = 1e-7,
                   max_iterations: int = 500) -> NetworkSolution:
    """Approximate MVA of a closed network of `population` requests.

    `delay` is time every request spends outside any queue (network hops); `think` is time
    between requests of a client (not part of the response). A request arriving at a
    c-server station of demand D is taken to see Q' = Q(N-1) others there (Schweitzer) and
    to wait only for those beyond the c - 1 other free servers: R = D + (D/c) max(0, Q'-c+1).
    """
    n = max(float(population), 1.0)
    shrink = (n - 1.0) / n
    queues = [n / (len(stations) + 1)] * len(stations)
    residence = [s.demand for s in stations]
    throughput = 0.0
    for _ in range(max_iterations):
        residence = [s.demand + s.demand / s.servers * max(0.0, q * shrink - s.servers + 1)
                     for s, q in zip(stations, queues, strict=True)]
        total = delay + sum(residence)
        throughput = n / (total + think) if total + think > 0 else math.inf
        new = [throughput * r for r in residence]
        converged = max((abs(a - b) for a, b in zip(new, queues, strict=True)),
                        default=0.0) < tolerance
        queues = new
        if converged:
            break
    return NetworkSolution(delay + sum(residence), throughput, tuple(residence))
