"""The fault suite of issue #10, short: every row of tests/reliability/scenarios.py against a
real `jsorc serve` on loopback, a few seconds each (`make chaos` runs them long, with a table).

A row passes when lost = 0, its failed and aborted counts are within the row's bound, and
the row's own checks hold (a replacement reported, no orphan, a 413...). A failing row's
message lists its problems and notes: what failed and what the suite saw.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.rows import SHORT, RunContext
from tests.reliability.scenarios import SCENARIOS, Scenario, run_row


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[f"{s.row:02d}-{s.key}" for s in SCENARIOS])
def test_fault_row(scenario: Scenario, tmp_path: Path) -> None:
    result = run_row(scenario, RunContext(SHORT, tmp_path))
    if result.skipped:
        pytest.skip(result.skipped)
    summary = (f"row {result.row} {result.name}: sent {result.sent}, completed "
               f"{result.completed}, failed {result.failed}, aborted {result.aborted}, lost "
               f"{result.lost}; messages {dict(result.messages)}")
    assert result.ok, "\n".join([summary, *result.problems, *result.notes])


def test_classification_counts_every_request() -> None:
    """The counting itself: every answer shape lands in exactly one class."""
    import httpx

    from tests.reliability.counting import Kind, classify

    def answer(status: int, body: object) -> httpx.Response:
        return httpx.Response(status, json=body)

    assert classify(answer(200, {"success": True}))[0] is Kind.COMPLETED
    assert classify(answer(502, {"success": False, "message": "boom"}))[0] is Kind.FAILED
    assert classify(answer(413, {"success": False, "message": "too big"}))[0] is Kind.FAILED
    assert classify(answer(500, {"success": False, "message": ""}))[0] is Kind.LOST
    assert classify(answer(200, {"success": False}))[0] is Kind.LOST
    assert classify(answer(200, [1, 2]))[0] is Kind.LOST
    assert classify(httpx.Response(500, text="Internal Server Error"))[0] is Kind.LOST


def test_recovery_needs_consecutive_successes_after_the_fault() -> None:
    from tests.reliability.counting import Kind, Outcome, recovery_after

    def o(start: float, end: float, ok: bool) -> Outcome:
        return Outcome(0, start, end, Kind.COMPLETED if ok else Kind.FAILED, 200, "")

    # Successes sent before the fault do not count; a failure restarts the run.
    log = [o(0.0, 11.0, True), o(10.5, 12.0, True), o(10.6, 13.0, False),
           *(o(13.0 + i, 14.0 + i, True) for i in range(5))]
    assert recovery_after(log, 10.0, k=5) == pytest.approx(4.0)
    assert recovery_after(log[:6], 10.0, k=5) is None
