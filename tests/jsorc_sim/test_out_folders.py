"""`--out` folders: jsorc writes only its own files there, never overwrites or deletes a file
it did not write, refuses before it simulates, and writes each file atomically."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jsorc_sim import experiment as ex
from jsorc_sim import outputs
from jsorc_sim.cli import main
from jsorc_sim.tune import load_tune, run_tune
from tests.jsorc_sim.test_experiment import SMALL
from tests.jsorc_sim.test_experiment import write as write_experiment
from tests.jsorc_sim.test_tune import write as write_tune

REPO = Path(__file__).resolve().parents[2]
LOADTEST = REPO / "experiments" / "scenarios" / "jsorc_loadtest.toml"
RUN = ["run", str(LOADTEST), "--app", "sentence_pairing", "--policy", "all_local",
       "--duration", "120", "--seed", "1", "--no-progress"]
FOREIGN = b"{\"mine\": true}\n\x00 not jsorc's"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_foreign_file_of_our_name_is_refused_before_simulating_and_kept(
        tmp_path: Path) -> None:
    out_dir = tmp_path / "mine"
    out_dir.mkdir()
    (out_dir / "report.json").write_bytes(FOREIGN)
    (out_dir / "notes.txt").write_bytes(FOREIGN)
    # A day of simulated time would take many minutes: answering at all within the timeout
    # shows that the refusal came before the simulation.
    script = Path(sys.executable).parent / "jsorc-sim"
    started = time.monotonic()
    done = subprocess.run([str(script), "run", str(LOADTEST), "--duration", "86400",
                           "--no-progress", "--out", str(out_dir)],
                          capture_output=True, text=True, timeout=300, check=False)
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "holds report.json" in done.stderr, done.stderr
    assert "did not write" in done.stderr
    assert (out_dir / "report.json").read_bytes() == FOREIGN
    assert (out_dir / "notes.txt").read_bytes() == FOREIGN
    assert sorted(p.name for p in out_dir.iterdir()) == ["notes.txt", "report.json"]
    print(f"refused in {took:.1f} s")


def test_out_dot_writes_into_the_working_folder_beside_other_files(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_bytes(FOREIGN)
    code, out, err = cli(capsys, *RUN, "--json", "--out", ".")
    assert code == 0, err
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(out)
    assert (tmp_path / "notes.txt").read_bytes() == FOREIGN
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["written_by"] == "jsorc-sim run"
    assert "notes.txt" not in manifest["files"] and "report.json" in manifest["files"]
    code, _, err = cli(capsys, *RUN, "--out", ".")  # again: only its own files replaced
    assert code == 0, err
    assert (tmp_path / "notes.txt").read_bytes() == FOREIGN
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_file_changed_since_jsorc_wrote_it_is_not_overwritten(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    assert cli(capsys, *RUN, "--out", str(out_dir))[0] == 0
    edited = (out_dir / "scenario.toml").read_text() + "# my edit\n"
    (out_dir / "scenario.toml").write_text(edited)
    code, out, err = cli(capsys, *RUN, "--out", str(out_dir))
    assert (code, out) == (2, "")
    assert "holds scenario.toml" in err
    assert (out_dir / "scenario.toml").read_text() == edited


def test_a_run_saved_before_manifests_is_recognised_by_its_scenario_header(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "old"
    assert cli(capsys, *RUN, "--out", str(out_dir))[0] == 0
    (out_dir / "manifest.json").unlink()
    assert cli(capsys, *RUN, "--out", str(out_dir))[0] == 0
    assert (out_dir / "manifest.json").is_file()


def test_out_that_is_a_file_is_refused(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(FOREIGN)
    code, out, err = cli(capsys, *RUN, "--out", str(target))
    assert (code, out) == (2, "")
    assert "is a file, not a folder" in err
    assert target.read_bytes() == FOREIGN


def test_a_write_that_fails_half_way_keeps_what_was_there(tmp_path: Path) -> None:
    folder = outputs.write(tmp_path / "o", {"a.txt": lambda p: p.write_text("old a"),
                                            "b.txt": lambda p: p.write_text("old b")}, "test")

    def broken(path: Path) -> None:
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        outputs.write(folder, {"a.txt": lambda p: p.write_text("new a"), "b.txt": broken},
                      "test")
    assert (folder / "a.txt").read_text() == "old a"
    assert (folder / "b.txt").read_text() == "old b"
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt", "manifest.json"]
    outputs.write(folder, {"a.txt": lambda p: p.write_text("new a")}, "test")
    assert (folder / "a.txt").read_text() == "new a"


def test_tune_refuses_a_foreign_file_before_it_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "tune.json").write_bytes(FOREIGN)
    spec = load_tune(write_tune(tmp_path))
    with pytest.raises(outputs.OutputError, match=r"holds tune\.json"):
        run_tune(spec, out, workers=1)
    assert (out / "tune.json").read_bytes() == FOREIGN
    assert [p.name for p in out.iterdir()] == ["tune.json"]


def test_experiment_never_deletes_files_it_did_not_write(tmp_path: Path) -> None:
    exp = ex.load_experiment(write_experiment(tmp_path, SMALL))
    out = tmp_path / "here"
    out.mkdir()
    (out / "notes.txt").write_bytes(FOREIGN)
    for overwrite in (False, True):
        with pytest.raises(ex.ExperimentError, match="holds no experiment"):
            ex.run_experiment(exp, out, workers=1, progress=False, overwrite=overwrite)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # --overwrite of another experiment deletes that experiment's files only.
    done = tmp_path / "done"
    ex.run_experiment(exp, done, workers=2, progress=False)
    (done / "notes.txt").write_bytes(FOREIGN)
    other = ex.load_experiment(write_experiment(
        tmp_path, SMALL.replace('name = "small"', 'name = "other"'), "other.toml"))
    ex.run_experiment(other, done, workers=2, progress=False, overwrite=True)
    assert (done / "notes.txt").read_bytes() == FOREIGN
    assert json.loads((done / "manifest.json").read_text())["name"] == "other"


@pytest.mark.parametrize(("argv", "named"), [
    (["--set", "node.memory_mb=nan"], "node.memory_mb must be finite"),
    (["--set", "network.rtt_ms=inf"], "network.rtt_ms must be finite"),
    (["--set", "workload.mix.sentence_pairing=-inf"], "workload.mix.sentence_pairing"),
    (["--set", "policy.params.replicas=nan"], "policy.params.replicas must be finite"),
    (["--policy", "hpa", "--param", "target=NaN"], "hpa.target must be a finite number"),
    (["--policy", "evaluation", "--param", "node_mem_threshold=inf"],
     "evaluation.node_mem_threshold must be a finite number"),
])
def test_nan_and_infinity_are_refused_naming_the_path(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str],
        named: str) -> None:
    code, out, err = cli(capsys, "run", str(LOADTEST), "--no-progress", "--out",
                         str(tmp_path / "o"), *argv)
    assert (code, out) == (2, ""), err
    assert named in err, err
    assert not (tmp_path / "o").exists()


def test_a_scenario_file_with_nan_is_refused(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.toml"
    path.write_text(LOADTEST.read_text() + "\n[policy.params]\nreplicas = nan\n")
    code, _, err = cli(capsys, "run", str(path), "--no-progress")
    assert code == 2
    assert "policy.params.replicas must be finite" in err, err
