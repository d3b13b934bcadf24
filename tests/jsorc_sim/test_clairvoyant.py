"""The clairvoyant bound: best static and greedy piecewise-static schedules, checked against
brute force with `simulate` and objectives computed here from the raw report."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tomli_w

from jsorc_sim import scenario as scenario_mod
from jsorc_sim.clairvoyant import (
    BoundError,
    best_static,
    candidates,
    check_ladder,
    piecewise_static,
)
from jsorc_sim.cli import main
from jsorc_sim.simulate import simulate
from policies import Mode, Placement
from tests.conftest import REPO

LOADTEST = REPO / "experiments" / "scenarios" / "jsorc_loadtest.toml"

# One closed-loop client, constant service, a 20 ms network: `fast` is quicker local, `slow`
# runs 5x slower on the node. Every candidate fits (2 GB of 4 GB).
CLOSED = {
    "name": "closed",
    "duration_s": 60,
    "warmup_s": 10,
    "node": {"cores": 2, "memory_mb": 4096, "runtime_memory_mb": 300},
    "network": {"rtt_ms": 20},
    "actions": {
        "fast": {"local_memory_mb": 1000, "service": {"dist": "const", "mean_ms": 10}},
        "slow": {"local_memory_mb": 1000, "local_slowdown": 5,
                 "service": {"dist": "const", "mean_ms": 10}},
    },
    "apps": {"walker": {"calls": ["fast", "slow"]}},
    "workload": {"kind": "closed", "clients": 1},
}
# A load that steps up mid-run: 2 requests/s for 60 s, then 15/s. `x` never fits locally and
# one replica serves 10 calls/s, so one replica suffices before 60 s and two are needed after.
STEP_OBJECTIVE = "average_latency + 0.5 * replica_core_s"
STEP_LADDER = (1, 2, 4)


def objective_of(report: dict[str, Any], weight: float, latency: str) -> float:
    """The objective computed from the raw report (not through jsorc_sim.tune)."""
    return float(report["walker_run"]["all"][latency]) + weight * float(
        report["cost"]["replica_core_s"])


@pytest.fixture(scope="module")
def step(tmp_path_factory: pytest.TempPathFactory) -> scenario_mod.Scenario:
    folder = tmp_path_factory.mktemp("step")
    ts = np.concatenate([np.arange(0.0, 60.0, 0.5), 60.0 + np.arange(900) / 15.0])
    pd.DataFrame({"ts": ts, "app": "walker"}).to_csv(folder / "step.csv", index=False)
    table = {
        "name": "step", "duration_s": 120, "warmup_s": 5,
        "node": {"cores": 2, "memory_mb": 4096, "runtime_memory_mb": 300},
        "network": {"rtt_ms": 20},
        "actions": {"x": {"local_memory_mb": 5000, "remote_start_s": 2,
                          "service": {"dist": "const", "mean_ms": 100}}},
        "apps": {"walker": {"calls": ["x"]}},
        "workload": {"kind": "trace", "trace": "step.csv", "trace_format": "requests"},
    }
    (folder / "step.toml").write_text(tomli_w.dumps(table))
    return scenario_mod.load(folder / "step.toml")


@pytest.fixture(scope="module")
def step_bound(step: scenario_mod.Scenario) -> Any:
    return piecewise_static(step, seed=1, stretches=2, objective=STEP_OBJECTIVE,
                            ladder=STEP_LADDER)


def schedule_run(scenario: scenario_mod.Scenario, stretches: list[dict[str, Any]],
                 duration_s: float | None = None) -> dict[str, Any]:
    return simulate(scenario, "schedule", params={"stretches": stretches}, seed=1,
                    duration_s=duration_s).report()


def test_one_stretch_is_the_brute_force_best_static() -> None:
    scenario = scenario_mod.from_dict(CLOSED)
    result = best_static(scenario, seed=3, ladder=(1, 2),
                         objective="95th_latency + 0.1 * replica_core_s")
    values = {}
    for fast, slow in itertools.product(["local", "remote:1", "remote:2"], repeat=2):
        report = simulate(scenario, "static", seed=3,
                          params={"placements": {"fast": fast, "slow": slow}}).report()
        values[(fast, slow)] = objective_of(report, 0.1, "95th_latency")
    best = min(values, key=lambda k: values[k])
    assert result.value == pytest.approx(values[best])
    assert result.static["placements"] == {"fast": best[0], "slow": best[1]}
    assert result.schedule == ({"start_s": 0.0, "placements": dict(result.static["placements"])},)
    assert result.candidates == 9 and not result.pruned
    assert sorted(result.table["objective"]) == pytest.approx(sorted(values.values()))
    assert (result.table["search"] == "static").all() and result.table["chosen"].sum() == 1


def test_piecewise_beats_best_static_when_the_load_steps_up(
        step: scenario_mod.Scenario, step_bound: Any) -> None:
    statics = {r: objective_of(simulate(step, "static", seed=1,
                                        params={"placements": {"x": f"remote:{r}"}}).report(),
                               0.5, "average_latency") for r in STEP_LADDER}
    best_r = min(statics, key=lambda r: statics[r])
    assert step_bound.static["metrics"]["objective"] == pytest.approx(statics[best_r])
    assert step_bound.value <= statics[best_r]
    assert step_bound.value < statics[best_r] - 1.0  # strictly lower, and by a margin
    assert len(step_bound.schedule) == 2
    assert "greedy" in step_bound.method and "not guaranteed optimal" in step_bound.method


def test_piecewise_is_no_worse_than_any_schedule_after_the_greedy_first_stretch(
        step: scenario_mod.Scenario, step_bound: Any) -> None:
    first = step_bound.table.query("search == 'piecewise' and stretch == 0 and chosen")
    first_x = first["x"].iloc[0]
    # The greedy first stretch is the best of the first 60 s, by brute force.
    prefix = {r: objective_of(schedule_run(step, [{"start_s": 0, "placements": {
        "x": f"remote:{r}"}}], duration_s=60), 0.5, "average_latency") for r in STEP_LADDER}
    assert first_x == f"remote:{min(prefix, key=lambda r: prefix[r])}"
    for r in STEP_LADDER:
        whole = schedule_run(step, [{"start_s": 0, "placements": {"x": first_x}},
                                    {"start_s": 60, "placements": {"x": f"remote:{r}"}}])
        assert step_bound.value <= objective_of(whole, 0.5, "average_latency") + 1e-9


def test_reported_metrics_are_those_of_rerunning_the_schedule(
        step: scenario_mod.Scenario, step_bound: Any) -> None:
    report = schedule_run(step, list(step_bound.schedule))
    walker, cost = report["walker_run"]["all"], report["cost"]
    for key in ("average_latency", "95th_latency"):
        assert step_bound.metrics[key] == pytest.approx(walker[key])
    for key in ("replica_core_s", "node_memory_gb_s", "placement_changes", "oom_events"):
        assert step_bound.metrics[key] == pytest.approx(cost[key])
    assert step_bound.metrics["objective"] == pytest.approx(
        objective_of(report, 0.5, "average_latency"))


def test_regret_sign(step: scenario_mod.Scenario, step_bound: Any) -> None:
    static = simulate(step, "static", seed=1, params={"placements": {"x": "remote:2"}}).report()
    expected = objective_of(static, 0.5, "average_latency") - step_bound.value
    assert expected > 0
    assert step_bound.regret(static) == pytest.approx(expected)
    flat = {**static["walker_run"]["all"], **static["cost"]}
    assert step_bound.regret(flat, relative=True) == pytest.approx(expected / step_bound.value)
    assert step_bound.regret(step_bound.value) == 0.0
    assert step_bound.regret(step_bound.value - 5.0) == pytest.approx(-5.0)  # beat the bound
    no_walker = {**flat, "average_latency": None}
    assert math.isinf(step_bound.regret(no_walker))


def test_the_same_in_parallel(step: scenario_mod.Scenario, step_bound: Any) -> None:
    parallel = piecewise_static(step, seed=1, stretches=2, objective=STEP_OBJECTIVE,
                                ladder=STEP_LADDER, workers=2)
    pd.testing.assert_frame_equal(parallel.table, step_bound.table)
    assert parallel.schedule == step_bound.schedule


def test_candidates_are_pruned_past_max_candidates() -> None:
    scenario = scenario_mod.load(LOADTEST).for_app("flow_analysis")
    actions = ("use_enc", "text_seg", "tfm_ner")
    memory = {a: scenario.actions[a].local_memory_mb for a in actions}
    room = scenario.node.memory_mb - scenario.node.runtime_memory_mb

    def feasible(combo: dict[str, Placement]) -> bool:
        return sum(memory[a] for a, p in combo.items() if p.mode is Mode.LOCAL) <= room

    full = candidates(scenario, actions, (1, 2, 4, 8), max_candidates=125)
    product = [dict(zip(actions, c, strict=True)) for c in itertools.product(
        [Placement.local(), *(Placement.remote(r) for r in (1, 2, 4, 8))], repeat=3)]
    assert full == [c for c in product if feasible(c)]
    pruned = candidates(scenario, actions, (1, 2, 4, 8))  # 125 > 64
    expected = []
    for combo in product:
        remote = {p.replicas for p in combo.values() if p.mode is Mode.REMOTE}
        if feasible(combo) and len(remote) <= 1:  # every remote action at one count
            expected.append(combo)
    assert sorted(map(str, pruned)) == sorted(map(str, expected))
    assert len(pruned) == len(expected) < len(full)
    assert pruned[0] == dict.fromkeys(actions, Placement.local()) or not feasible(
        dict.fromkeys(actions, Placement.local()))


def test_cli_prints_and_writes(step: scenario_mod.Scenario, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str], step_bound: Any) -> None:
    path = Path(step.base_dir) / "step.toml"
    out = tmp_path / "bound"
    code = main(["bound", str(path), "--seed", "1", "--stretches", "2", "--objective",
                 STEP_OBJECTIVE, "--ladder", "1,2,4", "--json", "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert printed == json.loads((out / "bound.json").read_text())
    assert printed["schedule"] == list(step_bound.schedule)
    assert printed["metrics"]["objective"] == pytest.approx(step_bound.value)
    table = pd.read_csv(out / "table.csv")
    assert len(table) == len(step_bound.table) == 3 + 2 * 3
    code = main(["bound", str(path), "--stretches", "2", "--ladder", "1,2,4"])
    text = capsys.readouterr().out
    assert code == 0 and "best static" in text and "piecewise schedule" in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--ladder", "1,x"], "ladder must be replica counts"),
    (["--ladder", "2,1"], "ladder must increase strictly"),
    (["--stretches", "0"], "stretches must be a whole number >= 1"),
    (["--stretches", "30"], "the first stretch ends at 4 s, not after warmup_s = 5 s"),
    (["--objective", "p95"], "unknown metric 'p95'"),
])
def test_cli_bad_input(step: scenario_mod.Scenario, capsys: pytest.CaptureFixture[str],
                       argv: list[str], message: str) -> None:
    assert main(["bound", str(Path(step.base_dir) / "step.toml"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_ladder() -> None:
    with pytest.raises(BoundError, match="ladder entries must be whole replica counts"):
        check_ladder([0, 1])
    assert check_ladder("1, 2,4") == (1, 2, 4)
