"""experiments/results.py (`make results`): README blocks between markers are rewritten from a
command's output, everything else in the file stays as it was, and a failing command keeps
the old block. The commands here are real subprocesses (small `python -c` programs)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "results.py"
_spec = importlib.util.spec_from_file_location("jsorc_results_script", SCRIPT)
assert _spec is not None and _spec.loader is not None
results = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = results  # dataclasses look their module up here
_spec.loader.exec_module(results)

BEFORE = "# Title\n\nSome text, with trailing spaces   \n\n"
BETWEEN = "\nMiddle text.\n\n"
AFTER = "\nThe end, no newline at the end"
README_TEXT = (BEFORE + "<!-- results: table -->\nold table\n<!-- /results -->\n" + BETWEEN
               + "<!-- results: other -->\nother block\n<!-- /results -->\n"
               + "<!-- results: stamp -->\nold stamp\n<!-- /results -->\n" + AFTER)


def program(code: str) -> tuple[str, ...]:
    """A block command: this test's python running `code`, given the output folder."""
    return ("python", "-c", code, "{out}")


WRITES_TABLE = program(
    "import pathlib, sys\n"
    "out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True)\n"
    "(out / 'fig.png').write_bytes(b'new figure')\n"
    "print('progress chatter'); print(); print('Table: fresh'); print('row 1'); print()\n"
    "print('wrote files')")


def table_block(command: tuple[str, ...] = WRITES_TABLE) -> object:
    return results.Block("table", command, results.stdout_paragraph("Table:"),
                         figures=(("fig.png", "docs/fig.png"),))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "README.md").write_text(README_TEXT)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "fig.png").write_bytes(b"old figure")
    return tmp_path


def run(repo: Path, *blocks: object, **kwargs: object) -> list[object]:
    lines: list[str] = []
    outcomes = results.run_blocks(blocks, readme=repo / "README.md", repo=repo,
                                  log=lines.append, **kwargs)
    assert any("[1/" in line for line in lines) or not blocks  # progress names each step
    return outcomes


def test_replace_block_changes_only_that_block() -> None:
    new = results.replace_block(README_TEXT, "table", "line 1\nline 2")
    assert new.startswith(BEFORE + "<!-- results: table -->\nline 1\nline 2\n<!-- /results -->\n"
                          + BETWEEN + "<!-- results: other -->\nother block\n")
    assert new.endswith(AFTER)
    assert results.replace_block(new, "table", "old table\n") == README_TEXT
    assert results.block_body(new, "other") == "other block\n"


@pytest.mark.parametrize(("text", "problem"), [
    ("<!-- results: a -->\nx\n<!-- /results -->\n<!-- results: a -->\n<!-- /results -->\n",
     "appears twice"),
    ("<!-- results: a -->\nx\n", "never closed"),
    ("x\n<!-- /results -->\n", "closes no block"),
    ("<!-- results: a -->\n<!-- results: b -->\n<!-- /results -->\n", "opens inside"),
])
def test_bad_markers_are_refused(text: str, problem: str) -> None:
    with pytest.raises(results.MarkerError, match=problem):
        results.find_blocks(text)


def test_a_run_rewrites_its_block_and_copies_its_figure(repo: Path) -> None:
    block = table_block()
    [outcome] = run(repo, block)
    assert outcome.status == "updated", outcome.detail
    text = (repo / "README.md").read_text()
    body = results.block_body(text, "table")
    assert body.splitlines()[0].startswith("`make results` (`python -c")  # the command
    assert body.endswith("\n\n```\nTable: fresh\nrow 1\n```\n")  # only the table it quotes
    assert text == results.replace_block(README_TEXT, "table", body)  # nothing else moved
    assert (repo / "docs" / "fig.png").read_bytes() == b"new figure"
    assert "Table: fresh" in (repo / "runs/results/logs/table.stdout").read_text()
    [again] = run(repo, block)
    assert again.status == "unchanged"


@pytest.mark.parametrize("command", [
    program("import sys; print('Table: half'); sys.exit(3)"),  # the command fails
    program("print('no table here')"),  # its output lacks what the block quotes
    program("print('Table: but no figure')"),  # a figure is missing
])
def test_a_failing_step_keeps_the_old_block_and_figure(repo: Path, command: tuple[str, ...]
                                                       ) -> None:
    [outcome] = run(repo, table_block(command))
    assert outcome.status == "failed"
    assert outcome.detail
    assert (repo / "README.md").read_text() == README_TEXT
    assert (repo / "docs" / "fig.png").read_bytes() == b"old figure"


def test_the_stamp_names_the_failed_blocks(repo: Path) -> None:
    failing = results.Block("other", program("raise SystemExit(1)"), results.render_loadtest)
    outcomes = run(repo, table_block(), failing, stamp=True)
    assert [o.status for o in outcomes] == ["updated", "failed", "updated"]
    text = (repo / "README.md").read_text()
    stamp = results.block_body(text, "stamp")
    assert stamp.startswith("Results regenerated by `make results` on ")
    assert "command failed: `other`" in " ".join(stamp.split())
    assert results.block_body(text, "other") == "other block\n"


def test_missing_markers_stop_before_any_command_runs(repo: Path) -> None:
    block = results.Block("absent", WRITES_TABLE, results.stdout_paragraph("Table:"))
    with pytest.raises(results.MarkerError, match="absent"):
        run(repo, block)
    assert not (repo / "runs").exists()


def test_check_compares_without_writing(repo: Path) -> None:
    block = table_block()
    [differs] = run(repo, block, check=True)
    assert differs.status == "differs" and "+Table: fresh" in differs.detail
    assert (repo / "README.md").read_text() == README_TEXT
    assert (repo / "docs" / "fig.png").read_bytes() == b"old figure"
    run(repo, block)
    [same] = run(repo, block, check=True)
    assert same.status == "same"


def test_every_block_of_the_real_readme_has_markers() -> None:
    present = results.find_blocks(results.README.read_text())
    assert {b.name for b in results.BLOCKS} | {results.STAMP} <= set(present)


def test_a_resumable_blocks_folder_is_kept_and_others_are_made_anew(repo: Path) -> None:
    """A resumable command (jsorc-sim compare) finds what it computed before; any other
    block starts from an empty folder."""
    writes = program("import pathlib, sys\n"
                     "out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)\n"
                     "seen = (out / 'cached').exists()\n"
                     "(out / 'fig.png').write_bytes(b'fig')\n"
                     "print(f'Table: cached={seen}')")
    out = repo / "runs" / "results" / "table"
    for resumable, expect in ((True, "Table: cached=True"), (False, "Table: cached=False")):
        out.mkdir(parents=True, exist_ok=True)
        (out / "cached").write_text("computed before")
        block = results.Block("table", writes, results.stdout_paragraph("Table:"),
                              figures=(("fig.png", "docs/fig.png"),), resumable=resumable)
        [outcome] = run(repo, block)
        assert outcome.status in ("updated", "unchanged"), outcome.detail
        assert expect in (repo / "README.md").read_text()
        assert (out / "cached").exists() == resumable
