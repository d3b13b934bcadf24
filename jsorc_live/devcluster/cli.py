"""`jsorc devcluster --kubeconfig FILE [--port P] [--namespace NS] [--log-dir DIR]`: run a
dev cluster until SIGINT or SIGTERM, then stop every pod it started.

The arguments are declared in jsorc_live/cli.py (so ``jsorc --help`` works without kmock);
``python -m jsorc_live.devcluster`` takes the same ones.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from jsorc_live.devcluster.cluster import CONTEXT, DevCluster, DevClusterError

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=str(args.log_level).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    cluster = DevCluster(namespace=args.namespace, port=args.port,
                         kubeconfig=Path(args.kubeconfig).resolve(),
                         log_dir=Path(args.log_dir).resolve() if args.log_dir else None)
    try:
        try:
            cluster.start()
        except (DevClusterError, OSError) as exc:
            print(f"jsorc devcluster: {exc}", file=sys.stderr)
            return 2
        print(f"jsorc devcluster: API at {cluster.url}\n"
              f"  kubeconfig {cluster.kubeconfig} (context {CONTEXT}, namespace "
              f"{cluster.namespace})\n"
              f"  pod logs in {cluster.log_dir}, pod metrics at {cluster.metrics_url}\n"
              f"  try: kubectl --kubeconfig {cluster.kubeconfig} get deployments,services,pods "
              f"-n {cluster.namespace} -o wide\n"
              "  Ctrl-C (SIGINT) or SIGTERM stops it and every pod it started.",
              flush=True)
        stop.wait()
        pods = len(cluster.started_pids)
        cluster.stop()
        name = signal.Signals(received[0]).name if received else "a signal"
        print(f"jsorc devcluster: stopped on {name}; every pod process it started "
              f"({pods}) has exited", flush=True)
        return 0
    except DevClusterError as exc:
        print(f"jsorc devcluster: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
