"""Rows 12-16: the control plane and the HTTP face. Policies that raise, return nonsense or
never return (the control loop must survive them, calls must not notice, the error must be
visible), a 100 MB request body, and 45 slow walkers while an operator works."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil

from tests.reliability.bodies import post_huge
from tests.reliability.counting import Kind, Load
from tests.reliability.harness import POLICY_MODULE, Operator, Server, wait_for
from tests.reliability.rows import Row, RunContext, serving

CLIENTS = 4
BACKOFF_S = 0.5
HUGE_BYTES = 100 * 2**20
#: Server RSS may grow this much from one refused 100 MB body (buffers, not the body).
RSS_GROWTH_MB = 64.0
SLOW_WALKERS = 45
#: Longer than the admin bound: on a pool shared with walkers, an admin call waits up to one
#: walker call for a thread (the issue's lockout), which must show.
SLOW_CALL_S = 5.0
#: The operator's bound under walker load (the issue measured > 15 s).
ADMIN_BOUND_S = 2.0


def _errors(doc: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every non-empty string under a key naming an error, outside the per-action part."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "actions":
                continue
            if "error" in str(key).lower() and isinstance(value, str) and value.strip():
                yield where, value
            else:
                yield from _errors(value, where)
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _errors(value, f"{path}[{i}]")


def policy_error(server: Server) -> str:
    """The policy error the server shows (actionpolicy get, then status), or ''."""
    for path in ("/jsorc/actionpolicy/get", "/jsorc/status"):
        for where, text in _errors(server.admin(path, timeout_s=10.0)):
            return f"{path} {where}: {text[:160]}"
    return ""


def bad_policy(ctx: RunContext, row: Row, cls: str) -> None:
    """Rows 12-14: automation on with a misbehaving policy (fault_policies.`cls`) every
    0.5 s while 4 clients call a local action: no call may fail, the admin API stays
    responsive, the policy's error becomes visible, and the server still stops in time."""
    row.max_failed = 0
    args = ["--allow-policy-module", POLICY_MODULE]
    with serving(ctx.dir(row.row), args, row=row) as server:
        server.load("fast", "local")
        server.admin("/jsorc/config/set", {"name": "backoff_interval", "value": BACKOFF_S})
        server.admin("/jsorc/actionpolicy/set",
                     {"policy_name": f"{POLICY_MODULE}:{cls}", "policy_params": {}})
        with Operator(server) as op, Load(server.url, "fast_walk", clients=CLIENTS) as load:
            row.operator, row.load = op, load
            time.sleep(ctx.budget.warmup_s)
            server.admin("/jsorc/config/set", {"name": "automation", "value": True})
            row.restored_s = wait_for(lambda: bool(policy_error(server)), ctx.budget.settle_s,
                                      every_s=0.25)
            # Several control steps with the fault, then the placement must still hold.
            time.sleep(max(ctx.budget.tail_s, 4 * BACKOFF_S))
            status = server.status("fast")
        if row.restored_s is None:
            row.problem(f"no policy error visible in actionpolicy get or status within "
                        f"{ctx.budget.settle_s:g} s")
        else:
            row.note(f"visible: {policy_error(server)}")
        if status["placement"] != "local" or status["transition"]:
            row.problem(f"the placement moved under a bad policy: {status}")


def huge_body(ctx: RunContext, row: Row) -> None:
    """Row 15: a 100 MB body to /walker_run, with Content-Length and chunked, under load:
    413 both times, and the server's RSS stays bounded."""
    row.max_failed = 0
    with serving(ctx.dir(15), row=row) as server:
        server.load("fast", "local")
        with Operator(server) as op, Load(server.url, "fast_walk", clients=CLIENTS) as load:
            row.operator, row.load = op, load
            time.sleep(ctx.budget.warmup_s)
            rss0 = server.rss_mb()
            with RssPeak(server) as peak:
                _post_both(row, server)
            time.sleep(ctx.budget.tail_s)
            rss1 = server.rss_mb()
        row.note(f"server RSS {rss0:.0f} MB before, peak {peak.mb:.0f} MB while the bodies "
                 f"arrived, {rss1:.0f} MB after")
        if peak.mb - rss0 > RSS_GROWTH_MB:
            row.problem(f"server RSS grew {peak.mb - rss0:.0f} MB while the bodies arrived "
                        f"(> {RSS_GROWTH_MB:g}): the body was buffered")


class RssPeak:
    """The server's highest RSS while the block runs, sampled every 20 ms (a parsed body
    is freed again soon after, so the RSS after the request would not show it)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.mb = server.rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss")

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(psutil.Error):
                self.mb = max(self.mb, self.server.rss_mb())


def _post_both(row: Row, server: Server) -> None:
    for chunked in (False, True):
        how = "chunked" if chunked else "Content-Length"
        answer = post_huge(server.port, "/walker_run", HUGE_BYTES, chunked=chunked)
        body = answer.body if isinstance(answer.body, dict) else {}
        row.note(f"{how}: HTTP {answer.status} after {answer.sent_bytes / 2**20:.0f} MB "
                 f"sent, {answer.seconds:.1f} s {answer.error}".rstrip())
        if answer.status != 413 or body.get("success") is not False \
                or not body.get("message"):
            row.problem(f"{how}: expected 413 with a JSON message, got HTTP "
                        f"{answer.status}: {str(answer.body)[:120]}")


def slow_walkers(ctx: RunContext, row: Row) -> None:
    """Row 16: 45 clients each running a 5 s walker in a loop while an operator calls
    status, config set and actions status: every admin answer within 2 s. A walker refused
    because the walker pool is full must say so (503): such failures are allowed."""
    row.max_failed = 10**9
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/jsorc/status", {}),
        ("/jsorc/config/set", {"name": "backoff_interval", "value": 10}),
        ("/jsorc/actions/status", {"name": "slow"}),
        ("/jsorc/config/get", {}),
    ]
    with serving(ctx.dir(16), row=row) as server:
        server.load("slow", "local")
        with Load(server.url, "slow_walk", clients=SLOW_WALKERS,
                  ctx={"seconds": SLOW_CALL_S}) as load:
            row.load = load
            time.sleep(SLOW_CALL_S)  # every client has a walker in the server now
            with Operator(server, calls, every_s=0.2) as op:
                row.operator = op
                time.sleep(ctx.budget.busy_s)
    worst = row.operator.max_latency if row.operator else None
    if worst is None:
        row.problem("the operator made no admin call")
    elif worst >= ADMIN_BOUND_S:
        row.problem(f"admin latency max {worst:.1f} s (bound {ADMIN_BOUND_S:g} s)")
    if row.operator and row.operator.errors:
        row.problem(f"{len(row.operator.errors)} admin call(s) failed: "
                    f"{row.operator.errors[0]}")
    not_busy = [o for o in (row.load.snapshot() if row.load else [])
                if o.kind is Kind.FAILED and o.status != 503]
    if not_busy:
        row.problem(f"{len(not_busy)} walker(s) failed other than 503 busy: "
                    f"{not_busy[0].message[:120]}")

