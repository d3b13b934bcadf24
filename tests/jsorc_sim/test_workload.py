"""Common random numbers: for one seed, request i gets the same app and the same service-time
draws whatever the policy.

"Request i" is the i-th arrival of an open workload (Poisson or trace), and client k's j-th
request of a closed loop. The draws are read back from the tables alone: a call's base draw is
its `service_ms`, less `size x per_size_ms`, divided by `local_slowdown` when it ran local. A
closed-loop request's client and rank are rebuilt from the requests table, not taken from the
simulator: with no think time beyond `think_ms` a client's next request arrives the instant its
previous one ends (plus the think time), and the first requests, all at t = 0, start the chains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jsorc_sim.results import Result
from jsorc_sim.scenario import from_dict
from jsorc_sim.simulate import simulate

SLOWDOWN = {"a": 2.0, "b": 1.5}
PER_SIZE_MS = {"a": 0.5, "b": 0.0}


def base_scenario(workload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Two actions (local copies slower by SLOWDOWN), an app calling a, b, a and one calling b."""
    table: dict[str, Any] = {
        "duration_s": 120,
        "timeline_s": 30,
        "node": {"cores": 2, "memory_mb": 4000, "runtime_memory_mb": 100, "restart_s": 5},
        "actions": {
            "a": {"service": {"dist": "exp", "mean_ms": 20}, "local_slowdown": SLOWDOWN["a"],
                  "per_size_ms": PER_SIZE_MS["a"], "local_memory_mb": 300,
                  "local_load_s": 1.3, "remote_start_s": 2.1},
            "b": {"service": {"dist": "lognormal", "mean_ms": 30, "cv": 0.5},
                  "local_slowdown": SLOWDOWN["b"], "local_memory_mb": 300,
                  "local_load_s": 0.7, "remote_start_s": 3.3},
        },
        "apps": {"x": {"calls": ["a", "b", "a"]}, "y": {"calls": ["b"], "compute_ms": 3.0}},
        "workload": workload,
    }
    table.update(extra)
    return table


def draws_by_request(r: Result, sizes: dict[int, float] | None = None,
                     ) -> dict[int, tuple[str, dict[int, float]]]:
    """Request id -> (app, {call position: base service draw}) from the calls table; failed
    calls (no service time) are left out. `sizes`: each request id's size, for traces."""
    calls = r.calls
    position = calls.groupby("request_id", sort=False).cumcount().to_numpy()
    out: dict[int, tuple[str, dict[int, float]]] = {}
    for row, pos in zip(calls.itertuples(index=False), position, strict=True):
        app, draws = out.setdefault(int(row.request_id), (str(row.app), {}))
        assert app == str(row.app), f"request {row.request_id} calls for two apps"
        if not row.ok:
            continue
        action = str(row.action)
        service = row.service_ms / (SLOWDOWN[action] if row.placement == "local" else 1.0)
        size = sizes[int(row.request_id)] if sizes else 0.0
        draws[int(pos)] = service - size * PER_SIZE_MS[action]
    return out


def client_ranks(r: Result, clients: int, think_s: float) -> dict[int, tuple[int, int]]:
    """Request id -> (chain, rank) of a closed loop, from the requests table alone."""
    req = r.requests
    later = req[req["ts"] > 0]
    assert later["ts"].is_unique, "two requests arrived at one instant: chains are ambiguous"
    first = sorted(req.loc[req["ts"] == 0, "request_id"])
    assert first == list(range(clients)), "every client's first request is at t = 0"
    arrival_ts = later["ts"].to_numpy()
    arrival_id = later["request_id"].to_numpy()
    order = np.argsort(arrival_ts)
    arrival_ts, arrival_id = arrival_ts[order], arrival_id[order]
    nxt: dict[int, int] = {}
    for rid, ts, latency in zip(req["request_id"], req["ts"], req["latency_ms"], strict=True):
        due = ts + latency / 1000.0 + think_s
        i = int(np.searchsorted(arrival_ts, due - 1e-9))
        if i < len(arrival_ts) and abs(arrival_ts[i] - due) < 1e-9:
            nxt[int(rid)] = int(arrival_id[i])
    ranks: dict[int, tuple[int, int]] = {}
    for chain in first:
        rid: int | None = chain
        rank = 0
        while rid is not None:
            ranks[rid] = (chain, rank)
            rid, rank = nxt.get(rid), rank + 1
    assert len(ranks) == len(req), "every request row belongs to one client's chain"
    return ranks


def assert_same_requests(first: dict[Any, tuple[str, dict[int, float]]],
                         second: dict[Any, tuple[str, dict[int, float]]]) -> int:
    """Same app and same draws at every call position both runs finished; how many draws."""
    compared = 0
    for key in first.keys() & second.keys():
        app_a, draws_a = first[key]
        app_b, draws_b = second[key]
        assert app_a == app_b, f"request {key}: app {app_a} in one run, {app_b} in the other"
        for pos in draws_a.keys() & draws_b.keys():
            assert draws_a[pos] == pytest.approx(draws_b[pos], rel=1e-9, abs=1e-9), \
                f"request {key}, call {pos}: draw {draws_a[pos]} vs {draws_b[pos]}"
            compared += 1
    return compared


@pytest.mark.parametrize("think_ms", [0.0, 5.0])
def test_closed_loop_clients_get_the_same_requests_under_any_policy(think_ms: float) -> None:
    s = from_dict(base_scenario({"kind": "closed", "clients": 4, "think_ms": think_ms,
                                 "mix": {"x": 1, "y": 2}}))
    local = simulate(s, "all_local", seed=7)
    remote = simulate(s, "all_remote", seed=7)
    assert set(local.calls["placement"].astype(str)) == {"local"}
    assert set(remote.calls["placement"].astype(str)) == {"remote"}
    keyed = []
    for r in (local, remote):
        ranks = client_ranks(r, 4, think_ms / 1000.0)
        by_id = draws_by_request(r)
        keyed.append({ranks[rid]: value for rid, value in by_id.items() if rid in ranks})
    # The policies change who finishes first, so the same (client, rank) has other ids...
    ids = [{key: rid for rid, key in client_ranks(r, 4, think_ms / 1000.0).items()}
           for r in (local, remote)]
    common = ids[0].keys() & ids[1].keys()
    assert len(common) > 500
    assert any(ids[0][key] != ids[1][key] for key in common), "the test needs other orders"
    # ... but the same app and the same service draws.
    assert assert_same_requests(keyed[0], keyed[1]) > 1000
    a_draws = [d for _, draws in keyed[1].values() for pos, d in draws.items()
               if pos in (0, 2) and len(draws) == 3]
    assert np.mean(a_draws) == pytest.approx(20.0, rel=0.1), "a's draws are exp(20 ms)"


def test_poisson_arrivals_get_the_same_draws_even_when_requests_fail_midway(
        tmp_path: Path) -> None:
    samples = [5.0, 10.0, 40.0, 80.0]
    (tmp_path / "b.txt").write_text("".join(f"{v}\n" for v in samples))
    table = base_scenario({"kind": "poisson", "rate_per_s": 4, "mix": {"x": 1, "y": 0}},
                          duration_s=60)
    table["actions"]["b"]["service"] = {"dist": "empirical", "file": "b.txt"}
    # Both local copies and the runtime need 700 MB of 650. With a local (loaded at once) and
    # b loading locally on its first call (the policy `none`), x's call of b runs the node
    # out of memory after x's first call of a: requests fail midway, again and again.
    table["node"]["memory_mb"] = 650
    table["actions"]["a"]["local_load_s"] = 0
    table["placement"] = {"a": "local"}
    s = from_dict(table, base_dir=str(tmp_path))
    failing = simulate(s, "none", seed=3)
    remote = simulate(s, "all_remote", seed=3)
    mixed = simulate(s, "static", params={"placements": {"a": "local", "b": "remote:1"}},
                     seed=3)
    assert failing.cost()["oom_events"] >= 2
    req, calls = failing.requests, failing.calls
    failed_after_a_call = set(req.loc[~req["ok"], "request_id"]) \
        & set(calls.loc[calls["ok"], "request_id"])
    assert len(failed_after_a_call) >= 5, "requests failed after a successful call"
    assert mixed.cost()["oom_events"] == 0 and mixed.cost()["failed_calls"] == 0
    by_run = [draws_by_request(r) for r in (failing, remote, mixed)]
    assert assert_same_requests(by_run[0], by_run[1]) >= 5
    assert assert_same_requests(by_run[1], by_run[2]) > 500
    b_draws = [d for _, draws in by_run[1].values() for pos, d in draws.items() if pos == 1]
    assert len(b_draws) > 100
    assert all(min(abs(d - v) for v in samples) < 1e-9 for d in b_draws), \
        "b's draws are samples of its file"
    assert set(b_draws) == set(samples)


def test_trace_arrivals_get_the_same_draws_under_any_policy(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    ts = np.cumsum(rng.exponential(0.1, 400))
    ts -= ts[0]
    apps = rng.choice(["x", "y"], 400)
    sizes = rng.integers(0, 20, 400)
    (tmp_path / "trace.csv").write_text("ts,app,size\n" + "".join(
        f"{float(t)!r},{a},{z}\n" for t, a, z in zip(ts, apps, sizes, strict=True)))
    s = from_dict(base_scenario({"kind": "trace", "trace": "trace.csv"}, duration_s=45),
                  base_dir=str(tmp_path))
    local = simulate(s, "all_local", seed=5)
    remote = simulate(s, "all_remote", seed=5)
    # The i-th arrival is the trace's i-th line: ids follow arrival order.
    by_id = {i: float(z) for i, z in enumerate(sizes)}
    for r in (local, remote):
        req = r.requests.set_index("request_id")
        assert (req["app"].astype(str) == apps[req.index]).all()
    assert assert_same_requests(draws_by_request(local, by_id),
                                draws_by_request(remote, by_id)) > 500


def test_a_request_draws_all_its_service_times_on_arrival() -> None:
    """A request waiting at the door or in a queue has its draws already: a run whose runtime
    is down for a while still gives the i-th arrival the draws of a run where it is not."""
    table = base_scenario({"kind": "poisson", "rate_per_s": 3, "mix": {"x": 1, "y": 20}},
                          duration_s=120)
    up = simulate(from_dict(table), "all_remote", seed=2)
    # Same arrivals, but the node is too small for a local a: each cold start of a runs it
    # out of memory, and requests wait at the door for 5 s restarts; b goes remote.
    table["node"]["memory_mb"] = 350
    table["actions"]["a"]["default_mode"] = "local"
    table["actions"]["b"]["default_mode"] = "remote"
    down = simulate(from_dict(table), "none", seed=2)
    assert down.cost()["oom_events"] >= 2
    assert assert_same_requests(draws_by_request(up), draws_by_request(down)) > 50
