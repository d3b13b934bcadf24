"""A run's call table (or a live `jsorc trackact` trace) replays as the same arrivals."""

from __future__ import annotations

from pathlib import Path

from jsorc_sim.scenario import from_dict
from jsorc_sim.simulate import simulate

BASE = {
    "duration_s": 60,
    "actions": {"x": {"service": {"dist": "exp", "mean_ms": 50}},
                "y": {"service": {"dist": "exp", "mean_ms": 20}}},
    "apps": {"a": {"calls": ["x", "y"]}, "b": {"calls": ["y"]}},
    "workload": {"kind": "poisson", "rate_per_s": 5},
    "placement": {"x": "remote:2", "y": "remote:2"},
}


def test_a_call_table_replays_the_requests_of_the_run_that_made_it(tmp_path: Path) -> None:
    first = simulate(from_dict(BASE), "none", seed=3)
    first.save(tmp_path / "first")
    replay = from_dict({**BASE, "workload": {"kind": "trace",
                                             "trace": str(tmp_path / "first" / "calls.parquet")}})
    again = simulate(replay, "none", seed=4)
    # Every request that made a call arrives again, with its app, at its first call's time
    # (shifted so that the first arrival is at 0).
    requests = first.calls.groupby("request_id").agg(ts=("ts", "min"), app=("app", "first"))
    assert again.meters.arrivals == len(requests)
    replayed = again.requests.sort_values("request_id")
    assert (replayed["app"].astype(str).tolist()
            == requests.sort_values("ts")["app"].astype(str).tolist()[: len(replayed)])
