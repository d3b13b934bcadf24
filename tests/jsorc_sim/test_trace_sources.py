"""Real traces as they come, in the simulator: a windowed Azure trace replayed, one app and
action per function with its durations and memory, streams mapped to apps by hash, and
`jsorc-sim trace info`. Expected values are computed here with pandas/numpy on the raw CSV."""

from __future__ import annotations

import json
import string
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jsorc_sim import scenario as scenario_mod
from jsorc_sim.cli import main
from jsorc_sim.simulate import simulate
from jsorc_sim.trace_info import trace_info
from jsorc_sim.trace_streams import TraceStreamWarning, function_names, hash_apps
from jsorc_traces.profiles import DURATION_LEVELS

REPO = Path(__file__).resolve().parents[2]
WINDOW = REPO / "experiments/scenarios/azure_window"
SAMPLE10 = "azure_functions_2019_sample10"


def minute_frame(path: Path) -> tuple[pd.DataFrame, list[str]]:
    frame = pd.read_csv(path, dtype={"HashFunction": str, "HashApp": str})
    minutes = [c for c in frame.columns if c.removeprefix("minute_").isdigit()]
    return frame, minutes


def scenario_text(trace: Path, **workload: str) -> str:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in workload.items())
    return f"""
duration_s = 100000
[actions.fn]
service = {{ dist = "const", mean_ms = 1 }}
local_memory_mb = 7
[apps.a]
calls = ["fn"]
[apps.b]
calls = ["fn"]
[apps.c]
calls = ["fn"]
[placement]
fn = "remote:4"
[workload]
kind = "trace"
trace = "{trace}"
{extra}"""


def load(tmp_path: Path, trace: Path, **workload: str) -> scenario_mod.Scenario:
    path = tmp_path / "s.toml"
    path.write_text(scenario_text(trace, **workload))
    return scenario_mod.load(path)


# --- the windowed fixture, replayed ----------------------------------------------------------


def test_the_windowed_fixture_replays_every_call_with_per_function_durations() -> None:
    frame, minutes = minute_frame(WINDOW / "invocations.csv")
    assert minutes[0] == "480" and minutes[-1] == "959"
    # Ten times as fast, so the 8 h window takes 48 simulated minutes (fewer control steps).
    result = simulate(WINDOW / "scenario.toml", "all_remote", params={"replicas": 64},
                      duration_s=3_000, seed=2, record="requests",
                      overrides={"workload.time_scale": 0.1})
    requests = result.requests
    # Every call of the window arrives (the run covers its 8 h from the first arrival) ...
    assert result.report()["cost"]["arrivals"] == int(frame[minutes].to_numpy().sum())
    # ... each function's calls as its own app, its row's sum.
    names = function_names(list(frame["HashFunction"]))
    expected = {names[f]: int(n) for f, n in zip(frame["HashFunction"],
                                                 frame[minutes].sum(axis=1), strict=True)}
    got = requests.groupby("app").size().to_dict()
    unfinished = result.report()["cost"]["unfinished_requests"]
    assert sum(expected.values()) - sum(got.values()) == unfinished
    for app, n in got.items():
        assert n <= expected[app]
    assert set(result.scenario.apps) == set(names.values())


def test_trace_origin_day_puts_minute_480_at_its_time_of_day(tmp_path: Path) -> None:
    frame, minutes = minute_frame(WINDOW / "invocations.csv")
    first_busy = next(int(m) for m in minutes if frame[m].sum() > 0)
    path = tmp_path / "s.toml"
    path.write_text(scenario_text(WINDOW / "invocations.csv", trace_origin="day"))
    result = simulate(path, duration_s=60.0 * (first_busy + 30), seed=1)  # to minute +30
    ts = result.requests["ts"]
    assert ts.min() >= 60.0 * (first_busy - 1)  # minute k covers [60 (k - 1), 60 k)
    assert ts.min() < 60.0 * first_busy
    calls = frame[[str(m) for m in range(first_busy, first_busy + 31)]].to_numpy().sum()
    assert len(ts) + result.report()["cost"]["unfinished_requests"] == int(calls)


# --- per-function durations and memory -------------------------------------------------------


def test_each_function_gets_its_rows_percentiles_and_its_apps_memory(traces_dir: Path,
                                                                       tmp_path: Path) -> None:
    inv, _ = minute_frame(traces_dir / SAMPLE10 / "inv.csv")
    run = pd.read_csv(traces_dir / SAMPLE10 / "run.csv").set_index("HashFunction")
    mem = pd.read_csv(traces_dir / SAMPLE10 / "mem.csv").set_index("HashApp")
    scenario = load(tmp_path, traces_dir / SAMPLE10 / "inv.csv", streams="per_function",
                    durations=str(traces_dir / SAMPLE10 / "run.csv"),
                    memory=str(traces_dir / SAMPLE10 / "mem.csv"), memory_stat="p95")
    names = function_names(list(inv["HashFunction"]))
    assert list(scenario.actions) == [names[f] for f in inv["HashFunction"]]
    assert scenario.placement == {n: scenario_mod.Placement.parse("remote:4")
                                  for n in names.values()}
    from jsorc_sim.distributions import service_maker

    rng = np.random.default_rng(0)
    for function, app in zip(inv["HashFunction"], inv["HashApp"], strict=True):
        action = scenario.actions[names[function]]
        assert scenario.apps[names[function]].calls == (names[function],)
        assert action.local_memory_mb == mem.loc[app, "AverageAllocatedMb_pct95"]
        assert action.replica_memory_mb == mem.loc[app, "AverageAllocatedMb_pct95"]
        row = run.loc[function, [f"percentile_Average_{int(q)}" for q in DURATION_LEVELS]]
        samples = service_maker(action.service, Path(scenario.base_dir))(rng).take(100_000)
        assert samples.min() >= row.iloc[0] and samples.max() <= row.iloc[-1]
        # The row's percentile q lies between the sample CDF just below and at its value
        # (a flat stretch of the row is an atom), within 0.5 percentage points.
        for q, value in zip(DURATION_LEVELS[1:-1], row.iloc[1:-1], strict=True):
            below = 100.0 * np.mean(samples < value)
            at = 100.0 * np.mean(samples <= value)
            assert below - 0.5 <= q <= at + 0.5, (function, q, below, at)


def test_streams_without_a_row_are_named_and_unused_rows_warned(traces_dir: Path,
                                                                  tmp_path: Path) -> None:
    run = pd.read_csv(traces_dir / SAMPLE10 / "run.csv", dtype=str)
    inv, _ = minute_frame(traces_dir / SAMPLE10 / "inv.csv")
    missing = inv["HashFunction"].iloc[3]
    partial = run[run["HashFunction"] != missing]
    extra = partial.iloc[:1].assign(HashFunction="f" * 64)
    pd.concat([partial, extra]).to_csv(tmp_path / "run.csv", index=False)
    with pytest.raises(scenario_mod.ScenarioError, match=f"no row for 1 stream.*{missing[:16]}"):
        load(tmp_path, traces_dir / SAMPLE10 / "inv.csv", streams="per_function",
             durations=str(tmp_path / "run.csv"))
    pd.concat([run, extra]).to_csv(tmp_path / "run.csv", index=False)
    with pytest.warns(TraceStreamWarning, match="1 row.*match no stream.*ffffffffffff"):
        load(tmp_path, traces_dir / SAMPLE10 / "inv.csv", streams="per_function",
             durations=str(tmp_path / "run.csv"))


def test_per_function_round_trips_through_its_table(traces_dir: Path, tmp_path: Path) -> None:
    scenario = load(tmp_path, traces_dir / SAMPLE10 / "inv.csv", streams="per_function",
                    durations=str(traces_dir / SAMPLE10 / "run.csv"))
    again = scenario_mod.from_dict(scenario.to_dict(), base_dir=scenario.base_dir)
    assert again.actions == scenario.actions and again.apps == scenario.apps


@pytest.mark.parametrize(("workload", "needle"), [
    ({"durations": "x.csv"}, "workload.durations needs streams = \"per_function\""),
    ({"streams": "per_function", "map": "x"}, "workload.map"),
    ({"streams": "by_hash", "unmapped": "drop"}, "leaves nothing"),
])
def test_contradicting_stream_options_are_refused(tmp_path: Path, workload: dict[str, str],
                                                  needle: str) -> None:
    text = scenario_text(WINDOW / "invocations.csv")
    if workload.pop("map", None):
        text += '[workload.map]\n"083a6af603" = "a"\n'
    path = tmp_path / "s.toml"
    path.write_text(text.replace("[workload]\n", "[workload]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in workload.items())))
    with pytest.raises(scenario_mod.ScenarioError, match=needle):
        scenario_mod.load(path)


# --- by_hash ---------------------------------------------------------------------------------


def random_names(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(string.hexdigits[:16]), 64)) for _ in range(n)]


def test_by_hash_keeps_each_stream_on_its_app_when_streams_are_added() -> None:
    names = random_names(400, 1)
    weights = [1.0, 2.0, 1.0]
    before = hash_apps(names[:300], weights, seed=0)
    after = hash_apps(names, weights, seed=0)
    np.testing.assert_array_equal(after[:300], before)
    # Shares follow the weights (binomial sd ~ 2.5 % at 400 streams; 4 sd allowed).
    shares = np.bincount(after, minlength=3) / len(names)
    np.testing.assert_allclose(shares, np.array(weights) / 4.0, atol=0.1)
    # Another hash seed is another assignment.
    assert (hash_apps(names, weights, seed=1) != after).any()


def test_by_hash_replays_each_stream_into_one_app_whatever_the_run_seed(
        traces_dir: Path, tmp_path: Path) -> None:
    inv, minutes = minute_frame(traces_dir / SAMPLE10 / "inv.csv")
    scenario = load(tmp_path, traces_dir / SAMPLE10 / "inv.csv", streams="by_hash")
    codes = hash_apps(list(inv["HashFunction"]), [1.0, 1.0, 1.0], seed=0)
    per_stream = inv[minutes].sum(axis=1).to_numpy()
    expected = np.bincount(codes, weights=per_stream, minlength=3)
    from jsorc_sim.workload import trace_requests

    for seed in (1, 2):
        apps = np.concatenate([app for _, app, _ in
                               trace_requests(scenario, np.random.default_rng(seed))])
        np.testing.assert_array_equal(np.bincount(apps, minlength=3), expected)


# --- trace info ------------------------------------------------------------------------------


def expected_info(path: Path) -> dict[str, object]:
    frame, minutes = minute_frame(path)
    counts = frame[minutes].to_numpy()
    totals = counts.sum(axis=0)
    busy = np.flatnonzero(totals)
    per_stream = pd.Series(counts.sum(axis=1), index=frame["HashFunction"]).groupby(
        level=0, sort=False).sum()
    return {"calls": int(counts.sum()), "streams": per_stream.size,
            "top": per_stream.sort_values(ascending=False, kind="stable").index[0],
            "peak": totals.max() / 60.0,
            "first_s": 60.0 * (int(minutes[0].removeprefix("minute_")) - 1 + busy[0]),
            "span_s": 60.0 * (busy[-1] - busy[0] + 1), "per_minute": totals[busy[0]:busy[-1] + 1]}


@pytest.mark.parametrize("name", ["window", "single"])
def test_trace_info_against_pandas_on_the_raw_csv(traces_dir: Path, name: str) -> None:
    path = (WINDOW / "invocations.csv" if name == "window"
            else traces_dir / "azure_functions_2019_single/invocations.csv")
    want = expected_info(path)
    info = trace_info(path)
    assert info.fmt == "azure2019"
    assert (info.calls, info.streams) == (want["calls"], want["streams"])
    assert info.top[0].name == want["top"]
    assert info.peak_rate == pytest.approx(want["peak"])
    assert info.first_s == want["first_s"] and info.span_s == want["span_s"]
    assert info.mean_rate == pytest.approx(want["calls"] / want["span_s"])  # type: ignore[operator]
    buckets = info.buckets()
    width = info.bucket_s // 60
    minutes = np.asarray(want["per_minute"])
    assert [c for _, c in buckets] == [int(minutes[i:i + width].sum())
                                       for i in range(0, len(minutes), width)]
    assert sum(s.share for s in info.top) == pytest.approx(
        sum(s.calls for s in info.top) / want["calls"])  # type: ignore[operator]


def test_trace_info_of_a_per_arrival_trace(traces_dir: Path) -> None:
    path = traces_dir / "azure_llm_inference_2023_code.csv"
    frame = pd.read_csv(path)
    stamps = pd.to_datetime(frame["TIMESTAMP"])
    info = trace_info(path)
    assert info.calls == len(frame)
    assert info.span_s == pytest.approx((stamps.max() - stamps.min()).total_seconds())
    minute = ((stamps - stamps.min()).dt.total_seconds() // 60).astype(int)
    assert info.peak_rate == pytest.approx(minute.value_counts().max() / 60.0)


def test_trace_info_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["trace", "info", str(WINDOW / "invocations.csv"), "--json",
                 "--plot", str(tmp_path / "rate.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "azure2019" and report["minutes"] == "480..959"
    assert (tmp_path / "rate.png").stat().st_size > 0
    assert main(["trace", "info", str(WINDOW / "invocations.csv")]) == 0
    assert "minute columns 480..959" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("HashOwner,HashApp,HashFunction,Trigger,480,482\no,a,f,http,1,2\n")
    assert main(["trace", "info", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "column 6: expected '481', got '482'" in err
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["trace", "info", str(tmp_path / "none.csv")]) == 2


@pytest.mark.parametrize("times", [[0.5, 0.1, 0.3], [10.0, 10.25], [3.0, 40.0, 41.0, 59.0]])
def test_a_trace_shorter_than_a_minute_peaks_at_its_mean(tmp_path: Path,
                                                         times: list[float]) -> None:
    path = tmp_path / "short.csv"
    path.write_text("ts,app\n" + "".join(f"{t},a\n" for t in times))
    info = trace_info(path)
    span = max(times) - min(times)
    assert info.span_s == pytest.approx(span)
    assert info.mean_rate == pytest.approx(len(times) / span)
    assert info.peak_rate == pytest.approx(info.mean_rate)  # the one stretch there is


def test_a_saved_per_function_run_runs_again_from_its_folder(tmp_path: Path) -> None:
    """The saved scenario.toml names the durations and memory files absolutely, so the run
    repeats from the output folder (the README's promise), with the same requests."""
    out = tmp_path / "run"
    first = simulate(WINDOW / "scenario.toml", duration_s=400.0, seed=3, out=out)
    again = simulate(out / "scenario.toml", fast="off")
    a = first.requests.sort_values("request_id")["latency_ms"].to_numpy()
    b = again.requests.sort_values("request_id")["latency_ms"].to_numpy()
    assert len(a) > 0
    np.testing.assert_allclose(b, a, rtol=1e-9)


def test_a_bad_durations_file_is_a_scenario_error(tmp_path: Path) -> None:
    bad = tmp_path / "durations.csv"
    bad.write_text("HashFunction,Average\nabc,not-a-number\n")
    text = (WINDOW / "scenario.toml").read_text().replace(
        'trace = "invocations.csv"', f'trace = "{WINDOW / "invocations.csv"}"').replace(
        'durations = "durations.csv"', f'durations = "{bad}"').replace(
        'memory = "memory.csv"', f'memory = "{WINDOW / "memory.csv"}"')
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    with pytest.raises(scenario_mod.ScenarioError, match="durations"):
        scenario_mod.load(path)


def test_a_replay_with_no_arrival_warns(tmp_path: Path) -> None:
    """trace_origin = "day" puts minute 480 at 28,740 s: a shorter run replays nothing, and
    the report says so instead of printing zeros."""
    result = simulate(WINDOW / "scenario.toml", duration_s=600.0,
                      overrides={"workload.trace_origin": "day"})
    assert result.meters.arrivals == 0
    assert any("no arrival" in w for w in result.report().get("warnings", []))
