"""`python -m tests.reliability [--long] [--only 3,4] [--out DIR]`: run the fault suite and
print its markdown table (`make chaos` is the --long run). Writes DIR/table.md and
DIR/rows.json (default runs/chaos); progress goes to stderr. Exits 1 when a row failed.

The long run also runs the API fuzzer, if this checkout has one: `$JSORC_CHAOS_FUZZ` (a
command line), else `python -m jsorc_live.fuzz --long` when that module exists; its last line
starting with `fuzz:` is the table's fuzz summary.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tests.reliability.harness import REPO
from tests.reliability.rows import LONG, SHORT, RunContext, dumps
from tests.reliability.scenarios import SCENARIOS, run_row
from tests.reliability.table import render

FUZZ_TIMEOUT_S = 30 * 60


def fuzz_command() -> list[str] | None:
    given = os.environ.get("JSORC_CHAOS_FUZZ", "").strip()
    if given:
        return shlex.split(given)
    if importlib.util.find_spec("jsorc_live.fuzz") is not None:
        return [sys.executable, "-m", "jsorc_live.fuzz", "--long"]
    return None


def fuzz_summary() -> str:
    command = fuzz_command()
    if command is None:
        return "not run: no fuzzer in this checkout (no jsorc_live.fuzz; set JSORC_CHAOS_FUZZ)"
    print(f"chaos: fuzz: {shlex.join(command)}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                              timeout=FUZZ_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"{shlex.join(command)}: did not finish within {FUZZ_TIMEOUT_S} s"
    lines = [ln.strip() for ln in (done.stdout + "\n" + done.stderr).splitlines()]
    summary = next((ln for ln in reversed(lines) if ln.startswith("fuzz:")), "")
    if done.returncode != 0:
        tail = summary or " | ".join(lines[-3:])
        return f"{shlex.join(command)} exited {done.returncode}: {tail}"
    return summary or f"{shlex.join(command)}: no `fuzz:` summary line"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long", action="store_true", help="the long budget (make chaos)")
    parser.add_argument("--only", default="", help="comma-separated row numbers")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "chaos")
    parser.add_argument("--no-fuzz", action="store_true", help="skip the fuzzer")
    args = parser.parse_args(argv)
    budget = LONG if args.long else SHORT
    try:
        only = {int(x) for x in args.only.split(",") if x.strip()}
    except ValueError:
        parser.error(f"--only takes row numbers like 3,4, got {args.only!r}")
    unknown = only - {s.row for s in SCENARIOS}
    if unknown:
        parser.error(f"no row(s) {sorted(unknown)}; rows are 1-{len(SCENARIOS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(budget, args.out / "rows")
    start = time.monotonic()
    results = []
    for scenario in SCENARIOS:
        if not only or scenario.row in only:
            print(f"chaos: row {scenario.row} {scenario.key} ...", file=sys.stderr, flush=True)
            results.append(run_row(scenario, ctx))
    fuzz = fuzz_summary() if args.long and not args.no_fuzz else None
    command = "make chaos" if args.long and not only else \
        "python -m tests.reliability " + " ".join(argv if argv is not None else sys.argv[1:])
    table = render(results, budget, fuzz, command=command.strip())
    (args.out / "table.md").write_text(table)
    (args.out / "rows.json").write_text(dumps(results) + "\n")
    print(table)
    print(f"chaos: {len(results)} rows in {time.monotonic() - start:.0f} s; table in "
          f"{args.out / 'table.md'}", file=sys.stderr)
    return 0 if all(r.ok or r.skipped for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
