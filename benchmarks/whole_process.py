"""Whole process: `jsorc-sim run` against a bare SimPy script on the same arrivals.

    python benchmarks/whole_process.py [--calls 200000] [--repeats 5] [--imports]

bench_sim.py times `env.run` only; a user waits for the whole process: the interpreter,
the imports, reading the scenario, simulating and the report. This runs, each in a fresh
subprocess, interleaved (bare, full, bare, full...: this machine is shared and its speed
drifts), `--repeats` times each:

- bare: a SimPy M/M/c script (one process per customer on a `simpy.Resource`, as
  bench_sim.py's `run_bare`) replaying pre-generated arrival and service times from an .npy
  file. They are the full model's own draws (its calls' issue and service times, from one
  untimed run), so both simulate the same queue;
- full: `jsorc-sim run SCENARIO.toml --no-progress --record none --fast off` on bench_sim.py's
  `scenario()` written to a TOML file (each flag only if this `jsorc-sim` has it: the SimPy
  path is what is measured, and a run that keeps no table is what a long study does).

Wall time is the parent's clock around the child; peak RSS is the child's high-water mark
from `/usr/bin/time -f %M` (a child forked from this process would inherit this process's
peak as its own `ru_maxrss`). The ratio is bare wall / full wall, of the medians: the full
model's speed as a share of bare SimPy's, against the issue's target of 0.6.

`--imports` also lists what `import jsorc_sim.cli` spends most time importing
(`python -X importtime`). A benchmark reports, it does not gate: exit code 0 unless a child
failed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import positive

RATIO_TARGET = 0.6  # full model's whole-process speed over bare SimPy's
TIME = "/usr/bin/time"

BARE_SCRIPT = '''\
"""Bare SimPy M/M/c on given arrivals: python bare.py INPUTS.npy CORES UNTIL_S"""
import sys

import numpy as np
import simpy


def main():
    ts, service_s = np.load(sys.argv[1])
    cores, until = int(sys.argv[2]), float(sys.argv[3])
    env = simpy.Environment()
    servers = simpy.Resource(env, capacity=cores)
    done = []

    def customer(arrival, service):
        with servers.request() as req:
            yield req
            wait = env.now - arrival
            yield env.timeout(service)
        done.append((arrival, wait, service))

    def arrivals():
        timeout, process = env.timeout, env.process
        now = 0.0
        for t, service in zip(ts.tolist(), service_s.tolist()):
            yield timeout(t - now)
            now = t
            process(customer(t, service))

    env.process(arrivals())
    env.run(until=until)
    mean_wait_ms = 1000.0 * sum(w for _, w, _ in done) / max(len(done), 1)
    print(f"calls {len(done)}, mean wait {mean_wait_ms:.3f} ms")


main()
'''


def scenario_toml(calls: int) -> str:
    """bench_sim.py's M/M/c scenario as a TOML file's text (checked equal to it)."""
    import tomllib

    import bench_sim

    from jsorc_sim.scenario import from_dict

    text = f"""\
name = "bench_mmc"
duration_s = {calls / bench_sim.RATE_PER_S!r}
timeline_s = 60
seed = {bench_sim.SEED}

[actions.a]
service = {{ dist = "exp", mean_ms = {bench_sim.MEAN_MS!r} }}

[apps.x]
calls = ["a"]

[workload]
kind = "poisson"
rate_per_s = {bench_sim.RATE_PER_S!r}

[placement]
a = "remote:{bench_sim.CORES}"
"""
    if from_dict(tomllib.loads(text)).to_dict() != bench_sim.scenario(calls).to_dict():
        raise RuntimeError("the TOML scenario differs from bench_sim.scenario()")
    return text


def write_inputs(calls: int, path: Path) -> None:
    """The full model's arrival and service times (s), by arrival, as a 2 x n .npy file."""
    import bench_sim
    import numpy as np

    from jsorc_sim.simulate import simulate

    result = simulate(bench_sim.scenario(calls), "none", seed=bench_sim.SEED)
    frame = result.calls.sort_values("ts", kind="stable")
    np.save(path, np.array([frame["ts"].to_numpy(float),
                            frame["service_ms"].to_numpy(float) / 1000.0]))


def _jsorc_sim() -> list[str]:
    script = Path(sys.executable).with_name("jsorc-sim")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jsorc_sim.cli"]


def full_command(scenario: Path) -> list[str]:
    """`jsorc-sim run` with the flags this version has of --no-progress, --record none and
    --fast off."""
    command = [*_jsorc_sim(), "run", str(scenario)]
    help_text = subprocess.run([*command, "--help"], capture_output=True, text=True,
                               check=True).stdout
    for flag, value in (("--no-progress", None), ("--record", "none"), ("--fast", "off")):
        if flag in help_text:
            command += [flag] if value is None else [flag, value]
    return command


def timed(command: list[str], rss_file: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, 10^6 bytes) of one child process."""
    started = time.perf_counter()
    proc = subprocess.run([TIME, "-f", "%M", "-o", str(rss_file), *command],
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr}")
    kib = int(rss_file.read_text().split()[-1])
    return wall, kib * 1024 / 1e6


def measure(calls: int, repeats: int) -> dict[str, float]:
    """Median wall seconds and peak RSS (MB) of both, and the ratio bare/full of the median
    walls (the full model's whole-process speed as a share of bare SimPy's)."""
    import bench_sim

    with tempfile.TemporaryDirectory(prefix="jsorc_whole_") as tmp:
        folder = Path(tmp)
        inputs, scenario = folder / "inputs.npy", folder / "scenario.toml"
        scenario.write_text(scenario_toml(calls))
        bare_py = folder / "bare.py"
        bare_py.write_text(BARE_SCRIPT)
        # In a child: this process stays small, and its imports stay out of the timings.
        subprocess.run([sys.executable, __file__, "--write-inputs", str(inputs),
                        "--calls", str(calls)], check=True)
        until = calls / bench_sim.RATE_PER_S
        commands = {
            "bare": [sys.executable, str(bare_py), str(inputs), str(bench_sim.CORES),
                     repr(until)],
            "full": full_command(scenario),
        }
        walls: dict[str, list[float]] = {"bare": [], "full": []}
        peaks: dict[str, list[float]] = {"bare": [], "full": []}
        for _ in range(repeats):
            for model, command in commands.items():
                wall, peak = timed(command, folder / "rss")
                walls[model].append(wall)
                peaks[model].append(peak)
    out = {"calls": float(calls), "repeats": float(repeats), "target": RATIO_TARGET}
    for model in ("bare", "full"):
        out[f"{model}_wall_s"] = statistics.median(walls[model])
        out[f"{model}_best_s"] = min(walls[model])
        out[f"{model}_peak_mb"] = statistics.median(peaks[model])
    out["ratio"] = out["bare_wall_s"] / out["full_wall_s"]
    out["ratio_best"] = out["bare_best_s"] / out["full_best_s"]
    out["pairs_min"] = min(b / f for b, f in zip(walls["bare"], walls["full"], strict=True))
    out["pairs_max"] = max(b / f for b, f in zip(walls["bare"], walls["full"], strict=True))
    return out


def import_times(module: str = "jsorc_sim.cli", top: int = 15) -> list[tuple[float, str]]:
    """The modules `import module` spends most time on (cumulative s, name), in a fresh
    interpreter, with -X importtime."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                          capture_output=True, text=True, check=True)
    rows = []
    for line in proc.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]) / 1e6, parts[2].rstrip()))
    return sorted(rows, reverse=True)[:top]


def print_figures(figures: dict[str, float]) -> None:
    """The table of `measure`'s medians and bests, and the ratio with its spread."""
    print(f"  {'':<16}  {'median wall s':>13}  {'best wall s':>11}  {'peak MB':>8}")
    for model, label in (("bare", "bare script"), ("full", "jsorc-sim run")):
        print(f"  {label:<16}  {figures[f'{model}_wall_s']:>13.3f}  "
              f"{figures[f'{model}_best_s']:>11.3f}  {figures[f'{model}_peak_mb']:>8,.0f}")
    print(f"  whole-process ratio bare/full: {figures['ratio']:.2f} (medians), "
          f"{figures['ratio_best']:.2f} (bests), pairs {figures['pairs_min']:.2f}.."
          f"{figures['pairs_max']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=positive, default=200_000, help="calls per run")
    parser.add_argument("--repeats", type=positive, default=5, help="runs of each")
    parser.add_argument("--imports", action="store_true",
                        help="also list the slowest imports of jsorc_sim.cli")
    parser.add_argument("--write-inputs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_sim, in a child too
    if args.write_inputs is not None:
        write_inputs(args.calls, args.write_inputs)
        return 0
    print(f"Whole process, fresh subprocesses, interleaved, {args.repeats} runs each: "
          f"{args.calls:,} calls of bench_sim.py's M/M/c", flush=True)
    result = measure(args.calls, args.repeats)
    print_figures(result)
    ratio = result["ratio"]
    print(f"  {'PASS' if ratio >= RATIO_TARGET else 'FALL SHORT'}: jsorc-sim run, whole "
          f"process, at least {RATIO_TARGET} of bare SimPy: {ratio:.2f}")
    if args.imports:
        print("\n  slowest imports of jsorc_sim.cli (cumulative s):")
        for seconds, name in import_times():
            print(f"  {seconds:>7.3f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
