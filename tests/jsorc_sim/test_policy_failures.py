"""Policy failures are loud: `jsorc-sim run` says on stderr how many decisions failed and the
first error with its file and line (exit 1 under --strict), and an experiment's summary says
"policy error (N)" where it would say "no data", listing each policy's first error. The
policies live in a file outside the repository, named by path (and run by worker processes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jsorc_sim.scenario import load
from jsorc_sim.simulate import simulate

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "experiments" / "scenarios" / "jsorc_loadtest.toml"
SIM = [sys.executable, "-m", "jsorc_sim.cli"]
DURATION_S = 120.0

FAILING = '''
from policies import Decision, NoParams, Placement


class Fine:
    """All remote, one replica each."""

    Params = NoParams

    def __init__(self, params=None):
        self.params = NoParams()

    def reset(self, seed):
        pass

    def decide(self, observation):
        return Decision({n: Placement.remote(1) for n in observation.actions}, "remote")


class Raising(Fine):
    def decide(self, observation):
        if observation.now >= 20:
            return observation.now + "s"  # the line that raises
        return super().decide(observation)


class ReturnsDict(Fine):
    def decide(self, observation):
        return {n: "remote" for n in observation.actions}


class AlwaysRaising(Fine):
    def decide(self, observation):
        raise RuntimeError("always")  # the line that raises
'''


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("failing_policies")
    assert REPO not in folder.parents
    path = folder / "failing.py"
    path.write_text(FAILING)
    return path


def _line(path: Path, text: str, after: str = "") -> int:
    """The number of the first line holding `text` (after the line holding `after`)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) if after else 0
    return next(i for i, line in enumerate(lines) if i >= start and text in line) + 1


def _run(ref: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SIM, "run", str(SCENARIO), "--app", "flow_analysis", "--duration",
                           str(DURATION_S), "--seed", "1", "--policy", ref, "--no-progress",
                           *extra], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _summary_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "failed" in line and "decisions" in line]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(("cls", "what"), [
    ("Raising", "TypeError: unsupported operand type(s) for +: 'float' and 'str' (at {file}:"
                "{raise_line})"),
    ("ReturnsDict", "PlacementError: decide() must return a Decision, got dict: "),
])
def test_a_failing_policy_is_summarised_on_stderr_and_fails_under_strict(
        policy_file: Path, cls: str, what: str) -> None:
    ref = f"{policy_file}:{cls}"
    quiet = _run(ref)
    assert quiet.returncode == 0, quiet.stderr
    line = _summary_line(quiet.stderr)
    # The truth, from the events table of the same run in this process, and the interval.
    result = simulate(SCENARIO, ref, app="flow_analysis", duration_s=DURATION_S, seed=1)
    failed = result.events[result.events["kind"] == "policy_error"]
    assert len(failed) == result.report()["cost"]["policy_errors"] > 0
    interval = load(SCENARIO).policy.interval_s
    decisions = len([t for t in range(0, int(DURATION_S), int(interval))])
    assert line.startswith(f"jsorc-sim: policy '{ref}' failed {len(failed)} times (of "
                           f"{decisions} decisions); first at t={failed['ts'].min():g} s: "), line
    assert what.format(file=policy_file, raise_line=_line(policy_file, "the line that raises"))\
        in line, line
    if cls == "ReturnsDict":
        decide = _line(policy_file, "def decide", after="class ReturnsDict")
        assert line.endswith(f"(returned by ReturnsDict.decide at {policy_file}:{decide})"), line
    strict = _run(ref, "--strict")
    assert strict.returncode == 1, strict.stderr
    assert _summary_line(strict.stderr) == line


def test_a_policy_that_never_fails_prints_no_summary_even_under_strict(
        policy_file: Path) -> None:
    answer = _run(f"{policy_file}:Fine", "--strict")
    assert answer.returncode == 0, answer.stderr
    assert "decisions" not in answer.stderr


EXPERIMENT = """
name = "loud"
seeds = [1, 2]
duration_s = 120
plots = []
baseline = "fine"
[[scenario]]
file = "{scenario}"
apps = ["flow_analysis"]
[[policy]]
label = "fine"
name = "{folder}/failing.py:Fine"
[[policy]]
label = "raising"
name = "{folder}/failing.py:Raising"
[[policy]]
label = "always"
name = "{folder}/failing.py:AlwaysRaising"
"""


def test_an_experiment_names_policy_errors_instead_of_no_data(
        policy_file: Path, tmp_path: Path) -> None:
    # The policy file's path is relative to the experiment file, which lies elsewhere.
    exp_dir = policy_file.parent / "experiment"
    exp_dir.mkdir(exist_ok=True)
    exp = exp_dir / "loud.toml"
    exp.write_text(EXPERIMENT.format(scenario=SCENARIO, folder=".."))
    out = tmp_path / "out"
    answer = subprocess.run([*SIM, "experiment", str(exp), "--workers", "2", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert answer.returncode == 0, answer.stderr + answer.stdout
    # The truth, per policy label, from the cells' own reports.
    errors: dict[str, int] = {}
    for record_path in (out / "cells").glob("*.json"):
        record = json.loads(record_path.read_text())
        assert record["status"] == "ok", record
        label = record["cell"]["policy"]
        errors[label] = errors.get(label, 0) + record["report"]["cost"]["policy_errors"]
        # Made absolute when the file was read: that is what the workers were given.
        assert record["cell"]["policy_name"].startswith(f"{policy_file}:"), record["cell"]
    assert errors["fine"] == 0 and errors["raising"] > 0 and errors["always"] > 0
    table = answer.stdout
    assert f"policy error ({errors['always']})" in table, table
    assert f"policy error ({errors['raising']})" in table, table
    assert "no data" not in table, table
    # The report lists each failing policy's first error, with its file and line.
    listed = re.findall(r"^  policy (\w+): (\d+) failed decisions in (\d+) cells; first: (.*)$",
                        table, re.M)
    assert {label: int(n) for label, n, _, _ in listed} == {
        "raising": errors["raising"], "always": errors["always"]}, table
    raise_at = _line(policy_file, "the line that raises", after="class AlwaysRaising")
    first_always = next(text for label, _, _, text in listed if label == "always")
    assert f"RuntimeError: always (at {policy_file}:{raise_at})" in first_always
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["policy_errors"]) == 2
