"""The benchmark scripts' small modes run, and what they check holds (make bench runs them big).

A benchmark reports and does not gate, so these assert its checks (same waits, equal counts,
a percentile within the sketch's error), never its timings: this machine is shared.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BENCHMARKS = REPO / "benchmarks"


def bench(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, f"{script} {' '.join(args)} crashed:\n{done.stderr}"
    assert "CRASHED" not in done.stdout, done.stdout
    return done.stdout


def test_fast_path_gives_the_simpy_paths_and_bare_simpys_waits() -> None:
    out = bench("bench_sim.py", "--quick", "--part", "fast", "--loop-only")
    assert "PASS: fast path and SimPy path give the same waits" in out, out
    assert "PASS: fast path and bare SimPy give the same waits" in out, out
    assert "ratio fast/bare" in out and "the recursion kernel alone" in out, out


def test_day_slice_counts_and_percentiles_match_the_exact_path(traces_dir: Path) -> None:
    out = bench("bench_day.py", "--quick", "--part", "equivalence")
    assert "PASS: counts equal" in out, out
    assert "within the sketch's stated error" in out and "FALL SHORT" not in out, out


def test_timed_reads_a_childs_own_peak_memory() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from bench_common import timed
    finally:
        sys.path.remove(str(BENCHMARKS))
    # 300 MB touched in the child: its peak, whatever this (bigger or smaller) process holds.
    allocate = "b = bytearray(300_000_000); b[::4096] = b'x' * len(b[::4096]); print(len(b))"
    big = timed([sys.executable, "-c", allocate])
    small = timed([sys.executable, "-c", "print(0)"])
    assert big.returncode == 0 and big.stdout.strip() == "300000000"
    assert big.peak_mb >= 300 > small.peak_mb
    assert big.peak_mb - small.peak_mb == pytest.approx(300, abs=30)
