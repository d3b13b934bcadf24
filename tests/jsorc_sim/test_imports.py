"""Start-up cost: what `jsorc-sim` imports before it does any work.

A user waits for the whole process, and `import jsorc_sim.cli` once spent ~1.6 s importing
pandas, scipy, pyarrow and httpx that `jsorc-sim run` never used. Each check runs in a fresh
interpreter: this test process has long since imported all of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import jsorc_sim.cli as cli

HEAVY = ("pandas", "scipy", "pyarrow", "matplotlib", "httpx", "numba")
SCRIPT = Path(sys.executable).parent / "jsorc-sim"

# Prints, as JSON, the heavy top-level packages loaded after running the code before it.
LOADED = ("import json, sys; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
          f"set({list(HEAVY)!r}))))")

SMALL_MMC = """\
name = "small_mmc"
duration_s = 60
seed = 1

[actions.a]
service = { dist = "exp", mean_ms = 20 }

[apps.x]
calls = ["a"]

[workload]
kind = "poisson"
rate_per_s = 50

[placement]
a = "remote:2"
"""


def loaded_after(code: str, cwd: Path | None = None) -> list[str]:
    """The heavy packages a fresh interpreter holds after running `code`."""
    done = subprocess.run([sys.executable, "-c", f"{code}\n{LOADED}"], capture_output=True,
                          text=True, check=True, cwd=cwd)
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def jsorc_sim(*argv: str) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "jsorc_sim.cli"]
    return subprocess.run([*command, *argv], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("module", ["jsorc_sim.cli", "jsorc_sim.experiment", "jsorc_sim.tune",
                                    "jsorc_sim.validate"])
def test_importing_the_command_line_loads_no_heavy_package(module: str) -> None:
    # The probe itself must see them when they are loaded, or an empty list proves nothing.
    assert "pandas" in loaded_after("import pandas")
    assert loaded_after(f"import {module}") == []


def test_a_run_keeping_no_table_on_the_simpy_path_loads_no_heavy_package(
        tmp_path: Path) -> None:
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL_MMC)
    code = ("import sys\nfrom jsorc_sim.cli import main\n"
            f"assert main(['run', {str(scenario)!r}, '--record', 'none', '--fast', 'off', "
            "'--no-progress', '--json']) == 0\n"
            # Nor does it build the parsers of the other commands.
            "assert not {'jsorc_sim.experiment', 'jsorc_sim.tune', 'jsorc_sim.validate', "
            "'jsorc_sim.clairvoyant'} & "
            "set(sys.modules), sorted(sys.modules)")
    # numba belongs to the fast path, which --fast off never enters.
    assert loaded_after(code) == []


@pytest.mark.parametrize(("command", "option"), [
    ("run", "--record"), ("experiment", "--workers"), ("tune", "--workers"),
    ("validate", "--short"), ("calibrate", "--base"), ("policies", "--json"),
    ("bound", "--stretches")])
def test_every_subcommand_still_prints_its_help(command: str, option: str) -> None:
    done = jsorc_sim(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: jsorc-sim {command}")
    assert option in done.stdout


@pytest.mark.parametrize("argv", [["--help"], ["bogus"]])
def test_the_top_level_still_names_every_command(argv: list[str]) -> None:
    done = jsorc_sim(*argv)
    assert done.returncode == (0 if argv == ["--help"] else 2)
    # The usage line, which both print, lists the commands in the order they were added.
    assert ("{run,experiment,tune,bound,compare,validate,calibrate,trace,policies}"
            in done.stdout + done.stderr)


def test_a_bad_trace_still_exits_2_with_one_message(tmp_path: Path) -> None:
    # TraceError is no longer imported at the top of cli.py: it must still be bad input.
    (tmp_path / "bad.csv").write_text("ts,x\n0.5,1\n")
    scenario = tmp_path / "trace.toml"
    scenario.write_text(SMALL_MMC.replace(
        'kind = "poisson"\nrate_per_s = 50',
        'kind = "trace"\ntrace = "bad.csv"\ntrace_format = "requests"'))
    done = jsorc_sim("run", str(scenario), "--no-progress")
    assert done.returncode == cli.EXIT_BAD_INPUT
    assert done.stderr.startswith("jsorc-sim: ")
    assert "bad.csv" in done.stderr
    assert "Traceback" not in done.stderr


def test_any_other_error_still_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the simulator")

    monkeypatch.setattr(cli, "simulate", broken)
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL_MMC)
    with pytest.raises(RuntimeError, match="a bug in the simulator"):
        cli.main(["run", str(scenario), "--no-progress"])
