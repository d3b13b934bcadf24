"""The simulator against queueing theory: Erlang C, Pollaczek–Khinchine, Little's law.

Every number the simulator is held to is computed here from the scenario's parameters
(scipy for the Poisson sums), never copied from a run. The run lengths are sized from the
spread of the estimates over several seeds, measured once while writing these tests: the
relative standard deviation of the mean queue wait is about 0.8 % (M/M/1, 10^6 calls),
0.9 % (M/M/4, 1.6·10^6), 1.0 % (M/D/1, 4·10^5) and 0.7 % (M/M/2 on the node's cores,
10^6), so the 3 % tolerance is three standard deviations or more. Each case has its own
fixed seed (the same seed would give every case the same normalised random draws, so their
errors would move together): the tests are deterministic.

The file runs in about 50 s on one core; each run is made once and shared by the tests
that read it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from jsorc_sim.results import Result
from jsorc_sim.scenario import from_dict
from jsorc_sim.simulate import simulate

WARMUP_S = 20.0  # 200 mean service times: far past the queue's relaxation time at ρ = 0.75


# --- theory -------------------------------------------------------------------------------


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in M/M/c, from Erlang B = P(c) / P(X <= c)."""
    blocking = stats.poisson.pmf(servers, offered) / stats.poisson.cdf(servers, offered)
    rho = offered / servers
    return float(blocking / (1.0 - rho * (1.0 - blocking)))


def mmc_wait_ms(servers: int, rate_per_s: float, mean_ms: float) -> float:
    """Erlang C's mean wait in queue W_q (ms) of M/M/c."""
    offered = rate_per_s * mean_ms / 1000.0
    return erlang_c(servers, offered) * mean_ms / (servers - offered)


def mg1_wait_ms(rate_per_s: float, mean_ms: float, cv: float) -> float:
    """Pollaczek–Khinchine's W_q (ms) of M/G/1: λ E[S²] / (2 (1 - ρ))."""
    rate_per_ms = rate_per_s / 1000.0
    second_moment = mean_ms**2 * (1.0 + cv**2)
    return rate_per_ms * second_moment / (2.0 * (1.0 - rate_per_ms * mean_ms))


def erlang_c_by_sum(servers: int, offered: float) -> float:
    """The textbook form of Erlang C, as an independent check of `erlang_c`."""
    head = sum(offered**k / math.factorial(k) for k in range(servers))
    tail = offered**servers / math.factorial(servers) / (1.0 - offered / servers)
    return tail / (head + tail)


@pytest.mark.parametrize(("servers", "offered", "expected"), [
    (1, 0.75, 0.75),  # M/M/1: an arrival waits with probability ρ
    (2, 1.5, 9 / 14),  # (1.125 / 0.25) / (1 + 1.5 + 4.5)
    (4, 3.0, None),
    (8, 6.4, None),
])
def test_erlang_c_helper_agrees_with_the_textbook_sum(servers: int, offered: float,
                                                      expected: float | None) -> None:
    want = erlang_c_by_sum(servers, offered) if expected is None else expected
    assert erlang_c(servers, offered) == pytest.approx(want, rel=1e-12)


def test_pollaczek_khinchine_with_exponential_service_is_erlang_c_with_one_server() -> None:
    assert mg1_wait_ms(7.5, 100.0, cv=1.0) == pytest.approx(mmc_wait_ms(1, 7.5, 100.0),
                                                            rel=1e-12)


# --- queues -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queue:
    """One action called by Poisson arrivals, served by `servers` at utilisation `rho`.

    `where = "remote"`: `servers` replicas of one core behind the action's shared FIFO.
    `where = "local"`: the action runs on the node, which has `servers` cores.
    """

    label: str
    service: str  # "exp" | "const"
    servers: int
    where: str
    calls: int  # about this many calls after warm-up
    seed: int
    rho: float = 0.75
    mean_ms: float = 100.0

    @property
    def rate_per_s(self) -> float:
        return self.rho * self.servers * 1000.0 / self.mean_ms

    @property
    def span_s(self) -> float:
        return self.calls / self.rate_per_s

    def theory_wait_ms(self) -> float:
        if self.service == "exp":
            return mmc_wait_ms(self.servers, self.rate_per_s, self.mean_ms)
        assert self.service == "const" and self.servers == 1, "no closed form for M/D/c"
        return mg1_wait_ms(self.rate_per_s, self.mean_ms, cv=0.0)

    def scenario(self) -> dict[str, Any]:
        local = self.where == "local"
        return {
            "name": self.label,
            "duration_s": WARMUP_S + self.span_s,
            "warmup_s": WARMUP_S,
            **({"node": {"cores": self.servers}} if local else {}),
            "actions": {"a": {"service": {"dist": self.service, "mean_ms": self.mean_ms},
                              "local_memory_mb": 1.0}},
            "apps": {"x": {"calls": ["a"]}},
            "workload": {"kind": "poisson", "rate_per_s": self.rate_per_s},
            "placement": {"a": "local" if local else f"remote:{self.servers}"},
        }


QUEUES = [
    Queue("M/M/1 remote", "exp", servers=1, where="remote", calls=1_000_000, seed=1),
    Queue("M/M/4 remote", "exp", servers=4, where="remote", calls=1_600_000, seed=2),
    Queue("M/D/1 remote", "const", servers=1, where="remote", calls=400_000, seed=3),
    Queue("M/M/2 node cores", "exp", servers=2, where="local", calls=1_000_000, seed=4),
]
MMC = [q for q in QUEUES if q.service == "exp"]


def ids(cases: list[Queue]) -> list[str]:
    return [q.label for q in cases]


@functools.cache
def run(queue: Queue) -> Result:
    """The queue simulated once per test session (several tests read the same run)."""
    return simulate(from_dict(queue.scenario()), "none", seed=queue.seed)


def after_warmup(result: Result) -> pd.DataFrame:
    calls = result.calls
    return calls[calls["ts"] >= result.scenario.warmup_s]


@pytest.mark.parametrize("queue", QUEUES, ids=ids(QUEUES))
def test_mean_queue_wait_matches_theory(queue: Queue) -> None:
    """M/M/c against Erlang C, M/D/1 against Pollaczek–Khinchine, within 3 %."""
    calls = after_warmup(run(queue))
    assert len(calls) >= 100_000
    assert set(calls["placement"]) == {queue.where}
    assert calls["ok"].all()
    theory = queue.theory_wait_ms()
    simulated = float(calls["wait_ms"].mean())
    error = simulated / theory - 1.0
    assert abs(error) <= 0.03, (
        f"{queue.label} at ρ={queue.rho}: mean wait theory {theory:.3f} ms vs simulated "
        f"{simulated:.3f} ms over {len(calls)} calls ({error:+.2%})")


def short(queue: Queue) -> Queue:
    """The queue over 10^5 calls: enough for a busy fraction (its deviation is about 0.4 %).
    Its own run, so that under pytest-xdist a worker does not repeat a long one."""
    return dataclasses.replace(queue, calls=100_000)


@pytest.mark.parametrize("queue", QUEUES, ids=ids(QUEUES))
def test_servers_busy_fraction_is_rho(queue: Queue) -> None:
    """Service time handed out after warm-up / (servers × span) = λ E[S] / c = ρ, within 2 %."""
    result = run(short(queue))
    span_ms = (result.scenario.duration_s - result.scenario.warmup_s) * 1000.0
    busy = float(after_warmup(result)["service_ms"].sum()) / (queue.servers * span_ms)
    error = busy / queue.rho - 1.0
    assert abs(error) <= 0.02, (
        f"{queue.label}: busy fraction theory ρ={queue.rho} vs simulated {busy:.4f} "
        f"({error:+.2%})")


def test_timeline_cpu_utilisation_of_node_cores_is_rho() -> None:
    """Local calls keep the node's cores busy ρ of the time; the timeline's samples say so."""
    queue = short(next(q for q in QUEUES if q.where == "local"))
    result = run(queue)
    timeline = result.timeline
    timeline = timeline[timeline["ts"] > result.scenario.warmup_s]
    utilisation = float(timeline["cpu_utilisation"].mean())
    error = utilisation / queue.rho - 1.0
    assert abs(error) <= 0.02, (
        f"{queue.label}: cpu_utilisation theory ρ={queue.rho} vs timeline mean "
        f"{utilisation:.4f} over {len(timeline)} samples ({error:+.2%})")


# --- Little's law ---------------------------------------------------------------------------


LITTLE = {
    # A walker that computes on a core, calls a local action then a remote one over the
    # network: requests wait for cores, for replicas and on the wire.
    "open walker": {
        "duration_s": 2_520.0,
        "warmup_s": WARMUP_S,
        "timeline_s": 1.0,
        "node": {"cores": 2},
        "network": {"rtt_ms": 5.0},
        "actions": {
            "embed": {"service": {"dist": "exp", "mean_ms": 20.0}, "local_memory_mb": 1.0},
            "rank": {"service": {"dist": "exp", "mean_ms": 50.0}},
        },
        "apps": {"walk": {"calls": ["embed", "rank"], "compute_ms": 5.0}},
        "workload": {"kind": "poisson", "rate_per_s": 40.0},
        "placement": {"embed": "local", "rank": "remote:3"},
    },
    # Closed loop: 6 clients with think time share 1 replica, so requests queue for it.
    "closed clients with think time": {
        "duration_s": 3_020.0,
        "warmup_s": WARMUP_S,
        "timeline_s": 1.0,
        "actions": {"a": {"service": {"dist": "exp", "mean_ms": 40.0}}},
        "apps": {"x": {"calls": ["a"]}},
        "workload": {"kind": "closed", "clients": 6, "think_ms": 200.0},
        "placement": {"a": "remote:1"},
    },
}


@pytest.mark.parametrize("name", list(LITTLE))
def test_littles_law_on_the_timeline(name: str) -> None:
    """Mean requests in system (sampled every second) = λ observed × mean latency, within 3 %."""
    result = simulate(from_dict(LITTLE[name]), "none", seed=1)
    s = result.scenario
    span_s = s.duration_s - s.warmup_s
    samples = result.timeline.drop_duplicates("ts")  # one row per action per sample
    samples = samples[samples["ts"] >= s.warmup_s]
    requests = result.requests
    requests = requests[requests["ts"] >= s.warmup_s]
    assert requests["ok"].all()
    assert len(samples) == pytest.approx(span_s / s.timeline_s, abs=1)

    in_system = float(samples["requests_in_system"].mean())
    rate = len(requests) / span_s
    latency_s = float(requests["latency_ms"].mean()) / 1000.0
    error = in_system / (rate * latency_s) - 1.0
    assert abs(error) <= 0.03, (
        f"{name}: L theory λW = {rate:.3f}/s × {latency_s * 1000:.2f} ms = "
        f"{rate * latency_s:.4f} vs timeline mean {in_system:.4f} ({error:+.2%})")


# --- one client, constant times -------------------------------------------------------------


def test_one_closed_client_with_constant_times_is_a_clock() -> None:
    """compute + local a + network + remote b for every request; ~1000 / latency per second."""
    compute_ms, a_ms, b_ms = 4.0, 7.0, 11.0
    rtt_ms, payload_kb, bandwidth_mbps = 3.0, 25.0, 100.0
    raw: dict[str, Any] = {
        "duration_s": 100.0,
        "warmup_s": 10.0,
        "network": {"rtt_ms": rtt_ms, "bandwidth_mbps": bandwidth_mbps},
        "actions": {
            "a": {"service": {"dist": "const", "mean_ms": a_ms}, "local_memory_mb": 1.0},
            "b": {"service": {"dist": "const", "mean_ms": b_ms}, "payload_kb": payload_kb},
        },
        "apps": {"x": {"calls": ["a", "b"], "compute_ms": compute_ms}},
        "workload": {"kind": "closed", "clients": 1},
        "placement": {"a": "local", "b": "remote:1"},
    }
    network_ms = rtt_ms + payload_kb * 8.0 / bandwidth_mbps  # KB × 8 = kbit; / Mbit/s = ms
    latency_ms = compute_ms + a_ms + network_ms + b_ms
    result = simulate(from_dict(raw), "none", seed=1)

    requests = result.requests
    assert len(requests) > 1000
    assert requests["ok"].all()
    worst = float((requests["latency_ms"] - latency_ms).abs().max())
    assert worst <= 1e-6, (
        f"latency theory {latency_ms} ms vs simulated {requests['latency_ms'].min()!r}.."
        f"{requests['latency_ms'].max()!r} ms")

    calls = result.calls
    b = calls[calls["action"] == "b"]
    assert np.allclose(b["network_ms"], network_ms, rtol=0, atol=1e-9), (
        f"network theory {network_ms} ms vs simulated {sorted(set(b['network_ms']))}")
    assert np.allclose(calls["wait_ms"], 0.0, rtol=0, atol=1e-9), "one client never waits"

    # Request k runs over [k L, (k + 1) L). The report counts those arriving at or after the
    # warm-up that finished before the end: k from ceil(warmup / L) to floor(duration / L) - 1.
    # That is within one request of span / L at each edge: up to 2 below it, never above.
    duration_s, warmup_s = raw["duration_s"], raw["warmup_s"]
    span_s = duration_s - warmup_s
    period_s = latency_ms / 1000.0
    counted = math.floor(duration_s / period_s) - math.ceil(warmup_s / period_s)
    throughput = result.report()["walker_run"]["all"]["throughput"]
    assert throughput == round(counted / span_s, 4), (
        f"throughput theory {counted} requests / {span_s:g} s = {counted / span_s:.4f}/s vs "
        f"report {throughput}/s ({span_s * throughput:.1f} requests)")
    theory = 1000.0 / latency_ms
    assert -2.0 / span_s < throughput - theory <= 0.0, (
        f"throughput theory 1000/{latency_ms} = {theory:.4f}/s ({span_s * theory:.1f} "
        f"requests) vs report {throughput}/s ({span_s * throughput:.1f} requests)")
