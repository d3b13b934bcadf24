"""Rows 1-6 and 11: the runtime's routers under load. Moves and scaling (nothing may fail),
the loss or freezing of a replica of a remote:1 and of a remote:2 action, and a local call
that never returns.

Each row sleeps only for load *durations* (warm-up, tail); every wait for a state polls with
a bound (harness.wait_for).
"""

from __future__ import annotations

import os
import signal
import threading
import time

from tests.reliability.counting import Kind, Load, Outcome, recovery_after
from tests.reliability.fault_config import HANG_DEADLINE_S
from tests.reliability.harness import HarnessError, Operator, Server, Tracked, wait_for
from tests.reliability.rows import Row, RunContext, serving

CLIENTS = 4


def moves(ctx: RunContext, row: Row) -> None:
    """Row 1: the fast action moved local <-> remote:1 `moves` times under 4 clients."""
    row.max_failed = 0
    with serving(ctx.dir(1), row=row) as server:
        server.load("fast", "local")
        with Operator(server) as op, Load(server.url, "fast_walk", clients=CLIENTS) as load:
            row.operator, row.load = op, load
            time.sleep(ctx.budget.warmup_s)
            slowest = 0.0
            for i in range(ctx.budget.moves):
                slowest = max(slowest, server.load("fast", "remote:1" if i % 2 == 0
                                                   else "local"))
            row.restored_s = slowest
            time.sleep(ctx.budget.tail_s)


def scaling(ctx: RunContext, row: Row) -> None:
    """Row 2: remote 1 -> 3 -> 1 (`scale_cycles` times) under 4 clients."""
    row.max_failed = 0
    with serving(ctx.dir(2), row=row) as server:
        server.load("fast", "remote:1")
        with Operator(server) as op, Load(server.url, "fast_walk", clients=CLIENTS) as load:
            row.operator, row.load = op, load
            time.sleep(ctx.budget.warmup_s)
            slowest = 0.0
            for _ in range(ctx.budget.scale_cycles):
                slowest = max(slowest, server.load("fast", "remote:3"))
                time.sleep(ctx.budget.warmup_s)
                slowest = max(slowest, server.load("fast", "remote:1"))
            row.restored_s = slowest
            time.sleep(ctx.budget.tail_s)


def _replaced(server: Server, victim: Tracked, replicas: int) -> bool:
    """The action is READY with `replicas` replicas again, none of them the victim."""
    remote = server.status("fast").get("remote") or {}
    urls = remote.get("replicas", [])
    if remote.get("status") != "READY" or len(urls) != replicas:
        return False
    return all(server.replica_pid(url).pid != victim.pid for url in urls)


def replica_fault(ctx: RunContext, row: Row, replicas: int, sig: signal.Signals) -> None:
    """Rows 3-6: SIGKILL or SIGSTOP of one replica of a remote:`replicas` action."""
    # Calls that were on the victim fail (at their deadline when it is frozen), and with one
    # replica the calls that wait longer than a deadline for its replacement fail too.
    bound = CLIENTS * (3 if replicas == 1 else 2)
    row.max_failed = bound
    victim: Tracked | None = None
    try:
        with serving(ctx.dir(row.row), row=row) as server:
            server.load("fast", f"remote:{replicas}")
            with Operator(server) as op, Load(server.url, "fast_walk", clients=CLIENTS) as load:
                row.operator, row.load = op, load
                time.sleep(ctx.budget.warmup_s)
                victim = server.replica_pid(server.status("fast")["remote"]["replicas"][0])
                t0 = time.monotonic()
                os.kill(victim.pid, sig)
                row.restored_s = wait_for(lambda: _replaced(server, victim, replicas),
                                          ctx.budget.settle_s, every_s=0.2)
                left = max(1.0, ctx.budget.settle_s - (time.monotonic() - t0))
                wait_for(lambda: recovery_after(load.snapshot(), t0) is not None, left)
                time.sleep(ctx.budget.tail_s)
                row.recovery_s = recovery_after(load.snapshot(), t0)
            if row.restored_s is None:
                row.problem(f"no replacement: {replicas} READY replica(s) without the "
                            f"victim not reported within {ctx.budget.settle_s:g} s "
                            f"(status: {server.status('fast').get('remote')})")
            if row.recovery_s is None:
                row.problem("no 5 consecutive successes after the fault")
    finally:
        if victim is not None:
            victim.kill()  # SIGCONT + SIGKILL if the router has not stopped it


def hung_local_call(ctx: RunContext, row: Row) -> None:
    """Row 11: the local `hang` action; one call sleeps an hour (deadline 2 s) while 4
    clients call it briefly; then the action is moved to remote:1 with the call still hung."""
    row.max_failed = 1 + CLIENTS
    with serving(ctx.dir(11), row=row) as server:
        server.load("hang", "local")
        with Operator(server) as op, Load(server.url, "hang_walk", clients=CLIENTS) as load:
            row.operator, row.load = op, load
            time.sleep(ctx.budget.warmup_s)
            hung: list[Outcome] = []
            t0 = time.monotonic()
            thread = threading.Thread(target=lambda: hung.append(
                load.send_one({"seconds": 3600.0})), daemon=True)
            thread.start()
            time.sleep(0.5)  # the hung call is in the action now
            move_started = time.monotonic()
            try:
                server.admin("/jsorc/actions/load", {"name": "hang", "mode": "remote"},
                             timeout_s=ctx.budget.settle_s)
                if wait_for(lambda: server.settled("hang", "remote:1"),
                            ctx.budget.settle_s) is not None:
                    row.restored_s = time.monotonic() - move_started
                else:
                    row.problem(f"the move to remote:1 did not settle within "
                                f"{ctx.budget.settle_s:g} s: {server.status('hang')}")
            except HarnessError as exc:
                row.problem(f"move away from the hung copy refused: {exc}")
            thread.join(timeout=HANG_DEADLINE_S + ctx.budget.settle_s)
            time.sleep(ctx.budget.tail_s)
            row.recovery_s = recovery_after(load.snapshot(), t0)
        _judge_hung(row, hung, t0)


def _judge_hung(row: Row, hung: list[Outcome], t0: float) -> None:
    if not hung:
        row.problem("the hung call got no answer at all (client still waiting)")
        return
    o = hung[0]
    took = o.end - t0
    row.note(f"hung call: {o.kind.value} after {took:.1f} s: {o.message[:120]}")
    if o.kind is not Kind.FAILED or took > HANG_DEADLINE_S + 5.0:
        row.problem(f"the hung call should fail with a clear error near its "
                    f"{HANG_DEADLINE_S:g} s deadline; it was {o.kind.value} after {took:.1f} s")
