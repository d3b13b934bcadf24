"""The Kubernetes demo (`make demo-kube`): the kube backend against a dev cluster on this machine.

    python experiments/demo_kube.py [--clients 4] [--duration 60] [--keep DIR]

It starts `jsorc devcluster`'s cluster (a Kubernetes API emulator on 127.0.0.1 and a stand-in
kubelet that runs each pod as a real action-server process on its own loopback address),
then `jsorc serve --backend kube` against its kubeconfig, configures flow_analysis' three
actions, turns the controller on and sets a `static` policy that keeps them local. While a
4-client loadtest runs, the policy moves use_enc remote (a Deployment and a Service appear),
scales it 1 -> 3 -> 1 (through the Deployment's `/scale`), and kubectl's view of the objects
is printed at each step. At the end the loadtest's report (no call may fail), then the
server is stopped (it deletes what it created) and the cluster with every pod process.
Everything through the `jsorc` CLI and kubectl, as a user would.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from demo_live import jsorc, server  # the same `jsorc` CLI calls and server start

NAMESPACE = "jsorc"
APP = "flow_analysis"
ACTIONS = ("text_seg", "tfm_ner", "use_enc")


def kubectl(kubeconfig: Path, *argv: str) -> str:
    done = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *argv],
                          capture_output=True, text=True, timeout=30)
    return (done.stdout + done.stderr).rstrip()


def show(kubeconfig: Path, title: str) -> None:
    print(f"\n$ kubectl get deployments,services,pods -n {NAMESPACE}   # {title}")
    print(kubectl(kubeconfig, "get", "deployments,services,pods", "-n", NAMESPACE))


def settle(url: str, token: str, action: str, want: str, timeout_s: float = 120.0) -> str:
    """Wait until `action` is served at `want` with no move under way."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = jsorc(url, token, "status")["actions"][action]
        placement = str(status.get("placement"))
        if placement == want and not status.get("transition"):
            return placement
        if time.monotonic() > deadline:
            raise SystemExit(f"{action} still at {placement} after {timeout_s:g} s "
                             f"(wanted {want}): {status}")
        time.sleep(0.5)


def set_static(url: str, token: str, use_enc: str) -> None:
    placements = {"text_seg": "local", "tfm_ner": "local", "use_enc": use_enc}
    jsorc(url, token, "actionpolicy", "set", "static", f"placements={json.dumps(placements)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of loadtest (the three steps must fit in it)")
    parser.add_argument("--keep", type=Path, help="keep the kubeconfig and logs in this folder")
    args = parser.parse_args(argv)
    if shutil.which("kubectl") is None:
        print("demo_kube: kubectl is not on PATH", file=sys.stderr)
        return 2
    from jsorc_live.devcluster import DevCluster

    work = args.keep or Path(tempfile.mkdtemp(prefix="jsorc-demo-kube-"))
    work.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    kubeconfig = work / "kubeconfig"
    with DevCluster(namespace=NAMESPACE, kubeconfig=kubeconfig, log_dir=work / "pods") as dc:
        print(f"dev cluster: API at {dc.url}, kubeconfig {kubeconfig}")
        with server(token, "--backend", "kube", "--kubeconfig", str(kubeconfig),
                    "--namespace", NAMESPACE, stop_s=60.0) as url:
            for action in ACTIONS:
                jsorc(url, token, "actions", "config", action, "jsorc_live.actions.config")
            jsorc(url, token, "config", "set", "backoff_interval", "1")
            jsorc(url, token, "config", "set", "automation", "true")
            set_static(url, token, "local")
            for action in ACTIONS:
                settle(url, token, action, "local")
            show(kubeconfig, "all three actions local: nothing in the cluster yet")

            print(f"\nloadtest: {APP}, {args.clients} closed-loop clients, "
                  f"{args.duration:g} s, in the background")
            env = {**os.environ, "JSORC_TOKEN": token}
            load = subprocess.Popen(
                [sys.executable, "-m", "jsorc_live.cli", "loadtest", "--app", APP,
                 "--clients", str(args.clients), "--duration", str(args.duration),
                 "--server", url, "--json"], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            started = time.monotonic()
            for step, want in enumerate(("remote:1", "remote:3", "remote:1"), 1):
                time.sleep(3)
                set_static(url, token, want)
                placement = settle(url, token, "use_enc", want)
                print(f"\nstep {step} at {time.monotonic() - started:4.1f} s: policy static "
                      f"puts use_enc at {want}; the router serves it at {placement}")
                show(kubeconfig, f"use_enc at {want}")
            stdout, stderr = load.communicate(timeout=args.duration + 120)
            if load.returncode != 0:
                print(stderr, file=sys.stderr)
                raise SystemExit(f"loadtest failed (exit {load.returncode})")
            answer = json.loads(stdout)
            stats = answer["benchmark"]["walker_run"][APP]
            print(f"\nloadtest report ({APP}, latency in ms): throughput "
                  f"{stats['throughput']:.2f}/s, average {stats['average_latency']:.1f}, "
                  f"95th {stats['95th_latency']:.1f}; failed walker runs: {answer['failed']}")
            decisions = jsorc(url, token, "actionpolicy", "get").get("decisions", [])
            moves = [d for d in decisions if d.get("action") == "use_enc"]
            print("the controller's decisions for use_enc:")
            for d in moves[-4:]:
                print(f"  decision at {d['ts']:.1f} s: use_enc {d['previous']} -> "
                      f"{d['placement']} ({d['reason']})")
            set_static(url, token, "local")
            settle(url, token, "use_enc", "local")
            show(kubeconfig, "use_enc back local: the backend deleted its Deployment and Service")
        show(kubeconfig, "after jsorc serve stopped")
    leftover = [p for p in dc.started_pids if _alive(p)]
    print(f"\ndev cluster stopped; pod processes left running: {len(leftover)}")
    return 1 if leftover or answer["failed"] else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
