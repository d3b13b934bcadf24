"""An experiment file is checked in one pass; a warm-up longer than a trace is warned about
(by `jsorc-sim run` and by an experiment); the summary says "same" and "one seed (no CI)"
rather than "+0.0 (p=nan)" and "over seeds 1"."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w

from jsorc_sim import experiment as ex
from jsorc_sim.cli import main
from jsorc_sim.simulate import simulate

REPO = Path(__file__).resolve().parents[2]
LOADTEST = REPO / "experiments" / "scenarios" / "jsorc_loadtest.toml"

# ----------------------------------------------------------------------------- one pass


def test_file_policy_and_scenario_problems_are_listed_in_one_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"""
name = "bad"
seeds = [1]
metrics = ["latency"]
[[scenario]]
file = "{LOADTEST}"
[scenario.set]
"node.memroy_mb" = 4096
[[policy]]
name = "no_such_policy"
""")
    with pytest.raises(ex.ExperimentError) as raised:
        ex.load_experiment(path)
    message = str(raised.value)
    assert "3 problems" in message, message
    for needle in ("unknown metric 'latency'", "unknown policy 'no_such_policy'",
                   "unknown field 'memroy_mb'"):
        assert needle in message, message
    # The CLI prints the same list and exits 2 before any cell runs.
    assert main(["experiment", str(path), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_a_sound_file_still_loads_and_expands(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(f'seeds = [1, 2]\n[[scenario]]\nfile = "{LOADTEST}"\n'
                    'apps = ["sentence_pairing"]\n[[policy]]\nname = "all_remote"\n')
    assert len(ex.cells(ex.load_experiment(path))) == 2


# ----------------------------------------------------------------------------- warm-up


def trace_scenario(tmp_path: Path, last_arrival_s: float, warmup_s: float) -> Path:
    """A requests trace of 11 arrivals evenly over [0, last_arrival_s], replayed for 60 s."""
    trace = tmp_path / f"trace_{last_arrival_s:g}.csv"
    times = np.linspace(0.0, last_arrival_s, 11)
    trace.write_text("ts,app\n" + "".join(f"{t:.3f},walker\n" for t in times))
    table: dict[str, Any] = {
        "name": "short_trace", "duration_s": 60, "warmup_s": warmup_s,
        "node": {"cores": 4, "memory_mb": 4096},
        "actions": {"model": {"service": {"dist": "const", "mean_ms": 50}}},
        "apps": {"walker": {"calls": ["model"]}},
        "workload": {"kind": "trace", "trace": trace.name, "trace_format": "requests"},
        "placement": {"model": "remote:1"},
    }
    path = tmp_path / f"scenario_{last_arrival_s:g}.toml"
    path.write_text(tomli_w.dumps(table))
    return path


@pytest.mark.parametrize("record", ["calls", "none"])
def test_a_trace_shorter_than_warmup_gives_a_warning_in_the_report(
        tmp_path: Path, record: str) -> None:
    short = simulate(trace_scenario(tmp_path, 10.0, 30.0), "none", seed=1, record=record)
    report = short.report()
    assert report["walker_run"]["all"]["average_latency"] is None  # what the warning explains
    [warning] = report["warnings"]
    assert "warmup_s = 30 s is longer than the trace's span" in warning
    assert "all 11 arrivals came during warm-up" in warning
    if record == "calls":  # the last arrival is known when the requests table is kept
        assert "the last at 10 s" in warning
    sound = simulate(trace_scenario(tmp_path, 50.0, 30.0), "none", seed=1, record=record)
    assert "warnings" not in sound.report()
    assert sound.report()["walker_run"]["all"]["average_latency"] is not None


def test_jsorc_sim_run_prints_the_warmup_warning_on_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(trace_scenario(tmp_path, 10.0, 30.0)), "--policy", "none",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "jsorc-sim: warning: warmup_s = 30 s is longer than the trace's span" in err
    assert main(["run", str(trace_scenario(tmp_path, 50.0, 30.0)), "--policy", "none",
                 "--no-progress"]) == 0
    assert "warmup_s" not in capsys.readouterr().err


def test_an_experiment_reports_the_warmup_warning_once_per_scenario(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    short, long = trace_scenario(tmp_path, 10.0, 30.0), trace_scenario(tmp_path, 50.0, 30.0)
    path = tmp_path / "exp.toml"
    path.write_text(f"""
name = "warm"
seeds = [1, 2]
plots = []
[[scenario]]
file = "{short}"
label = "short"
[[scenario]]
file = "{long}"
label = "long"
[[policy]]
name = "none"
[[policy]]
name = "all_remote"
""")
    out = tmp_path / "out"
    assert main(["experiment", str(path), "--out", str(out), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    # Four cells of the short scenario (2 policies x 2 seeds) say one thing, once.
    assert len(warnings) == 1, err
    assert "scenario short: warmup_s = 30 s is longer" in warnings[0]
    assert "(4 cells)" in warnings[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["warnings"] == [warnings[0].removeprefix("jsorc-sim: warning: ")]


# ----------------------------------------------------------------------------- summary text


def test_identical_results_read_same_and_one_seed_says_no_ci(tmp_path: Path) -> None:
    path = tmp_path / "same.toml"
    path.write_text(f"""
name = "same"
seeds = [1]
duration_s = 120
baseline = "remote"
plots = []
[[scenario]]
file = "{LOADTEST}"
apps = ["sentence_pairing"]
[[policy]]
name = "all_remote"
label = "remote"
[[policy]]
name = "all_remote"
label = "remote_again"
[[policy]]
name = "all_local"
label = "local"
""")
    exp = ex.load_experiment(path)
    done = ex.run_experiment(exp, tmp_path / "out", workers=1, progress=False)
    text = ex.headline(exp, done.summary, done.paired)
    assert "one seed (no CI): seed 1" in text and "over seeds" not in text, text
    assert "p=nan" not in text, text
    paired = done.paired[done.paired["metric"] == exp.metrics[0]].set_index("policy")
    assert paired.loc["remote_again", "mean_diff"] == 0  # the same runs: the same requests
    assert ex.paired_text(0.0, math.nan, 1) == "same"
    diff = paired.loc["local", "mean_diff"]
    assert diff < 0  # sentence_pairing fits the node: local is faster
    assert ex.paired_text(diff, math.nan, 1) == f"{diff:+.1f} (one seed)"
    assert f"{diff:+.1f} (one seed)" in text and "same" in text


def test_paired_text_keeps_the_p_value_when_there_is_one() -> None:
    assert ex.paired_text(-3.25, 0.0123, 3) == "-3.2 (p=0.012)"
    assert ex.paired_text(2.0, math.nan, 3) == "+2.0 (on every seed)"
