"""Tuning a composed baseline: dotted keys into a policy's table parameters (`compose`'s
`scaler_params.target`, `guarded`'s `params.*` and `guards.*`), checked against the inner
policy before anything runs, searched as flat names and simulated as nested tables.

The scenario is test_tune's closed loop (eight clients, one remote action, 100 ms calls)
under `compose` with placement all_remote and scaler hpa: HPA's target decides how many
replicas the loop gets, so trials with different targets score differently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from jsorc_sim.scenario import from_dict
from jsorc_sim.simulate import simulate
from jsorc_sim.tune import TuneError, load_tune, tune_config, tune_spec
from jsorc_sim.tune_space import nest
from policies import describe, make
from tests.jsorc_sim.test_tune import ONE_REMOTE

FIXED = {"placement": "all_remote", "scaler": "hpa"}
SPACE = {"scaler_params.target": [0.3, 1.0]}


def config(**changes: Any) -> dict[str, Any]:
    """A compose + hpa tune config: two random trials of HPA's target on one train cell."""
    cell = {"scenario": "scenario.toml", "apps": ["walker"], "seeds": [1, 2]}
    raw: dict[str, Any] = {
        "name": "compose_hpa", "policy": "compose",
        "objective": "average_latency + replica_core_s", "method": "random", "samples": 2,
        "seed": 3, "space": SPACE, "fixed": FIXED,
        "train": cell, "test": {**cell, "apps": ["other"], "seeds": [3]}}
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not None}


def scenario_in(tmp_path: Path) -> Path:
    (tmp_path / "scenario.toml").write_text(tomli_w.dumps(ONE_REMOTE))
    return tmp_path


def problems(tmp_path: Path, **changes: Any) -> list[str]:
    with pytest.raises(TuneError) as caught:
        tune_spec(config(**changes), base_dir=scenario_in(tmp_path))
    return caught.value.problems


def fresh_objective(params: dict[str, Any], app: str, seeds: list[int]) -> float:
    """The objective, computed here from fresh simulations of compose with `params`."""
    values: list[float] = []
    for seed in seeds:
        report = simulate(from_dict(ONE_REMOTE), "compose", params=params, app=app,
                          seed=seed).report()
        values.append(float(report["walker_run"]["all"]["average_latency"])
                      + float(report["cost"]["replica_core_s"]))
    return sum(values) / len(values)


def test_nest_sets_dotted_names_inside_tables_without_changing_them() -> None:
    whole = {"metric": "in_flight"}
    flat = {"scaler": "hpa", "scaler_params": whole, "scaler_params.target": 0.5,
            "guards.cooldown.cooldown_s": 30.0}
    assert nest(flat) == {"scaler": "hpa", "scaler_params": {"metric": "in_flight",
                                                             "target": 0.5},
                          "guards": {"cooldown": {"cooldown_s": 30.0}}}
    assert whole == {"metric": "in_flight"}


def test_tuning_hpas_target_inside_compose(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = tune_config(config(), base_dir=scenario_in(tmp_path), out=out, workers=1,
                         progress=False)
    trials = result.trials[result.trials["set"] == "train"]
    searched = trials[trials["phase"] == "random"]["param.scaler_params.target"]
    assert len(searched) == 2 and searched.between(0.3, 1.0).all()
    assert searched.nunique() == 2
    # The default candidate is hpa's own default target, held inside the table.
    assert result.default.params == {**FIXED, "scaler_params.target": 0.8}
    best = result.best.params["scaler_params.target"]
    assert result.tuned_params == {**FIXED, "scaler_params": {"target": best}}
    built = make("compose", result.tuned_params)
    assert built.params.scaler_params == {"target": best}
    # The best trial's objective is what a fresh simulation of those nested params gives.
    expected = fresh_objective(result.tuned_params, "walker", [1, 2])
    assert result.best.objective("train") == pytest.approx(expected, rel=1e-9)
    assert result.objectives["train"]["tuned"] == result.best.objective("train")
    assert result.objectives["test"]["default"] == pytest.approx(
        fresh_objective(result.default_params, "other", [3]), rel=1e-9)
    summary = json.loads((out / "tune.json").read_text())
    assert summary["space"] == {"scaler_params.target": {"kind": "float", "low": 0.3,
                                                         "high": 1.0, "log": False}}
    assert summary["best"]["params"]["scaler_params.target"] == best
    assert summary["best"]["policy_params"] == result.tuned_params
    assert "scaler_params.target" in result.format()


def test_a_tune_file_with_dotted_keys_loads_like_the_config(tmp_path: Path) -> None:
    scenario_in(tmp_path)
    path = tmp_path / "tune.toml"
    path.write_text(tomli_w.dumps(config(
        space={"scaler_params.stable_window_s": {"low": 6, "high": 300, "log": True},
               "placement_params.node_mem_threshold": [0.6, 0.95]},
        fixed={"placement": "evaluation", "scaler": "kpa"})))
    spec = load_tune(path)
    assert {d.name: d.log for d in spec.space} == {"scaler_params.stable_window_s": True,
                                                   "placement_params.node_mem_threshold": False}
    defaults = {p.name: p.default for p in describe("kpa")}
    nested = spec.policy_params(spec.default_params)
    assert nested["scaler_params"] == {"stable_window_s": defaults["stable_window_s"]}
    assert nested["placement_params"] == {"node_mem_threshold": 0.8}  # evaluation's default


def test_an_unknown_inner_name_is_one_problem_listing_the_inner_parameters(
        tmp_path: Path) -> None:
    found = problems(tmp_path, space={"scaler_params.targt": [0.3, 1.0]})
    assert len(found) == 1
    assert "space.scaler_params.targt: policy 'hpa'" in found[0]
    assert "has no parameter 'targt'" in found[0]
    hpa = [p.name for p in describe("hpa")]
    assert f"(parameters: {', '.join(hpa)})" in found[0]
    # kpa's window is not hpa's: the inner policy is the one [fixed] names.
    found = problems(tmp_path, space={"scaler_params.stable_window_s": [6, 300]})
    assert len(found) == 1 and "policy 'hpa'" in found[0] and "'stable_window_s'" in found[0]


@pytest.mark.parametrize(("space", "fixed", "part"), [
    ({"scaler_params.target": [0.001, 1.0]}, FIXED, "hpa.target must be >= 0.01, got 0.001"),
    ({"scaler_params.max_replicas": [1.5, 4]}, FIXED, "bounds must be whole numbers"),
    ({"scaler_params.metric": ["utilisation", "cpu"]}, FIXED, "hpa.metric must be one of"),
    ({"scaler_params.target": [0.3, 1.0]}, {**FIXED, "scaler_params": {"target": 0.5}},
     "also in [fixed]"),
    ({"scaler_params.target": [0.3, 1.0], "scaler": ["hpa", "kpa"]}, {"placement": "none"},
     "hold 'scaler' in [fixed]"),
    ({"scaler_params.target": [0.3, 1.0]}, {**FIXED, "scaler_params.tolerance": -1},
     "[fixed]: hpa.tolerance must be >= 0.0, got -1"),
    ({"placement.x": [1, 2]}, FIXED, "'placement' is not a table of parameters"),
    ({"scaler_params.target": [0.3, 1.0]}, {**FIXED, "scaler": "nope"}, "unknown policy 'nope'"),
])
def test_bad_inner_values_are_refused(tmp_path: Path, space: dict[str, Any],
                                      fixed: dict[str, Any], part: str) -> None:
    assert part in "\n".join(problems(tmp_path, space=space, fixed=fixed))


def test_guarded_params_and_guards_are_searched_by_dotted_names(tmp_path: Path) -> None:
    space = {"params.target": [0.3, 1.0], "guards.cooldown.cooldown_s": [10, 100]}
    fixed = {"policy": "hpa", "guards": {"replica_bounds": {"max_replicas": 8}}}
    spec = tune_spec(config(policy="guarded", space=space, fixed=fixed),
                     base_dir=scenario_in(tmp_path))
    params = spec.policy_params(spec.params({"params.target": 0.5,
                                             "guards.cooldown.cooldown_s": 20.0}))
    assert params == {"policy": "hpa", "params": {"target": 0.5},
                      "guards": {"replica_bounds": {"max_replicas": 8},
                                 "cooldown": {"cooldown_s": 20.0}}}
    make("guarded", params)
    found = "\n".join(problems(tmp_path, policy="guarded", fixed={"policy": "hpa"},
                               space={"params.nope": [0, 1], "guards.ghost.x": [0, 1]}))
    assert "policy 'hpa' (the params of 'guarded') has no parameter 'nope'" in found
    assert "needs a guard and its parameter (guards: replica_bounds, cooldown" in found
    assert not math.isnan(spec.defaults["params.target"])
