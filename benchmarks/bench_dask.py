"""The same experiment sweep on a Dask LocalCluster and on two local worker processes.

    python benchmarks/bench_dask.py [--apps 2] [--seeds 2] [--duration S] [--quick]

Writes a slice of experiments/jsorc_loadtest.toml (its first --apps apps, the 4 GB node, every
policy, --seeds seeds) as an experiment file in a temporary folder, starts a
`distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)` on 127.0.0.1,
and runs `jsorc-sim experiment FILE --scheduler tcp://127.0.0.1:PORT` and
`jsorc-sim experiment FILE --workers 2`, each a fresh process, printing both wall times.
Both must give the same results (results.parquet compared). The cluster's start is not in
its wall time: a user points --scheduler at a cluster that is already up. A benchmark
reports, it does not gate: the exit code is 0 unless something crashed.
"""

from __future__ import annotations

import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import pandas as pd
import tomli_w
from bench_common import LOADTEST, crashed, jsorc_sim, slice_arguments, timed, verdict

EXPERIMENT = LOADTEST
# Target: the cluster runs the sweep about as fast as two local worker processes (the same two
# cores); Dask's scheduling and its worker processes cost a little, so within 1.25x of it.
OVERHEAD_TARGET = 1.25


def sweep(apps: int, seeds: int, duration_s: float | None) -> dict[str, Any]:
    """The slice of the loadtest experiment, as an experiment file's table."""
    raw = tomllib.loads(EXPERIMENT.read_text())
    entry = dict(raw["scenario"][0])
    entry["file"] = str((EXPERIMENT.parent / entry["file"]).resolve())
    entry["apps"] = entry["apps"][:apps]
    entry["grid"] = {"node.memory_mb": [4096]}
    table = {**raw, "name": "bench_dask", "seeds": raw["seeds"][:seeds], "plots": [],
             "scenario": [entry]}
    if duration_s is not None:
        table["duration_s"] = duration_s
    return table


def main(argv: list[str] | None = None) -> int:
    args = slice_arguments(__doc__.splitlines()[0], 2, argv)
    from distributed import LocalCluster

    table = sweep(args.apps, args.seeds, args.duration)
    cells = args.apps * len(table["policy"]) * len(table["seeds"])
    print(f"Part 6: {cells} cells of {EXPERIMENT.name} on a Dask LocalCluster (2 worker "
          "processes, 1 thread each, 127.0.0.1) vs --workers 2", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        folder = Path(tmp)
        file = folder / "sweep.toml"
        file.write_text(tomli_w.dumps(table))
        started = time.perf_counter()
        with LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None) as cluster:
            print(f"  cluster up at {cluster.scheduler_address} in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
            runs = {}
            for label, flags in (("--scheduler", ["--scheduler", cluster.scheduler_address]),
                                 ("--workers 2", ["--workers", "2"])):
                out = folder / label.strip("-").replace(" ", "")
                run = timed([*jsorc_sim(), "experiment", str(file), "--out", str(out), *flags])
                if crashed(f"jsorc-sim experiment {label}", run):
                    return 1
                runs[label] = (run, pd.read_parquet(out / "results.parquet"))
                print(f"  {label:<12} {run.wall_s:6.2f} s wall (fresh process)", flush=True)
    (dask, dask_results), (local, local_results) = runs.values()
    pd.testing.assert_frame_equal(dask_results, local_results)
    print(f"  same results: checked ({len(dask_results)} rows)")
    ratio = dask.wall_s / local.wall_s
    verdict(ratio <= OVERHEAD_TARGET,
            f"Dask LocalCluster within {OVERHEAD_TARGET}x of --workers 2: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
