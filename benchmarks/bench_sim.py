"""How fast the full simulator runs, next to a bare SimPy M/M/c loop on the same arrivals.

    python benchmarks/bench_sim.py [--calls 200000] [--repeats 3] [--million 1000000]
                                   [--skip-million] [--profile {full,bare}]

The workload is an M/M/c queue: Poisson arrivals at 30/s, one action with exponential
service of mean 100 ms on `remote:4` (four replicas, one shared FIFO queue), utilisation 0.75.

Part 1 compares simulated calls per second. The full model runs first once, untimed, to
warm up and to hand its call rows (issue time, service time) to the bare loop, which replays
exactly those arrivals and service times: one arrival process plus one process per customer
on a `simpy.Resource`, appending an (arrival, wait, service) tuple per call. Both are then
timed on `env.run` only (the full model's `Result.wall_s`; no DataFrame is built), interleaved
bare, full, bare, full... because this machine is shared and its speed drifts; the ratio is
of the medians. The bare loop gets its inputs as ready Python floats, so it pays nothing for
drawing random numbers; the full model draws its own. An untimed pair of runs first warms up
and checks that both models give every call the same wait (so they simulate the same queue).

Part 2 runs 10^6 calls through the full model in a fresh subprocess that does only that and
then builds `Result.calls`. Peak memory is that process's resident high-water mark, VmHWM
from /proc/self/status (interpreter and imports included, which are reported too), not
`ru_maxrss`: on Linux a child's `ru_maxrss` starts from its parent's peak (exec keeps the
high-water mark of the address space it replaces), so here it would report part 1's memory.
tracemalloc is not used: it slows the run and sees only Python's own allocations.

A benchmark reports, it does not gate: the exit code is 0 unless something crashed.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from jsorc_sim.recorder import C_SERVICE, C_TS, C_WAIT
from jsorc_sim.results import Result
from jsorc_sim.scenario import Scenario, from_dict
from jsorc_sim.simulate import simulate

RATE_PER_S = 30.0
CORES = 4
MEAN_MS = 100.0
SEED = 1
RATIO_TARGET = 0.5  # full model calls/s over bare SimPy calls/s
MILLION_WALL_TARGET_S = 20.0
MILLION_RSS_TARGET_MB = 1000.0  # 1 GB = 10^9 bytes
SAME_WAIT_MARGIN_S = 60.0  # calls still in flight at the end differ: compare those before


@dataclass
class Run:
    model: str
    calls: int
    wall_s: float

    @property
    def rate(self) -> float:
        return self.calls / self.wall_s


def scenario(calls: int) -> Scenario:
    """The M/M/c scenario, long enough for about `calls` calls."""
    return from_dict({
        "name": "bench_mmc",
        "duration_s": calls / RATE_PER_S,
        "actions": {"a": {"service": {"dist": "exp", "mean_ms": MEAN_MS}}},
        "apps": {"x": {"calls": ["a"]}},
        "workload": {"kind": "poisson", "rate_per_s": RATE_PER_S},
        "placement": {"a": f"remote:{CORES}"},
        "timeline_s": 60,
        "seed": SEED,
    })


def run_full(sc: Scenario) -> tuple[Run, Result]:
    result = simulate(sc, "none", seed=SEED)
    if result.status != "ok":
        raise RuntimeError(f"full model run did not finish: {result.status}")
    return Run("full", len(result.recorder.calls), result.wall_s), result


def run_bare(ts: list[float], service_s: list[float], cores: int,
             until: float) -> tuple[Run, list[tuple[float, float, float]]]:
    """Bare SimPy M/M/c replaying arrival times `ts` (s) with these service times (s)."""
    env = simpy.Environment()
    servers = simpy.Resource(env, capacity=cores)
    done: list[tuple[float, float, float]] = []

    def customer(arrival: float, service: float) -> Generator[simpy.Event, Any, None]:
        with servers.request() as req:
            yield req
            wait = env.now - arrival
            yield env.timeout(service)
        done.append((arrival, wait, service))

    def arrivals() -> Generator[simpy.Event, Any, None]:
        timeout, process = env.timeout, env.process
        now = 0.0
        for t, service in zip(ts, service_s, strict=True):
            yield timeout(t - now)
            now = t
            process(customer(t, service))

    env.process(arrivals())
    started = time.perf_counter()
    env.run(until=until)
    return Run("bare", len(done), time.perf_counter() - started), done


def replay_inputs(result: Result) -> tuple[list[float], list[float]]:
    """Arrival times (s) and service times (s) of the full model's calls, by arrival."""
    rows = sorted(result.recorder.calls, key=lambda row: row[C_TS])
    return [row[C_TS] for row in rows], [row[C_SERVICE] / 1000.0 for row in rows]


def same_waits(result: Result, bare: list[tuple[float, float, float]],
               until: float) -> tuple[int, float]:
    """Calls compared and the largest |wait difference| in ms, over calls arriving before
    `until`: the bare loop never sees the full model's last few unfinished calls."""
    full = np.array(sorted((row[C_TS], row[C_WAIT]) for row in result.recorder.calls))
    mine = np.array(sorted((t, wait * 1000.0) for t, wait, _ in bare))
    full, mine = full[full[:, 0] < until], mine[mine[:, 0] < until]
    if len(full) != len(mine) or not np.array_equal(full[:, 0], mine[:, 0]):
        return len(full), float("inf")
    return len(full), float(np.abs(full[:, 1] - mine[:, 1]).max(initial=0.0))


# ----------------------------------------------------------------------------- part 1


def compare(calls: int, repeats: int) -> None:
    sc = scenario(calls)
    print(f"Part 1: full model vs bare SimPy on the same arrivals, {calls:,} calls, "
          f"env.run wall only, interleaved, {repeats} runs each")
    # Untimed: warm-up, the arrivals the bare loop replays, and the check that both agree.
    _, result = run_full(sc)
    ts, service_s = replay_inputs(result)
    _, bare_rows = run_bare(ts, service_s, CORES, sc.duration_s)
    checked, worst = same_waits(result, bare_rows, sc.duration_s - SAME_WAIT_MARGIN_S)
    del result, bare_rows
    print(f"  same queue: {checked:,} calls arriving before t = "
          f"{sc.duration_s - SAME_WAIT_MARGIN_S:,.0f} s, largest wait difference "
          f"{worst:.3g} ms" + ("" if worst < 1e-6 else "  WARNING: the models disagree"))

    runs: dict[str, list[Run]] = {"bare": [], "full": []}
    print(f"  {'run':>3}  {'model':<5}  {'calls':>9}  {'wall s':>7}  {'calls/s':>9}")
    for i in range(1, repeats + 1):
        for model in ("bare", "full"):
            gc.collect()
            if model == "bare":
                run, _ = run_bare(ts, service_s, CORES, sc.duration_s)
            else:
                run, _ = run_full(sc)
            runs[model].append(run)
            print(f"  {i:>3}  {model:<5}  {run.calls:>9,}  {run.wall_s:>7.3f}  {run.rate:>9,.0f}",
                  flush=True)
    summarise(runs)


def summarise(runs: dict[str, list[Run]]) -> None:
    median = {m: statistics.median(r.rate for r in rs) for m, rs in runs.items()}
    best = {m: max(r.rate for r in rs) for m, rs in runs.items()}
    pairs = [f.rate / b.rate for b, f in zip(runs["bare"], runs["full"], strict=True)]
    print()
    print(f"  {'':<12}  {'calls':>9}  {'median wall s':>13}  {'median calls/s':>14}  "
          f"{'best calls/s':>12}")
    for model, label in (("bare", "bare SimPy"), ("full", "full model")):
        rs = runs[model]
        print(f"  {label:<12}  {rs[0].calls:>9,}  "
              f"{statistics.median(r.wall_s for r in rs):>13.3f}  {median[model]:>14,.0f}  "
              f"{best[model]:>12,.0f}")
    ratio = median["full"] / median["bare"]
    print(f"  ratio full/bare: {ratio:.2f} (medians), {best['full'] / best['bare']:.2f} (bests), "
          f"per pair {' '.join(f'{p:.2f}' for p in pairs)}")
    verdict(ratio >= RATIO_TARGET,
            f"full model at least {RATIO_TARGET} of bare SimPy: {ratio:.2f}")


# ----------------------------------------------------------------------------- part 2


def million(calls: int) -> bool:
    """10^6 calls in a fresh subprocess; False if it crashed."""
    print(f"\nPart 2: {calls:,} calls through the full model, in a fresh subprocess", flush=True)
    proc = subprocess.run([sys.executable, __file__, "--child", str(calls)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"  CRASHED (exit {proc.returncode}):\n{proc.stderr}")
        return False
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  calls {out['calls']:,} in {out['sim_s']:,.0f} simulated s, status {out['status']}")
    print(f"  env.run wall {out['wall_s']:.2f} s ({out['calls'] / out['wall_s']:,.0f} calls/s); "
          f"simulate() {out['simulate_s']:.2f} s; building r.calls {out['frame_s']:.2f} s")
    print(f"  peak RSS ({out['rss_source']}) {out['peak_mb']:,.0f} MB: interpreter and imports "
          f"{out['base_mb']:,.0f} MB, after simulate() {out['after_sim_mb']:,.0f} MB, "
          f"after r.calls {out['peak_mb']:,.0f} MB")
    total = out["simulate_s"] + out["frame_s"]
    verdict(out["simulate_s"] < MILLION_WALL_TARGET_S,
            f"{calls:,} calls in under {MILLION_WALL_TARGET_S:.0f} s: "
            f"{out['simulate_s']:.1f} s in simulate() ({total:.1f} s with r.calls)")
    verdict(out["peak_mb"] < MILLION_RSS_TARGET_MB,
            f"{calls:,} calls in under 1 GB: peak RSS {out['peak_mb']:,.0f} MB "
            "(whole process, r.calls included)")
    return True


def child(calls: int) -> None:
    """The subprocess of part 2: one run and its calls table, then a JSON line."""
    base = peak_mb()
    sc = scenario(calls)
    started = time.perf_counter()
    result = simulate(sc, "none", seed=SEED)
    simulate_s = time.perf_counter() - started
    after_sim = peak_mb()
    started = time.perf_counter()
    frame = result.calls
    frame_s = time.perf_counter() - started
    print(json.dumps({
        "calls": len(frame), "sim_s": sc.duration_s, "status": result.status,
        "wall_s": result.wall_s, "simulate_s": simulate_s, "frame_s": frame_s,
        "base_mb": base, "after_sim_mb": after_sim, "peak_mb": peak_mb(),
        "rss_source": "VmHWM" if _vm_hwm_kib() is not None else "ru_maxrss",
    }))


def peak_mb() -> float:
    """Peak resident memory of this process in MB (10^6 bytes)."""
    kib = _vm_hwm_kib()
    if kib is None:  # no /proc: ru_maxrss, which may include the parent's peak
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024 / 1e6


def _vm_hwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def verdict(ok: bool, text: str) -> None:
    print(f"  {'PASS' if ok else 'FALL SHORT'}: {text}")


# ----------------------------------------------------------------------------- profile


def profile(which: str, calls: int) -> None:
    """cProfile one run, top 25 functions by own time."""
    sc = scenario(calls)
    _, result = run_full(sc)
    ts, service_s = replay_inputs(result)
    del result
    profiler = cProfile.Profile()
    profiler.enable()
    if which == "full":
        run_full(sc)
    else:
        run_bare(ts, service_s, CORES, sc.duration_s)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number > 0, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=positive, default=200_000, help="calls per run in part 1")
    parser.add_argument("--repeats", type=positive, default=3, help="runs of each model in part 1")
    parser.add_argument("--million", type=positive, default=1_000_000, help="calls in part 2")
    parser.add_argument("--skip-million", action="store_true", help="part 1 only")
    parser.add_argument("--profile", choices=("full", "bare"),
                        help="only profile one run of --calls calls of this model")
    parser.add_argument("--child", type=positive, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child)
        return 0
    if args.profile:
        profile(args.profile, args.calls)
        return 0
    print(f"jsorc_sim benchmark: M/M/{CORES}, Poisson {RATE_PER_S:g}/s, exponential service "
          f"{MEAN_MS:g} ms, utilisation {RATE_PER_S * MEAN_MS / 1000 / CORES:.2f}, seed {SEED}; "
          f"Python {sys.version.split()[0]}, simpy {simpy.__version__}\n")
    compare(args.calls, args.repeats)
    ok = True if args.skip_million else million(args.million)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
