"""Reading `jsorc loadtest --out DIR` folders for calibration: their tables and run.json.

The folder format is written by the live system (`jsorc_live/loadtest.py`); this module reads
it without importing the live system (the two worlds are independent), checking every column
and key it needs and naming the folder and the key when one is missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

FILES = ("calls.parquet", "requests.parquet", "run.json")
CALL_COLUMNS = ("ts", "request_id", "app", "action", "placement", "wait_ms", "service_ms",
                "network_ms", "latency_ms", "ok", "cold")
REQUEST_COLUMNS = ("app", "latency_ms", "ok")
REQUIRED_KEYS = ("app", "duration_s", "machine")


class CalibrationError(ValueError):
    """Folders that cannot be calibrated from; the message names the folder and the problem."""


@dataclass(frozen=True)
class Run:
    """One loadtest folder, read."""

    folder: Path
    info: Mapping[str, Any]
    calls: pd.DataFrame
    requests: pd.DataFrame

    @property
    def actions(self) -> frozenset[str]:
        return frozenset(self.calls["action"].dropna().astype(str))

    def need(self, key: str) -> Any:
        """run.json's `key`; missing or null is an error naming the key and the folder."""
        if self.info.get(key) is None:
            raise CalibrationError(f"{self.folder}: run.json has no {key!r}")
        return self.info[key]

    def apps(self) -> list[str]:
        app = self.need("app")
        return [app] if isinstance(app, str) else [str(a) for a in app]


def read_run(folder: str | Path) -> Run:
    """A loadtest folder's tables and run.json; CalibrationError naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: not a folder")
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise CalibrationError(f"{folder}: no {', '.join(missing)} (write a folder with "
                               "`jsorc loadtest --out DIR`)")
    try:
        info = json.loads((folder / "run.json").read_text())
        calls = pd.read_parquet(folder / "calls.parquet")
        requests = pd.read_parquet(folder / "requests.parquet")
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{folder}: cannot read: {exc}") from None
    if not isinstance(info, dict):
        raise CalibrationError(f"{folder}: run.json must hold an object, got {info!r}")
    for name, frame, columns in (("calls.parquet", calls, CALL_COLUMNS),
                                 ("requests.parquet", requests, REQUEST_COLUMNS)):
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise CalibrationError(f"{folder}: {name} has no column(s) {', '.join(absent)}")
    if calls.empty:
        raise CalibrationError(f"{folder}: calls.parquet has no calls")
    calls = calls.astype({"action": str, "placement": str, "app": str, "ok": bool,
                          "cold": bool})
    requests = requests.astype({"app": str, "ok": bool})
    run = Run(folder, info, calls, requests)
    for key in REQUIRED_KEYS:
        run.need(key)
    machine = run.need("machine")
    for key in ("cores", "memory_mb"):
        if not isinstance(machine, Mapping) or machine.get(key) is None:
            raise CalibrationError(f"{folder}: run.json has no 'machine.{key}'")
    return run


def check_same_actions(runs: Sequence[Run]) -> None:
    groups: dict[frozenset[str], list[str]] = {}
    for run in runs:
        groups.setdefault(run.actions, []).append(str(run.folder))
    if len(groups) > 1:
        parts = [f"{', '.join(folders)} call {', '.join(sorted(actions))}"
                 for actions, folders in groups.items()]
        raise CalibrationError("the folders' actions differ: " + "; ".join(parts))
