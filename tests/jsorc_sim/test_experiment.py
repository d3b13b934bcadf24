"""Experiments: checked before they run, resumable, safe when interrupted, honest statistics."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from jsorc_sim import experiment as ex
from jsorc_sim.cli import main
from policies import Decision, NoParams, Observation

REPO = Path(__file__).resolve().parents[2]
LOADTEST = REPO / "experiments" / "scenarios" / "jsorc_loadtest.toml"


class Boom:
    """A policy whose reset fails: the cell fails, the experiment goes on."""

    Params = NoParams

    def __init__(self, params: NoParams | None = None) -> None:
        self.params = params or NoParams()

    def reset(self, seed: int) -> None:
        if seed >= 0:
            raise RuntimeError("boom at reset")

    def decide(self, observation: Observation) -> Decision:
        return Decision.keep()


class DieOnce:
    """Kills its worker process while a marker file exists (a worker killed mid-run)."""

    Params = NoParams
    MARKER = Path(os.environ.get("JSORC_TEST_MARKER", "/nonexistent"))

    def __init__(self, params: NoParams | None = None) -> None:
        self.params = params or NoParams()

    def reset(self, seed: int) -> None:
        if Path(os.environ.get("JSORC_TEST_MARKER", "/nonexistent")).exists():
            os._exit(3)

    def decide(self, observation: Observation) -> Decision:
        return Decision.keep()


def write(tmp_path: Path, body: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(body.replace("LOADTEST", str(LOADTEST)))
    return path


SMALL = """
name = "small"
seeds = [1, 2]
duration_s = 120
baseline = "all_remote"
plots = []
[[scenario]]
file = "LOADTEST"
apps = ["sentence_pairing"]
[scenario.grid]
"node.memory_mb" = [4096, 8192]
[[policy]]
name = "all_local"
[[policy]]
name = "all_remote"
"""


def test_cells_are_the_product_of_variants_apps_policies_and_seeds(tmp_path: Path) -> None:
    exp = ex.load_experiment(write(tmp_path, SMALL))
    cells = ex.cells(exp)
    assert len(cells) == 2 * 1 * 2 * 2  # memory sizes x apps x policies x seeds
    assert len({c.key for c in cells}) == len(cells)
    assert {dict(c.grid)["node.memory_mb"] for c in cells} == {4096, 8192}
    assert all(c.table["duration_s"] == 120 for c in cells)


def test_only_restricts_a_policy_to_grid_values(tmp_path: Path) -> None:
    body = SMALL + '[[policy]]\nname = "model_based"\nonly = { "node.memory_mb" = [4096] }\n'
    cells = ex.cells(ex.load_experiment(write(tmp_path, body)))
    mine = [c for c in cells if c.policy == "model_based"]
    assert {dict(c.grid)["node.memory_mb"] for c in mine} == {4096} and len(mine) == 2


def test_every_problem_is_listed_before_anything_runs(tmp_path: Path) -> None:
    body = """
name = "bad"
seeds = [1]
color = "red"
metrics = ["latency"]
baseline = "nobody"
[[scenario]]
file = "LOADTEST"
apps = ["no_such_app"]
[scenario.set]
"node.memroy_mb" = 4096
[scenario.grid]
"node.cores" = [0, 2]
[[policy]]
name = "no_such_policy"
[[policy]]
name = "all_remote"
params = { replicas = 0 }
[[policy]]
name = "all_remote"
"""
    with pytest.raises(ex.ExperimentError) as raised:
        ex.cells(ex.load_experiment(write(tmp_path, body)))
    message = str(raised.value)
    for needle in ("unknown field 'color'", "unknown metric 'latency'",
                   "baseline 'nobody'", "unknown policy 'no_such_policy'",
                   "all_remote.replicas must be >= 1, got 0", "label 'all_remote' is used twice"):
        assert needle in message, message
    # Scenario problems are found by the same pass (tests/jsorc_sim/test_experiment_checks.py).
    body2 = SMALL.replace('"node.memory_mb" = [4096, 8192]',
                          '"node.cores" = [0, 2]\n[scenario.set]\n"node.memroy_mb" = 1')
    body2 = body2.replace('apps = ["sentence_pairing"]', 'apps = ["no_such_app"]')
    with pytest.raises(ex.ExperimentError) as raised:
        ex.cells(ex.load_experiment(write(tmp_path, body2, "b2.toml")))
    message = str(raised.value)
    assert "unknown field 'memroy_mb'" in message
    assert "node.cores must be > 0, got 0" in message
    assert "unknown app 'no_such_app'" in message


def test_trace_problems_are_found_before_anything_runs(tmp_path: Path, traces_dir: Path) -> None:
    body = SMALL.replace('apps = ["sentence_pairing"]', '''[scenario.set]
"workload.kind" = "trace"
"workload.trace" = "{traces}/azure_functions_2019_sample10/inv.csv"
"workload.map" = { "ffffff0000" = "sentence_pairing" }''').replace(
        '[scenario.grid]\n"node.memory_mb" = [4096, 8192]', "")
    with pytest.raises(ex.ExperimentError, match="no stream 'ffffff0000' in trace"):
        ex.load_experiment(write(tmp_path, body), traces_dir)
    with pytest.raises(ex.ExperimentError, match="no such file"):
        ex.load_experiment(write(tmp_path, body, "m.toml"), tmp_path / "nowhere")
    bad = tmp_path / "traces" / "azure_functions_2019_sample10"
    bad.mkdir(parents=True)
    (bad / "inv.csv").write_text("HashFunction,HashApp,HashOwner,minute_1\nf,a,o,x\n")
    with pytest.raises(ex.ExperimentError, match=r"inv\.csv:2"):
        ex.cells(ex.load_experiment(write(tmp_path, body, "c.toml"), tmp_path / "traces"))


def test_a_run_is_resumable_and_a_second_run_does_nothing(tmp_path: Path) -> None:
    exp = ex.load_experiment(write(tmp_path, SMALL))
    out = tmp_path / "out"
    first = ex.run_experiment(exp, out, workers=2, progress=False)
    assert (first.ran, first.skipped, first.failed) == (8, 0, 0)
    again = ex.run_experiment(exp, out, workers=2, progress=False)
    assert (again.ran, again.skipped) == (0, 8)
    pd.testing.assert_frame_equal(first.results, again.results)
    # Lose one cell (as if it was in flight when the run stopped): only it runs again.
    next(iter((out / "cells").glob("*.json"))).unlink()
    resumed = ex.run_experiment(exp, out, workers=1, progress=False)
    assert (resumed.ran, resumed.skipped) == (1, 7)
    pd.testing.assert_frame_equal(first.results, resumed.results)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "small" and manifest["cells"]["total"] == 8
    assert manifest["text"] == exp.text and manifest["seeds"] == [1, 2]
    assert {"simpy", "numpy", "pandas"} <= set(manifest["libraries"])
    assert not list(out.glob(".*.tmp")), "no temporary file left behind"


def test_results_are_tidy_and_paired_against_the_baseline(tmp_path: Path) -> None:
    done = ex.run_experiment(ex.load_experiment(write(tmp_path, SMALL)), tmp_path / "o",
                             workers=2, progress=False)
    results = done.results
    assert set(results["metric"]) == set(ex.METRICS)
    one = results[(results["metric"] == "average_latency") & (results["policy"] == "all_local")]
    assert len(one) == 4 and one["value"].notna().all()
    assert {"node.memory_mb", "seed", "params", "trace", "status"} <= set(results.columns)
    paired = done.paired
    row = paired[(paired["metric"] == "average_latency")
                 & (paired["node.memory_mb"] == 4096)].iloc[0]
    assert row["policy"] == "all_local" and row["baseline"] == "all_remote" and row["n"] == 2
    assert row["mean_diff"] < 0, "local calls skip the network: lower latency"
    assert "paired" in row["test"]


def test_summary_and_paired_statistics_match_scipy() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(5):
        base = rng.normal(100, 5)
        for policy, shift in (("a", 0.0), ("b", -7.0)):
            rows.append({"cell": f"{policy}{seed}", "scenario": "s", "app": "all",
                         "policy": policy, "policy_name": policy, "params": "{}", "seed": seed,
                         "trace": "", "status": "ok", "error": "", "metric": "average_latency",
                         "value": base + shift + rng.normal(0, 1)})
    results = pd.DataFrame(rows)
    summary = ex.summarise(results)
    b = results[results["policy"] == "b"]["value"].to_numpy()
    low, high = stats.t.interval(0.95, len(b) - 1, loc=b.mean(), scale=stats.sem(b))
    mine = summary[summary["policy"] == "b"].iloc[0]
    assert mine["mean"] == pytest.approx(b.mean())
    assert (mine["ci95_low"], mine["ci95_high"]) == pytest.approx((low, high))
    paired = ex.pair(results, "a").iloc[0]
    a = results[results["policy"] == "a"]["value"].to_numpy()
    assert paired["mean_diff"] == pytest.approx((b - a).mean())
    assert paired["p_value"] == pytest.approx(stats.ttest_rel(b, a).pvalue)


def test_a_failing_cell_is_recorded_and_the_others_go_on(tmp_path: Path) -> None:
    body = SMALL + f'[[policy]]\nname = "{__name__}:Boom"\nlabel = "boom"\n'
    done = ex.run_experiment(ex.load_experiment(write(tmp_path, body)), tmp_path / "o",
                             workers=2, progress=False)
    assert done.failed == 4 and done.ran == 12
    failed = done.results[done.results["status"] != "ok"]
    assert set(failed["policy"]) == {"boom"}
    assert failed["error"].str.contains("RuntimeError: boom at reset").all()
    ok = done.results[done.results["status"] == "ok"]
    assert ok["value"].notna().any()


def test_a_killed_worker_loses_only_the_cells_in_flight(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "kill"
    marker.write_text("")
    monkeypatch.setenv("JSORC_TEST_MARKER", str(marker))
    body = SMALL.replace("plots = []", "plots = []") + \
        f'[[policy]]\nname = "{__name__}:DieOnce"\nlabel = "die"\n'
    exp = ex.load_experiment(write(tmp_path, body))
    out = tmp_path / "o"
    with pytest.raises(ex.ExperimentInterrupted, match="worker process died"):
        ex.run_experiment(exp, out, workers=1, progress=False)
    kept = list((out / "cells").glob("*.json"))
    for path in kept:
        json.loads(path.read_text())  # every file written is whole
    marker.unlink()
    resumed = ex.run_experiment(exp, out, workers=2, progress=False)
    assert resumed.skipped == len(kept) and resumed.ran == 12 - len(kept)
    assert resumed.failed == 0


def test_an_out_folder_of_another_experiment_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "o"
    ex.run_experiment(ex.load_experiment(write(tmp_path, SMALL)), out, workers=1,
                      progress=False)
    other = ex.load_experiment(write(tmp_path, SMALL.replace('name = "small"',
                                                             'name = "other"'), "other.toml"))
    with pytest.raises(ex.ExperimentError, match="holds the results of experiment 'small'"):
        ex.run_experiment(other, out, workers=1, progress=False)
    replaced = ex.run_experiment(other, out, workers=2, progress=False, overwrite=True)
    assert replaced.ran == 8
    assert json.loads((out / "manifest.json").read_text())["name"] == "other"


def test_the_cli_prints_the_summary_and_exits_2_on_bad_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SMALL)
    assert main(["experiment", str(path), "--out", str(tmp_path / "o"), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "experiment small: 8 cells run, 0 already done" in printed
    assert "average_latency (mean ± 95 % CI" in printed and "all_local" in printed
    assert "minus all_remote, paired by seed" in printed
    assert main(["experiment", str(path), "--out", str(tmp_path / "o")]) == 0
    assert "0 cells run, 8 already done" in capsys.readouterr().out
    bad = write(tmp_path, SMALL.replace('name = "all_local"', 'name = "al_local"'), "bad.toml")
    assert main(["experiment", str(bad), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "unknown policy 'al_local'" in err
    assert not (tmp_path / "b").exists()


def test_a_dask_cluster_gives_the_same_results_as_local_processes(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    exp = ex.load_experiment(write(tmp_path, SMALL))
    local = ex.run_experiment(exp, tmp_path / "local", workers=2, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:
        remote = ex.run_experiment(exp, tmp_path / "dask", scheduler=cluster.scheduler_address,
                                   progress=False)
    assert remote.ran == 8
    pd.testing.assert_frame_equal(local.results, remote.results)
    assert not math.isnan(remote.summary["mean"].iloc[0])
