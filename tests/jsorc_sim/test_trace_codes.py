"""A trace's streams as codes: the app of each arrival, and the replay window, as before.

The reference is the way the app codes were computed before arrivals carried codes: on the
object array of keys, one comparison of every arrival per map entry and per app, from a read
of the whole trace cut to the run afterwards. The code under test decides streams by name,
selects arrivals by code and reads only the run's part, a window of arrivals at a time; both
must give the same arrivals, the same app codes (the `mix` draws included) and the same error
messages, whatever the window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from jsorc_sim import workload as wl
from jsorc_sim.scenario import Scenario, ScenarioError, from_dict
from jsorc_traces import Arrivals, read_trace

SINGLE = "azure_functions_2019_single/invocations.csv"
SAMPLE10 = "azure_functions_2019_sample10/inv.csv"
# sample10's functions by row, and the minute of each one's first call: 0, 1364, 0, 16, 0,
# 313, 0, 992, 1094, 66. A 10-minute run sees three of them; the map must still see all ten.
SAMPLE10_HEADS = ("1779fd33", "bd28ee14", "1b46c1a2", "88a43b1b", "083a6af6", "d3123a70",
                  "a2e59b8e", "074d7db5", "4fc991c5", "8752b436")
SAMPLE10_FULL_4 = "083a6af60313d47da4f35bc2f765630cc7e31432e3fcba8b0f895735f7fd556a"


# --- the reference: object keys, whole trace ---------------------------------------------------


def old_match(keys: np.ndarray, stream: str) -> np.ndarray:
    match: np.ndarray = np.asarray(keys == stream, dtype=bool)
    if not match.any() and len(stream) >= 6:
        match = np.array([str(k).startswith(stream) for k in keys], dtype=bool)
    return match


def old_problems(mapping: dict[str, str], keys: np.ndarray, source: str) -> list[str]:
    distinct = np.array([str(k) for k in pd.unique(keys)], dtype=object)
    problems = []
    for stream in mapping:
        matches = [str(k) for k in distinct[old_match(distinct, stream)]]
        if not matches:
            problems.append(f"workload.map: no stream {stream!r} in trace {source} "
                            f"(streams: {', '.join(str(s)[:12] for s in distinct[:10])})")
        elif len(matches) > 1 and stream not in matches:
            problems.append(f"workload.map: {stream!r} is the start of several streams "
                            f"({', '.join(m[:12] for m in matches)}): give more characters")
    return problems


def old_apps(scenario: Scenario, keys: np.ndarray, source: str,
             rng: np.random.Generator) -> np.ndarray:
    workload = scenario.workload
    apps = list(scenario.apps)
    problems = old_problems(dict(workload.map), keys, source)
    if problems:
        raise ScenarioError(scenario.name, problems)
    codes = np.full(len(keys), -1, dtype=np.int64)
    mapped = np.zeros(len(keys), dtype=bool)
    for stream, app in workload.map.items():
        match = old_match(keys, stream)
        codes[match] = apps.index(app)
        mapped |= match
    for code, app in enumerate(apps):
        named = ~mapped & (keys == app)
        codes[named] = code
        mapped |= named
    rest = ~mapped
    if workload.unmapped == "mix" and rest.any():
        weights = np.array([workload.mix.get(app, 0.0) for app in apps])
        codes[rest] = rng.choice(len(apps), size=int(rest.sum()), p=weights / weights.sum())
    return codes


def old_replay(scenario: Scenario,
               seed: int | np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ts, app code, size) of the replayed arrivals, the way start() got them before."""
    rng = np.random.default_rng(seed)
    w = scenario.workload
    arrivals = read_trace(scenario.resolve(w.trace), w.trace_format,
                          seed=int(rng.integers(2**31)), spread=w.spread, llm_size=w.llm_size)
    ts = arrivals.ts * w.time_scale
    codes = old_apps(scenario, arrivals.key, arrivals.source, rng)
    keep = (codes >= 0) & (ts < scenario.duration_s)
    return ts[keep], codes[keep], np.nan_to_num(arrivals.size[keep])


def new_replay(scenario: Scenario, seed: int,
               window: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same through trace_requests, window by window, joined (start()'s source reads it)."""
    parts = list(wl.trace_requests(scenario, np.random.default_rng(seed), window=window))
    assert parts, "a replay with requests has a window"
    assert all(len(ts) for ts, _, _ in parts), "no window is empty"
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def trace_scenario(trace: Path, apps: list[str], duration_s: float,
                   **workload: Any) -> Scenario:
    table: dict[str, Any] = {
        "duration_s": duration_s,
        "actions": {"f": {"service": {"dist": "exp", "mean_ms": 5}, "default_mode": "remote"}},
        "apps": {app: {"calls": ["f"]} for app in apps},
        "workload": {"kind": "trace", "trace": str(trace), **workload},
    }
    return from_dict(table)


# Arrivals per window: a minute of the single function is ~14,000 calls, so 5,000 cuts every
# window at a minute (one minute each), 50,000 at three or four, and 1 at every minute.
WINDOWS = (None, 1, 5_000, 50_000)


def assert_same_replay(scenario: Scenario, seed: int = 3,
                       windows: tuple[int | None, ...] = WINDOWS) -> int:
    old_ts, old_codes, old_size = old_replay(scenario, seed)
    for window in windows:
        new_ts, new_codes, new_size = new_replay(scenario, seed, window)
        np.testing.assert_array_equal(new_ts, old_ts, err_msg=f"window {window}")
        np.testing.assert_array_equal(new_codes, old_codes, err_msg=f"window {window}")
        np.testing.assert_array_equal(new_size, old_size, err_msg=f"window {window}")
    return len(old_ts)


# --- app codes -----------------------------------------------------------------------------------


SAMPLE10_CASES: list[tuple[str, dict[str, Any]]] = [
    ("no map, mix", {}),
    ("no map, weighted mix", {"mix": {"a": 1.0, "b": 3.0}}),
    ("map by prefix, rest by mix", {"map": {"083a6af6": "a", "1b46c1a2": "b"}}),
    ("map by prefix, rest dropped", {"map": {"083a6af6": "a"}, "unmapped": "drop"}),
    ("a late stream mapped", {"map": {"d3123a70": "b", "1779fd33": "a"}, "unmapped": "drop"}),
    ("later entries win", {"map": {"083a6af6": "a", SAMPLE10_FULL_4: "b"}}),
]


@pytest.mark.parametrize("spread", ["uniform", "even"])
@pytest.mark.parametrize(("label", "workload"), SAMPLE10_CASES, ids=[c[0] for c in SAMPLE10_CASES])
@pytest.mark.parametrize("duration_s", [600.0, 86400.0])
def test_sample10_app_codes_match_the_object_keys(traces_dir: Path, spread: str, label: str,
                                                  workload: dict[str, Any],
                                                  duration_s: float) -> None:
    s = trace_scenario(traces_dir / SAMPLE10, ["a", "b"], duration_s, spread=spread, **workload)
    assert assert_same_replay(s) > 0, label


@pytest.mark.parametrize("time_scale", [0.25, 0.5, 1.0, 3.0])
def test_the_window_is_the_whole_traces_start_under_any_time_scale(
        traces_dir: Path, time_scale: float) -> None:
    s = trace_scenario(traces_dir / SAMPLE10, ["a", "b"], 900.0, time_scale=time_scale,
                       map={"083a6af6": "a"})
    assert assert_same_replay(s, seed=8) > 0


def test_single_app_codes_match_the_object_keys(traces_dir: Path) -> None:
    # Two hours of the 20.8 M-call day (1.5 M calls) keeps the object-key reference quick.
    mapped = trace_scenario(traces_dir / SINGLE, ["f"], 7200.0, map={"063ba6f3c1d4": "f"})
    plain = trace_scenario(traces_dir / SINGLE, ["f", "g"], 7200.0, mix={"f": 1.0, "g": 1.0})
    assert assert_same_replay(mapped, windows=(None, 5_000, 50_000)) > 1_000_000
    assert assert_same_replay(plain, windows=(None, 5_000, 50_000)) > 1_000_000


@pytest.mark.parametrize("time_scale", [0.25, 1.0, 3.0])
def test_single_windows_under_a_time_scale(traces_dir: Path, time_scale: float) -> None:
    # A time scale moves the run's end to another place within a minute and a window.
    s = trace_scenario(traces_dir / SINGLE, ["f"], 1800.0, time_scale=time_scale)
    assert assert_same_replay(s, windows=(None, 5_000, 77_777)) > 100_000


@pytest.mark.parametrize("size", ["total", "context", "generated"])
@pytest.mark.parametrize("time_scale", [0.25, 1.0, 3.0])
def test_llm_trace_windows_match_the_whole_trace(traces_dir: Path, size: str,
                                                 time_scale: float) -> None:
    s = trace_scenario(traces_dir / "azure_llm_inference_2023_code.csv", ["f", "g"], 1800.0,
                       llm_size=size, time_scale=time_scale, mix={"f": 1.0, "g": 2.0})
    assert assert_same_replay(s, windows=(None, 1, 999)) > 1000


def test_streams_named_like_apps_match_the_object_keys(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ts = np.sort(rng.uniform(0, 100, 600))
    names = rng.choice(["x", "y", "zzzzzz1", "zzzzzz2", "other"], 600)
    path = tmp_path / "t.csv"
    path.write_text("ts,app,size\n" + "".join(
        f"{float(t)!r},{n},{i % 7}\n" for i, (t, n) in enumerate(zip(ts, names, strict=True))))
    for workload in ({}, {"map": {"zzzzzz1": "y"}}, {"map": {"x": "y", "y": "x"}},
                     {"map": {"zzzzzz2": "x"}, "unmapped": "drop"}):
        s = trace_scenario(path, ["x", "y"], 60.0, **workload)
        assert assert_same_replay(s) > 0, workload


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mapping", [{"ffffff0000": "a"}, {"0": "a"}, {"1": "a", "0": "b"}])
def test_a_map_entry_naming_no_stream_gives_the_old_message(tmp_path: Path,
                                                            mapping: dict[str, str]) -> None:
    path = tmp_path / "t.csv"
    path.write_text("ts,app\n0,beta\n1,alpha0\n2,alpha1\n3,beta\n")
    s = trace_scenario(path, ["a", "b"], 10.0, map=mapping)
    keys = read_trace(path).key
    with pytest.raises(ScenarioError) as old:
        old_apps(s, keys, str(path), np.random.default_rng(0))
    with pytest.raises(ScenarioError) as new:
        new_replay(s, 0)
    assert str(new.value) == str(old.value)
    assert "no stream" in str(new.value)


def test_an_ambiguous_prefix_gives_the_old_message(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("ts,app\n0,abcdefgh2\n1,abcdefgh1\n2,abcdefgh1\n")
    s = trace_scenario(path, ["a"], 10.0, map={"abcdef": "a"})
    with pytest.raises(ScenarioError) as old:
        old_apps(s, read_trace(path).key, str(path), np.random.default_rng(0))
    with pytest.raises(ScenarioError) as new:
        new_replay(s, 0)
    assert str(new.value) == str(old.value)
    assert "start of several streams (abcdefgh2, abcdefgh1)" in str(new.value)


def test_the_map_check_of_a_short_run_sees_every_stream_of_the_trace(traces_dir: Path) -> None:
    # 8752b436 first calls in minute 66, 4fc991c5 in minute 1094: far past a 60 s run.
    s = trace_scenario(traces_dir / SAMPLE10, ["a"], 60.0,
                       map={"8752b436": "a", "4fc991c5": "a"})
    trace = wl.load_trace(s, np.random.default_rng(0))
    windows = list(trace.windows())
    assert windows[-1].ts[-1] < 61.0, "only the window was expanded"
    assert wl.unmatched_streams(s.workload.map, trace) == []
    # The same spreading seed as load_trace drew: first appearance depends on it.
    whole = read_trace(traces_dir / SAMPLE10, seed=int(np.random.default_rng(0).integers(2**31)))
    assert trace.keys() == [str(k) for k in pd.unique(whole.key)]
    with pytest.raises(ScenarioError) as err:
        new_replay(trace_scenario(traces_dir / SAMPLE10, ["a"], 60.0, map={"nothere": "a"}), 0)
    heads = [k[:12] for k in pd.unique(whole.key)]
    assert f"(streams: {', '.join(heads)})" in str(err.value)


def test_a_bad_map_fails_before_any_window_is_read(traces_dir: Path) -> None:
    s = trace_scenario(traces_dir / SAMPLE10, ["a"], 60.0, map={"nothere": "a"})
    with pytest.raises(ScenarioError, match="no stream 'nothere'"):
        wl.trace_requests(s, np.random.default_rng(0))  # not iterated: the check is eager


def test_choice_with_p_draws_one_uniform_per_value_in_order() -> None:
    # What makes window-by-window mix draws the whole trace's: numpy's Generator.choice with
    # p is a search of one uniform per value in the cumulative weights.
    p = np.array([0.2, 0.0, 0.5, 0.3])
    whole = np.random.default_rng(11).choice(4, size=10_000, p=p)
    rng = np.random.default_rng(11)
    parts = [rng.choice(4, size=n, p=p) for n in (1, 999, 0, 4_000, 5_000)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    u = np.random.default_rng(11).random(10_000)
    cdf = np.cumsum(p) / np.cumsum(p)[-1]
    np.testing.assert_array_equal(np.searchsorted(cdf, u, side="right"), whole)


def test_arrivals_from_keys_code_by_first_appearance() -> None:
    arr = Arrivals.from_keys([0.0, 1.0, 1.0, 2.0], ["q", "p", "q", "r"], [np.nan] * 4,
                             fmt="requests", spread="exact", source="mem")
    assert arr.key_names == ("q", "p", "r")
    assert arr.key_code.dtype == np.int32
    assert arr.key.tolist() == ["q", "p", "q", "r"]
    with pytest.raises(ValueError, match="key_code 3 is not an index into 3"):
        Arrivals(ts=arr.ts, key_code=np.array([0, 1, 2, 3], dtype=np.int32),
                 key_names=arr.key_names, size=arr.size, fmt="requests", spread="exact",
                 source="mem")
    with pytest.raises(ValueError, match="distinct"):
        Arrivals(ts=arr.ts, key_code=arr.key_code, key_names=("q", "p", "q"), size=arr.size,
                 fmt="requests", spread="exact", source="mem")
