"""The rows of the fault suite (issue #10), in the issue's order, and how one row is run.

A row's scenario builds a `Row` while it runs; `run_row` turns it into a `RowResult`, adding
the checks every row shares (lost = 0, the failed and aborted bounds, a responsive admin API)
and turning a row that could not be set up into a failed row that says why.
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace

from tests.reliability import scenarios_api, scenarios_process, scenarios_runtime
from tests.reliability.rows import Budget, Row, RowResult, RunContext

#: An admin call slower than this during any row is a problem (row 16 is stricter).
ADMIN_ANY_ROW_S = 5.0


@dataclass(frozen=True)
class Scenario:
    row: int
    key: str  # a short id (pytest's, the JSON's)
    label: str  # the table's text; {moves} and {cycles} are filled from the budget
    run: Callable[[RunContext, Row], None]
    recovery: str  # what recovery_s measures in this row
    restored: str  # what restored_s measures in this row
    failed: str  # why failures may happen here, and their bound

    def title(self, budget: Budget) -> str:
        return self.label.format(moves=budget.moves, cycles=budget.scale_cycles)


K = "first of 5 consecutive successes among requests sent after the fault"
NA = "-"
rt, proc, api = scenarios_runtime, scenarios_process, scenarios_api

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(1, "moves", "{moves} moves local <-> remote, 4 clients", rt.moves, NA,
             "slowest move: load request to settled (placement = desired, no transition)",
             "0 allowed: a move never fails a call"),
    Scenario(2, "scale", "scale remote 1 -> 3 -> 1 (x{cycles}), 4 clients", rt.scaling, NA,
             "slowest scale step: load request to N READY replicas, no transition",
             "0 allowed"),
    Scenario(3, "replica_kill_1", "SIGKILL the replica of remote:1",
             lambda c, r: rt.replica_fault(c, r, 1, signal.SIGKILL), K,
             "kill to 1 READY replica that is not the victim",
             "<= 12: calls on the victim, and calls that outwait their 3 s deadline "
             "for the replacement"),
    Scenario(4, "replica_stop_1", "SIGSTOP the replica of remote:1",
             lambda c, r: rt.replica_fault(c, r, 1, signal.SIGSTOP), K,
             "stop to 1 READY replica that is not the victim",
             "<= 12: calls on the frozen replica fail at their 3 s deadline, and calls "
             "that outwait it for the replacement"),
    Scenario(5, "replica_kill_2", "SIGKILL one replica of remote:2",
             lambda c, r: rt.replica_fault(c, r, 2, signal.SIGKILL), K,
             "kill to 2 READY replicas, none the victim",
             "<= 8: the calls that were on the victim (sent, so not retried)"),
    Scenario(6, "replica_stop_2", "SIGSTOP one replica of remote:2",
             lambda c, r: rt.replica_fault(c, r, 2, signal.SIGSTOP), K,
             "stop to 2 READY replicas, none the victim",
             "<= 8: calls on the frozen replica fail at their deadline until health "
             "checks take it out"),
    Scenario(7, "server_kill", "SIGKILL the server (remote:2, Prometheus), restart",
             proc.server_kill, K + " (includes the restart and reload)",
             "restart to leftovers stopped or adopted (- when nothing was left)",
             "0 allowed; aborted <= 4: the requests in flight at the kill"),
    Scenario(8, "server_term", "SIGTERM the server (walkers of 0.3 s in flight)",
             proc.server_term, NA, "SIGTERM to the server's exit (bound 15 s)",
             "0 allowed, aborted 0: in-flight requests are answered"),
    Scenario(9, "prometheus_kill", "Prometheus (kept alive) SIGKILLed",
             lambda c, r: proc.prometheus_fault(c, r, signal.SIGKILL), NA,
             "kill to a new Prometheus answering /-/ready",
             "0 allowed: walkers do not need Prometheus"),
    Scenario(10, "prometheus_stop", "Prometheus (kept alive) SIGSTOPped",
             lambda c, r: proc.prometheus_fault(c, r, signal.SIGSTOP), NA,
             "stop to a new Prometheus answering /-/ready (- : not replaced; a note, not "
             "a failure)", "0 allowed"),
    Scenario(11, "hung_local_call", "hung local call (deadline 2 s), then a move",
             rt.hung_local_call, K + " (calls of the same action)",
             "move request (the call still hung) to settled at remote:1",
             "<= 5: the hung call itself (at its 2 s deadline) and calls caught with it"),
    Scenario(12, "policy_raises", "a policy that raises",
             lambda c, r: api.bad_policy(c, r, "Raising"), NA,
             "automation on to the policy error visible in actionpolicy get / status",
             "0 allowed: the policy does not touch calls"),
    Scenario(13, "policy_nonsense", "a policy that returns nonsense",
             lambda c, r: api.bad_policy(c, r, "Nonsense"), NA, "as row 12", "0 allowed"),
    Scenario(14, "policy_slow", "a policy that takes too long",
             lambda c, r: api.bad_policy(c, r, "Slow"), NA, "as row 12 (a timed-out step)",
             "0 allowed"),
    Scenario(15, "huge_body", "a 100 MB body to /walker_run (Content-Length, chunked)",
             api.huge_body, NA, NA, "0 allowed: the 413s are the probe's, not the clients'"),
    Scenario(16, "slow_walkers", "45 slow walkers (5 s) while an operator works",
             api.slow_walkers, NA, NA,
             "only 503 (walker pool full, a clear refusal) allowed; admin max < 2 s"),
)


def run_row(scenario: Scenario, ctx: RunContext) -> RowResult:
    """Run one row; an error setting it up is a problem of the row, not a crash."""
    row = Row(scenario.row, scenario.title(ctx.budget))
    start = time.monotonic()
    try:
        scenario.run(ctx, row)
    except Exception as exc:  # a row that cannot run fails, and says why; the others go on
        row.problem(f"could not run: {type(exc).__name__}: {str(exc)[:600]}")
        traceback.print_exc(file=sys.stderr)
    if row.operator is not None and row.operator.max_latency is not None \
            and row.operator.max_latency > ADMIN_ANY_ROW_S and scenario.row != 16:
        row.problem(f"an admin call took {row.operator.max_latency:.1f} s "
                    f"(> {ADMIN_ANY_ROW_S:g} s)")
    result = row.result()
    skipped = next((n for n in result.notes if n.startswith("skipped:")), "")
    if skipped:
        result = replace(result, skipped=skipped.removeprefix("skipped: "), problems=())
    print(f"chaos: row {scenario.row} {scenario.key}: "
          f"{'ok' if result.ok else 'SKIPPED' if result.skipped else 'FAILED'} "
          f"in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return result
