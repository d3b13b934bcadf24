"""Rows 7-10: processes around the runtime. SIGKILL and SIGTERM of `jsorc serve` itself (no
child may outlive it; a restarted server adopts or stops what a killed one left), and the
kept-alive Prometheus killed or frozen (walker traffic must not notice)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from typing import Any

import httpx

from tests.reliability.counting import Load, recovery_after
from tests.reliability.harness import (
    STOP_BOUND_S,
    HarnessError,
    Operator,
    Server,
    Tracked,
    wait_for,
)
from tests.reliability.rows import Row, RunContext, serving

CLIENTS = 4
ORPHAN_GRACE_S = 5.0
PROMETHEUS_READY_S = 45.0


def keep_alive() -> list[str]:
    """--keep-alive prometheus when Prometheus is installed (rows 7-8 then check it too)."""
    return ["--keep-alive", "prometheus"] if shutil.which("prometheus") else []


def prometheus(server: Server) -> dict[str, Any]:
    services = server.admin("/jsorc/service/status", timeout_s=10.0)["services"]
    status: dict[str, Any] = services.get("prometheus") or {}
    return status


def prometheus_answers(server: Server, not_pid: int | None = None) -> bool:
    """Prometheus READY, answering /-/ready within 1 s, and (if given) not process not_pid."""
    st = prometheus(server)
    if st.get("state") != "READY" or not st.get("pid") or not st.get("url"):
        return False
    if not_pid is not None and st["pid"] == not_pid:
        return False
    return httpx.get(str(st["url"]) + "/-/ready", timeout=1.0).status_code == 200


def _wait_prometheus(server: Server) -> Tracked:
    if wait_for(lambda: prometheus_answers(server), PROMETHEUS_READY_S, every_s=0.3) is None:
        raise HarnessError(f"kept-alive prometheus not READY within {PROMETHEUS_READY_S:g} s: "
                           f"{prometheus(server)}")
    pid = int(prometheus(server)["pid"])
    for child in server.children():
        if child.pid == pid:
            return child
    raise HarnessError(f"prometheus pid {pid} is not a child of the server")


def _adopted(server: Server, t: Tracked) -> bool:
    """The restarted server holds `t`: a replica whose port it routes to, or its service."""
    with contextlib.suppress(HarnessError):
        if "jsorc_live.actions.server" in t.cmdline:
            port = t.cmdline.split("--port", 1)[1].split()[0]
            remote = server.status("fast").get("remote") or {}
            return any(url.endswith(f":{port}") for url in remote.get("replicas", []))
        return bool(prometheus(server).get("pid") == t.pid)
    return False


def server_kill(ctx: RunContext, row: Row) -> None:
    """Row 7: SIGKILL of `jsorc serve` with remote:2 and Prometheus, then a restart on the
    same port and state dir. Requests in flight at the kill are aborted, not lost."""
    row.max_failed = 0
    row.max_aborted = CLIENTS
    args = keep_alive()
    first = Server(ctx.dir(7), args)
    second: Server | None = None
    try:
        first.start()
        first.define_walkers()
        first.load("fast", "remote:2")
        if args:
            _wait_prometheus(first)
        with Load(first.url, "fast_walk", clients=CLIENTS) as load:
            row.load = load
            time.sleep(ctx.budget.warmup_s)
            before = first.children()
            row.note(f"{len(before)} children before the kill: "
                     + ", ".join(sorted(t.name for t in before)))
            row.note(_state_file_lists(first, before))
            load.server_gone()
            load.pause()
            t0 = time.monotonic()
            first.signal(signal.SIGKILL)
            assert first.proc is not None
            first.proc.wait(timeout=10)
            wait_for(lambda: not any(t.alive() for t in before), ORPHAN_GRACE_S)
            orphans = [t for t in before if t.alive()]
            if orphans:
                row.problem(f"{len(orphans)} orphan(s) alive {ORPHAN_GRACE_S:g} s after the "
                            "kill: " + ", ".join(sorted(t.name for t in orphans)))
            second = Server(first.workdir, args, port=first.port, token=first.token)
            second.start()
            _judge_leftovers(row, second, orphans)
            if not orphans:
                files = sorted(p.name for p in first.state_dir.rglob("*") if p.is_file())
                row.note("nothing outlived the kill, so the restart had nothing to adopt or "
                         f"stop; state files: {', '.join(files) or 'none'}")
            second.define_walkers()
            second.load("fast", "remote:2")
            load.server_gone(False)
            load.resume()
            wait_for(lambda: recovery_after(load.snapshot(), t0) is not None,
                     ctx.budget.settle_s)
            time.sleep(ctx.budget.tail_s)
            row.recovery_s = recovery_after(load.snapshot(), t0)
    finally:
        for server in (first, second):
            if server is not None:
                server.stop()
                server.sweep()


def _state_file_lists(server: Server, children: list[Tracked]) -> str:
    """How many of the children the server's state file(s) name by pid (a note: the file's
    format is the server's own)."""
    pids: set[int] = set()

    def walk(doc: Any) -> None:
        if isinstance(doc, dict):
            for key, value in doc.items():
                if key == "pid" and isinstance(value, int):
                    pids.add(value)
                walk(value)
        elif isinstance(doc, list):
            for value in doc:
                walk(value)

    files = sorted(server.state_dir.rglob("*.json"))
    for path in files:
        with contextlib.suppress(OSError, ValueError):
            walk(json.loads(path.read_text()))
    named = sum(t.pid in pids for t in children)
    return (f"state file(s) {', '.join(p.name for p in files) or 'none'} name {named} of the "
            f"{len(children)} children by pid")


def _judge_leftovers(row: Row, server: Server, orphans: list[Tracked]) -> None:
    if not orphans:
        return
    took = wait_for(lambda: all(not t.alive() or _adopted(server, t) for t in orphans), 15.0)
    stopped = [t for t in orphans if not t.alive()]
    adopted = [t for t in orphans if t.alive() and _adopted(server, t)]
    left = [t for t in orphans if t.alive() and not _adopted(server, t)]
    row.restored_s = took
    if left:
        row.problem(f"the restarted server neither adopted nor stopped {len(left)} leftover(s) "
                    "within 15 s: " + ", ".join(sorted(t.name for t in left)))
    else:
        row.note(f"restart: {len(stopped)} leftover(s) stopped, {len(adopted)} adopted")


def server_term(ctx: RunContext, row: Row) -> None:
    """Row 8: SIGTERM of `jsorc serve` with 4 walkers of 0.3 s in flight: it exits within
    the bound, answers what was in flight, and leaves no child behind."""
    row.max_failed = 0
    row.max_aborted = 0
    args = keep_alive()
    server = Server(ctx.dir(8), args)
    try:
        server.start()
        server.define_walkers()
        server.load("fast", "remote:1")
        if args:
            _wait_prometheus(server)
        with Load(server.url, "fast_walk", clients=CLIENTS, ctx={"seconds": 0.3}) as load:
            row.load = load
            time.sleep(ctx.budget.warmup_s)
            before = server.children()
            load.server_gone()
            load.pause()
            exit_s = server.stop()
            row.restored_s = exit_s
            if exit_s is None:
                row.problem(f"did not exit within {STOP_BOUND_S:g} s of SIGTERM (SIGKILLed)")
            wait_for(lambda: not any(t.alive() for t in before), ORPHAN_GRACE_S)
            orphans = [t for t in before if t.alive()]
            if orphans:
                row.problem(f"{len(orphans)} child(ren) alive {ORPHAN_GRACE_S:g} s after exit: "
                            + ", ".join(sorted(t.name for t in orphans)))
    finally:
        server.stop()
        server.sweep()


def prometheus_fault(ctx: RunContext, row: Row, sig: signal.Signals) -> None:
    """Rows 9-10: the kept-alive Prometheus SIGKILLed or SIGSTOPped under walker load."""
    row.max_failed = 0
    if not shutil.which("prometheus"):
        row.note("skipped: prometheus is not installed")
        victim: Tracked | None = None
    try:
        with serving(ctx.dir(row.row), ["--keep-alive", "prometheus"], row=row) as server:
            server.load("fast", "local")
            victim = _wait_prometheus(server)
            with Operator(server) as op, Load(server.url, "fast_walk", clients=CLIENTS) as load:
                row.operator, row.load = op, load
                time.sleep(ctx.budget.warmup_s)
                os.kill(victim.pid, sig)
                pid = victim.pid
                row.restored_s = wait_for(lambda: prometheus_answers(server, not_pid=pid),
                                          ctx.budget.settle_s, every_s=0.3)
                time.sleep(ctx.budget.tail_s)
            if row.restored_s is None:
                what = (f"a frozen Prometheus was not replaced within {ctx.budget.settle_s:g} s"
                        if sig is signal.SIGSTOP else
                        f"Prometheus not restarted within {ctx.budget.settle_s:g} s")
                (row.problem if sig is signal.SIGKILL else row.note)(
                    f"{what} (status: {_brief(prometheus(server))})")
    finally:
        if victim is not None:
            victim.kill()


def _brief(status: dict[str, Any]) -> str:
    return ", ".join(f"{k}={status.get(k)}" for k in ("state", "pid", "restarts", "message"))
