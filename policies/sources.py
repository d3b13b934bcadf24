"""Where policies come from besides the registry: a Python file, or an installed package.

**A file**: `path/to/mine.py:Mine` (relative to the current folder, or to the file that
names it when `base_dir` is given; `~` expanded) imports `mine.py` as a module of a stable
name of its own (`_jsorc_policy_file_mine_<hash of its absolute path>`), once per process,
and takes its class `Mine`. While the file is imported its folder is first on `sys.path`, so
its top-level imports of sibling modules work; an import made later, inside `decide`, needs
the sibling importable by other means (installed, or on PYTHONPATH). A file that is already
imported under another name (a module of an installed package, or `jsorc serve
--policy-file`) is not imported again: its module is used, so its `register` decorators run
once. References are shipped to worker processes as strings, so `absolute_ref` makes the
path absolute before they leave.

**An entry point**: an installed package that declares

    [project.entry-points."jsorc.policies"]
    mypolicy = "mypkg.policies:MyPolicy"

makes `mypolicy` a policy name. Entry points are read only when a name is not registered
(and when every name is listed), and their module is imported only when that name is used.
A registered name wins over an entry point of the same name (`shadowed` says which).

Reading files and package metadata is I/O; it happens when a policy is looked up, never in
a policy's `reset` or `decide`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import threading
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

from policies.errors import PolicyError

ENTRY_POINT_GROUP = "jsorc.policies"

# Two threads of a server resolving the same new file must not both run it.
_LOADING = threading.RLock()  # re-entrant: a policy file may resolve another file


@dataclass(frozen=True)
class FileRef:
    """A `path/to/file.py:Class` reference: the file (absolute) and the class's name."""

    path: Path
    attr: str
    given: str  # the reference as written, for messages

    def __str__(self) -> str:
        return f"{self.path}:{self.attr}"


@dataclass(frozen=True)
class EntryPointPolicy:
    """A policy an installed package declares in the `jsorc.policies` entry-point group."""

    name: str
    target: str  # "pkg.mod:Class"
    module: str
    package: str  # the distribution that declares it


def file_ref(ref: str, base_dir: str | Path | None = None) -> FileRef | None:
    """The file and class of `ref` if it is a `file.py:Class` reference, else None.

    Raises PolicyError for a file reference without a class name (`mine.py`, `mine.py:`)."""
    head, colon, attr = ref.rpartition(":")
    if not colon:
        if ref.endswith(".py"):
            raise PolicyError(f"policy {ref!r}: name the class too, {ref}:ClassName")
        return None
    if not head.endswith(".py"):
        return None
    if not attr.isidentifier():
        raise PolicyError(f"policy {ref!r}: {attr!r} is not a class name (a policy file "
                          "reference is path/to/file.py:ClassName)")
    path = Path(head).expanduser()
    if not path.is_absolute():
        path = Path(base_dir if base_dir is not None else Path.cwd()) / path
    return FileRef(path.resolve(), attr, ref)


def absolute_ref(ref: str, base_dir: str | Path | None = None) -> str:
    """`ref` with a policy file's path made absolute (relative to `base_dir`, else the current
    folder); any other reference unchanged. For references that travel to other processes
    or are written down to be run again."""
    found = file_ref(ref, base_dir) if isinstance(ref, str) else None
    return ref if found is None else str(found)


def file_module_name(path: Path) -> str:
    """The module name a policy file is imported under: the same for the same absolute path
    in every process, and unlike any other module's."""
    stem = re.sub(r"\W", "_", path.stem)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return f"_jsorc_policy_file_{stem}_{digest}"


def load_file_class(ref: FileRef) -> type:
    """The class `ref` names, importing its file once per process. Raises PolicyError naming
    the file: missing, a syntax error (with its line), failing to import (with the line that
    raised), or no such class."""
    module = _module_of(ref)
    cls = getattr(module, ref.attr, None)
    if not isinstance(cls, type):
        classes = sorted(n for n, v in vars(module).items()
                         if isinstance(v, type) and v.__module__ == module.__name__)
        raise PolicyError(f"policy file {str(ref.path)!r} has no class {ref.attr!r} (its "
                          f"classes: {', '.join(classes) or 'none'})")
    return cls


def _module_of(ref: FileRef) -> types.ModuleType:
    name = file_module_name(ref.path)
    with _LOADING:
        loaded = sys.modules.get(name) or _imported_from(ref.path)
        if loaded is not None:
            return loaded
        if not ref.path.is_file():
            relative = not Path(ref.given.rpartition(":")[0]).expanduser().is_absolute()
            raise PolicyError(f"policy file {str(ref.path)!r} does not exist" + (
                f" ({ref.given!r}: a relative path is from the current folder, or from the "
                "folder of the file that names it)" if relative else ""))
        spec = importlib.util.spec_from_file_location(name, ref.path)
        if spec is None or spec.loader is None:
            raise PolicyError(f"policy file {str(ref.path)!r} cannot be imported")
        module = importlib.util.module_from_spec(spec)
        folder = str(ref.path.parent)
        added = folder not in sys.path
        sys.modules[name] = module
        if added:
            sys.path.insert(0, folder)
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            del sys.modules[name]
            where = "" if exc.filename in (None, str(ref.path)) else f" in {exc.filename}"
            raise PolicyError(f"policy file {str(ref.path)!r}{where} line {exc.lineno}: "
                              f"SyntaxError: {exc.msg}") from None
        except Exception as exc:  # a user's module: one line, not a traceback
            del sys.modules[name]
            raise PolicyError(f"policy file {str(ref.path)!r} failed to import: "
                              f"{describe_exception(exc)}") from None
        finally:
            if added:
                sys.path.remove(folder)
        return module


def _imported_from(path: Path) -> types.ModuleType | None:
    """A module already imported from `path` under another name, if any."""
    for module in list(sys.modules.values()):
        known = getattr(module, "__file__", None)
        if (isinstance(known, str) and os.path.basename(known) == path.name
                and Path(known).resolve() == path):
            return module
    return None


def describe_exception(exc: BaseException) -> str:
    """`Type: message (at file:line)`, the innermost line that raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def entry_point_policies() -> dict[str, EntryPointPolicy]:
    """Every policy installed packages declare in the `jsorc.policies` group, by name (the
    first distribution found wins a name two declare)."""
    # Imported here: importlib.metadata costs ~30 ms, which a run by a built-in name never pays.
    from importlib import metadata

    found: dict[str, EntryPointPolicy] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            continue
        dist = getattr(ep, "dist", None)
        package = dist.name if dist is not None else "?"
        found[ep.name] = EntryPointPolicy(ep.name, ep.value, ep.module, package)
    return found


def load_entry_point(policy: EntryPointPolicy) -> type:
    """The class an entry point names (importing its module). Raises PolicyError naming the
    package and the entry point."""
    where = (f"policy {policy.name!r} (package {policy.package}, entry point "
             f"{ENTRY_POINT_GROUP}: {policy.target})")
    module_name, _, attr = policy.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise PolicyError(f"{where} failed to import: {describe_exception(exc)}") from None
    target: object = module
    for part in attr.split(".") if attr else []:
        target = getattr(target, part, None)
    if not isinstance(target, type):
        raise PolicyError(f"{where}: {policy.target!r} is not a class")
    return target


def shadowed(policy: EntryPointPolicy, registered: type) -> str:
    """The warning for an entry point whose name a registered policy already has."""
    return (f"policy name {policy.name!r} of package {policy.package} ({policy.target}) is "
            f"shadowed by the built-in {registered.__module__}.{registered.__qualname__}; "
            f"use the package's by its import path {policy.target}")
