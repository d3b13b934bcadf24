"""Policy tuning: the objective language, the checks before anything runs, the search on a
scenario whose best parameter is known, failures as +inf, determinism, outputs and the CLI.

Every simulation is real and short: a closed loop of eight clients calling one remote action
with a constant 100 ms service time. With c replicas (c <= 8) the replicas are never idle, so
a walker takes exactly 8 x 100 / c ms; over 50 s the replicas hold 50 c replica-core-seconds.
The objective `average_latency + replica_core_s` is then 800 / c + 50 c: best at c = 4 (400),
850 at the default c = 1.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tomli_w

from jsorc_sim import tune
from jsorc_sim.scenario import ScenarioError, from_dict
from jsorc_sim.simulate import simulate
from jsorc_sim.tune import METRICS, TuneError, load_tune, parse_objective, run_tune

ONE_REMOTE: dict[str, Any] = {
    "name": "one_remote",
    "duration_s": 50,
    "warmup_s": 5,
    "node": {"cores": 4, "memory_mb": 4096},
    "actions": {"model": {"service": {"dist": "const", "mean_ms": 100}}},
    "apps": {"walker": {"calls": ["model"]}, "other": {"calls": ["model"]}},
    "workload": {"kind": "closed", "clients": 8},
    "placement": {"model": "remote:1"},
}


def theory(replicas: int) -> float:
    return 800 / replicas + 50 * replicas


def write(tmp_path: Path, scenario: dict[str, Any] | None = None, **tune_file: Any) -> Path:
    """A scenario file and a tune file (all_remote's replicas in [1, 8]) in tmp_path."""
    (tmp_path / "scenario.toml").write_text(tomli_w.dumps(scenario or ONE_REMOTE))
    cell = {"scenario": "scenario.toml", "apps": ["walker"], "seeds": [1]}
    text: dict[str, Any] = {
        "name": "known", "policy": "all_remote",
        "objective": "average_latency + replica_core_s",
        "method": "random+nelder-mead", "samples": 3, "iterations": 8, "seed": 0,
        "space": {"replicas": [1, 8]},
        "train": cell, "test": {**cell, "apps": ["other"], "seeds": [2]},
    }
    text.update(tune_file)
    path = tmp_path / "tune.toml"
    path.write_text(tomli_w.dumps({k: v for k, v in text.items() if v is not None}))
    return path


def problems(path: Path, **kwargs: Any) -> list[str]:
    with pytest.raises(TuneError) as caught:
        load_tune(path, **kwargs)
    return caught.value.problems


def train_rows(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["set"] == "train"]


# ----------------------------------------------------------------------------- objective


def test_objective_reads_metric_names_numbers_and_arithmetic() -> None:
    objective = parse_objective("95th_latency + 0.05 * replica_core_s")
    assert objective.names == ("95th_latency", "replica_core_s")
    assert objective({"95th_latency": 100.0, "replica_core_s": 200.0}) == pytest.approx(110.0)
    both = parse_objective("-(average_latency - 1e1) / (2 * throughput) + +oom_events")
    assert both({"average_latency": 30.0, "throughput": 4.0, "oom_events": 1}) == pytest.approx(
        -20 / 8 + 1)


@pytest.mark.parametrize(("text", "token"), [
    ("average_latency ** 2", "'**'"),
    ("max(average_latency, 1)", "'max(average_latency, 1)'"),
    ("__import__('os').system('true')", "__import__"),
    ("average_latency if oom_events else 0", "'average_latency if oom_events else 0'"),
    ("average_latency > 1", "'average_latency > 1'"),
    ("95th_latency % 7", "'%'"),
    ("True + average_latency", "True"),
])
def test_objective_refuses_anything_else_naming_the_token(text: str, token: str) -> None:
    with pytest.raises(TuneError) as caught:
        parse_objective(text)
    assert token in str(caught.value)
    assert "only metric names, numbers, + - * / and parentheses" in str(caught.value)


def test_objective_names_an_unknown_metric_and_suggests_one() -> None:
    with pytest.raises(TuneError) as caught:
        parse_objective("p95_latency + replica_cores")
    message = str(caught.value)
    assert "unknown metric 'p95_latency'" in message and "did you mean '95th_latency'" in message
    assert "unknown metric 'replica_cores'" in message
    for bad in ("", "1 + 2", "average_latency +"):
        with pytest.raises(TuneError):
            parse_objective(bad)


def test_objective_is_inf_when_a_metric_is_missing_or_it_divides_by_zero() -> None:
    objective = parse_objective("average_latency / throughput")
    assert objective({"average_latency": None, "throughput": 1.0}) == math.inf
    assert objective({"average_latency": math.nan, "throughput": 1.0}) == math.inf
    assert objective({"average_latency": 5.0, "throughput": 0.0}) == math.inf
    assert objective({"average_latency": 5.0, "throughput": 2.0}) == 2.5


def test_the_metrics_are_a_reports_keys() -> None:
    report = simulate(from_dict(ONE_REMOTE), "all_remote", seed=1).report()
    assert set(METRICS) == set(report["walker_run"]["all"]) | set(report["cost"])


# ----------------------------------------------------------------------------- checks


def test_every_problem_is_listed_before_anything_runs(tmp_path: Path) -> None:
    path = write(
        tmp_path, policy="model_based", method="grid", samples=0, seed=-1,
        objective="p99 + replica_core_s",
        space={"memory_cap": [0.05, 0.9], "max_replicas": [1.5, 4], "nope": [0, 1],
               "replan_s": [30, 10], "smoothing": "fast"},
        fixed={"min_gain": 2.0},
        train={"scenario": "scenario.toml", "apps": ["walker", "ghost"], "seeds": [1],
               "set": {"workload.clientz": 8, "network.nowhere.rtt_ms": 1, "seed": 3}},
        test={"scenario": "missing.toml"}, extra=1)
    found = problems(path)
    expected = [
        "unknown field 'extra'", "method must be one of random, nelder-mead, random+nelder-mead",
        "seed must be a whole number >= 0, got -1", "unknown metric 'p99'",
        "space.memory_cap: model_based.memory_cap must be >= 0.1, got 0.05",
        "space.max_replicas: max_replicas is an integer; bounds must be whole numbers",
        "space.nope: policy 'model_based' has no parameter 'nope'",
        "space.replan_s: low 30 must be below high 10",
        "space.smoothing must be [low, high], a list of choices or a table",
        "[fixed]: model_based.min_gain must be <= 1.0, got 2.0",
        "train.set.\"network.nowhere.rtt_ms\": no table 'network.nowhere'",
        "train.set.\"seed\": set by the tune file (seeds)",
        "test.scenario:", "cannot read",
    ]
    text = "\n".join(found)
    for part in expected:
        assert part in text, part
    # The scenario's own checks report an unknown override once the paths exist.
    path = write(tmp_path, train={"scenario": "scenario.toml", "apps": ["walker", "ghost"],
                                  "set": {"workload.clientz": 8}})
    assert "[workload] unknown field 'clientz'" in "\n".join(problems(path))
    path = write(tmp_path, train={"scenario": "scenario.toml", "apps": ["walker", "ghost"]})
    assert problems(path) == ["train.apps: unknown app 'ghost' in scenario 'one_remote' "
                              "(apps: walker, other)"]


def test_an_unknown_policy_is_named(tmp_path: Path) -> None:
    found = problems(write(tmp_path, policy="all_remotes"))
    assert len(found) == 1 and "unknown policy 'all_remotes'" in found[0]


def test_overrides_and_paths_are_applied_to_the_scenario(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JSORC_TRACES", raising=False)  # `make test` exports it
    trace = tmp_path / "held_out.csv"
    trace.write_text("ts,app\n0.5,walker\n1.0,walker\n")
    path = write(tmp_path, test={"scenario": "scenario.toml", "seeds": [2, 3], "set": {
        "workload.clients": 2, "workload.kind": "trace", "workload.trace": "held_out.csv",
        "actions.model.remote_start_s": 4}})
    spec = load_tune(path)
    assert [c.label for c in spec.test.cells] == ["all apps seed 2", "all apps seed 3"]
    scenario = spec.test.cells[0].scenario
    assert scenario.workload.trace == str(trace)  # relative to the tune file
    assert scenario.workload.clients == 2 and scenario.actions["model"].remote_start_s == 4
    assert spec.train.cells[0].scenario.workload.clients == 8
    path = write(tmp_path, test={"scenario": "{traces}/scenario.toml"})
    assert "uses {traces}: give traces_dir" in problems(path)[0]
    assert load_tune(path, traces_dir=tmp_path).test.scenario == str(tmp_path / "scenario.toml")


def test_a_test_set_that_is_not_held_out_is_warned_about(tmp_path: Path) -> None:
    cell = {"scenario": "scenario.toml", "apps": ["walker"], "seeds": [1, 2]}
    spec = load_tune(write(tmp_path, train=cell, test=cell))
    assert spec.warnings == ("test cell walker seed 1 is also a train cell: it is not held out",
                             "test cell walker seed 2 is also a train cell: it is not held out")


# ----------------------------------------------------------------------------- search


def test_the_optimizer_finds_the_known_best_replica_count(tmp_path: Path) -> None:
    spec = load_tune(write(tmp_path, method="nelder-mead", samples=None))
    result = run_tune(spec, workers=1)
    trials = train_rows(result.trials)
    # Every candidate simulated matches the closed-loop arithmetic.
    for replicas, objective in zip(trials["param.replicas"], trials["objective"], strict=True):
        assert objective == pytest.approx(theory(replicas), rel=1e-3)
    assert result.default.params == {"replicas": 1}
    assert result.default.objective("train") == pytest.approx(850, rel=1e-3)
    assert result.best.params == {"replicas": 4}
    assert result.best.objective("train") == pytest.approx(400, rel=1e-3)
    assert set(trials["phase"]) == {"default", "optimizer"}
    assert len(trials) - 1 <= spec.iterations  # distinct new candidates, at most


def test_random_then_optimizer_improves_on_the_random_phase(tmp_path: Path) -> None:
    result = run_tune(load_tune(write(tmp_path, samples=2, seed=5)), workers=1)
    trials = train_rows(result.trials)
    random_best = trials.loc[trials["phase"] == "random", "objective"].min()
    assert random_best > 400 * 1.001  # two draws missed c = 4 ...
    assert result.best.params == {"replicas": 4} and result.best.phase == "optimizer"
    assert result.summary["best"]["train"]["objective"] == pytest.approx(400, rel=1e-3)


def test_same_file_and_seed_give_the_same_trials_with_any_workers(tmp_path: Path) -> None:
    path = write(tmp_path, samples=4, iterations=4)
    serial = run_tune(load_tune(path), workers=1).trials
    parallel = run_tune(load_tune(path), workers=2).trials
    pd.testing.assert_frame_equal(serial, parallel)
    other = run_tune(load_tune(write(tmp_path, samples=4, iterations=4, seed=1)), workers=1)
    assert other.trials["params"].tolist() != serial["params"].tolist()


def test_a_failing_cell_scores_inf_and_the_trials_say_why(tmp_path: Path) -> None:
    # `big` never fits the node: placed local, the runtime runs out of memory on every
    # attempt and no walker completes; remote, every walker does.
    big = {**ONE_REMOTE, "actions": {"model": {"service": {"dist": "const", "mean_ms": 100},
                                               "local_memory_mb": 5000}},
           "placement": {}, "duration_s": 60}
    path = write(tmp_path, big, policy="static", method="random", samples=6, iterations=None,
                 objective="95th_latency", space={"default": ["local", "remote:2"]})
    result = run_tune(load_tune(path), workers=1)
    trials = result.trials.set_index(["trial", "set"])
    local = trials[trials["params"].str.contains('"local"')]
    assert len(local) == 1 and local["objective"].iloc[0] == math.inf
    assert local["failed_cells"].iloc[0] == 1
    assert "walker seed 1: no walker completed after warm-up" in local["failure"].iloc[0]
    assert "out-of-memory events" in local["failure"].iloc[0]
    assert result.best.params == {"default": "remote:2"}
    assert result.best.objective("train") == pytest.approx(400.0, rel=1e-3)  # 8 x 100 / 2 ms
    # The default placement (unloaded, loads locally on the first call) fails too.
    assert result.default.objective("train") == math.inf
    assert result.summary["default"]["train"]["objective"] is None
    assert "inf: a cell failed" in result.format()


# ----------------------------------------------------------------------------- outputs, CLI


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="jsorc-sim")
    tune.add_parser(top.add_subparsers(dest="command", required=True))
    return top


def test_the_cli_prints_train_against_test_and_writes_the_outputs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, out = write(tmp_path), tmp_path / "out"
    args = parser().parse_args(["tune", str(path), "--workers", "2", "--out", str(out)])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    for part in ("tune known: policy all_remote", "train default", "train tuned",
                 "test default", "test tuned", "replicas", "[1, 8]", "tuned vs default",
                 "-52.9 %", f"wrote {out}/"):
        assert part in printed, part
    trials = pd.read_parquet(out / "trials.parquet")
    best = trials[trials["best"]]
    assert sorted(best["set"]) == ["test", "train"] and set(best["param.replicas"]) == {4}
    assert set(trials.loc[trials["set"] == "test", "phase"]) == {"default", "optimizer"}
    assert {"params", "objective", "failed_cells", "failure", *METRICS} <= set(trials.columns)
    cells = pd.read_parquet(out / "cells.parquet")
    assert len(cells) == len(trials) and set(cells["app"]) == {"walker", "other"}
    summary = json.loads((out / "tune.json").read_text(), parse_constant=pytest.fail)
    assert summary["best"]["params"] == {"replicas": 4}
    # The test cell (app `other`, seed 2) is the same closed loop: the same numbers.
    for key, value in (("best", 400), ("default", 850)):
        for which in ("train", "test"):
            assert summary[key][which]["objective"] == pytest.approx(value, rel=1e-3)
    assert summary["method"] == "random+nelder-mead" and summary["seed"] == 0
    assert set(summary["wall_s"]) == {"train_random", "optimizer", "test", "total"}
    assert not list(out.glob(".*"))  # no temporary file left

    args = parser().parse_args(["tune", str(path), "--workers", "1", "--out", str(out),
                                "--json"])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)["best"]["params"] == {"replicas": 4}


def test_the_cli_refuses_bad_input_as_scenario_errors(tmp_path: Path) -> None:
    path = write(tmp_path)
    for argv in (["--workers", "0"], ["--workers", "2", "--scheduler", "tcp://nowhere:1"]):
        args = parser().parse_args(["tune", str(path), "--out", str(tmp_path / "x"), *argv])
        with pytest.raises(ScenarioError, match="--workers"):
            args.handler(args)
    args = parser().parse_args(["tune", str(tmp_path / "none.toml")])
    with pytest.raises(ScenarioError, match="cannot read"):
        args.handler(args)
    assert not (tmp_path / "x").exists()


def test_cells_can_run_on_a_dask_cluster(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address="127.0.0.1:0") as cluster:
        args = parser().parse_args(["tune", str(write(tmp_path, samples=2, iterations=2)),
                                    "--scheduler", cluster.scheduler_address,
                                    "--out", str(tmp_path / "out"), "--json"])
        assert args.handler(args) == 0
    serial = run_tune(load_tune(write(tmp_path, samples=2, iterations=2)), workers=1)
    assert json.loads(capsys.readouterr().out)["best"] == json.loads(
        json.dumps(serial.summary["best"]))
