"""`jsorc-sim`: the report it prints, the files --out writes, and how it refuses bad input.

Most tests call `jsorc_sim.cli.main(argv)` in-process (it returns the exit code); two run the
installed console script, as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tomli_w

from jsorc_sim.cli import main
from jsorc_sim.simulate import simulate
from policies import Decision, NoParams, Observation

REPO = Path(__file__).resolve().parents[2]
LOADTEST = REPO / "experiments" / "scenarios" / "jsorc_loadtest.toml"
SCRIPT = Path(sys.executable).parent / "jsorc-sim"
JSORC_KEYS = {"throughput", "average_latency", "50th_latency", "90th_latency", "95th_latency",
              "99th_latency"}
TABLES = ("calls", "requests", "decisions", "timeline", "events")
RUN = ["run", str(LOADTEST), "--app", "sentence_pairing", "--policy", "all_local",
       "--duration", "300", "--seed", "1", "--no-progress"]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class RaisesAt20:
    """A policy that fails at t = 20 s (for on_error = "stop")."""

    Params = NoParams

    def __init__(self, params: NoParams | None = None) -> None:
        self.params = params or NoParams()

    def reset(self, seed: int) -> None:
        pass

    def decide(self, observation: Observation) -> Decision:
        if observation.now >= 20:
            raise RuntimeError("cannot decide")
        return Decision.keep()


# ----------------------------------------------------------------------------- run


def test_run_json_prints_jsorcs_report(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, *RUN, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"walker_run", "cost", "unfinished", "statistics", "engine"}
    walker_run = report["walker_run"]
    assert set(walker_run) == {"sentence_pairing", "all"}
    for app, stats in walker_run.items():
        assert set(stats) == JSORC_KEYS, f"{app}: {sorted(stats)}"
        assert all(isinstance(v, float) and v > 0 for v in stats.values()), stats
        assert stats["50th_latency"] <= stats["90th_latency"] <= stats["95th_latency"] \
            <= stats["99th_latency"]
    assert walker_run["sentence_pairing"] == walker_run["all"], "one app: it is all the traffic"
    assert report["cost"]["failed_requests"] == 0 and report["cost"]["oom_events"] == 0
    expected = simulate(LOADTEST, "all_local", seed=1, duration_s=300,
                        app="sentence_pairing").report()
    assert report == json.loads(json.dumps(expected)), "the CLI prints the library's report"


def test_run_prints_a_table_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, *RUN)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "scenario jsorc_loadtest | policy all_local"
    assert lines[1].split() == ["app", "throughput/s", "mean", "ms", "p50", "ms", "p90", "ms",
                                "p95", "ms", "p99", "ms"]
    assert set(lines[2]) == {"-", " "}
    report = simulate(LOADTEST, "all_local", seed=1, duration_s=300,
                      app="sentence_pairing").report()
    for line, app in zip(lines[3:5], ("sentence_pairing", "all"), strict=True):
        stats = report["walker_run"][app]
        assert line.split() == [app] + [f"{stats[k]:.2f}" for k in (
            "throughput", "average_latency", "50th_latency", "90th_latency", "95th_latency",
            "99th_latency")]
    assert lines[5] == ""
    assert lines[6].startswith("cost: node_memory_gb_s ")
    assert "oom_events 0" in lines[6]


def test_run_out_writes_every_table_the_report_and_the_scenario(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "results" / "run1"
    code, out, _ = cli(capsys, *RUN, "--json", "--out", str(out_dir))
    assert code == 0
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == sorted([f"{t}.parquet" for t in TABLES] + ["report.json",
                                                                  "scenario.toml",
                                                                  "manifest.json"])
    assert json.loads((out_dir / "report.json").read_text()) == json.loads(out)
    result = simulate(LOADTEST, "all_local", seed=1, duration_s=300, app="sentence_pairing")
    for table in TABLES:
        frame = pd.read_parquet(out_dir / f"{table}.parquet")
        assert list(frame.columns) == list(getattr(result, table).columns), table
        assert len(frame) == len(getattr(result, table)), table
    assert "seed = 1" in (out_dir / "scenario.toml").read_text()
    assert [p.name for p in out_dir.parent.iterdir()] == ["run1"], "no temporary folder left"


def test_run_out_keeps_other_files_and_replaces_its_own(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("someone's notes")
    code, out, _ = cli(capsys, *RUN, "--out", str(out_dir))
    assert code == 0
    assert (out_dir / "notes.txt").read_text() == "someone's notes"
    assert (out_dir / "report.json").is_file()
    assert f"wrote {out_dir}/" in out
    code, _, _ = cli(capsys, *RUN, "--out", str(out_dir))  # its own files: replaced
    assert code == 0
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert not [p.name for p in out_dir.iterdir() if p.name.startswith(".")]


def test_a_policy_that_fails_with_on_error_stop_exits_1(capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    scenario = {
        "duration_s": 40,
        "actions": {"a": {"service": {"dist": "const", "mean_ms": 10}}},
        "apps": {"w": {"calls": ["a"]}},
        "policy": {"name": f"{__name__}:RaisesAt20", "on_error": "stop"},
    }
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(scenario))
    code, out, err = cli(capsys, "run", str(path), "--no-progress")
    assert code == 1
    assert out.splitlines()[0].startswith("scenario s | policy tests.jsorc_sim.test_cli:Rai")
    assert "stopped: policy" in out.splitlines()[0]
    assert err.startswith("jsorc-sim: stopped: policy ")
    assert "RuntimeError: cannot decide" in err


# ----------------------------------------------------------------------------- --set


SMALL = {
    "duration_s": 30,
    "actions": {"a": {"service": {"dist": "exp", "mean_ms": 40}, "remote_start_s": 1.0}},
    "apps": {"w": {"calls": ["a", "a"]}},
    "workload": {"kind": "closed", "clients": 1},
    "placement": {"a": "remote:1"},
}


def write_scenario(path: Path, table: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(table))
    return path


def json_report(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = cli(capsys, "run", *argv, "--json", "--no-progress")
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


@pytest.mark.parametrize("kind", ["poisson", '"poisson"'], ids=["bare word", "TOML string"])
def test_set_changes_the_scenario_as_its_file_would(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path, kind: str) -> None:
    base = write_scenario(tmp_path / "base.toml", SMALL)
    edited = write_scenario(tmp_path / "edited.toml", {
        **SMALL, "node": {"cores": 2}, "network": {"rtt_ms": 2.5},
        "actions": {"a": {**SMALL["actions"]["a"], "remote_start_s": 4}},
        "workload": {"kind": "poisson", "rate_per_s": 20}})
    sets = ["--set", "node.cores=2", "--set", "network.rtt_ms=2.5",
            "--set", "actions.a.remote_start_s=4", "--set", f"workload.kind={kind}",
            "--set", "workload.rate_per_s=20"]
    overridden = json_report(capsys, str(base), *sets, "--seed", "3")
    assert overridden == json_report(capsys, str(edited), "--seed", "3")
    assert overridden != json_report(capsys, str(base), "--seed", "3"), "the overrides matter"
    code, _, err = cli(capsys, "run", str(base), *sets, "--no-progress", "--out",
                       str(tmp_path / "out"))
    assert code == 0, err
    resolved = (tmp_path / "out" / "scenario.toml").read_text()
    assert 'kind = "poisson"' in resolved and "rate_per_s = 20" in resolved
    assert "remote_start_s = 4" in resolved and "cores = 2" in resolved


def test_set_reads_values_as_toml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = write_scenario(tmp_path / "base.toml", SMALL)
    edited = write_scenario(tmp_path / "edited.toml", {
        **SMALL, "warmup_s": 5.0,
        "actions": {"a": {**SMALL["actions"]["a"], "service": {"dist": "const", "mean_ms": 25}}},
        "policy": {"name": "all_remote", "params": {"replicas": 2}}})
    overridden = json_report(capsys, str(base), "--set", "warmup_s=5",
                             "--set", 'actions.a.service={ dist = "const", mean_ms = 25 }',
                             "--set", "policy.name=all_remote",
                             "--set", "policy.params={ replicas = 2 }")
    assert overridden == json_report(capsys, str(edited))
    # After the first replica's start-up: two 25 ms calls, nothing else.
    assert overridden["walker_run"]["all"]["average_latency"] == 50.0


# ----------------------------------------------------------------------------- unfinished


def test_run_warns_when_more_than_one_percent_is_unfinished(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # One replica serving 10 calls/s, 15 arrivals/s: a third of the arrivals never finish.
    path = write_scenario(tmp_path / "overload.toml", {
        "duration_s": 60,
        "actions": {"a": {"service": {"dist": "const", "mean_ms": 100}}},
        "apps": {"w": {"calls": ["a"]}},
        "workload": {"kind": "poisson", "rate_per_s": 15},
        "placement": {"a": "remote:1"},
    })
    code, out, err = cli(capsys, "run", str(path), "--json", "--no-progress")
    assert code == 0
    report = json.loads(out)
    count, arrivals = report["unfinished"]["count"]["all"], report["cost"]["arrivals"]
    assert count > 0.2 * arrivals
    mean = report["unfinished"]["all_arrivals_lower_bound"]["all"]["average_latency"]
    assert err.count("\n") == 1 and err.startswith("jsorc-sim: warning: ")
    for part in (f"{count} of {arrivals} arrivals", f"({100 * count / arrivals:.1f} %)",
                 f"at least {mean:.2f} ms"):
        assert part in err, f"{part!r} missing from {err!r}"
    code, out, err = cli(capsys, "run", str(path), "--no-progress")
    assert code == 0 and err.startswith("jsorc-sim: warning: ")
    (line,) = [line for line in out.splitlines() if line.startswith("unfinished: ")]
    assert line.startswith(f"unfinished: {count} of {arrivals} arrivals; ")
    assert f"mean {mean:.2f} ms" in line and "lower bound" in line


def test_run_does_not_warn_when_few_are_unfinished(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    path = write_scenario(tmp_path / "calm.toml", SMALL)
    code, out, err = cli(capsys, "run", str(path), "--no-progress")
    assert (code, err) == (0, "")
    assert "unfinished: 1 of " in out  # the one client's request in flight at the end


# ----------------------------------------------------------------------------- bad input

BAD_SCENARIO = "duration_s = [\n"

# (what is wrong, argv after `run SCENARIO`, what the message must name)
BAD_RUNS = [
    ("unknown policy", ["--policy", "nope"], ["unknown policy 'nope'", "all_local"]),
    ("unknown param", ["--policy", "all_remote", "--param", "bogus=1"],
     ["'bogus'", "replicas"]),
    ("param syntax", ["--policy", "all_remote", "--param", "replicas"],
     ["key=value", "'replicas'"]),
    ("param type", ["--policy", "all_remote", "--param", "replicas=x"],
     ["all_remote.replicas", "'x'"]),
    ("param range", ["--policy", "all_remote", "--param", "replicas=0"],
     ["all_remote.replicas", ">= 1", "0"]),
    ("param json", ["--policy", "static", "--param", "placements=xx"],
     ["static.placements", "'xx'"]),
    ("param placement", ["--policy", "static", "--param", 'placements={"bi_enc": "cloud"}'],
     ["'bi_enc'", "'cloud'"]),
    ("param without policy", ["--param", "replicas=2"], ["--param needs --policy"]),
    ("unimportable policy", ["--policy", "no_such_module:Cls"], ["'no_such_module'"]),
    ("unknown app", ["--app", "nope"], ["--app", "'nope'", "sentence_pairing"]),
    ("negative seed", ["--seed", "-1"], ["--seed", "-1"]),
    ("zero duration", ["--duration", "0"], ["--duration", "0"]),
    ("duration within warm-up", ["--duration", "30"], ["duration 30", "warmup_s = 60"]),
    ("set syntax", ["--set", "workload.clients"], ["--set", "dotted.path=value",
                                                    "'workload.clients'"]),
    ("set empty part", ["--set", "node..cores=2"], ["--set", "'node..cores=2'"]),
    ("set no such table", ["--set", "network.nowhere.rtt_ms=1"],
     ["no table 'network.nowhere'", "'network.nowhere.rtt_ms'"]),
    ("set no such action", ["--set", "actions.nope.remote_start_s=4"], ["'actions.nope'"]),
    ("set unknown field", ["--set", "workload.clientz=8"], ["[workload] unknown field 'clientz'"]),
    ("set wrong type", ["--set", "workload.clients=abc"], ["workload.clients", "'abc'"]),
    ("set out of range", ["--set", "node.memory_mb=-5"], ["node.memory_mb", ">", "-5"]),
    ("set bad choice", ["--set", "workload.kind=open"], ["workload.kind", "'open'"]),
]


@pytest.mark.parametrize(("argv", "named"), [b[1:] for b in BAD_RUNS],
                         ids=[b[0] for b in BAD_RUNS])
def test_bad_input_exits_2_with_one_line_naming_the_value(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str],
        named: list[str]) -> None:
    out_dir = tmp_path / "out"
    code, out, err = cli(capsys, "run", str(LOADTEST), "--no-progress", "--out", str(out_dir),
                         *argv)
    assert code == 2, f"exit {code}: {err}"
    assert out == "", "nothing on stdout"
    assert err.startswith("jsorc-sim: ") and err.count("\n") == 1, f"one line: {err!r}"
    for part in named:
        assert part in err, f"{part!r} missing from {err!r}"
    assert not out_dir.exists(), "--out is not created for bad input"
    assert list(tmp_path.iterdir()) == []


def test_a_missing_scenario_file_exits_2(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    code, out, err = cli(capsys, "run", str(missing), "--out", str(tmp_path / "out"))
    assert (code, out) == (2, "")
    assert err == f"jsorc-sim: {missing}: cannot read: No such file or directory\n"
    assert list(tmp_path.iterdir()) == []


def test_a_malformed_scenario_exits_2(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_SCENARIO)
    code, out, err = cli(capsys, "run", str(bad), "--out", str(tmp_path / "out"))
    assert (code, out) == (2, "")
    assert err.startswith(f"jsorc-sim: {bad}: not valid TOML: ") and err.count("\n") == 1, err
    assert [p.name for p in tmp_path.iterdir()] == ["bad.toml"]


def test_a_bad_run_keeps_an_existing_out_folder(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "report.json").write_text("{}")
    code, _, _ = cli(capsys, "run", str(LOADTEST), "--policy", "nope", "--out", str(out_dir))
    assert code == 2
    assert (out_dir / "report.json").read_text() == "{}"


# ----------------------------------------------------------------------------- policies


def test_policies_lists_the_baselines_with_their_parameters(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "policies")
    assert code == 0
    heads = {line.split(":")[0] for line in out.splitlines() if not line.startswith(" ")}
    assert {"none", "all_local", "all_remote", "static"} <= heads
    assert "    replicas (int) = 1 [1..]  replicas per action" in out.splitlines()
    blocks = out.split("\n")
    static = blocks.index(next(b for b in blocks if b.startswith("static:")))
    own = []  # static's parameter lines: up to the next policy's heading
    for line in blocks[static + 1:]:
        if not line.startswith("    "):
            break
        own.append(line.split()[0])
    assert own == ["placements", "default"]


def test_policies_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "policies", "--json")
    assert code == 0
    listing: dict[str, Any] = json.loads(out)
    assert {"none", "all_local", "all_remote", "static"} <= set(listing)
    assert listing["none"]["params"] == [] and listing["all_local"]["params"] == []
    (replicas,) = listing["all_remote"]["params"]
    assert (replicas["name"], replicas["type"], replicas["default"], replicas["minimum"]) == \
        ("replicas", "int", 1, 1)
    assert [p["name"] for p in listing["static"]["params"]] == ["placements", "default"]
    assert all(info["doc"] for info in listing.values()), "every policy has a one-line doc"


# ----------------------------------------------------------------------------- the real script


def test_the_installed_script_runs_a_scenario(tmp_path: Path) -> None:
    done = subprocess.run([str(SCRIPT), *RUN, "--json"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["walker_run"]["sentence_pairing"]) == JSORC_KEYS
    assert set(report["walker_run"]["all"]) == JSORC_KEYS


def test_the_installed_script_refuses_bad_input(tmp_path: Path) -> None:
    done = subprocess.run([str(SCRIPT), "run", str(LOADTEST), "--policy", "nope",
                           "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("jsorc-sim: unknown policy 'nope'")
    assert not (tmp_path / "out").exists()
