"""A tune writes its trajectory and default-vs-tuned plots, each beside the CSV it was drawn
from, and that CSV is what the trials were; progress shows the best so far.

One tiny tune (the closed loop of test_tune.py, exponential service so seeds differ, two
apps and two seeds a set) runs once for the module, in this process."""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from jsorc_sim.tune import TUNE_FILES, TuneResult, load_tune, progress_text, run_tune
from tests.jsorc_sim.test_tune import ONE_REMOTE, write

CELLS = {"scenario": "scenario.toml", "apps": ["walker", "other"], "seeds": [1, 2]}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[TuneResult, Path, str]:
    folder = tmp_path_factory.mktemp("tune")
    scenario: dict[str, Any] = {**ONE_REMOTE, "duration_s": 40, "actions": {
        "model": {"service": {"dist": "exp", "mean_ms": 100}}}}
    spec = load_tune(write(folder, scenario, samples=3, iterations=4, train=CELLS,
                           test={**CELLS, "seeds": [3, 4]}))
    out = folder / "out"
    err = io.StringIO()  # not a terminal: progress is a line per step
    with redirect_stderr(err):
        result = run_tune(spec, out, workers=1, progress=True)
    return result, out, err.getvalue()


def test_both_plots_and_their_csvs_are_written(tuned: tuple[TuneResult, Path, str]) -> None:
    _, out, _ = tuned
    for name in ("trajectory", "default_vs_tuned"):
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
        assert (out / f"{name}.csv").is_file()
    assert {p.name for p in out.iterdir()} == {*TUNE_FILES, "manifest.json"}


def test_the_trajectory_csv_is_the_train_trials(tuned: tuple[TuneResult, Path, str]) -> None:
    _, out, _ = tuned
    trials = pd.read_parquet(out / "trials.parquet")
    train = trials[trials["set"] == "train"].sort_values("trial").reset_index(drop=True)
    drawn = pd.read_csv(out / "trajectory.csv")
    assert drawn["trial"].tolist() == train["trial"].tolist()
    assert drawn["phase"].tolist() == train["phase"].tolist()
    np.testing.assert_allclose(drawn["objective"], train["objective"])
    # Best so far: the running minimum over the candidates the search asked for (the
    # defaults, phase "default", are a reference, not a search step).
    searched = train["phase"] != "default"
    running = np.minimum.accumulate(np.where(searched, train["objective"], np.inf))
    expected = np.where(np.cumsum(searched) > 0, running, np.nan)
    np.testing.assert_allclose(drawn["best_so_far"], expected)
    best = trials.loc[trials["best"] & (trials["set"] == "train"), "objective"].item()
    assert drawn["best_so_far"].iloc[-1] == pytest.approx(best)


def test_the_default_vs_tuned_csv_is_the_cells(tuned: tuple[TuneResult, Path, str]) -> None:
    result, out, _ = tuned
    cells = pd.read_parquet(out / "cells.parquet")
    drawn = pd.read_csv(out / "default_vs_tuned.csv")
    trial_of = {"default": result.default.trial, "tuned": result.best.trial}
    assert set(drawn["set"]) == {"train", "test"}
    for row in drawn.itertuples():
        mine = cells[(cells["set"] == row.set) & (cells["trial"] == trial_of[row.candidate])]
        if row.app != "all cells (objective)":
            mine = mine[mine["app"] == row.app]
        values = mine["objective"].to_numpy(dtype=float)
        assert row.cells == len(values) == (2 if row.app != "all cells (objective)" else 4)
        assert row.mean == pytest.approx(values.mean())
        low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(),
                                     scale=stats.sem(values))
        assert (row.ci95_low, row.ci95_high) == (pytest.approx(low), pytest.approx(high))
    # The set's objective (tune.json) is the all-cells row.
    summary = result.summary
    for which in ("train", "test"):
        for candidate, key in (("default", "default"), ("tuned", "best")):
            row = drawn[(drawn["set"] == which) & (drawn["candidate"] == candidate)
                        & (drawn["app"] == "all cells (objective)")]
            assert row["mean"].item() == pytest.approx(summary[key][which]["objective"])


def test_progress_shows_the_trial_count_and_the_best_so_far(
        tuned: tuple[TuneResult, Path, str]) -> None:
    result, _, err = tuned
    lines = [line for line in err.splitlines() if line.startswith("known:")]
    assert lines, err
    searched = [t for t in result.evaluator.trials.values() if t.phase != "default"]
    last_train = [line for line in lines if "best" in line][-1]
    assert f"{len(searched)} trials" in last_train
    # Objectives here are several hundred: shown with one decimal and thousands commas.
    assert f"best {result.best.objective('train'):,.1f} (trial {result.best.trial})" \
        in last_train
    assert "test: default" in lines[-1]


def test_progress_text_before_any_searched_candidate() -> None:
    assert progress_text([], [], "train") == "0 trials, no searched candidate yet"
