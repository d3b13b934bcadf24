"""TOML with a comment beside each value: tomli_w writes no comments, so this renders the
scenario table itself (the caller checks that it parses back with tomllib).

Pure functions: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

SECTIONS = ("node", "network", "workload", "placement", "policy")
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def render_toml(table: Mapping[str, Any], comments: Mapping[str, str],
                header: Sequence[str] = ()) -> str:
    """A scenario `table` as TOML: top-level values, then [node], [network], [actions.NAME],
    [apps.NAME], [workload], [placement], [policy]; a value whose dotted path has a comment
    is followed by it, and `header` lines open the file as comments."""
    lines = [f"# {_comment(h)}" for h in header] + ([""] if header else [])

    def emit(prefix: str, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, Mapping) and prefix == "" and key in (*SECTIONS, "actions",
                                                                       "apps"):
                continue
            line = f"{_key(key)} = {_value(value)}"
            comment = comments.get(f"{prefix}{key}")
            lines.append(f"{line}  # {_comment(comment)}" if comment else line)

    emit("", table)
    for section in ("node", "network"):
        lines += ["", f"[{section}]"]
        emit(f"{section}.", table[section])
    for group in ("actions", "apps"):
        for name, values in table[group].items():
            lines += ["", f"[{group}.{_key(name)}]"]
            emit(f"{group}.{name}.", values)
    for section in ("workload", "placement", "policy"):
        lines += ["", f"[{section}]"]
        emit(f"{section}.", table[section])
    return "\n".join(lines) + "\n"


def _comment(text: str) -> str:
    return " ".join(text.split())  # one line: a newline would end the comment


def _key(key: str) -> str:
    return key if _BARE.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"calibrate: cannot write the non-finite value {value!r}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" \
            if value else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"calibrate: cannot write {value!r} as TOML")
