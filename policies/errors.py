"""The errors of finding and building policies (shared by the registry and the sources it
reads policies from, so that neither imports the other for them)."""

from __future__ import annotations

from collections.abc import Collection


class PolicyError(ValueError):
    """An unknown policy, an unknown parameter, or a parameter of the wrong type or range."""


class PolicyNotAllowed(PolicyError):
    """A `module:Class` (or `file.py:Class`) that the caller's allow-list does not name
    (nothing imported)."""

    def __init__(self, module: str, allowed: Collection[str], *, file: bool = False) -> None:
        self.module = module
        if file:
            files = ", ".join(a for a in allowed if is_file_entry(a)) or "none"
            super().__init__(
                f"policy file {module!r} is not allowed here (allowed files: {files}); the "
                f"operator allows it at start-up: jsorc serve --policy-file {module}")
            return
        listed = ", ".join(a for a in allowed if not is_file_entry(a)) or "none"
        super().__init__(
            f"policy module {module!r} is not allowed here (allowed modules: {listed}); the "
            f"operator allows it at start-up: jsorc serve --allow-policy-module {module} "
            "(or --policy-file FILE.py)")


def is_file_entry(entry: str) -> bool:
    """Whether an allow-list entry names a policy file (an absolute path) rather than a module:
    a module name never holds a path separator."""
    return "/" in entry or "\\" in entry
