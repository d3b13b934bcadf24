"""Regenerate every table and figure the README quotes (`make results`).

    python experiments/results.py [--only NAME[,NAME...]] [--list] [--check]

Each block of README.md that shows a result sits between two markers,

    <!-- results: NAME -->
    `make results` (`the command that made it`):
    ...its output...
    <!-- /results -->

and is the output of one command (below, BLOCKS), run from the repository root with this
interpreter (the venv's `python`, and `jsorc-sim` beside it), its `--out` under runs/results/.
For each block this script deletes the command's old output folder (experiments resume from
their cells, so stale cells would otherwise be reused), runs the command, shows on stderr which
step runs and for how long, keeps its stdout and stderr in runs/results/logs/, cuts the lines
the README quotes out of its output (the extraction functions below, one per kind of output),
copies its figures into docs/ and rewrites the block. README.md is read again just before each
block is written and only that block changes (written to a temporary file, then renamed), so
other edits of the file are kept. A command that fails (non-zero exit, a timeout, output the
extraction cannot read, a missing figure) leaves its block and figures as they were; the
failures are listed at the end and the exit code is 1.

The `stamp` block (a date and machine line in Results) is rewritten when every block is
regenerated (no `--only`) or when `--only` names it.

--only NAME,...  regenerate these blocks only (names as in --list)
--list           the blocks, their commands and figures, and whether README.md has their markers
--check          run the commands and compare their blocks with README.md without writing
                 anything; exit 1 if one differs. Blocks of timings (`volatile`: the benchmarks,
                 the live demo) and the stamp are not compared.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
OUT_ROOT = Path("runs") / "results"  # relative to the repository root
OPEN = re.compile(r"^<!-- results: ([A-Za-z0-9_-]+) -->$")
CLOSE = "<!-- /results -->"
STAMP = "stamp"
HEARTBEAT_S = 30.0  # a progress line on stderr at least this often while a command runs


class ExtractError(ValueError):
    """The command's output does not hold what the block quotes."""


class MarkerError(ValueError):
    """README.md's markers are missing, repeated or unbalanced."""


@dataclass(frozen=True)
class Run:
    """One finished command: what the extraction functions read."""

    name: str
    out: Path  # its output folder (absolute)
    stdout: str
    stderr: str
    returncode: int | None  # None: killed after its timeout
    wall_s: float


@dataclass(frozen=True)
class Block:
    """A README block and the command that makes it.

    `command` is shown in the README as written; its first word `python` or `jsorc-sim` runs
    as this interpreter or the `jsorc-sim` beside it, and `{out}` stands for the block's
    output folder, runs/results/NAME. `render` turns the finished run into the markdown shown
    under the command line. `figures` are (file in the output folder, path in the repository)
    copied after a successful run. `volatile` blocks hold timings: `--check` skips them."""

    name: str
    command: tuple[str, ...]
    render: Callable[[Run], str]
    figures: tuple[tuple[str, str], ...] = ()
    volatile: bool = False
    timeout_s: float = 3 * 3600.0
    # A command that resumes from its output folder (jsorc-sim compare): the folder is kept,
    # not deleted before the run, so what it computed before is reused, never lost.
    resumable: bool = False

    def shown(self) -> str:
        """The command as the README shows it."""
        return " ".join(self.argv(OUT_ROOT / self.name))

    def argv(self, out: Path) -> list[str]:
        return [word.replace("{out}", out.as_posix()) for word in self.command]

    def heading(self) -> str:
        """The line under the opening marker: which command made the block."""
        made = f"`make results` (`{self.shown()}`"
        if self.figures:
            made += ", which also draws " + " and ".join(f"`{d}`" for _, d in self.figures)
        return made + "):"  # one line, so that it can be searched for


# ----------------------------------------------------------------------------- extraction


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def paragraph(text: str, first: str) -> str:
    """The lines from the first one that starts with `first` (leading spaces ignored) up to
    the next blank line or the end: one printed table with its title line."""
    lines = _lines(text)
    start = _find(lines, first)
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end])


def span(text: str, first: str, until: str) -> str:
    """The lines from the first one that starts with `first` up to, not including, the next
    one that starts with `until` (leading spaces ignored; the end if there is none), without
    trailing blank lines: several tables printed one after another."""
    lines = _lines(text)
    start = _find(lines, first)
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].strip().startswith(until)), len(lines))
    while end > start and not lines[end - 1].strip():
        end -= 1
    return "\n".join(lines[start:end])


def _find(lines: Sequence[str], first: str) -> int:
    for i, line in enumerate(lines):
        if line.strip().startswith(first):
            return i
    raise ExtractError(f"no line starting with {first!r} in the output")


def prose(text: str) -> str:
    """A sentence or two of generated text, wrapped like the README's own (at 95 columns,
    never inside a word)."""
    return textwrap.fill(text, width=95, break_long_words=False, break_on_hyphens=False)


def fence(text: str) -> str:
    """`text` as a fenced block of preformatted lines."""
    return f"```\n{text}\n```"


def search(pattern: str, text: str) -> re.Match[str]:
    """The first match of `pattern` (a multiline regular expression) in `text`."""
    found = re.search(pattern, text, re.MULTILINE)
    if found is None:
        raise ExtractError(f"no match for {pattern!r} in the output")
    return found


def number(text: str) -> float:
    """A printed number, thousands separators allowed: '1,517.3' -> 1517.3."""
    return float(text.replace(",", ""))


def stdout_paragraph(first: str) -> Callable[[Run], str]:
    """A renderer: the printed table that starts with `first`, fenced."""
    def render(run: Run) -> str:
        return fence(paragraph(run.stdout, first))
    render.__doc__ = f"The table of stdout that starts with {first!r}, fenced."
    return render


def render_signals(run: Run) -> str:
    """experiments/signals.py: all it prints, with the per-window table of case 1 cut to its
    first three windows and its last (the script checks every window itself)."""
    lines = _lines(run.stdout)
    lines = lines[_find(lines, "1. one replica"):]
    while lines and not lines[-1].strip():
        lines.pop()
    rows = [i for i, line in enumerate(lines) if re.match(r"^\s*\d+-\d+\s", line)]
    if not rows:
        raise ExtractError("no window rows in the output of case 1")
    if len(rows) > 5:
        hidden = rows[3:-1]
        lines = [*lines[:hidden[0]], f"  ... {len(hidden)} more windows ...",
                 *lines[hidden[-1] + 1:]]
    return fence("\n".join(lines))


def render_loadtest(run: Run) -> str:
    """`jsorc-sim experiment experiments/jsorc_loadtest.toml`: the summary table it prints
    (the first metric, mean ± CI per policy), not the paired differences after it."""
    return fence(paragraph(run.stdout, "average_latency (mean"))


def render_real_traces(run: Run) -> str:
    """`jsorc-sim experiment experiments/real_traces.toml`: the summary table and the paired
    differences from the baseline, up to the list of files it wrote."""
    return fence(span(run.stdout, "average_latency (mean", "wrote "))


def render_comparison(run: Run) -> str:
    """`jsorc-sim compare experiments/comparison.toml`: its first line, the tuned values, the
    per-cell comparison of model_based with the best tuned baseline and the targets (the full
    per-cell tables are in docs/comparison_tables.txt)."""
    return "\n\n".join([
        prose(paragraph(run.stdout, "Comparison ").replace("\n", " ")),
        fence(span(run.stdout, "Tuned values", "Per workload cell")),
        fence(span(run.stdout, "model_based against the best", "Targets:")),
        fence(span(run.stdout, "Targets:", "\0"))])


def read_cells(path: Path) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """policy_table.py's cells CSV as app -> policy -> seed -> {column: value}; an empty
    value (no walker run succeeded, or a column the hindsight rows lack) is NaN."""
    cells: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            values = {k: _float(v) for k, v in row.items() if k not in ("app", "policy", "seed")}
            cells.setdefault(row["app"], {}).setdefault(row["policy"], {})[
                int(row["seed"])] = values
    if not cells:
        raise ExtractError(f"{path} holds no cells")
    return cells


def _float(text: str | None) -> float:
    try:
        return float(text) if text else math.nan
    except ValueError:
        return math.nan


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def _lower(cells: dict[int, dict[str, float]], than: dict[int, dict[str, float]]) -> float:
    """Mean over seeds of how much lower `cells`' mean latency is than `than`'s (a fraction
    of `than`), paired by seed; NaN if either failed on a seed."""
    seeds = sorted(set(cells) & set(than))
    return _mean((than[s]["mean_ms"] - cells[s]["mean_ms"]) / than[s]["mean_ms"] for s in seeds)


def _finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def _lower_text(values: Sequence[float]) -> str:
    """A range of fractions lower (positive) or higher (negative) in words: '0.3–4.6 % lower',
    '1.0 % higher', 'from 2.0 % higher to 3.0 % lower'."""
    def pct(x: float) -> str:
        return f"{abs(x) * 100:.1f}"

    low, high = min(values), max(values)
    if low < 0 <= high:
        return f"from {pct(low)} % higher to {pct(high)} % lower"
    word = "lower" if low >= 0 else "higher"
    a, b = sorted((pct(low), pct(high)), key=float)
    return f"{a} % {word}" if a == b else f"{a}–{b} % {word}"


def _where(compared: int, apps: int) -> str:
    return "on every app" if compared == apps else f"on the {compared} of {apps} apps where " \
        "both ran"


def policy_facts(cells: dict[str, dict[str, dict[int, dict[str, float]]]]) -> str:
    """The numbers the text beside a policy table relies on, as one sentence: how much lower
    model_based is than evaluation (range over apps of the paired mean), its out-of-memory
    events, and either its distance to the hindsight optimum and that optimum's distance
    below evaluation (with best_static rows) or on how many apps it is the fastest."""
    apps = len(cells)
    ours = {app: p["model_based"] for app, p in cells.items() if "model_based" in p}
    vs_eval = _finite(_lower(ours[a], cells[a]["evaluation"]) for a in ours
                      if "evaluation" in cells[a])
    ooms = sum(_finite(c.get("oom_events", math.nan) for p in ours.values() for c in p.values()))
    parts = []
    if vs_eval:
        parts.append(f"`model_based` is {_lower_text(vs_eval)} than `evaluation` "
                     f"{_where(len(vs_eval), apps)}")
    if all("best_static" in p for p in cells.values()):
        gap = _finite(-_lower(ours[a], cells[a]["best_static"]) for a in ours)
        if gap:
            worst = max(abs(g) for g in gap) * 100
            within = "0.1" if worst < 0.1 else f"{worst:.1f}"
            parts.append(f"within {within} % of the hindsight optimum {_where(len(gap), apps)}")
        parts.append(f"with {ooms:.0f} out-of-memory events")
        room = _finite(_lower(cells[a]["best_static"], cells[a]["evaluation"]) for a in cells)
        text = ", ".join(parts)
        if room:
            text += (f"; the hindsight optimum is at most {max(room) * 100:.1f} % below "
                     "`evaluation` on any app")
        return text + "."
    means = {a: {p: _mean(c["mean_ms"] for c in seeds.values()) for p, seeds in pol.items()}
             for a, pol in cells.items()}
    fastest = sum(1 for m in means.values() if "model_based" in m and all(
        m["model_based"] <= v for p, v in m.items() if p != "model_based" and not math.isnan(v)))
    policies = len(next(iter(means.values())))
    parts.append(f"{'has ' if parts else '`model_based` has '}the lowest mean latency of the "
                 f"{_count(policies)} policies on {fastest} of {apps} apps")
    parts.append(f"with {ooms:.0f} out-of-memory events")
    return ", ".join(parts) + "."


def render_policy_table(clients: int) -> Callable[[Run], str]:
    """A renderer for experiments/policy_table.py: its tables (mean latency, then latency
    beside cost), fenced, then `policy_facts` from the cells CSV it wrote."""
    def render(run: Run) -> str:
        table = fence(paragraph(run.stdout, "Mean walker latency") + "\n\n"
                      + span(run.stdout, "latency and cost (", "\0"))
        csv_path = run.out / f"cells_{clients}clients.csv"
        shown = f"{OUT_ROOT.as_posix()}/{run.name}/{csv_path.name}"
        facts = policy_facts(read_cells(csv_path))
        return f"{table}\n\n{prose(f'From its cells (`{shown}`): {facts}')}"
    render.__doc__ = f"policy_table.py --clients {clients}: its table and `policy_facts`."
    return render


def _pct_change(before: float | None, after: float | None) -> float:
    if before is None or after is None or before == 0:
        return math.nan
    return (after - before) / abs(before) * 100


def _moved(change: float) -> str:
    if math.isnan(change):
        return "could not be compared (a cell failed)"
    return f"{'fell' if change < 0 else 'rose'} {abs(change):.1f} %"


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if not value.is_integer() else f"{value:.1f}"
    return str(value)


def _count(n: int) -> str:
    return ("no", "one", "two", "three", "four", "five")[n] if 0 <= n <= 5 else str(n)


def render_tune(run: Run) -> str:
    """`jsorc-sim tune`: a sentence from tune.json (the parameters found and how much the
    objective moved on the train and the held-out test apps) and the printed table of train
    against test, from its header row to the list of files written."""
    summary = json.loads((run.out / "tune.json").read_text())
    best, default = summary["best"], summary["default"]
    params = " and ".join(f"`{name}` {_value(default['params'][name])} → "
                          f"{_value(best['params'][name])}" for name in summary["space"])
    train = _pct_change(default["train"]["objective"], best["train"]["objective"])
    test = _pct_change(default["test"]["objective"], best["test"]["objective"])
    on_test = _moved(test)
    if on_test.split()[0] == _moved(train).split()[0]:
        on_test = on_test.split(maxsplit=1)[1]  # "fell 9.7 % ... and 0.7 % ..."
    sets = ", ".join(f"`{k} = {v}`" for k, v in summary["train"]["set"].items())
    held_out = summary["test"]["apps"]
    sentence = (f"Tuned `{summary['policy']}` ({sets}, objective `{summary['objective']}`, "
                f"lower is better): {params}; the objective {_moved(train)} on the training "
                f"apps ({', '.join(summary['train']['apps'])}) and {on_test} on the "
                f"{_count(len(held_out))} held-out apps ({', '.join(held_out)}).")
    table = fence(span(run.stdout, "train default", "wrote "))
    return f"{prose(sentence)}\n\n{table}"


def render_demo_live(run: Run) -> str:
    """experiments/demo_live.py: the two benchmark reports side by side."""
    return fence(paragraph(run.stdout, "JSORC benchmark reports, live"))


def render_demo_kube(run: Run) -> str:
    """experiments/demo_kube.py: the whole transcript from the first kubectl view (the
    cluster's URL and temporary paths above it change every run)."""
    text = run.stdout
    start = text.find("$ kubectl get")
    if start < 0:
        raise ExtractError("no kubectl view in the output")
    return fence(text[start:].rstrip())


def render_chaos(run: Run) -> str:
    """`python -m tests.reliability --long` (`make chaos`): its table of rows, the count of
    rows ok and the fuzz summary, as printed (the columns are defined in the README)."""
    lines = _lines(run.stdout)
    first = _find(lines, "| #")
    last = _find(lines, "Fuzz:")
    return "\n".join(lines[first:last + 1]).strip() + "\n"


def render_validate(run: Run) -> str:
    """`jsorc-sim validate` (`make validate`): the held-out summary (MAPE, Pearson r, largest
    error per metric), the placement changes and the policy ranking, as printed, fenced."""
    return fence(span(run.stdout, "Over the", "wrote "))


def render_bench(run: Run) -> str:
    """A benchmark's verdicts as printed: each part's heading and its PASS / FALL SHORT lines,
    every figure beside its target (fenced). The figures themselves are the lines; nothing
    is recomputed here."""
    lines = []
    for line in run.stdout.splitlines():
        text = line.strip()
        if line.startswith(("Part ", "Million")):
            lines.append(("" if not lines else "\n") + line.rstrip().rstrip(":"))
        elif text.startswith(("PASS:", "FALL SHORT:", "numba earns", "the recursion kernel",
                              "whole process, for reading")):
            lines.append("  " + text)
    if not any("PASS:" in line or "FALL SHORT:" in line for line in lines):
        raise ExtractError("no PASS / FALL SHORT line in the benchmark's output")
    return f"On this {os.cpu_count()}-core machine:\n\n" + fence("\n".join(lines))


def render_bench_experiment(run: Run) -> str:
    """benchmarks/bench_experiment.py: its wall times and speed-up, as a sentence."""
    out = run.stdout
    cells = search(r"experiment slice: (\d+) cells", out)[1]
    one = number(search(r"--workers 1:\s+([\d.]+) s", out)[1])
    two = number(search(r"--workers 2:\s+([\d.]+) s", out)[1])
    speed = search(r"speed-up ([\d.]+)x\s.*target >= ([\d.]+)x", out)
    return prose(f"{cells} cells: {one:.1f} s with `--workers 1` and {two:.1f} s with "
                 f"`--workers 2`, a {speed[1]}× speed-up (target ≥ {speed[2]}× on 2 cores; this "
                 f"machine has {os.cpu_count()}).")


def stamp_text(failed: Sequence[str] = ()) -> str:
    """The date and machine line of the Results section."""
    date = datetime.now().astimezone().date().isoformat()
    text = (f"Results regenerated by `make results` on {date}, {os.cpu_count()}-core machine "
            f"({platform.machine()}, Python {platform.python_version()}).")
    if failed:
        text += (" Kept from an earlier run because their command failed: "
                 + ", ".join(f"`{name}`" for name in failed) + ".")
    return prose(text)


BLOCKS: tuple[Block, ...] = (
    Block("signals", ("python", "experiments/signals.py"), render_signals),
    Block("demo", ("python", "experiments/demo.py", "--out", "{out}"),
          stdout_paragraph("JSORC loadtest, simulated:"),
          figures=(("demo.png", "docs/demo.png"),)),
    Block("real_traces", ("jsorc-sim", "experiment", "experiments/real_traces.toml", "--out",
                          "{out}"), render_real_traces,
          figures=(("timeline_azure_llm_2023.png", "docs/llm_trace_timeline.png"),
                   ("summary.png", "docs/real_traces_summary.png"),
                   ("cost.png", "docs/latency_vs_cost.png"))),
    # The fair comparison of issue #14: 13 tunes, PPO's training, five workloads, then the
    # bound for 10 minutes (cheapest cells first; each run of it computes more): about 90
    # minutes from nothing on 2 cores, a few once done.
    Block("comparison", ("jsorc-sim", "compare", "experiments/comparison.toml",
                         "--bound-budget", "600", "--out", "{out}"), render_comparison,
          resumable=True,
          figures=(("pareto_loadtest_clients8.png", "docs/pareto_loadtest_8_clients.png"),
                   ("pareto_azure_llm_2023.png", "docs/pareto_llm_trace.png"),
                   ("tables.txt", "docs/comparison_tables.txt"))),
    # A smaller run of the same comparison (its file says how): about 20 minutes.
    Block("comparison_small", ("jsorc-sim", "compare", "experiments/comparison_small.toml",
                               "--bound-budget", "0", "--out", "{out}"), render_comparison,
          figures=(("pareto_loadtest_clients8.png", "docs/pareto_small_loadtest_8_clients.png"),
                   ("pareto_azure_llm_2023.png", "docs/pareto_small_llm_trace.png"),
                   ("tables.txt", "docs/comparison_small_tables.txt")),
          resumable=True),
    Block("tune", ("jsorc-sim", "tune", "experiments/tune_model_based.toml", "--workers", "2",
                   "--out", "{out}"), render_tune),
    Block("policy_table_1", ("python", "experiments/policy_table.py", "--clients", "1",
                             "--hindsight", "--out", "{out}"), render_policy_table(1)),
    Block("policy_table_8", ("python", "experiments/policy_table.py", "--clients", "8",
                             "--out", "{out}"), render_policy_table(8)),
    Block("loadtest", ("jsorc-sim", "experiment", "experiments/jsorc_loadtest.toml", "--out",
                       "{out}"), render_loadtest,
          figures=(("speedup.png", "docs/loadtest_speedup.png"),)),
    Block("demo_live", ("python", "experiments/demo_live.py"), render_demo_live,
          volatile=True, timeout_s=900.0),
    # Sim-to-real (`make validate`): 26 live runs, calibrated and predicted; about 15 minutes.
    Block("validate", ("jsorc-sim", "validate", "--out", "{out}"), render_validate,
          figures=(("validate.png", "docs/validate.png"),), volatile=True, timeout_s=3600.0),
    # The fault suite with its fuzzer (`make chaos`): about 15 minutes.
    Block("chaos", ("python", "-m", "tests.reliability", "--long", "--out", "{out}"),
          render_chaos, volatile=True, timeout_s=3600.0),
    # The benchmarks last, when nothing else of this script runs.
    Block("demo_kube", ("python", "experiments/demo_kube.py"), render_demo_kube,
          volatile=True, timeout_s=900.0),
    Block("bench_sim", ("python", "benchmarks/bench_sim.py"), render_bench,
          volatile=True),
    Block("bench_day", ("python", "benchmarks/bench_day.py"), render_bench,
          volatile=True),
    Block("bench_experiment", ("python", "benchmarks/bench_experiment.py"),
          render_bench_experiment, volatile=True),
    Block("bench_dask", ("python", "benchmarks/bench_dask.py"), render_bench,
          volatile=True),
)


# ----------------------------------------------------------------------------- README blocks


def find_blocks(text: str) -> dict[str, tuple[int, int]]:
    """Each block's lines in `text`: name -> (index of its opening marker line, index of its
    closing marker line), indices into `text.splitlines(keepends=True)`. Raises MarkerError
    on a name used twice, a block opened inside another or never closed, a stray close."""
    found: dict[str, tuple[int, int]] = {}
    current: tuple[str, int] | None = None
    for i, line in enumerate(text.splitlines()):
        stripped = line.strip()
        opened = OPEN.match(stripped)
        if opened:
            if current is not None:
                raise MarkerError(f"line {i + 1}: block {opened[1]!r} opens inside block "
                                  f"{current[0]!r}")
            if opened[1] in found:
                raise MarkerError(f"line {i + 1}: block {opened[1]!r} appears twice")
            current = (opened[1], i)
        elif stripped == CLOSE:
            if current is None:
                raise MarkerError(f"line {i + 1}: {CLOSE} closes no block")
            found[current[0]] = (current[1], i)
            current = None
    if current is not None:
        raise MarkerError(f"block {current[0]!r} (line {current[1] + 1}) is never closed")
    return found


def block_body(text: str, name: str) -> str:
    """What stands between the markers of block `name` (newline-terminated lines)."""
    start, end = _located(text, name)
    return "".join(text.splitlines(keepends=True)[start + 1:end])


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with block `name`'s lines between its markers replaced by `body`; every other
    character stays as it was."""
    start, end = _located(text, name)
    lines = text.splitlines(keepends=True)
    if body and not body.endswith("\n"):
        body += "\n"
    return "".join([*lines[:start + 1], body, *lines[end:]])


def _located(text: str, name: str) -> tuple[int, int]:
    blocks = find_blocks(text)
    if name not in blocks:
        raise MarkerError(f"no block {name!r}: add <!-- results: {name} --> ... {CLOSE}")
    return blocks[name]


def write_block(readme: Path, name: str, body: str) -> bool:
    """Rewrite block `name` of the file `readme` (read afresh, written to a temporary file
    and renamed over it); False if it already held `body`."""
    text = readme.read_text()
    new = replace_block(text, name, body)
    if new == text:
        return False
    _atomic_write(readme, new.encode())
    return True


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def compose(block: Block, rendered: str) -> str:
    """A block's whole body: the command line, a blank line, what its renderer made."""
    return f"{block.heading()}\n\n{rendered.rstrip()}\n"


# ----------------------------------------------------------------------------- running


def resolve(argv: list[str]) -> list[str]:
    """The README's `python` and `jsorc-sim` as this interpreter and the jsorc-sim beside
    it (the venv's, when run by `make results`)."""
    head, *rest = argv
    if head == "python":
        return [sys.executable, *rest]
    if head == "jsorc-sim":
        beside = Path(sys.executable).parent / "jsorc-sim"
        found = str(beside) if beside.exists() else shutil.which("jsorc-sim")
        if found is None:
            raise FileNotFoundError("jsorc-sim is neither beside this python nor on PATH")
        return [found, *rest]
    return argv


def execute(block: Block, repo: Path, out_root: Path, log: Callable[[str], None]) -> Run:
    """Run `block`'s command in `repo` after deleting its old output folder (kept for a
    resumable block); keep its stdout
    and stderr in out_root/logs/; report progress through `log`."""
    out = repo / out_root / block.name
    if out.exists() and not block.resumable:
        shutil.rmtree(out)
    logs = repo / out_root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    env.setdefault("JSORC_TRACES", str(repo.parent / "shared" / "traces"))  # as the Makefile
    started = time.monotonic()
    proc = subprocess.Popen(resolve(block.argv(out_root / block.name)), cwd=repo, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    last = [""]

    def drain(stream: object, into: list[bytes], track: bool) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            into.append(raw)
            if track:
                pieces = [p for p in re.split(rb"[\r\n]", raw) if p.strip()]
                if pieces:
                    last[0] = pieces[-1].decode(errors="replace").strip()

    readers = [threading.Thread(target=drain, args=(proc.stdout, chunks["stdout"], False)),
               threading.Thread(target=drain, args=(proc.stderr, chunks["stderr"], True))]
    for reader in readers:
        reader.start()
    code: int | None = None
    try:
        while True:
            try:
                code = proc.wait(timeout=HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - started
                if elapsed > block.timeout_s:
                    log(f"  [{block.name}] still running after {block.timeout_s:.0f} s: "
                        "stopping it")
                    _stop(proc)
                    break
                log(f"  [{block.name}] {elapsed:.0f} s"
                    + (f": {last[0][:100]}" if last[0] else ""))
    except BaseException:  # Ctrl-C: its own session does not get the terminal's SIGINT
        _stop(proc)
        raise
    for reader in readers:
        reader.join()
    wall = time.monotonic() - started
    stdout = b"".join(chunks["stdout"]).decode(errors="replace")
    stderr = b"".join(chunks["stderr"]).decode(errors="replace")
    (logs / f"{block.name}.stdout").write_text(stdout)
    (logs / f"{block.name}.stderr").write_text(stderr)
    return Run(block.name, out, stdout, stderr, code, wall)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the command and what it started (its own process group, started by us)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Outcome:
    name: str
    status: str  # "updated", "unchanged", "same", "differs", "failed", "skipped"
    wall_s: float = 0.0
    detail: str = ""


def regenerate(block: Block, *, readme: Path, repo: Path, out_root: Path, check: bool,
               log: Callable[[str], None]) -> Outcome:
    """Run one block's command and rewrite its block and figures (or, with `check`, compare
    the block with the README's). A failure changes nothing."""
    try:
        run = execute(block, repo, out_root, log)
    except OSError as exc:
        return Outcome(block.name, "failed", 0.0, f"could not start: {exc}")
    logs = (out_root / "logs" / block.name).as_posix()
    if run.returncode != 0:
        why = ("stopped after its timeout" if run.returncode is None
               else f"killed by signal {-run.returncode}" if run.returncode < 0
               else f"exit code {run.returncode}")
        tail = "\n".join(f"      {line}" for line in run.stderr.strip().splitlines()[-15:])
        return Outcome(block.name, "failed", run.wall_s,
                       f"{why}; its output is in {logs}.stdout/.stderr; "
                       + (f"last lines of stderr:\n{tail}" if tail else "nothing on stderr"))
    try:
        body = compose(block, block.render(run))
        sources = [(run.out / src, repo / dst) for src, dst in block.figures]
        missing = [str(src.relative_to(repo)) for src, _ in sources if not src.is_file()]
        if missing:
            raise ExtractError(f"figure not written: {', '.join(missing)}")
    except Exception as exc:  # a renderer that cannot read the output fails this step only
        return Outcome(block.name, "failed", run.wall_s,
                       f"its output could not be read ({type(exc).__name__}: {exc}); the "
                       f"output is in {logs}.stdout")
    if check:
        old = block_body(readme.read_text(), block.name)
        if old == body:
            return Outcome(block.name, "same", run.wall_s)
        diff = "".join(difflib.unified_diff(old.splitlines(keepends=True),
                                            body.splitlines(keepends=True),
                                            "README.md", "fresh run", n=1))
        return Outcome(block.name, "differs", run.wall_s, diff)
    for src, dst in sources:
        dst.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(dst, src.read_bytes())
    changed = write_block(readme, block.name, body)
    return Outcome(block.name, "updated" if changed else "unchanged", run.wall_s)


def run_blocks(blocks: Sequence[Block], *, readme: Path = README, repo: Path = REPO,
               out_root: Path = OUT_ROOT, check: bool = False, stamp: bool = False,
               log: Callable[[str], None] | None = None) -> list[Outcome]:
    """Regenerate `blocks` in order (and the stamp block after them, with `stamp`); return
    what happened to each. Checks every block's markers before running anything."""
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    present = find_blocks(readme.read_text())
    wanted = [b.name for b in blocks] + ([STAMP] if stamp else [])
    missing = [name for name in wanted if name not in present]
    if missing:
        raise MarkerError(f"{readme} has no markers for: {', '.join(missing)} (add "
                          f"<!-- results: NAME --> ... {CLOSE})")
    outcomes: list[Outcome] = []
    for i, block in enumerate(blocks, 1):
        if check and block.volatile:
            say(f"[{i}/{len(blocks)}] {block.name}: skipped (timings: not compared)")
            outcomes.append(Outcome(block.name, "skipped", 0.0, "volatile"))
            continue
        say(f"[{i}/{len(blocks)}] {block.name}: {block.shown()}")
        outcome = regenerate(block, readme=readme, repo=repo, out_root=out_root, check=check,
                             log=say)
        say(f"  {block.name}: {outcome.status} in {outcome.wall_s:.1f} s"
            + (f"\n{outcome.detail}" if outcome.status in ("failed", "differs") else ""))
        outcomes.append(outcome)
    if stamp and not check:
        failed = [o.name for o in outcomes if o.status == "failed"]
        changed = write_block(readme, STAMP, stamp_text(failed) + "\n")
        outcomes.append(Outcome(STAMP, "updated" if changed else "unchanged"))
    return outcomes


# ----------------------------------------------------------------------------- CLI


def listing(blocks: Sequence[Block], readme: Path) -> str:
    """--list: every block, its command and figures, and the README section that holds it
    (or that its markers are missing)."""
    text = readme.read_text()
    try:
        present = find_blocks(text)
    except MarkerError as exc:
        present, problem = {}, f"\n{readme.name}: {exc}"
    else:
        problem = ""
    lines = text.splitlines()

    def where(name: str) -> str:
        if name not in present:
            return f"NO MARKERS in {readme.name}"
        start = present[name][0]
        heading = next((ln for ln in reversed(lines[:start]) if ln.startswith("#")), "")
        return f"in {heading.lstrip('#').strip() or 'the top'}"

    out = []
    for block in blocks:
        flags = [where(block.name), *(["volatile"] if block.volatile else [])]
        out.append(f"{block.name:<17} {block.shown()}  [{', '.join(flags)}]")
        out.extend(f"{'':<17}   figure {src} -> {dst}" for src, dst in block.figures)
    out.append(f"{STAMP:<17} date and machine line, with a full run or --only stamp  "
               f"[{where(STAMP)}]")
    return "\n".join(out) + problem


def select(only: str | None) -> tuple[list[Block], bool]:
    """The blocks `--only` names (all when None) and whether the stamp is among them."""
    if only is None:
        return list(BLOCKS), True
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = {b.name: b for b in BLOCKS}
    unknown = [n for n in names if n not in known and n != STAMP]
    if unknown:
        raise SystemExit(f"results.py: unknown block {', '.join(unknown)} (blocks: "
                         f"{', '.join([*known, STAMP])})")
    return [b for b in BLOCKS if b.name in names], STAMP in names


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="NAME[,NAME...]", help="regenerate these blocks only")
    parser.add_argument("--list", action="store_true", help="list the blocks and commands")
    parser.add_argument("--check", action="store_true",
                        help="compare fresh output with README.md, write nothing")
    args = parser.parse_args(argv)
    if args.list:
        print(listing(BLOCKS, README))
        return 0
    blocks, stamp = select(args.only)
    signal.signal(signal.SIGTERM, _terminated)  # stop the running command too, as on Ctrl-C
    started = time.monotonic()
    try:
        outcomes = run_blocks(blocks, check=args.check, stamp=stamp)
    except MarkerError as exc:
        print(f"results.py: {exc}", file=sys.stderr)
        return 2
    print(f"\n{'block':<17} {'status':<10} {'seconds':>8}", file=sys.stderr)
    for o in outcomes:
        print(f"{o.name:<17} {o.status:<10} {o.wall_s:>8.1f}", file=sys.stderr)
    failed = [o.name for o in outcomes if o.status == "failed"]
    differs = [o.name for o in outcomes if o.status == "differs"]
    print(f"total {time.monotonic() - started:.0f} s", file=sys.stderr)
    if failed:
        print(f"FAILED (their README blocks and figures were kept): {', '.join(failed)}",
              file=sys.stderr)
    if differs:
        print(f"README.md differs from a fresh run in: {', '.join(differs)}", file=sys.stderr)
    return 1 if failed or differs else 0


if __name__ == "__main__":
    raise SystemExit(main())
