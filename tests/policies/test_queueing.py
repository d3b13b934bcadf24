"""The queueing formulas the model-based policy predicts with, against known answers."""

from __future__ import annotations

import itertools
import math

import pytest

from policies.queueing import Station, closed_network, erlang_c, mmc_wait


@pytest.mark.parametrize(
    ("servers", "load", "expected"),
    [
        (1, 0.75, 0.75),  # M/M/1: P(wait) = rho
        (2, 1.0, 1 / 3),  # textbook: two servers, one Erlang
        (4, 3.0, 0.5094),  # c = 4, rho = 0.75 (tables: 0.5094)
        (10, 8.0, 0.4092),  # call-centre tables
        (3, 3.0, 1.0),  # saturated
        (3, 0.0, 0.0),
    ],
)
def test_erlang_c_matches_tables(servers: int, load: float, expected: float) -> None:
    assert erlang_c(servers, load) == pytest.approx(expected, abs=5e-4)


def test_mmc_wait_is_the_mm1_formula_for_one_server() -> None:
    rate, service = 7.5, 0.1  # rho 0.75: Wq = rho / (mu - lambda) = 0.3
    assert mmc_wait(rate, service, 1) == pytest.approx(0.3)
    assert math.isinf(mmc_wait(20.0, 0.1, 2))


def exact_mva(demands: list[float], population: int, delay: float = 0.0) -> float:
    """Exact MVA for single-server stations (Reiser & Lavenberg), to check the approximation."""
    queues = [0.0] * len(demands)
    response = 0.0
    for n in range(1, population + 1):
        residence = [d * (1 + q) for d, q in zip(demands, queues, strict=True)]
        response = sum(residence) + delay
        throughput = n / response
        queues = [throughput * r for r in residence]
    return response


def test_one_request_sees_no_queue_whatever_the_servers() -> None:
    stations = [Station(40.0, 1), Station(25.0, 3), Station(10.0, 4)]
    solution = closed_network(stations, 1, delay=8.0)
    assert solution.response == pytest.approx(83.0)  # the plain sum of demands and delay


def test_one_station_holds_every_request() -> None:
    # N requests and one server: each waits for all the others, R = N x D exactly.
    for n in (2, 5, 20):
        assert closed_network([Station(10.0)], n).response == pytest.approx(10.0 * n, rel=1e-4)


@pytest.mark.parametrize(("demands", "population"), list(itertools.product(
    [[10.0, 10.0], [30.0, 10.0, 5.0], [50.0, 2.0]], [2, 4, 8])))
def test_schweitzer_is_close_to_exact_mva(demands: list[float], population: int) -> None:
    approx = closed_network([Station(d) for d in demands], population).response
    exact = exact_mva(demands, population)
    # Schweitzer's approximation is known to stay within a few percent on such networks.
    assert approx == pytest.approx(exact, rel=0.06), f"approx {approx:.2f} vs exact {exact:.2f}"


def exact_load_dependent_mva(stations: list[Station], population: int) -> float:
    """Exact MVA with multi-server stations (marginal queue-length probabilities)."""
    probs = [[1.0] + [0.0] * population for _ in stations]
    response = 0.0
    for n in range(1, population + 1):
        residence = [sum(j * s.demand / min(j, s.servers) * p[j - 1] for j in range(1, n + 1))
                     for s, p in zip(stations, probs, strict=True)]
        response = sum(residence)
        throughput = n / response
        new = []
        for s, p in zip(stations, probs, strict=True):
            q = [0.0] * (population + 1)
            for j in range(1, n + 1):
                q[j] = throughput * s.demand / min(j, s.servers) * p[j - 1]
            q[0] = 1.0 - sum(q[1:])
            new.append(q)
        probs = new
    return response


@pytest.mark.parametrize(("stations", "population"), [
    ([Station(100.0, 4)], 8),
    ([Station(100.0, 8)], 8),
    ([Station(100.0, 4)], 3),
    ([Station(60.0, 4), Station(40.0, 1)], 8),
    ([Station(95.0, 4), Station(30.0, 2), Station(15.0, 1)], 8),
    ([Station(50.0, 4), Station(60.0, 1), Station(30.0, 1)], 8),
    ([Station(150.0, 4), Station(30.0, 3)], 16),
    ([Station(40.0, 2), Station(40.0, 2)], 4),
])
def test_multi_server_stations_are_close_to_exact(stations: list[Station],
                                                  population: int) -> None:
    approx = closed_network(stations, population).response
    exact = exact_load_dependent_mva(stations, population)
    assert approx == pytest.approx(exact, rel=0.07), f"approx {approx:.1f} vs exact {exact:.1f}"


def test_more_servers_never_hurt_and_saturation_is_bounded() -> None:
    responses = [closed_network([Station(100.0, c)], 8).response for c in (1, 2, 4, 8)]
    assert responses == sorted(responses, reverse=True)
    assert responses[0] == pytest.approx(800.0, rel=1e-3)  # 8 requests on one server
    assert responses[-1] == pytest.approx(100.0)  # as many servers as requests: no queue
