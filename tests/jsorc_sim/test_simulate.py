"""`simulate(..., overrides={...})`: dotted overrides of a scenario file or object, checked as
the file is. Each override is compared with a scenario file that says the same thing."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas.testing as pdt
import pytest
import tomli_w

from jsorc_sim import scenario as scenario_mod
from jsorc_sim.results import Result
from jsorc_sim.scenario import ScenarioError
from jsorc_sim.simulate import simulate

TABLE: dict[str, Any] = {
    "duration_s": 30,
    "actions": {
        "a": {"service": {"dist": "empirical", "file": "samples.txt"}, "local_memory_mb": 100},
        "b": {"service": {"dist": "exp", "mean_ms": 20}, "remote_start_s": 2.0},
    },
    "apps": {"x": {"calls": ["a"]}, "y": {"calls": ["a", "b"]}},
    "workload": {"kind": "closed", "clients": 2},
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A scenario file whose sample file is relative to it."""
    (tmp_path / "samples.txt").write_text("10\n20\n30\n")
    (tmp_path / "base.toml").write_text(tomli_w.dumps(TABLE))
    return tmp_path


def write(folder: Path, name: str, **changes: Any) -> Path:
    table = {**TABLE, **changes}
    (folder / name).write_text(tomli_w.dumps(table))
    return folder / name


def assert_same_run(a: Result, b: Result) -> None:
    for table in ("calls", "requests", "decisions"):
        pdt.assert_frame_equal(getattr(a, table), getattr(b, table), obj=table)
    assert a.report() == b.report()


def test_overrides_of_a_file_run_as_the_edited_file(folder: Path) -> None:
    edited = write(folder, "edited.toml", node={"cores": 1},
                   workload={"kind": "closed", "clients": 5, "think_ms": 3.5})
    overrides = {"node.cores": 1, "workload.clients": 5, "workload.think_ms": 3.5}
    run = simulate(folder / "base.toml", "all_local", seed=2, overrides=overrides)
    assert (run.scenario.node.cores, run.scenario.workload.clients) == (1, 5)
    assert_same_run(run, simulate(edited, "all_local", seed=2))
    assert run.report() != simulate(folder / "base.toml", "all_local", seed=2).report()


def test_overrides_of_a_scenario_object_keep_its_folder(folder: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The object's relative sample file is found from its own folder, not the current one."""
    monkeypatch.chdir(folder.parent)
    base = scenario_mod.load(Path(folder.name) / "base.toml")  # base_dir is relative
    assert base.base_dir == folder.name
    edited = write(folder, "edited.toml",
                   actions={**TABLE["actions"], "b": {**TABLE["actions"]["b"],
                                                      "remote_start_s": 7.0}})
    run = simulate(base, "all_remote", seed=4, overrides={"actions.b.remote_start_s": 7})
    assert run.scenario.base_dir == base.base_dir
    assert run.scenario.actions["b"].remote_start_s == 7.0
    assert base.actions["b"].remote_start_s == 2.0, "the object itself is not changed"
    assert_same_run(run, simulate(edited, "all_remote", seed=4))


def test_overrides_apply_before_the_app_is_picked(folder: Path) -> None:
    # b is not called by x: with --app x it is gone, but the override named the whole file.
    run = simulate(folder / "base.toml", "all_remote", app="x", seed=1,
                   overrides={"actions.b.remote_start_s": 9, "apps.x.compute_ms": 4})
    assert list(run.scenario.actions) == ["a"] and run.scenario.apps["x"].compute_ms == 4.0


def test_seed_and_duration_arguments_win_over_overrides(folder: Path) -> None:
    run = simulate(folder / "base.toml", "none", seed=5, duration_s=12,
                   overrides={"seed": 9, "duration_s": 20})
    assert (run.scenario.seed, run.scenario.duration_s) == (5, 12.0)


BAD = [  # (overrides, what the error names)
    ({"network.nowhere.rtt_ms": 1}, ["with overrides", "no table 'network.nowhere'",
                                     "'network.nowhere.rtt_ms'"]),
    ({"workload.clientz": 3}, ["[workload] unknown field 'clientz'"]),
    ({"workload.clients": "many"}, ["workload.clients must be a number", "'many'"]),
    ({"node.memory_mb": 0}, ["node.memory_mb must be > 0, got 0"]),
    ({"actions.a.service.file": "gone.txt"}, ["actions.a.service.file: no such file",
                                              "gone.txt"]),
    ({"warmup_s": 40}, ["warmup_s = 40", "duration_s = 30"]),
]


@pytest.mark.parametrize(("overrides", "named"), BAD, ids=[next(iter(o)) for o, _ in BAD])
def test_a_bad_override_is_a_scenario_error_naming_it(folder: Path, overrides: dict[str, Any],
                                                      named: list[str]) -> None:
    for scenario in (folder / "base.toml", scenario_mod.load(folder / "base.toml")):
        with pytest.raises(ScenarioError) as bad:
            simulate(scenario, "none", overrides=overrides)
        message = str(bad.value)
        assert "\n" not in message, message
        for part in named:
            assert part in message, f"{part!r} missing from {message!r}"


def test_a_scenario_built_in_python_takes_overrides_too() -> None:
    scenario = scenario_mod.from_dict({
        "duration_s": 10,
        "actions": {"a": {"service": {"dist": "const", "mean_ms": 100}}},
        "apps": {"x": {"calls": ["a"]}},
        "placement": {"a": "remote:1"},
    })
    slow = simulate(scenario, "none", overrides={"network.rtt_ms": 50})
    assert slow.requests["latency_ms"].tolist() == pytest.approx([150.0] * 66)
    assert dataclasses.replace(slow.scenario, network=scenario.network) == scenario
