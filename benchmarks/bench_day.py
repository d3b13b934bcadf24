"""A real day replayed: wall time, peak memory, the report, and memory against run length.

    python benchmarks/bench_day.py [--part day|equivalence|memory ...] [--quick]

The scenario is benchmarks/azure_day.toml: the Azure Functions 2019 function of
$JSORC_TRACES/azure_functions_2019_single (default ../shared/traces beside the clone), 20.8 M
calls over 86,400 s, one action on remote:4 with lognormal service of mean 5 ms. Every run is a
fresh `jsorc-sim run ... --json --no-progress` process under /usr/bin/time -v (bench_common),
so its wall time and peak RSS are the whole process's: start, imports, reading the trace,
the run and the report.

Part 3 (day): the whole day with `--record none` (no table kept: the report's percentiles
come from the sketch), then again with `--out DIR` (every table streamed to Parquet as the run
goes). Targets: under 3 minutes and under 2 GB each. Then the report check on a 2-hour slice
(equivalence): today's exact path (`--record calls --fast off`) against the fast path with
`--record none`: counts must be equal, and every percentile within the sketch's stated
relative error (the report's `statistics`) of the exact one.

Part 4 (memory): peak RSS of 1-, 4- and 12-hour slices with `--out`: with the tables on disk
it must not grow with the number of calls (target: 12 hours at most 1.25x the 1-hour peak).

A benchmark reports, it does not gate: the exit code is 0 unless something crashed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_common import REPO, Timed, crashed, jsorc_sim, timed, traces_dir, verdict

SCENARIO = REPO / "benchmarks" / "azure_day.toml"
TRACE = Path("azure_functions_2019_single") / "invocations.csv"
# Targets (issue #12): the full day under 3 minutes and 2 GB peak, whole process, one core.
DAY_WALL_TARGET_S = 180.0
DAY_RSS_TARGET_MB = 2000.0  # 2 GB = 2 x 10^9 bytes
FLAT_GROWTH_TARGET = 1.25  # peak RSS of the longest slice over the shortest's
EQUIVALENCE_S = 7200.0
MEMORY_SLICES_S = (3600.0, 4 * 3600.0, 12 * 3600.0)
# --quick: short slices of the same day, for the smoke test.
QUICK_DAY_S, QUICK_EQUIVALENCE_S, QUICK_MEMORY_SLICES_S = 600.0, 120.0, (60.0, 120.0, 240.0)
PARTS = ("day", "equivalence", "memory")
PERCENTILES = ("50th_latency", "90th_latency", "95th_latency", "99th_latency")


def run(*, duration_s: float | None = None, record: str = "none", fast: str | None = None,
        out: Path | None = None) -> tuple[Timed, dict[str, Any]]:
    """One fresh `jsorc-sim run` of the day scenario; its timing and its report."""
    command = [*jsorc_sim(), "run", str(SCENARIO), "--json", "--no-progress",
               "--record", record, "--set", f"workload.trace={json.dumps(str(trace()))}"]
    if duration_s is not None:
        command += ["--duration", f"{duration_s:g}"]
    if out is not None:
        command += ["--out", str(out)]
    if fast is not None:
        command += ["--fast", fast]
    done = timed(command)
    if crashed(_describe(duration_s, record, fast, out), done):
        raise SystemExit(1)
    return done, json.loads(done.stdout)


def trace() -> Path:
    path = traces_dir() / TRACE
    if not path.exists():
        raise SystemExit(f"bench_day: no trace at {path}: set JSORC_TRACES to the folder that "
                         f"holds {TRACE}")
    return path


def _describe(duration_s: float | None, record: str, fast: str | None,
              out: Path | None) -> str:
    length = "the whole day" if duration_s is None else f"{duration_s:,.0f} s"
    return (f"{length}, --record {record}" + (f", --fast {fast}" if fast else "")
            + (", --out DIR" if out else ""))


# ----------------------------------------------------------------------------- report


def counts(report: dict[str, Any], duration_s: float) -> dict[str, int]:
    """The report's counts: arrivals, finished (throughput x span: warmup_s is 0 and a run
    that ends normally spans its duration), unfinished, failed."""
    cost = report["cost"]
    finished = report["walker_run"]["all"]["throughput"] * duration_s
    return {"arrivals": int(cost["arrivals"]), "finished": round(finished),
            "unfinished": int(report["unfinished"]["count"]["all"]),
            "failed": int(cost["failed_requests"])}


def show(label: str, done: Timed, report: dict[str, Any], duration_s: float) -> None:
    stats = report["walker_run"]["all"]
    c = counts(report, duration_s)
    print(f"  {label}: wall {done.wall_s:,.1f} s, peak RSS {done.peak_mb:,.0f} MB")
    print(f"    arrivals {c['arrivals']:,}, finished {c['finished']:,}, unfinished "
          f"{c['unfinished']:,}, failed {c['failed']:,}; "
          f"{c['arrivals'] / done.wall_s:,.0f} calls/s of wall")
    print(f"    latency ms: mean {stats['average_latency']}, p50 {stats['50th_latency']}, "
          f"p90 {stats['90th_latency']}, p95 {stats['95th_latency']}, "
          f"p99 {stats['99th_latency']}; percentiles {report['statistics']}", flush=True)


# ----------------------------------------------------------------------------- part 3


def part_day(duration_s: float | None) -> None:
    length = 86_400.0 if duration_s is None else duration_s
    print(f"Part 3: the full-day replay ({SCENARIO.name}, {length:,.0f} simulated s), fresh "
          "`jsorc-sim run` under /usr/bin/time -v", flush=True)
    done, report = run(duration_s=duration_s, record="none")
    show("--record none", done, report, length)
    _day_verdicts("--record none", done)
    with tempfile.TemporaryDirectory(prefix="bench-day-") as tmp:
        done, report = run(duration_s=duration_s, record="calls", out=Path(tmp) / "out")
        written = sum(f.stat().st_size for f in (Path(tmp) / "out").rglob("*.parquet"))
    show(f"--out DIR (every table streamed to Parquet, {written / 1e6:,.0f} MB written)", done,
         report, length)
    _day_verdicts("--out DIR", done)


def _day_verdicts(label: str, done: Timed) -> None:
    verdict(done.wall_s < DAY_WALL_TARGET_S,
            f"{label}: under {DAY_WALL_TARGET_S / 60:g} minutes: {done.wall_s:,.1f} s")
    verdict(done.peak_mb < DAY_RSS_TARGET_MB,
            f"{label}: under {DAY_RSS_TARGET_MB / 1000:g} GB peak: {done.peak_mb:,.0f} MB")


def part_equivalence(duration_s: float) -> None:
    print(f"\nPart 3, same report: a {duration_s:,.0f} s slice, exact (--record calls --fast off, "
          "today's path) vs fast path with --record none (sketch)", flush=True)
    exact_run, exact = run(duration_s=duration_s, record="calls", fast="off")
    sketch_run, sketch = run(duration_s=duration_s, record="none", fast="on")
    show("exact", exact_run, exact, duration_s)
    show("fast + sketch", sketch_run, sketch, duration_s)
    exact_counts, sketch_counts = counts(exact, duration_s), counts(sketch, duration_s)
    verdict(exact_counts == sketch_counts,
            f"counts equal: exact {exact_counts}, sketch {sketch_counts}")
    error = sketch["statistics"].get("relative_error")
    worst_key, worst = worst_relative(exact["walker_run"], sketch["walker_run"])
    mean_diff = relative(exact["walker_run"]["all"]["average_latency"],
                         sketch["walker_run"]["all"]["average_latency"])
    print(f"  mean latency (exact either way): relative difference {mean_diff:.2e}")
    if error is None:
        verdict(worst <= 1e-9, f"percentiles equal (both exact): largest difference {worst:.2e}")
        return
    verdict(worst <= error, f"largest relative percentile difference {worst:.4%} ({worst_key}) "
            f"within the sketch's stated error {error:.2%}")


def worst_relative(exact: dict[str, dict[str, Any]],
                   sketch: dict[str, dict[str, Any]]) -> tuple[str, float]:
    """The largest |sketch - exact| / exact over every app's percentiles."""
    worst_key, worst = "", 0.0
    for app, stats in exact.items():
        for key in PERCENTILES:
            diff = relative(stats[key], sketch[app][key])
            if diff > worst or math.isnan(diff):
                worst_key, worst = f"{app} {key}", diff
    return worst_key, worst


def relative(exact: float | None, other: float | None) -> float:
    if exact is None or other is None:
        return 0.0 if exact is other else math.nan
    return abs(other - exact) / abs(exact) if exact else abs(other)


# ----------------------------------------------------------------------------- part 4


def part_memory(slices: Sequence[float]) -> None:
    print(f"\nPart 4: peak RSS against run length, tables streamed to Parquet (--out), "
          f"{', '.join(f'{s / 3600:g} h' for s in slices)}", flush=True)
    peaks = []
    print(f"  {'simulated':>10}  {'arrivals':>11}  {'wall s':>7}  {'peak MB':>8}")
    for duration_s in slices:
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
            done, report = run(duration_s=duration_s, record="calls", out=Path(tmp) / "out")
        peaks.append(done.peak_mb)
        print(f"  {duration_s / 3600:>8.3g} h  {report['cost']['arrivals']:>11,}  "
              f"{done.wall_s:>7.1f}  {done.peak_mb:>8,.0f}", flush=True)
    growth = peaks[-1] / peaks[0]
    verdict(growth <= FLAT_GROWTH_TARGET,
            f"flat: {slices[-1] / slices[0]:g}x the simulated time, {growth:.2f}x the peak RSS "
            f"(target <= {FLAT_GROWTH_TARGET}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", action="append", choices=PARTS,
                        help="run only this part (repeatable; default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="short slices, for a smoke test")
    args = parser.parse_args(argv)
    parts = args.part or PARTS
    print(f"jsorc_sim full-day benchmark: {SCENARIO.relative_to(REPO)}, trace {trace()}\n",
          flush=True)
    if "day" in parts:
        part_day(QUICK_DAY_S if args.quick else None)
    if "equivalence" in parts:
        part_equivalence(QUICK_EQUIVALENCE_S if args.quick else EQUIVALENCE_S)
    if "memory" in parts:
        part_memory(QUICK_MEMORY_SLICES_S if args.quick else MEMORY_SLICES_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
