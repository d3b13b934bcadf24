"""How much faster an experiment runs on two worker processes than on one.

    python benchmarks/bench_experiment.py [--apps 4] [--seeds 2] [--duration S] [--quick]

Runs a slice of experiments/jsorc_loadtest.toml (its first --apps apps, the 4 GB node, all six
policies, --seeds seeds, 30 simulated minutes per cell) into two fresh temporary folders, with
`--workers 1` and then `--workers 2`, and prints the wall times and their ratio. Target: at
least 1.7x on this 2-core machine. The two runs must give the same results (checked). A
benchmark reports, it does not gate: the exit code is 0 unless something crashed.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import pandas as pd
from bench_common import LOADTEST, slice_arguments

from jsorc_sim.experiment import load_experiment, run_experiment

EXPERIMENT = LOADTEST
TARGET = 1.7  # --workers 2 over --workers 1, wall time


def main(argv: list[str] | None = None) -> int:
    args = slice_arguments(__doc__.splitlines()[0], 4, argv)
    exp = load_experiment(EXPERIMENT)
    entry = exp.scenarios[0]
    entry = dataclasses.replace(entry, apps=entry.apps[: args.apps],
                                grid={"node.memory_mb": (4096,)})
    exp = dataclasses.replace(exp, scenarios=(entry,), seeds=exp.seeds[: args.seeds], plots=(),
                              duration_s=args.duration or exp.duration_s)
    walls, results = {}, {}
    print("Part 5: experiment sweep, --workers 1 then --workers 2", flush=True)
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            done = run_experiment(exp, Path(tmp) / "out", workers=workers, progress=False)
            walls[workers] = time.perf_counter() - started
            results[workers] = done.results
    cells = results[1]["cell"].nunique()
    pd.testing.assert_frame_equal(results[1], results[2])
    ratio = walls[1] / walls[2]
    policies = len(exp.policies)
    print(f"experiment slice: {cells} cells of {EXPERIMENT.name} ({args.apps} apps x {policies} "
          "policies "
          f"x {args.seeds} seeds, 4 GB, {exp.duration_s:g} simulated s each)")
    print(f"  --workers 1: {walls[1]:6.2f} s wall")
    print(f"  --workers 2: {walls[2]:6.2f} s wall   (same results: checked)")
    verdict = "PASS" if ratio >= TARGET else "FALL SHORT"
    print(f"  speed-up {ratio:.2f}x   {verdict}: target >= {TARGET}x on 2 cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
