"""`jsorc loadtest --out` writes run.json: the run as a reader that was not there needs it.

Against a real `jsorc serve` on loopback: two actions start local, `all_remote` is switched
on as the load starts, and run.json must say so (policy and placements at the start, the
controller's moves with their time on the run's axis, when calls followed), with the action
configs, the machine and the clock base that aligns calls.parquet with the decisions.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest

from jsorc_live import cli
from jsorc_live.run_record import placement_changes, policy_in_force
from tests.jsorc_live.servers import jsorc_serving

TOKEN = "record-token"
SCALE = 0.02  # JSORC_ACTION_SCALE for the server: tfm_ner's replica is 1014 x 0.02 + 70 MB
DURATION_S = 10.0  # room for the replicas to start on a loaded machine before the end
INTERVAL_S = 2.0


def jsorc(url: str, *argv: str) -> Any:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main([*argv, "--server", url, "--token", TOKEN, "--json"])
    assert code == 0, argv
    return json.loads(buffer.getvalue())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("record") / "lt"
    env = {**os.environ, "JSORC_ACTION_SCALE": str(SCALE)}
    with jsorc_serving(TOKEN, env=env) as url:
        for action in ("bi_enc", "tfm_ner"):
            jsorc(url, "actions", "config", action, "jsorc_live.actions.config")
            jsorc(url, "actions", "load", action, "-mode", "module")
        jsorc(url, "config", "set", "backoff_interval", str(INTERVAL_S))
        jsorc(url, "actionpolicy", "set", "all_remote")
        jsorc(url, "config", "set", "automation", "true")  # first step one interval on
        jsorc(url, "loadtest", "--app", "restaurant_chatbot", "--clients", "2",
              "--duration", str(DURATION_S), "--out", str(out))
    yield out


def read(out: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((out / "run.json").read_text())
    return record


def test_the_workload_machine_and_version(recorded: Path) -> None:
    record = read(recorded)
    assert {f.name for f in recorded.iterdir()} == {"report.json", "calls.parquet",
                                                    "requests.parquet", "run.json"}
    assert (record["app"], record["mode"], record["clients"]) == ("restaurant_chatbot",
                                                                  "closed", 2)
    assert (record["think_ms"], record["duration_s"], record["trace"]) == (0.0, DURATION_S,
                                                                           None)
    assert record["machine"]["cores"] == os.cpu_count()
    assert record["machine"]["memory_mb"] == round(psutil.virtual_memory().total / 2**20)
    assert record["jsorc_version"] == importlib.metadata.version("jsorc")
    start, end = (datetime.fromisoformat(record[k]) for k in ("wall_start", "wall_end"))
    assert DURATION_S <= (end - start).total_seconds() < DURATION_S + 30


def test_policy_placements_and_action_configs_at_the_start(recorded: Path) -> None:
    record = read(recorded)
    assert record["policy_at_start"] == {"name": "all_remote", "params": {"replicas": 1},
                                         "automation": True, "interval_s": INTERVAL_S}
    assert record["policy"] == {"name": "all_remote", "params": {"replicas": 1},
                                "interval_s": INTERVAL_S}
    assert record["placements_at_start"] == {"bi_enc": "local", "tfm_ner": "local"}
    assert record["placements"] == record["placements_at_start"]
    assert record["placements_at_end"] == {"bi_enc": "remote:1", "tfm_ner": "remote:1"}
    tfm = record["actions"]["tfm_ner"]
    assert tfm["module"] == "jsorc_live.actions.examples.tfm_ner"
    assert tfm["remote_memory_mb"] == pytest.approx(1014 * SCALE + 70.0)
    assert tfm["replica_cores"] == 1 and tfm["call_timeout_s"] == 30.0
    assert tfm["local_memory_mb"] > 0


def test_moves_while_the_load_ran_on_the_runs_time_axis(recorded: Path) -> None:
    record = read(recorded)
    moves = {r["action"]: r for r in record["changes"]}
    assert set(moves) == {"bi_enc", "tfm_ner"}
    for action, row in moves.items():
        assert (row["placement"], row["previous"], row["source"]) == ("remote:1", "local",
                                                                      "all_remote")
        # Automation went on just before the load: the first step is one interval later.
        assert 0 <= row["t"] <= INTERVAL_S + 1.5, action
        assert row["t"] == pytest.approx(row["ts"] - record["ts_base"]["server_now_at_start"],
                                         abs=1e-5)
        # Calls follow when the replica answers, after the decision.
        (switch,) = record["placement_changes"][action]
        assert (switch["previous"], switch["placement"]) == ("local", "remote")
        assert row["t"] < switch["t"] < DURATION_S + 1


def test_calls_and_requests_align_with_the_server_clock(recorded: Path) -> None:
    record = read(recorded)
    base = record["ts_base"]["server_now_at_start"]
    calls = pd.read_parquet(recorded / "calls.parquet")
    t = calls["ts"] - base
    assert t.min() >= 0 and t.max() <= DURATION_S + 1
    assert record["ts_base"]["server_now_at_end"] - base == pytest.approx(DURATION_S, abs=2)
    # The client's latency of a walker run holds the server's own, plus the HTTP hop.
    requests = pd.read_parquet(recorded / "requests.parquet")
    assert requests["ok"].all()
    assert (requests["server_ms"] < requests["latency_ms"]).all()
    assert set(requests["request_id"]) <= set(calls["request_id"])
    assert requests["request_id"].is_unique


def test_placement_changes_from_call_rows() -> None:
    rows = [{"ts": 10.0, "action": "a", "placement": "local"},
            {"ts": 10.5, "action": "b", "placement": "remote"},
            {"ts": 11.0, "action": "a", "placement": ""},  # failed: went nowhere
            {"ts": 12.0, "action": "a", "placement": "remote"},
            {"ts": 13.0, "action": "a", "placement": "remote"},
            {"ts": 14.0, "action": "a", "placement": "local"}]
    assert placement_changes(rows, 10.0) == {"a": [
        {"ts": 12.0, "t": 2.0, "placement": "remote", "previous": "local"},
        {"ts": 14.0, "t": 4.0, "placement": "local", "previous": "remote"}]}
    assert placement_changes(rows, None)["a"][0]["t"] is None


@pytest.mark.parametrize(("policy", "expected"), [
    ({"name": "hpa", "params": {"target": 0.5}, "automation": True, "interval_s": 5.0},
     {"name": "hpa", "params": {"target": 0.5}, "interval_s": 5.0}),
    ({"name": "hpa", "params": {}, "automation": False, "interval_s": 5.0}, None),
    ({"name": "default", "params": {}, "automation": True, "interval_s": 5.0}, None),
])
def test_the_policy_in_force(policy: dict[str, Any], expected: dict[str, Any] | None) -> None:
    assert policy_in_force(policy) == expected
