"""What the benchmark scripts share: a verdict line, and a command timed in a fresh process.

A whole-process figure is the wall time and peak resident memory of a fresh subprocess, so
the interpreter's start, the imports and the output are in it, as a user meets them. Peak
memory comes from `/usr/bin/time -v` ("Maximum resident set size", the kernel's high-water
mark of that process) when it is installed, else from polling the child's VmHWM in
/proc/PID/status; not from `ru_maxrss` of RUSAGE_CHILDREN, which is the largest of every
child so far, so a second run would report the first one's peak.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GNU_TIME = Path("/usr/bin/time")
POLL_S = 0.05


@dataclass(frozen=True)
class Timed:
    """One command run in a fresh process."""

    wall_s: float
    peak_mb: float  # 10^6 bytes
    returncode: int
    stdout: str
    stderr: str


def verdict(ok: bool, text: str) -> None:
    print(f"  {'PASS' if ok else 'FALL SHORT'}: {text}", flush=True)


def jsorc_sim() -> list[str]:
    """The `jsorc-sim` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("jsorc-sim")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "jsorc_sim.cli"]


def traces_dir() -> Path:
    """$JSORC_TRACES, else ../shared/traces beside the clone (as the tests look for it)."""
    return Path(os.environ.get("JSORC_TRACES") or REPO.parent / "shared" / "traces")


def timed(command: Sequence[str], *, cwd: Path = REPO) -> Timed:
    """Run `command` in a fresh process: wall time, peak RSS and its output."""
    if GNU_TIME.exists():
        return _gnu_time(command, cwd)
    return _polled(command, cwd)


def _gnu_time(command: Sequence[str], cwd: Path) -> Timed:
    started = time.perf_counter()
    # -o keeps time's report out of the command's stderr, which the caller may show.
    with tempfile.TemporaryDirectory(prefix="bench-time-") as tmp:
        report = Path(tmp) / "time.txt"
        proc = subprocess.run([str(GNU_TIME), "-v", "-o", str(report), *command], cwd=cwd,
                              capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        text = report.read_text()
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if found is None:
        raise RuntimeError(f"no peak RSS in /usr/bin/time's report:\n{text}\n{proc.stderr}")
    return Timed(wall, int(found[1]) * 1024 / 1e6, proc.returncode, proc.stdout, proc.stderr)


def _polled(command: Sequence[str], cwd: Path) -> Timed:
    started = time.perf_counter()
    proc = subprocess.Popen(list(command), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak_kib = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        # VmHWM is the process's own high-water mark: the last reading before exit is its peak
        # up to then (a spike in the final 50 ms can be missed; /usr/bin/time has no such gap).
        try:
            found = re.search(r"VmHWM:\s+(\d+)", status.read_text())
        except OSError:
            found = None
        if found:
            peak_kib = max(peak_kib, int(found[1]))
        time.sleep(POLL_S)
    stdout, stderr = proc.communicate()
    return Timed(time.perf_counter() - started, peak_kib * 1024 / 1e6, proc.returncode,
                 stdout, stderr)


def crashed(what: str, run: Timed) -> bool:
    """Print a crashed run's stderr tail; True if it crashed."""
    if run.returncode == 0:
        return False
    tail = "\n".join(run.stderr.strip().splitlines()[-15:])
    print(f"  CRASHED: {what} (exit {run.returncode}):\n{tail}", flush=True)
    return True


def positive(text: str) -> int:
    """argparse type: a whole number > 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number > 0, got {text!r}")
    return value


# The experiment slice the sweep benchmarks run (bench_experiment, bench_dask).
LOADTEST = REPO / "experiments" / "jsorc_loadtest.toml"
QUICK_APPS, QUICK_SEEDS, QUICK_DURATION_S = 1, 1, 120.0  # the scenario warms up 60 s


def slice_arguments(description: str, apps: int, argv: Sequence[str] | None) -> argparse.Namespace:
    """--apps, --seeds, --duration and --quick (a tiny slice, for a smoke test)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--apps", type=int, default=apps)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--duration", type=float, help="simulated s per cell (default: the "
                        "experiment's)")
    parser.add_argument("--quick", action="store_true", help="a tiny slice, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.apps, args.seeds, args.duration = QUICK_APPS, QUICK_SEEDS, QUICK_DURATION_S
    return args
