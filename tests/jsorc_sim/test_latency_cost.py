"""Latency beside cost in every experiment: latency_cost.csv and the printed table hold, per
scenario, app, grid point and policy, the mean over seeds of each cell's own report value
(read back here from results.parquet), whatever `metrics` the file lists; and
experiments/policy_table.py prints the same table below its own."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from jsorc_sim import latency_cost
from jsorc_sim.cli import main

REPO = Path(__file__).resolve().parents[2]
LOADTEST = REPO / "experiments" / "scenarios" / "jsorc_loadtest.toml"

ONLY_THROUGHPUT = f"""
name = "beside"
seeds = [1, 2]
duration_s = 90
metrics = ["throughput"]
plots = []
[[scenario]]
file = "{LOADTEST}"
apps = ["sentence_pairing", "flow_analysis"]
[scenario.grid]
"node.memory_mb" = [4096, 8192]
[[policy]]
name = "all_remote"
[[policy]]
name = "evaluation"
"""


def test_an_experiment_reports_latency_beside_cost_whatever_its_metrics(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, out = tmp_path / "exp.toml", tmp_path / "o"
    path.write_text(ONLY_THROUGHPUT)
    assert main(["experiment", str(path), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    results = pd.read_parquet(out / "results.parquet")
    table = pd.read_csv(out / "latency_cost.csv")
    keys = ["scenario", "app", "node.memory_mb", "policy"]
    assert len(table) == 2 * 2 * 2 and not table.duplicated(keys).any()
    for _, row in table.iterrows():
        mine = results[(results["app"] == row["app"]) & (results["policy"] == row["policy"])
                       & (results["node.memory_mb"] == row["node.memory_mb"])]
        assert sorted(mine["seed"].unique()) == [1, 2]
        for metric in latency_cost.METRICS:
            values = mine.loc[mine["metric"] == metric, "value"].to_numpy(dtype=float)
            values = values[~np.isnan(values)]
            if not len(values):
                assert math.isnan(row[f"{metric}_mean"])
                continue
            assert row[f"{metric}_mean"] == pytest.approx(values.mean(), rel=1e-12, abs=1e-12)
            if len(values) == 2 and values.std() > 0:
                half = stats.t.ppf(0.975, 1) * values.std(ddof=1) / math.sqrt(2)
                assert row[f"{metric}_ci95_high"] == pytest.approx(values.mean() + half)
    # Printed after the first metric's table, a block per scenario, a row per cell group.
    assert printed.index("throughput (mean") < printed.index("latency and cost (mean ± 95 %")
    block = printed[printed.index("latency and cost"):printed.index("wrote ")]
    assert "scenario jsorc_loadtest" in block
    for header in latency_cost.HEADERS.values():
        assert header in block
    lines = [line for line in block.splitlines() if "sentence_pairing" in line]
    assert len(lines) == 4 and all(" ± " in line for line in lines)
    mean = table[(table["app"] == "sentence_pairing") & (table["policy"] == "all_remote")
                 & (table["node.memory_mb"] == 4096)]["average_latency_mean"].iloc[0]
    assert f"{mean:,.1f} ± " in block


def test_the_table_shows_a_missing_value_as_a_dash_and_one_seed_without_ci() -> None:
    summary = pd.DataFrame([
        {"scenario": "s", "app": "all", "policy": p, "metric": m, "n": 1,
         "mean": math.nan if (p == "b" and m == "average_latency") else 3.0,
         "std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan}
        for p in ("b", "a") for m in latency_cost.METRICS])
    frame = latency_cost.frame(summary)
    assert list(frame["policy"]) == ["b", "a"] and list(frame["n"]) == [1, 1]
    text = latency_cost.format_table(frame, [7], order=["a", "b"])
    assert "one seed (no CI): seed 7" in text and "±" not in text.split("\n", 1)[1]
    rows = [line.split() for line in text.splitlines()[-2:]]
    assert rows[0][0] == "a" and rows[1][:2] == ["b", "-"]  # the file's order; "all" hidden


def load_policy_table() -> object:
    spec = importlib.util.spec_from_file_location(
        "jsorc_policy_table", REPO / "experiments" / "policy_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_policy_table_prints_latency_and_cost_below_its_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy_table = load_policy_table()
    argv = ["--duration", "60", "--apps", "sentence_pairing", "--seeds", "1", "2",
            "--workers", "2", "--out", str(tmp_path)]
    assert policy_table.main(argv) == 0  # type: ignore[attr-defined]
    printed = capsys.readouterr().out
    first, _, rest = printed.partition("\n\n")
    assert first.lstrip("\n").startswith("Mean walker latency (ms), JSORC loadtest")
    assert "model_based vs evaluation" in first and "latency and cost" not in first
    assert rest.startswith("latency and cost (mean ± 95 % CI half-width over seeds 1, 2)")
    cells = pd.read_csv(tmp_path / "cells_1clients.csv")
    frame = policy_table.latency_cost_frame(cells, "jsorc_loadtest")  # type: ignore[attr-defined]
    columns = {"mean_ms": "average_latency", "p95_ms": "95th_latency",
               "replica_core_s": "replica_core_s", "node_memory_gb_s": "node_memory_gb_s",
               "placement_changes": "placement_changes", "oom_events": "oom_events"}
    assert len(frame) == 5
    for _, row in frame.iterrows():
        mine = cells[cells["policy"] == row["policy"]]
        for column, metric in columns.items():
            assert row[f"{metric}_mean"] == pytest.approx(mine[column].mean(), rel=1e-12,
                                                          abs=1e-12, nan_ok=True)
