"""Writing jsorc's files into a folder a user names, without ever touching theirs.

A folder given to `--out` may hold anything. jsorc writes only the files of its own names
there, each to a temporary name first and then renamed over the old one (a crash leaves
every file whole, old or new), and it overwrites a file of one of those names only when it
wrote that file itself: the folder's `manifest.json` records, for each file jsorc wrote, its
SHA-256. A file of one of our names that the manifest does not vouch for (no manifest, a
manifest of something else, or a file changed since) is refused with `OutputError` -- by
`check`, which the commands call before they simulate, so a refusal costs nothing. Every
other file in the folder is left alone, so `--out .` works.

Folders written before manifests existed are recognised by `legacy` (say, the header jsorc
writes at the top of a run's scenario.toml).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

MANIFEST = "manifest.json"

Writer = Callable[[Path], object]  # writes one file at the path it is given


class OutputError(ValueError):
    """An output folder jsorc will not write into (the message names it and the file)."""


def check(out: str | Path, names: Collection[str], kind: str,
          legacy: Callable[[Path], bool] | None = None) -> Path:
    """`out` as a Path, if writing `names` (and the manifest) there overwrites only files jsorc
    wrote as `kind`; else OutputError. Reads only: the folder is not created."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--out {str(out)!r} is a file, not a folder")
    if not folder.exists():
        return folder
    vouched = _vouched(folder, kind, names, legacy)
    for name in (*names, MANIFEST):
        path = folder / name
        if not path.exists() and not path.is_symlink():
            continue
        if not path.is_file() or path.is_symlink():
            raise OutputError(f"--out {str(out)!r}: {name} is not a regular file; jsorc will "
                              "not replace it: choose another --out")
        if name == MANIFEST:
            if vouched is None:
                raise OutputError(_foreign(out, name))
            continue
        if vouched is None or _digest(path) not in vouched.get(name, ()):
            raise OutputError(_foreign(out, name))
    return folder


def write(out: str | Path, writers: Mapping[str, Writer], kind: str,
          legacy: Callable[[Path], bool] | None = None, *, keep: Collection[str] = (),
          remove: Collection[str] = ()) -> Path:
    """Write each file of `writers` (name -> writer) into `out` after `check`, atomically per
    file, and record them in the manifest. Returns the folder. `keep`: files of ours already
    in place (say, a table streamed there during a run) that stay, vouched for as before;
    `remove`: files of ours from an earlier write that this one has no new version of."""
    folder = check(out, [*writers, *keep, *remove], kind, legacy)
    folder.mkdir(parents=True, exist_ok=True)
    temps: dict[str, Path] = {}
    try:
        for name, writer in writers.items():
            temps[name] = folder / f".{name}.{os.getpid()}.tmp"
            writer(temps[name])
        new = {name: _digest(tmp) for name, tmp in temps.items()}
        old = _manifest_files(folder, kind) or {}
        kept = {n: old.get(n) or [_digest(folder / n)] for n in keep
                if (folder / n).is_file()}
        gone = {n: old.get(n) or [_digest(folder / n)] for n in remove
                if (folder / n).is_file()}
        # While the files are swapped in, the manifest vouches for old and new alike, so a
        # crash half-way leaves a folder the next run may still write into.
        _write_manifest(folder, kind, {**gone, **kept,
                                       **{n: [*old.get(n, []), d] for n, d in new.items()}})
        for name, tmp in temps.items():
            os.replace(tmp, folder / name)
        for name in gone:  # `check` vouched for each (or it is gone already)
            (folder / name).unlink(missing_ok=True)
        _write_manifest(folder, kind, {**kept, **{n: [d] for n, d in new.items()}})
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return folder


def remove(out: str | Path, kind: str) -> None:
    """Delete the files the manifest of `out` vouches for (unchanged since jsorc wrote them),
    then the manifest, then the folder if nothing else is left in it."""
    folder = Path(out)
    files = _manifest_files(folder, kind)
    if files is None:
        return
    for name, digests in files.items():
        path = folder / name
        if path.is_file() and not path.is_symlink() and _digest(path) in digests:
            path.unlink()
    (folder / MANIFEST).unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()


def _vouched(folder: Path, kind: str, names: Collection[str],
             legacy: Callable[[Path], bool] | None) -> dict[str, list[str]] | None:
    files = _manifest_files(folder, kind)
    if files is not None:
        return files
    if not (folder / MANIFEST).exists() and legacy is not None and legacy(folder):
        return {name: [_digest(folder / name)] for name in names
                if (folder / name).is_file()}
    return None


def _manifest_files(folder: Path, kind: str) -> dict[str, list[str]] | None:
    """The files the manifest of `folder` lists for `kind`; None without such a manifest."""
    try:
        doc = json.loads((folder / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("written_by") != kind:
        return None
    files = doc.get("files")
    if not isinstance(files, dict):
        return None
    return {str(k): [str(d) for d in v] for k, v in files.items() if isinstance(v, list)}


def _write_manifest(folder: Path, kind: str, files: Mapping[str, list[str]]) -> None:
    tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    doc = {"written_by": kind, "files": dict(sorted(files.items())),
           "note": "the files jsorc wrote here and their SHA-256; jsorc overwrites only these"}
    try:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, folder / MANIFEST)
    finally:
        tmp.unlink(missing_ok=True)


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _foreign(out: str | Path, name: str) -> str:
    return (f"--out {str(out)!r} holds {name}, which jsorc did not write (or which changed "
            "since); jsorc never overwrites files it did not write: choose another --out, or "
            "move that file away")
