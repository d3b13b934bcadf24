"""`Result.report()`'s `unfinished` section: what the finished-request latencies leave out.

The expected numbers are computed here from the arrival times the test writes (a trace) and
the queue's own recursion, not from the simulator's tables: an overloaded single FIFO server
with a constant service time finishes request i at f_i = max(a_i, f_{i-1}) + s (Lindley).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jsorc_sim.results import LATENCY_KEYS
from jsorc_sim.scenario import from_dict
from jsorc_sim.simulate import simulate

SERVICE_S = 0.1  # one replica: 10 calls/s
CALM_RATE_PER_S, CALM_S = 5.0, 40.0  # utilisation 0.5 for 40 s...
RUSH_RATE_PER_S = 25.0  # ... then 2.5 x capacity: the queue grows to the end
DURATION_S = 60.0
WARMUP_S = 10.0


def write_trace(path: Path, ts: np.ndarray, apps: np.ndarray) -> None:
    path.write_text("ts,app\n" + "".join(f"{float(t)!r},{a}\n"
                                         for t, a in zip(ts, apps, strict=True)))


def overloaded(tmp_path: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """An M/D/1 queue whose Poisson arrivals (written as a trace) rise past its capacity for
    the last 20 s: the finished requests are mostly the calm ones."""
    rng = np.random.default_rng(4)
    calm = np.cumsum(rng.exponential(1.0 / CALM_RATE_PER_S, 400))
    calm = np.concatenate([[0.0], calm[calm < CALM_S]])  # a replay starts at the first one
    rush = CALM_S + np.cumsum(rng.exponential(1.0 / RUSH_RATE_PER_S, 1000))
    ts = np.concatenate([calm, rush[rush < DURATION_S]])
    apps = rng.choice(["x", "y"], len(ts), p=[0.7, 0.3])
    write_trace(tmp_path / "arrivals.csv", ts, apps)
    table = {
        "duration_s": DURATION_S,
        "warmup_s": WARMUP_S,
        "actions": {"a": {"service": {"dist": "const", "mean_ms": SERVICE_S * 1000}}},
        "apps": {"x": {"calls": ["a"]}, "y": {"calls": ["a"]}},
        "workload": {"kind": "trace", "trace": "arrivals.csv"},
        "placement": {"a": "remote:1"},
    }
    return table, ts, apps


def lindley(ts: np.ndarray) -> np.ndarray:
    finish = np.empty_like(ts)
    last = 0.0
    for i, t in enumerate(ts):
        last = max(t, last) + SERVICE_S
        finish[i] = last
    return finish


def test_an_overload_shows_in_the_unfinished_section(tmp_path: Path) -> None:
    table, ts, apps = overloaded(tmp_path)
    r = simulate(from_dict(table, base_dir=str(tmp_path)), "none", seed=1)
    report = r.report()
    assert set(report) == {"walker_run", "cost", "unfinished", "statistics", "engine"}

    arrived = ts < DURATION_S
    ts, apps = ts[arrived], apps[arrived]
    finish = lindley(ts)
    assert np.abs(finish - DURATION_S).min() > 1e-6, "no call ends at the very end"
    unfinished = finish > DURATION_S
    section = report["unfinished"]
    assert section["count"] == {"x": int((unfinished & (apps == "x")).sum()),
                                "y": int((unfinished & (apps == "y")).sum()),
                                "all": int(unfinished.sum())}
    assert section["count"]["all"] > 150, "the queue grew by ~15 requests a second"
    assert report["cost"]["unfinished_requests"] == section["count"]["all"]

    # Every arrival after warm-up, unfinished ones at their age at the end.
    latency_ms = (np.minimum(finish, DURATION_S) - ts) * 1000.0
    for app, mask in (("x", apps == "x"), ("y", apps == "y"), ("all", np.full(len(ts), True))):
        keep = mask & (ts >= WARMUP_S)
        bound = section["all_arrivals_lower_bound"][app]
        assert bound["arrivals"] == int(keep.sum())
        assert bound["average_latency"] == pytest.approx(latency_ms[keep].mean(), abs=2e-3)
        for key, q in LATENCY_KEYS:
            assert bound[key] == pytest.approx(np.percentile(latency_ms[keep], q), abs=2e-3)
        # A lower bound of the mean over all arrivals, and here above the finished ones'
        # mean. (Not a law: after a long overload the youngest unfinished requests of a FIFO
        # queue can be younger than the finished ones' latencies.)
        assert bound["average_latency"] <= ((finish - ts)[keep] * 1000.0).mean()
        finished = report["walker_run"][app]["average_latency"]
        assert bound["average_latency"] > 1.1 * finished
    # Finished requests' latencies are the queue's, which the bound includes unchanged.
    done = ~unfinished & (ts >= WARMUP_S)
    assert report["walker_run"]["all"]["average_latency"] == pytest.approx(
        latency_ms[done].mean(), abs=2e-3)


def test_requests_waiting_at_the_door_are_unfinished(tmp_path: Path) -> None:
    """The run ends during a restart: the requests waiting at the door are unfinished."""
    ts = np.arange(0.0, 40.0)  # one arrival a second
    write_trace(tmp_path / "arrivals.csv", ts, np.array(["x"] * len(ts)))
    table = {
        "duration_s": 20,
        "node": {"memory_mb": 500, "runtime_memory_mb": 100, "restart_s": 30},
        # 800 MB cannot load on the node: request 0's cold start runs it out of memory.
        "actions": {"a": {"service": {"dist": "const", "mean_ms": 10},
                          "local_memory_mb": 800}},
        "apps": {"x": {"calls": ["a"]}},
        "workload": {"kind": "trace", "trace": "arrivals.csv"},
    }
    r = simulate(from_dict(table, base_dir=str(tmp_path)), "none", seed=1)
    assert r.events["kind"].tolist() == ["out_of_memory"] and r.events["ts"].tolist() == [0.0]
    assert r.requests[["request_id", "ok", "latency_ms"]].values.tolist() == [[0, False, 0.0]]
    # Arrivals at 1 .. 19 s found the runtime down until 30 s.
    section = r.report()["unfinished"]
    assert section["count"] == {"x": 19, "all": 19}
    ages_ms = np.array([0.0, *((20.0 - ts[1:20]) * 1000.0)])
    bound = section["all_arrivals_lower_bound"]["all"]
    assert bound["arrivals"] == 20
    assert bound["average_latency"] == pytest.approx(ages_ms.mean())
    assert bound["50th_latency"] == pytest.approx(np.percentile(ages_ms, 50))
    assert r.report()["walker_run"]["all"]["average_latency"] is None, "none succeeded"


def test_a_run_with_nothing_left_over_has_an_empty_unfinished_section(tmp_path: Path) -> None:
    write_trace(tmp_path / "arrivals.csv", np.array([0.0, 1.0, 2.0]), np.array(["x"] * 3))
    table = {
        "duration_s": 10,
        "actions": {"a": {"service": {"dist": "const", "mean_ms": 50}}},
        "apps": {"x": {"calls": ["a"]}},
        "workload": {"kind": "trace", "trace": "arrivals.csv"},
        "placement": {"a": "remote:1"},
    }
    report = simulate(from_dict(table, base_dir=str(tmp_path)), "none", seed=1).report()
    assert report["unfinished"]["count"] == {"x": 0, "all": 0}
    bound = report["unfinished"]["all_arrivals_lower_bound"]["all"]
    assert bound == {"arrivals": 3, "average_latency": 50.0,
                     **{key: 50.0 for key, _ in LATENCY_KEYS}}
