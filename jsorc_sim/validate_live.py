"""The live half of `jsorc-sim validate`: real `jsorc serve` and `jsorc loadtest` processes.

jsorc_sim may not import jsorc_live (the import contract), so this module drives the live
system the way a user does, from outside: `python -m jsorc_live.cli serve` on a free
127.0.0.1 port with a fresh admin token, plain HTTP POSTs to its admin API (`/jsorc/...`,
the `jsorc` CLI's own calls) to configure the example actions, place them or set a policy,
then `python -m jsorc_live.cli loadtest ... --out DIR` as a subprocess, which writes the
folder `jsorc-sim calibrate` reads (report.json, calls.parquet, requests.parquet, run.json).
Each run gets a server of its own, with a temporary --state-dir, stopped with SIGTERM after
it (the server stops its replica processes), so no run inherits another's warm copies,
replicas, decision log or saved state.

The example actions are numpy "models" scaled down to fit this machine
(`JSORC_ACTION_SCALE`, passed through from the environment; default 1/50).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# JSORC's loadtest apps this validation uses and the actions each calls, in order (as in
# jsorc_live.runtime.LOADTEST_APPS, which this package may not import).
APPS: dict[str, tuple[str, ...]] = {
    "restaurant_chatbot": ("bi_enc", "tfm_ner"),
    "sentence_pairing": ("sbert_sim", "bi_enc"),
    "discussion_analysis": ("bi_enc", "cl_summer"),
    "flow_analysis": ("text_seg", "tfm_ner", "use_enc"),
}
# Each app's largest model (jaseci_ai_kit's memory figures): the one a mixed placement
# sends remote, as JSORC's loadtest shows is best for a model that crowds the node.
LARGEST = {"restaurant_chatbot": "tfm_ner", "sentence_pairing": "sbert_sim",
           "discussion_analysis": "bi_enc", "flow_analysis": "use_enc"}
CONFIG_MODULE = "jsorc_live.actions.config"
WARMUP_RUNS = 3  # walker runs before the loadtest: first calls pay imports and page faults
SETTLE_S = 90.0  # longest wait for a placement (a replica process starting) to settle


class LiveError(RuntimeError):
    """The live system could not run a workload: one line naming the run and what failed."""


@dataclass(frozen=True)
class LiveRun:
    """One live workload of the plan.

    `placement` (action -> "local" | "remote:N") is loaded before the load starts; with a
    `policy`, the controller takes over from that placement as the load starts (every
    `interval_s`), so its moves happen while traffic flows."""

    name: str
    app: str
    clients: int
    duration_s: float
    placement: Mapping[str, str]
    label: str  # the placement or policy, for tables: all_local, mixed, evaluation...
    train: bool = False
    policy: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    interval_s: float = 2.0

    @property
    def actions(self) -> tuple[str, ...]:
        return APPS[self.app]


def placement_of(app: str, label: str) -> dict[str, str]:
    """all_local, all_remote or mixed (the app's largest action remote, the others local)."""
    actions = APPS[app]
    if label == "all_local":
        return dict.fromkeys(actions, "local")
    if label == "all_remote":
        return dict.fromkeys(actions, "remote:1")
    if label == "mixed":
        return {a: "remote:1" if a == LARGEST[app] else "local" for a in actions}
    raise ValueError(f"unknown placement {label!r}: all_local, all_remote or mixed")


class Server:
    """A running `jsorc serve`: its URL and the admin calls validation needs."""

    def __init__(self, url: str, token: str, log: Path) -> None:
        # httpx is imported here, not at the top: `jsorc-sim run` imports this module (through
        # the validate subcommand's parser) and never talks to a server.
        import httpx

        self.url, self.token, self.log = url, token, log
        self._http = httpx.Client(timeout=120.0,
                                  headers={"Authorization": f"token {token}"})

    def admin(self, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST to the admin API; a refusal raises LiveError with the server's message."""
        response = self._http.post(self.url + path, json=dict(body or {}))
        answer: dict[str, Any] = response.json()
        if response.status_code >= 400 or not answer.get("success", False):
            raise LiveError(f"{path} {dict(body or {})} refused ({response.status_code}): "
                            f"{answer.get('message')}")
        return answer

    def close(self) -> None:
        self._http.close()


@contextlib.contextmanager
def serve(env: Mapping[str, str] | None = None, *, stop_s: float = 20.0) -> Iterator[Server]:
    """`jsorc serve` on a free 127.0.0.1 port with a fresh token; stopped on exit.

    Its log goes to a temporary file (a pipe nobody reads would stall a talkative server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = secrets.token_hex(16)
    child_env = {**os.environ, **(env or {}), "JSORC_TOKEN": token}
    fd, log_name = tempfile.mkstemp(prefix="jsorc-validate-serve-", suffix=".log")
    log = Path(log_name)
    # A state folder of its own: the default (~/.local/state/jsorc) would hand one run's
    # configs and policy to a later server that happens to get the same port.
    state = tempfile.TemporaryDirectory(prefix="jsorc-validate-state-")
    proc = subprocess.Popen([sys.executable, "-m", "jsorc_live.cli", "serve", "--port",
                             str(port), "--state-dir", state.name], env=child_env, stdout=fd,
                            stderr=subprocess.STDOUT)
    os.close(fd)  # the server holds its own copy
    server = Server(f"http://127.0.0.1:{port}", token, log)
    try:
        _wait_up(proc, server)
        yield server
    finally:
        server.close()
        proc.terminate()
        try:
            proc.wait(timeout=stop_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        state.cleanup()


def _wait_up(proc: subprocess.Popen[bytes], server: Server, timeout_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            tail = server.log.read_text(errors="replace")[-600:].strip().splitlines()
            raise LiveError(f"jsorc serve exited with {proc.returncode}: "
                            f"{tail[-1] if tail else 'no output'} (log {server.log})")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/healthz", timeout=1.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise LiveError(f"jsorc serve did not answer within {timeout_s:g} s "
                            f"(log {server.log})")
        time.sleep(0.1)


def run_live(run: LiveRun, folder: Path, env: Mapping[str, str] | None = None) -> Path:
    """Run `run` on a server of its own and leave its loadtest folder at `folder`."""
    import httpx

    with serve(env) as server:
        for action in run.actions:
            server.admin("/jsorc/actions/config", {"name": action, "config": CONFIG_MODULE})
        for action, where in run.placement.items():
            mode, _, replicas = where.partition(":")
            body: dict[str, Any] = {"name": action,
                                    "mode": "module" if mode == "local" else "remote"}
            if replicas:
                body["replicas"] = int(replicas)
            server.admin("/jsorc/actions/load", body)
        _settle(server, run)
        for _ in range(WARMUP_RUNS):
            httpx.post(server.url + "/walker_run", json={"name": run.app, "ctx": {}},
                       timeout=60.0)
        if run.policy is not None:
            server.admin("/jsorc/config/set", {"name": "backoff_interval",
                                               "value": run.interval_s})
            server.admin("/jsorc/actionpolicy/set", {"policy_name": run.policy,
                                                     "policy_params": dict(run.params)})
            # The controller's first step comes one interval after automation is on: by
            # then the loadtest (started next) is sending walkers.
            server.admin("/jsorc/config/set", {"name": "automation", "value": True})
        _loadtest(server, run, folder, env)
    return folder


def _settle(server: Server, run: LiveRun) -> None:
    """Wait until every action serves calls where the run placed it."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        actions = server.admin("/jsorc/status")["actions"]
        now = {a: (str(actions[a]["placement"]), bool(actions[a]["transition"]))
               for a in run.placement}
        if all(where == run.placement[a] and not moving for a, (where, moving) in now.items()):
            return
        if time.monotonic() > deadline:
            raise LiveError(f"run {run.name}: placements did not settle within {SETTLE_S:g} s: "
                            f"{ {a: w for a, (w, _) in now.items()} }")
        time.sleep(0.2)


def _loadtest(server: Server, run: LiveRun, folder: Path,
              env: Mapping[str, str] | None) -> None:
    argv = [sys.executable, "-m", "jsorc_live.cli", "loadtest", "--app", run.app,
            "--clients", str(run.clients), "--duration", f"{run.duration_s:g}",
            "--out", str(folder), "--server", server.url, "--json"]
    child_env = {**os.environ, **(env or {}), "JSORC_TOKEN": server.token}
    done = subprocess.run(argv, env=child_env, capture_output=True, text=True,
                          timeout=run.duration_s + 180.0, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise LiveError(f"run {run.name}: jsorc loadtest exited with {done.returncode}: "
                        f"{lines[-1] if lines else 'no output'}")
    summary = json.loads(done.stdout)
    if summary.get("failed"):
        raise LiveError(f"run {run.name}: {summary['failed']} of {summary['walker_runs']} "
                        f"walker runs failed (server log {server.log})")
