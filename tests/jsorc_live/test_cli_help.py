"""Both tools' `--help`, read as a user reads it, in subprocesses: every subcommand of the
parser is listed with a one-line help, every positional of every subcommand (at any depth)
has a description, and `--version` prints the installed package's version."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import pytest

from jsorc_live import cli as live_cli
from jsorc_sim import cli as sim_cli

TOOLS = {"jsorc": "jsorc_live.cli", "jsorc-sim": "jsorc_sim.cli"}
# Wide enough that argparse wraps nothing but what is longer than a line anyway.
ENV = {**os.environ, "COLUMNS": "200"}
ENTRY = re.compile(r"^( +)(\S+)(?: {2,}(\S.*))?$")
HELP_COLUMN = 8  # a line indented this far continues the entry above (its description)


@dataclass(frozen=True)
class Entry:
    depth: int  # 2: a positional (or the subcommand group); 4: a subcommand in the group
    name: str
    description: str


def help_text(tool: str, *argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", TOOLS[tool], *argv, "--help"], env=ENV,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, (tool, argv, done.stderr)
    return done.stdout


def positionals(text: str) -> list[Entry]:
    """The entries of the 'positional arguments:' section, descriptions joined."""
    lines = text.splitlines()
    if "positional arguments:" not in lines:
        return []
    entries: list[Entry] = []
    for line in lines[lines.index("positional arguments:") + 1:]:
        if not line.strip():
            break
        if len(line) - len(line.lstrip()) >= HELP_COLUMN:
            last = entries.pop()
            entries.append(Entry(last.depth, last.name,
                                 f"{last.description} {line.strip()}".strip()))
            continue
        match = ENTRY.match(line)
        assert match, line
        entries.append(Entry(len(match[1]), match[2], match[3] or ""))
    return entries


def is_group(entry: Entry) -> bool:
    """The line that heads the subcommands: `{a,b}` or a metavar such as COMMAND."""
    return entry.depth == 2 and (entry.name.startswith("{") or entry.name == "COMMAND")


@cache
def every_help(tool: str) -> dict[tuple[str, ...], list[Entry]]:
    """Every command line's positionals, from the top down to the last subcommand."""
    found: dict[tuple[str, ...], list[Entry]] = {}
    level: list[tuple[str, ...]] = [()]
    with ThreadPoolExecutor(4) as pool:
        while level:
            texts = list(pool.map(lambda argv: help_text(tool, *argv), level))
            below: list[tuple[str, ...]] = []
            for argv, text in zip(level, texts, strict=True):
                found[argv] = positionals(text)
                below += [(*argv, e.name) for e in found[argv] if e.depth == 4]
            level = below
    return found


def parser_commands(tool: str) -> set[str]:
    """The subcommands the parser has, read from the parser itself (not its help)."""
    parser = live_cli.build_parser() if tool == "jsorc" else sim_cli._parser()
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(groups[0].choices)


@pytest.mark.parametrize("tool", list(TOOLS))
def test_every_subcommand_is_listed_with_a_help_line(tool: str) -> None:
    top = every_help(tool)[()]
    listed = {e.name: e.description for e in top if e.depth == 4}
    assert set(listed) == parser_commands(tool)
    assert [name for name, about in listed.items() if not about] == []


@pytest.mark.parametrize("tool", list(TOOLS))
def test_every_positional_of_every_subcommand_is_described(tool: str) -> None:
    helps = every_help(tool)
    assert len(helps) > len(parser_commands(tool))  # the subcommands' own verbs were read
    bare = [(" ".join(argv), e.name) for argv, entries in helps.items() for e in entries
            if not e.description and not is_group(e)]
    assert bare == []
    # argparse lists only the subcommands that have a help: below the top (whose group is
    # COMMAND), the group's {a,b} names every one, and the listing must hold them all.
    unlisted = {}
    for argv, entries in helps.items():
        for group in (e for e in entries if is_group(e) and e.name.startswith("{")):
            choices = set(group.name.strip("{}").split(","))
            listed = {e.name for e in entries if e.depth == 4}
            if choices != listed:
                unlisted[" ".join(argv)] = sorted(choices - listed)
    assert unlisted == {}


@pytest.mark.parametrize("tool", list(TOOLS))
def test_version_prints_the_installed_version(tool: str) -> None:
    done = subprocess.run([sys.executable, "-m", TOOLS[tool], "--version"], env=ENV,
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == f"{tool} {importlib.metadata.version('jsorc')}"


def test_the_parser_reads_sections_as_argparse_writes_them() -> None:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("plain", help="a short one")
    parser.add_argument("a_name_longer_than_the_help_column", help="on the next line")
    parser.add_argument("bare")
    sub = parser.add_subparsers(metavar="COMMAND")
    sub.add_parser("go", help="go somewhere")
    sub.add_parser("stay")
    text = parser.format_help()
    assert positionals(text) == [
        Entry(2, "plain", "a short one"),
        Entry(2, "a_name_longer_than_the_help_column", "on the next line"),
        Entry(2, "bare", ""),
        Entry(2, "COMMAND", ""),
        Entry(4, "go", "go somewhere"),  # argparse leaves a subcommand without help out
    ]
