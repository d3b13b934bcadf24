"""Calibration recovers what it is given: the simulator runs a scenario of known service
times, network, compute and memory; its tables are written as a `jsorc loadtest --out`
folder (with the run.json the live side writes); `calibrate` must give the parameters back
inside confidence intervals computed here, from the samples, independently of the fit."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from jsorc_sim import cli, fit
from jsorc_sim import scenario as scenario_mod
from jsorc_sim.calibrate import CalibrationError, calibrate
from jsorc_sim.distributions import service_maker
from jsorc_sim.simulate import simulate

RTT_MS = 3.0
COMPUTE_MS = 5.0
HOP_MS = 2.0  # the client's HTTP round trip, added to the client view only
TRUTH = {"alpha": ("local", 20.0, 0.5), "beta": ("remote", 40.0, 0.8)}


def known_scenario(duration_s: float = 200.0, beta_ms: float = 40.0) -> dict[str, Any]:
    return {
        "name": "known", "duration_s": duration_s,
        "node": {"cores": 4, "memory_mb": 8192},
        "network": {"rtt_ms": RTT_MS},
        "actions": {
            "alpha": {"service": {"dist": "lognormal", "mean_ms": 20.0, "cv": 0.5},
                      "local_memory_mb": 100.0},
            "beta": {"service": {"dist": "lognormal", "mean_ms": beta_ms, "cv": 0.8},
                     "local_memory_mb": 200.0, "remote_memory_mb": 250.0},
        },
        "apps": {"pair": {"calls": ["alpha", "beta"], "compute_ms": COMPUTE_MS}},
        "workload": {"kind": "closed", "clients": 1},
        "placement": {"alpha": "local", "beta": "remote:1"},
    }


def write_folder(folder: Path, table: dict[str, Any], *, seed: int = 1,
                 actions: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Simulate `table` and write its tables as `jsorc loadtest --out` does."""
    scenario = scenario_mod.from_dict(table)
    result = simulate(scenario, seed=seed)
    calls = result.calls.astype({"app": str, "action": str, "placement": str, "error": str})
    calls["error"] = calls["error"].where(~calls["ok"], "")
    if actions is not None:
        calls = calls[calls["action"].isin(actions)]
    requests = result.requests.astype({"app": str, "error": str})
    client = pd.DataFrame({"ts": requests["ts"], "app": requests["app"],
                           "latency_ms": requests["latency_ms"] + HOP_MS, "ok": requests["ok"],
                           "error": "", "request_id": requests["request_id"],
                           "server_ms": requests["latency_ms"]})
    folder.mkdir(parents=True)
    calls.to_parquet(folder / "calls.parquet", index=False)
    client.to_parquet(folder / "requests.parquet", index=False)
    (folder / "report.json").write_text(json.dumps({"benchmark": result.report()}))
    run = {  # jsorc_live/run_record.py's layout, "jsorc-run/1"
        "format": "jsorc-run/1", "app": "pair", "mode": "closed", "clients": 1,
        "think_ms": 0.0, "duration_s": scenario.duration_s, "seed": 0, "trace": None,
        "machine": {"cores": 2, "memory_mb": 8192, "platform": "x", "python": "3"},
        "placements": {"alpha": "local", "beta": "remote:1", "unused": "unloaded"},
        "policy": None, "changes": [],
        "policy_at_start": {"name": "default", "params": {}, "automation": False,
                            "interval_s": 10.0},
        "placements_at_start": {"alpha": "local", "beta": "remote:1", "unused": "unloaded"},
        "actions": {"alpha": {"local_memory_mb": 100.0, "remote_memory_mb": 100.0,
                              "replica_cores": 1},
                    "beta": {"local_memory_mb": 200.0, "remote_memory_mb": 250.0,
                             "replica_cores": 1}},
        "decisions": [], "placement_changes": {},
    }
    (folder / "run.json").write_text(json.dumps(run))
    return calls


def mean_half_width(x: np.ndarray, z: float = 2.576) -> float:
    """The 99 % asymptotic CI half-width of a mean: z s / sqrt(n)."""
    return z * float(x.std(ddof=1)) / math.sqrt(x.size)


def cv_half_width(x: np.ndarray, rounds: int = 300, z: float = 2.576) -> float:
    """The 99 % CI half-width of the cv by bootstrap (normal approximation)."""
    rng = np.random.default_rng(7)
    cvs = []
    for _ in range(rounds):
        s = rng.choice(x, x.size)
        cvs.append(s.std(ddof=1) / s.mean())
    return z * float(np.std(cvs, ddof=1))


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("runs") / "known"
    return folder, write_folder(folder, known_scenario())


def test_calibration_recovers_known_parameters(known: tuple[Path, pd.DataFrame]) -> None:
    folder, calls = known
    result = calibrate([folder])
    actions = result.scenario["actions"]
    for name, (placement, mean, cv) in TRUTH.items():
        x = calls.loc[(calls["action"] == name) & calls["ok"], "service_ms"].to_numpy(float)
        assert x.size > 1000
        service = actions[name]["service"]
        assert service["dist"] in ("lognormal", "gamma"), result.notes[f"actions.{name}.service"]
        assert abs(service["mean_ms"] - mean) <= mean_half_width(x), (name, service)
        assert abs(service["cv"] - cv) <= cv_half_width(x), (name, service)
        # Lognormal data: the lognormal should win the goodness-of-fit comparison.
        assert service["dist"] == "lognormal", result.notes[f"actions.{name}.service"].gof
        assert [f.placement for f in result.fits if f.action == name and f.n > 0] == [placement]
    assert result.scenario["network"]["rtt_ms"] == pytest.approx(RTT_MS, abs=1e-6)
    assert actions["beta"]["payload_kb"] == pytest.approx(0.0, abs=1e-3)
    assert result.scenario["apps"]["pair"] == {"calls": ["alpha", "beta"],
                                               "compute_ms": pytest.approx(COMPUTE_MS)}
    assert result.scenario["workload"]["think_ms"] == pytest.approx(HOP_MS)
    assert actions["beta"]["remote_memory_mb"] == 250.0
    assert actions["alpha"]["local_memory_mb"] == 100.0
    # One client: never two local calls at once, so contention is not identified and the
    # machine's cores are kept (marked not calibrated).
    assert result.scenario["node"]["cores"] == 2
    assert not result.notes["node.cores"].calibrated
    # Neither action ran at both placements: no slowdown to fit.
    assert not result.notes["actions.alpha.local_slowdown"].calibrated
    assert "unused" not in result.scenario["placement"]


def test_written_scenario_parses_back_and_runs_the_same_workload(
        known: tuple[Path, pd.DataFrame], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    folder, _calls = known
    out = tmp_path / "cal.toml"
    assert cli.main(["calibrate", str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "alpha" in printed and "lognormal" in printed and "KS p" in printed
    text = out.read_text()
    assert "# smallest per-action mean network_ms" in text  # a note beside rtt_ms
    scenario = scenario_mod.load(out)
    assert scenario.workload.kind == "closed" and scenario.workload.clients == 1
    assert dict(scenario.workload.mix) == {"pair": 1.0}
    assert {a: str(p) for a, p in scenario.placement.items()} == {"alpha": "local",
                                                                   "beta": "remote:1"}
    assert scenario.policy.name == "none"
    assert cli.main(["run", str(out), "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["walker_run"]) == {"pair", "all"}
    # The calibrated simulation reproduces the known one's server-side mean latency.
    truth = simulate(scenario_mod.from_dict(known_scenario()), seed=1).report()
    want = truth["walker_run"]["pair"]["average_latency"]
    got = report["walker_run"]["pair"]["average_latency"]
    assert got == pytest.approx(want, rel=0.05)


def test_too_few_calls_are_not_calibrated_and_keep_the_base(tmp_path: Path) -> None:
    folder = tmp_path / "short"
    write_folder(folder, known_scenario(duration_s=0.5))
    base = tmp_path / "base.toml"
    table = known_scenario()
    table["actions"]["alpha"]["service"] = {"dist": "exp", "mean_ms": 33.0}
    base.write_text(_toml(table))
    result = calibrate([folder], base=base)
    note = result.notes["actions.alpha.service"]
    assert not note.calibrated and "fewer than 30" in note.source
    assert result.scenario["actions"]["alpha"]["service"] == {"dist": "exp", "mean_ms": 33.0}
    assert "NOT CALIBRATED" in result.scenario_toml()
    assert [f.family for f in result.fits] == ["not calibrated"] * 4
    without = calibrate([folder])
    assert without.scenario["actions"]["alpha"]["service"]["dist"] == "exp"
    assert not without.notes["actions.alpha.service"].calibrated


def test_folders_with_other_actions_are_refused_by_name(tmp_path: Path) -> None:
    write_folder(tmp_path / "both", known_scenario(duration_s=5))
    write_folder(tmp_path / "one", known_scenario(duration_s=5), actions=("alpha",))
    with pytest.raises(CalibrationError) as info:
        calibrate([tmp_path / "both", tmp_path / "one"])
    message = str(info.value)
    assert "both" in message and "one" in message and "alpha, beta" in message


def test_bad_folders_exit_2_with_one_line(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    assert cli.main(["calibrate", str(folder), "--out", str(tmp_path / "x.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "calls.parquet" in err and str(folder) in err
    write_folder(tmp_path / "norun", known_scenario(duration_s=2))
    run = json.loads((tmp_path / "norun" / "run.json").read_text())
    run["machine"]["cores"] = None
    (tmp_path / "norun" / "run.json").write_text(json.dumps(run))
    assert cli.main(["calibrate", str(tmp_path / "norun"), "--out", str(tmp_path / "y.toml")]) == 2
    assert "machine.cores" in capsys.readouterr().err


def test_samples_no_family_fits_become_empirical(tmp_path: Path) -> None:
    # A two-point mixture (10 ms or 50 ms) is neither lognormal nor gamma.
    rng = np.random.default_rng(3)
    x = np.where(rng.random(2000) < 0.5, 10.0, 50.0) + rng.normal(0, 0.2, 2000)
    chosen = fit.fit_service(x)
    assert chosen.family == "empirical" and "no family passes" in chosen.reason


def test_empirical_service_is_written_beside_the_scenario(tmp_path: Path) -> None:
    table = known_scenario(duration_s=100)
    samples = tmp_path / "bimodal.txt"
    rng = np.random.default_rng(5)
    samples.write_text("".join(f"{v}\n" for v in rng.choice([10.0, 50.0], 5000)
                               + rng.normal(0, 0.2, 5000).clip(-5, 5)))
    table["actions"]["beta"]["service"] = {"dist": "empirical", "file": str(samples)}
    write_folder(tmp_path / "run", table)
    result = calibrate([tmp_path / "run"])
    assert result.scenario["actions"]["beta"]["service"]["dist"] == "empirical"
    loaded = result.write(tmp_path / "out" / "cal.toml")
    written = loaded.resolve(loaded.actions["beta"].service.file)
    assert written.is_file() and len(written.read_text().splitlines()) > 1000


def test_effective_cores_from_stretched_local_service_times() -> None:
    # Processor sharing on 2 cores: with k calls in service each takes base * max(1, k/2).
    rng = np.random.default_rng(11)
    k = rng.integers(1, 5, 3000).astype(float)
    base = rng.lognormal(math.log(20), 0.3, 3000)
    got = fit.fit_cores(np.zeros(3000, dtype=int), k, base * np.maximum(1, k / 2))
    assert got.identified and got.cores == 2
    flat = fit.fit_cores(np.zeros(3000, dtype=int), k, base)
    assert not flat.identified and flat.cores is None


def test_gamma_service_has_its_mean_and_cv(tmp_path: Path) -> None:
    dist = scenario_mod.Dist(dist="gamma", mean_ms=30.0, cv=0.4)
    sampler = service_maker(dist, tmp_path)(np.random.default_rng(2))
    x = np.array([sampler() for _ in range(20000)])
    assert abs(x.mean() - 30.0) <= mean_half_width(x)
    assert abs(x.std(ddof=1) / x.mean() - 0.4) <= cv_half_width(x)


def _toml(table: dict[str, Any]) -> str:
    import tomli_w

    text = tomli_w.dumps(table)
    assert tomllib.loads(text) == table
    return text


def test_start_up_times_default_mode_and_policy_come_from_the_run(tmp_path: Path) -> None:
    # Both actions start unloaded: the first request cold-starts alpha locally (2 s load)
    # and beta on a replica (3 s start); with one client nothing else waits.
    table = known_scenario(duration_s=60)
    table["actions"]["alpha"]["local_load_s"] = 2.0
    table["actions"]["beta"].update(remote_start_s=3.0, default_mode="remote")
    table["placement"] = {}
    folder = tmp_path / "cold"
    write_folder(folder, table)
    run = json.loads((folder / "run.json").read_text())
    run["placements"] = {"alpha": "unloaded", "beta": "unloaded"}
    run["policy"] = {"name": "all_remote", "params": {"replicas": 2}, "interval_s": 5.0}
    (folder / "run.json").write_text(json.dumps(run))
    result = calibrate([folder])
    alpha, beta = result.scenario["actions"]["alpha"], result.scenario["actions"]["beta"]
    assert alpha["local_load_s"] == pytest.approx(2.0)
    assert beta["remote_start_s"] == pytest.approx(3.0)
    assert (alpha["default_mode"], beta["default_mode"]) == ("local", "remote")
    assert result.scenario["placement"] == {"alpha": "unloaded", "beta": "unloaded"}
    assert result.scenario["policy"] == {"name": "all_remote", "params": {"replicas": 2},
                                         "interval_s": 5.0}
    loaded = result.write(tmp_path / "cold.toml")
    assert loaded.policy.name == "all_remote" and loaded.policy.params == {"replicas": 2}
