"""A trace replay read a window at a time runs exactly as one read whole.

The run's requests table (arrival time, app, latency, which the service draws and the sizes
set) is compared to the bit between a run whose trace is one window and runs cut in windows
of whole minutes, on both engines (the fast path takes requests across windows); the arrival
times and apps are also compared with the whole-trace reference of test_trace_codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from jsorc_sim.scenario import Scenario, from_dict
from jsorc_sim.simulate import simulate, streams
from tests.jsorc_sim.test_trace_codes import old_replay

SINGLE = "azure_functions_2019_single/invocations.csv"
SAMPLE10 = "azure_functions_2019_sample10/inv.csv"
LLM = "azure_llm_inference_2023_code.csv"
WHOLE = 1 << 40  # more arrivals than any trace: one window


def scenario(trace: Path, duration_s: float, *, per_size_ms: float = 0.0,
             **workload: Any) -> Scenario:
    table: dict[str, Any] = {
        "duration_s": duration_s,
        "seed": 5,
        "node": {"cores": 4, "memory_mb": 8192},
        "actions": {name: {"service": {"dist": "lognormal", "mean_ms": 5, "cv": 1.0},
                           "default_mode": "remote", "per_size_ms": per_size_ms}
                    for name in ("f", "g")},
        "apps": {"a": {"calls": ["f"]}, "b": {"calls": ["f", "g"]}},
        "placement": {"f": "remote:8", "g": "remote:8"},
        "workload": {"kind": "trace", "trace": str(trace), **workload},
    }
    return from_dict(table)


def requests(s: Scenario, window: int, fast: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr("jsorc_traces.windows.WINDOW", window)
    result = simulate(s, "none", record="requests", fast=fast)
    # Request i is arrival i; the requests still in the system at the end have no row.
    assert len(result.requests) + result.meters.unfinished == result.meters.arrivals
    return result.requests, result.extra["engine"]


def assert_arrivals_as_before(s: Scenario, table: pd.DataFrame) -> np.ndarray:
    """The table's arrival times and apps are the whole trace's, read as before windows."""
    ts, app, size = old_replay(s, streams(s.seed)["arrivals"])
    ids = table["request_id"].to_numpy()
    np.testing.assert_array_equal(table["ts"].to_numpy(), ts[ids])
    np.testing.assert_array_equal(table["app"].to_numpy(), np.array(["a", "b"])[app[ids]])
    return size


CASES: list[tuple[str, str, float, dict[str, Any]]] = [
    ("single, mix", SINGLE, 300.0, {"mix": {"a": 1.0, "b": 1.0}}),
    ("single, time scale 3", SINGLE, 600.0, {"time_scale": 3.0}),
    ("single, time scale 0.25", SINGLE, 120.0, {"time_scale": 0.25, "map": {"063ba6f3": "b"}}),
    ("sample10, map and drop", SAMPLE10, 7200.0,
     {"map": {"083a6af6": "a", "1b46c1a2": "b"}, "unmapped": "drop"}),
    ("sample10, even, mix", SAMPLE10, 7200.0, {"spread": "even", "time_scale": 0.5}),
]


@pytest.mark.parametrize("fast", ["off", "auto"])
@pytest.mark.parametrize(("label", "trace", "duration_s", "workload"), CASES,
                         ids=[c[0] for c in CASES])
def test_a_run_in_windows_is_the_run_read_whole(
        traces_dir: Path, monkeypatch: pytest.MonkeyPatch, fast: str, label: str, trace: str,
        duration_s: float, workload: dict[str, Any]) -> None:
    s = scenario(traces_dir / trace, duration_s, **workload)
    whole, _ = requests(s, WHOLE, fast, monkeypatch)
    assert len(whole) > 100, label
    for window in (1, 5_000):
        cut, engine = requests(s, window, fast, monkeypatch)
        pd.testing.assert_frame_equal(cut, whole, check_exact=True, obj=f"window {window}")
    if fast == "auto" and trace == SINGLE:
        assert engine["fast_requests"] > 0, "the fast path took requests across windows"
    assert_arrivals_as_before(s, whole)


def test_llm_sizes_reach_the_calls_the_same_in_windows(
        traces_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 0.01 ms a token: sizes move latencies, so a size out of place would show.
    s = scenario(traces_dir / LLM, 3600.0, per_size_ms=0.01, mix={"a": 2.0, "b": 1.0})
    whole, _ = requests(s, WHOLE, "off", monkeypatch)
    for window in (1, 777):
        cut, _ = requests(s, window, "off", monkeypatch)
        pd.testing.assert_frame_equal(cut, whole, check_exact=True, obj=f"window {window}")
    size = assert_arrivals_as_before(s, whole)
    assert np.count_nonzero(size) == len(size) > 1000
