"""Label and field selectors as the API server reads them. Pure functions.

- ``parse_label_selector("app=web,tier!=db,env in (a,b),!legacy,track")``: the string form of
  ``?labelSelector=`` (``=``/``==``, ``!=``, ``in``, ``notin``, ``key`` exists, ``!key``
  does not exist); a malformed one raises :class:`SelectorError` (the server answers 400).
- ``from_label_selector({"matchLabels": ..., "matchExpressions": [...]})``: the object form
  (a Deployment's ``spec.selector``); ``to_string`` renders it back (a Scale's
  ``status.selector`` carries that string).
- A Service's ``spec.selector`` is a plain map: ``from_label_selector({"matchLabels": m})``.
- ``parse_field_selector("metadata.name=web,status.phase!=Running")``: equality tests on
  dotted paths of the object (the server limits the fields per kind; any path is accepted
  here).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Op",
    "Requirement",
    "SelectorError",
    "field_value",
    "from_label_selector",
    "matches",
    "matches_fields",
    "parse_field_selector",
    "parse_label_selector",
    "to_string",
]

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\((.*)\)\s*$")
_EQ_RE = re.compile(rf"^\s*({_KEY})\s*(==|!=|=)\s*({_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")


class SelectorError(ValueError):
    """A selector the server cannot parse (400 BadRequest)."""


class Op(enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True)
class Requirement:
    """One term of a selector; ``values`` is empty for EXISTS and DOES_NOT_EXIST."""

    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op is Op.EXISTS:
            return self.key in labels
        if self.op is Op.DOES_NOT_EXIST:
            return self.key not in labels
        present = self.key in labels and labels[self.key] in self.values
        return present if self.op is Op.IN else not present


def _split_terms(text: str) -> list[str]:
    """Commas separate terms except inside ``( )`` of a set term."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in selector {text!r}")
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise SelectorError(f"unbalanced '(' in selector {text!r}")
    terms.append("".join(current))
    return terms


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    """The requirements of a ``labelSelector`` string; empty or None selects everything."""
    if text is None or not text.strip():
        return ()
    out: list[Requirement] = []
    for term in _split_terms(text):
        if m := _SET_RE.match(term):
            values = tuple(v.strip() for v in m.group(4).split(",") if v.strip())
            for value in values:
                if not _VALUE_RE.match(value):
                    raise SelectorError(f"invalid label value {value!r} in {text!r}")
            out.append(Requirement(m.group(1), Op.IN if m.group(3) == "in" else Op.NOT_IN,
                                   values))
        elif m := _EQ_RE.match(term):
            op = Op.NOT_IN if m.group(3) == "!=" else Op.IN
            out.append(Requirement(m.group(1), op, (m.group(4),)))
        elif m := _EXISTS_RE.match(term):
            out.append(Requirement(m.group(2), Op.DOES_NOT_EXIST if m.group(1) else Op.EXISTS))
        else:
            raise SelectorError(f"unable to parse requirement {term.strip()!r} of "
                                f"selector {text!r}")
    return tuple(out)


def from_label_selector(selector: Mapping[str, Any] | None) -> tuple[Requirement, ...]:
    """The requirements of a LabelSelector object (``matchLabels`` and
    ``matchExpressions``); an empty or missing one selects everything."""
    if not selector:
        return ()
    out = [Requirement(str(k), Op.IN, (str(v),))
           for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        try:
            op = Op(expr["operator"])
        except (KeyError, ValueError, TypeError):
            raise SelectorError(f"invalid matchExpressions operator in {expr!r}") from None
        values = tuple(str(v) for v in expr.get("values") or ())
        if op in (Op.IN, Op.NOT_IN) and not values:
            raise SelectorError(f"{op.value} needs values: {expr!r}")
        out.append(Requirement(str(expr.get("key", "")), op, values))
    return tuple(out)


def matches(requirements: Sequence[Requirement], labels: Mapping[str, str] | None) -> bool:
    """Whether ``labels`` satisfy every requirement (no requirements: always)."""
    labels = labels or {}
    return all(r.matches(labels) for r in requirements)


def to_string(selector: Mapping[str, Any] | None) -> str:
    """A LabelSelector object as a ``labelSelector`` string (the Scale's status.selector)."""
    parts: list[str] = []
    for r in from_label_selector(selector):
        if r.op is Op.EXISTS:
            parts.append(r.key)
        elif r.op is Op.DOES_NOT_EXIST:
            parts.append(f"!{r.key}")
        elif r.op is Op.IN and len(r.values) == 1:
            parts.append(f"{r.key}={r.values[0]}")
        else:
            word = "in" if r.op is Op.IN else "notin"
            parts.append(f"{r.key} {word} ({','.join(r.values)})")
    return ",".join(parts)


# --------------------------------------------------------------------------- fields


def parse_field_selector(text: str | None) -> tuple[tuple[str, bool, str], ...]:
    """``(path, equal, value)`` terms of a ``fieldSelector``; ``equal`` False for ``!=``."""
    if text is None or not text.strip():
        return ()
    out = []
    for term in text.split(","):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*?)\s*$", term)
        if not m:
            raise SelectorError(f"invalid field selector term {term.strip()!r}")
        out.append((m.group(1), m.group(2) != "!=", m.group(3)))
    return tuple(out)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The value at a dotted path as the server compares it (missing: empty string)."""
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return ""
        value = value[part]
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def matches_fields(terms: Sequence[tuple[str, bool, str]], obj: Mapping[str, Any]) -> bool:
    return all((field_value(obj, path) == value) == equal for path, equal, value in terms)
