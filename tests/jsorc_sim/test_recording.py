"""Columnar recording: the tables built from chunks are the tables the rows make, the record
modes keep what they say, a streamed run reads back as the in-memory one, and the recorder's
memory does not grow with the run when it keeps no table in memory.

References are built here from the raw row tuples the simulator appended (captured before the
recorder converts them), the way the tables were built before chunks existed; the streaming
report is checked against numpy on the in-memory run's latencies."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from jsorc_sim import recorder as rec
from jsorc_sim import simulate as simulate_mod
from jsorc_sim.cli import main
from jsorc_sim.outputs import OutputError
from jsorc_sim.recorder import (
    CALL_COLUMNS,
    FAILURE_NAMES,
    REQUEST_COLUMNS,
    WHERE_NAMES,
    NotRecorded,
    Recorder,
)
from jsorc_sim.results import LATENCY_KEYS, Result
from jsorc_sim.scenario import from_dict
from jsorc_sim.simulate import simulate

ROOT = Path(__file__).resolve().parents[2]
LOADTEST = ROOT / "experiments" / "scenarios" / "jsorc_loadtest.toml"
# Local and remote calls, cold starts, an out-of-memory event and its failed calls.
EVERYTHING = dict(policy="evaluation", params={"cold_start_guard": False}, seed=1,
                  duration_s=300, app="flow_analysis")
THREE_APPS = dict(policy="evaluation", seed=1, duration_s=300, app=None)


def run(record: str = "calls", out: Path | None = None, **kw: Any) -> Result:
    args = {**EVERYTHING, **kw}
    return simulate(LOADTEST, args.pop("policy"), record=record, out=out, **args)


@pytest.fixture
def rows(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[Any, ...]]]:
    """Every row tuple the simulator appends, captured before a flush converts it; and small
    chunks, so that a run of a few thousand calls makes many of them."""
    seen: dict[str, list[tuple[Any, ...]]] = {"calls": [], "requests": []}
    flush = Recorder.flush

    def capture(self: Recorder) -> None:
        seen["calls"].extend(self.calls)
        seen["requests"].extend(self.requests)
        flush(self)

    monkeypatch.setattr(Recorder, "flush", capture)
    monkeypatch.setattr(simulate_mod, "Recorder", functools.partial(Recorder, chunk_rows=500))
    return seen


def old_frame(rows: list[tuple[Any, ...]], columns: tuple[str, ...],
              categories: dict[str, list[str]]) -> pd.DataFrame:
    """The table as it was built before chunks: a frame of the tuples, cast column by column."""
    raw = pd.DataFrame(rows, columns=list(columns), dtype=float) if rows else \
        pd.DataFrame({c: np.empty(0) for c in columns})
    casts = {"request_id": np.int64, "replica": np.int32, "ok": bool, "cold": bool}
    out = {}
    for column in columns:
        values = raw[column].to_numpy()
        if column in categories:
            out[column] = pd.Categorical.from_codes(
                values.astype(np.int16), categories=pd.Index(categories[column], dtype=object))
        else:
            out[column] = values.astype(casts.get(column, np.float64))
    return pd.DataFrame(out)


def categories(result: Result) -> dict[str, list[str]]:
    return {"app": list(result.scenario.apps), "action": list(result.scenario.actions),
            "placement": WHERE_NAMES, "error": FAILURE_NAMES}


# ----------------------------------------------------------------------------- tables


def test_the_columnar_tables_equal_the_tables_of_the_rows(
        rows: dict[str, list[tuple[Any, ...]]]) -> None:
    result = run()
    calls = result.calls
    assert len(rows["calls"]) == len(calls) > 5 * 500, "many chunks"
    assert {"local", "remote"} <= set(calls["placement"]) and calls["cold"].any()
    assert (~calls["ok"]).any(), "the scenario has failed calls"
    pd.testing.assert_frame_equal(calls, old_frame(rows["calls"], CALL_COLUMNS,
                                                   categories(result)))
    pd.testing.assert_frame_equal(result.requests, old_frame(rows["requests"], REQUEST_COLUMNS,
                                                             categories(result)))
    assert result.recorder.call_count == len(rows["calls"])
    assert result.report()["statistics"] == {"percentiles": "exact"}


def test_ready_chunks_are_cast_and_follow_the_tail() -> None:
    recorder = Recorder(["x"], ["a"], chunk_rows=4)
    tail = (0.5, 7, 0, 0, 1, 2, 1.0, 2.0, 3.0, 6.0, 1, 0, 0)
    recorder.calls.append(tail)
    chunk = {name: np.arange(3, dtype=np.float32) % 2 for name in CALL_COLUMNS}
    chunk["app"] = chunk["action"] = np.zeros(3, dtype=np.uint8)  # one app, one action
    recorder.add_calls(chunk)
    frame = recorder.calls_frame()
    reference = old_frame([tail, *zip(*(chunk[c].tolist() for c in CALL_COLUMNS),
                                      strict=True)],
                          CALL_COLUMNS, {"app": ["x"], "action": ["a"],
                                         "placement": WHERE_NAMES, "error": FAILURE_NAMES})
    pd.testing.assert_frame_equal(frame, reference)
    with pytest.raises(ValueError, match=r"missing \['ts'\]"):
        recorder.add_requests({c: np.zeros(1) for c in REQUEST_COLUMNS if c != "ts"})


# ----------------------------------------------------------------------------- modes


def test_a_bad_record_mode_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="'everything'"):
        run(record="everything")


@pytest.mark.parametrize("record", ["requests", "none"])
def test_a_table_left_out_says_so_and_the_counts_stay_exact(record: str) -> None:
    full, lean = run(), run(record=record)
    with pytest.raises(NotRecorded, match=rf"calls were not recorded \(record='{record}'\)"):
        lean.calls  # noqa: B018
    if record == "none":
        with pytest.raises(NotRecorded, match="requests were not recorded"):
            lean.requests  # noqa: B018
    else:
        pd.testing.assert_frame_equal(lean.requests, full.requests)
    calls = full.calls
    cost = lean.report()["cost"]
    assert cost == full.report()["cost"]
    assert cost["failed_calls"] == int((~calls["ok"]).sum())
    assert cost["cold_starts"] == int(calls["cold"].sum())
    assert cost["failed_requests"] == int((~full.requests["ok"]).sum())


def test_the_streaming_report_matches_the_in_memory_one_within_the_bound() -> None:
    exact, sketched = run(**THREE_APPS), run(record="none", **THREE_APPS)
    a, b = exact.report(), sketched.report()
    alpha = b["statistics"]["relative_error"]
    assert b["statistics"] == {"percentiles": "sketch", "relative_error": 0.005}
    assert a["cost"] == b["cost"] and a["unfinished"]["count"] == b["unfinished"]["count"]
    req = exact.requests
    warm = req[req["ts"] >= exact.scenario.warmup_s]
    apps = [*exact.scenario.apps, "all"]
    assert len(apps) > 3, "several apps, so `all` merges their sketches"
    for app in apps:
        mine = warm if app == "all" else warm[warm["app"] == app]
        for section, values in (("walker_run", mine.loc[mine["ok"], "latency_ms"]),
                                ("unfinished", mine["latency_ms"])):
            x, y = (a[section], b[section]) if section == "walker_run" else \
                (a[section]["all_arrivals_lower_bound"], b[section]["all_arrivals_lower_bound"])
            x, y = x[app], y[app]
            assert x.get("throughput") == y.get("throughput")
            assert x.get("arrivals") == y.get("arrivals")
            assert y["average_latency"] == pytest.approx(x["average_latency"], abs=1.1e-3)
            if section == "unfinished" and a["unfinished"]["count"]["all"]:
                continue  # the unfinished ages join these: checked by count and mean above
            ordered = np.sort(values.to_numpy())
            if len(ordered) == 0:
                assert x == y, (app, section)
                continue
            for key, p in LATENCY_KEYS:
                h = p / 100 * (len(ordered) - 1)
                around = max(ordered[int(np.floor(h))], ordered[int(np.ceil(h))])
                assert x[key] == pytest.approx(float(np.percentile(ordered, p)), abs=5e-4)
                assert abs(y[key] - x[key]) <= alpha * around + 1e-3, (app, section, key)


# ----------------------------------------------------------------------------- streaming


def test_a_streamed_run_reads_back_as_the_in_memory_run(tmp_path: Path) -> None:
    memory, streamed = run(), run(out=tmp_path / "run")
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]
    for table in ("calls", "requests"):
        # The file reads back as the in-memory table's own Parquet file does ...
        (tmp_path / "ref").mkdir(exist_ok=True)
        getattr(memory, table).to_parquet(tmp_path / "ref" / f"{table}.parquet", index=False)
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "run" / f"{table}.parquet"),
                                      pd.read_parquet(tmp_path / "ref" / f"{table}.parquet"))
        # ... and the result reads it lazily as the in-memory table itself.
        pd.testing.assert_frame_equal(getattr(streamed, table), getattr(memory, table))
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report == json.loads(json.dumps(streamed.report()))
    assert report["statistics"]["percentiles"] == "sketch"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert {"calls.parquet", "requests.parquet", "report.json"} <= set(manifest["files"])

    streamed.save(tmp_path / "run")  # again: the streamed tables stay, still vouched for
    again = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert again["files"]["calls.parquet"] == manifest["files"]["calls.parquet"]
    streamed.save(tmp_path / "copy")  # elsewhere: copied
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "copy" / "calls.parquet"),
                                  pd.read_parquet(tmp_path / "run" / "calls.parquet"))
    (tmp_path / "run" / "calls.parquet").unlink()
    with pytest.raises(OutputError, match="no longer exists"):
        streamed.save(tmp_path / "third")


def test_a_foreign_file_is_refused_before_the_run_and_a_lean_run_removes_stale_tables(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "calls.parquet").write_bytes(b"someone's")
    with pytest.raises(OutputError, match=r"holds calls\.parquet"):
        run(out=out)
    assert [p.name for p in out.iterdir()] == ["calls.parquet"]
    (out / "calls.parquet").unlink()
    run(out=out)
    run(record="none", out=out)  # the first run's tables are jsorc's: removed, not left stale
    names = sorted(p.name for p in out.iterdir())
    assert "calls.parquet" not in names and "requests.parquet" not in names
    assert "calls.parquet" not in json.loads((out / "manifest.json").read_text())["files"]


def test_the_cli_records_streams_and_says_which_percentiles(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["run", str(LOADTEST), "--policy", "all_remote", "--duration", "120", "--seed", "1",
            "--app", "flow_analysis", "--no-progress"]
    assert main([*argv, "--record", "none"]) == 0
    assert "percentiles: sketch, relative error <= 0.5 %" in capsys.readouterr().out
    assert main([*argv, "--record", "requests", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "percentiles: sketch" in out and "wrote" in out
    assert (tmp_path / "o" / "requests.parquet").is_file()
    assert not (tmp_path / "o" / "calls.parquet").exists()
    assert main(argv) == 0
    assert "percentiles: exact" in capsys.readouterr().out.splitlines()


# ----------------------------------------------------------------------------- memory


def mmc(calls: int) -> dict[str, Any]:
    return {"name": "mmc", "duration_s": calls / 200.0,
            "actions": {"a": {"service": {"dist": "exp", "mean_ms": 10.0}}},
            "apps": {"x": {"calls": ["a"]}},
            "workload": {"kind": "poisson", "rate_per_s": 200.0},
            "placement": {"a": "remote:4"}}


@pytest.mark.parametrize("sink", [False, True])
def test_memory_does_not_grow_with_the_calls_without_tables_in_memory(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sink: bool) -> None:
    tails: list[int] = []
    flush = Recorder.flush

    def watch(self: Recorder) -> None:
        tails.append(max(len(self.calls), len(self.requests)))
        flush(self)

    monkeypatch.setattr(Recorder, "flush", watch)
    monkeypatch.setattr(simulate_mod, "Recorder", functools.partial(Recorder, chunk_rows=2000))
    kept: dict[int, int] = {}
    for n in (10_000, 40_000):
        tails.clear()
        # SimPy's path: the fast path hands whole chunks over and never fills the tail.
        result = simulate(from_dict(mmc(n)), "none", seed=1,
                          record="calls" if sink else "none",
                          out=tmp_path / str(n) if sink else None, fast="off")
        assert result.recorder.call_count > 0.9 * n
        kept[n] = result.recorder.retained_bytes()
        # The flusher keeps the tail near chunk_rows (the rate is steady here).
        assert max(tails[1:]) <= 2 * 2000, tails
        assert result.recorder.call_table.nbytes == result.recorder.request_table.nbytes == 0
    # Only the sketches' buckets remain, which grow with the range of latencies (a longer run
    # sees a few rarer, longer ones), not with the number of calls.
    assert kept[40_000] < 1.5 * kept[10_000], kept


def test_tables_in_memory_cost_their_columns_only() -> None:
    result = simulate(from_dict(mmc(20_000)), "none", seed=1)
    recorder = result.recorder
    per_call = rec.CALL_ROW.itemsize * recorder.call_count
    per_request = rec.REQUEST_ROW.itemsize * recorder.request_count
    assert recorder.call_table.nbytes == per_call and rec.CALL_ROW.itemsize == 65
    assert recorder.request_table.nbytes == per_request
