"""The fault suite's table: one markdown row per scenario, then what each column measures,
then why each failing row failed (its problems), and the fuzz summary when there is one."""

from __future__ import annotations

from collections.abc import Sequence

from tests.reliability.counting import CLIENT_TIMEOUT_S, RETRY_PAUSE_S
from tests.reliability.rows import Budget, RowResult
from tests.reliability.scenarios import SCENARIOS

HEADER = ("#", "scenario", "clients", "s", "sent", "completed", "failed", "aborted", "lost",
          "recovery s", "restored s", "admin max s", "result")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def render(results: Sequence[RowResult], budget: Budget, fuzz: str | None = None,
           command: str = "") -> str:
    lines = []
    if command:
        lines += [f"`{command}` ({budget.name} budget):", ""]
    lines.append("| " + " | ".join(HEADER) + " |")
    lines.append("|" + "|".join("---:" if h not in ("scenario", "result") else "---"
                               for h in HEADER) + "|")
    for r in results:
        verdict = "skipped" if r.skipped else "ok" if r.ok else "**FAILED**"
        cells = (str(r.row), r.name, str(r.clients), f"{r.seconds:.0f}", str(r.sent),
                 str(r.completed), str(r.failed), str(r.aborted), str(r.lost),
                 _num(r.recovery_s), _num(r.restored_s), _num(r.admin_max_s), verdict)
        lines.append("| " + " | ".join(cells) + " |")
    passed = sum(r.ok for r in results)
    skipped = sum(bool(r.skipped) for r in results)
    lines += ["", f"{passed} of {len(results)} rows ok"
              + (f", {skipped} skipped" if skipped else "") + "."]
    if fuzz:
        lines += ["", f"Fuzz: `{fuzz}`"]
    lines += ["", *definitions(results)]
    lines += ["", *explanations(results)]
    return "\n".join(lines).rstrip() + "\n"


def definitions(results: Sequence[RowResult]) -> list[str]:
    shown = {r.row for r in results}
    out = [
        "Columns. Each request a client sent is one of: *completed* (HTTP 200, success true); "
        "*failed* (an answer with success false and a non-empty message: a clear error); "
        "*aborted* (no answer because the suite killed or stopped the server on purpose: "
        "the client saw its connection drop or be refused; rows 7-8 only); *lost* (anything "
        f"else: no answer within the client's {CLIENT_TIMEOUT_S:g} s, a reset, non-JSON, an "
        "error without a message). Lost must be 0 everywhere. Clients run closed loops on "
        f"one kept-alive connection each and pause {RETRY_PAUSE_S:g} s after a request "
        "that did not complete. *admin max s*: the slowest admin call of an operator "
        "polling /jsorc/status every 0.5 s (row 16: status, config set, actions status, "
        "config get every 0.2 s).",
        "",
        "Per row: *recovery s* / *restored s* measure, and failures allowed:",
        "",
    ]
    for s in SCENARIOS:
        if s.row in shown:
            out.append(f"- {s.row}. recovery: {s.recovery}; restored: {s.restored}; "
                       f"failed: {s.failed}.")
    return out


def explanations(results: Sequence[RowResult]) -> list[str]:
    out = ["Problems and notes:", ""]
    for r in results:
        parts = [*(f"**{p}**" for p in r.problems), *r.notes]
        if r.messages and (r.failed or r.lost or r.aborted):
            top = "; ".join(f"{n}x {m}" for m, n in r.messages.items())
            parts.append(f"messages: {top}")
        if parts:
            out.append(f"- {r.row}. " + " — ".join(p.replace("|", "/") for p in parts))
    return out if len(out) > 2 else []
