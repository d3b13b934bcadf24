"""A tune file's search space: `[space]` and `[fixed]` checked against a policy's parameters,
top-level or nested.

A key is a parameter of the tuned policy (`replica_price_ms`) or a dotted path into one of
its table parameters that holds another policy's parameters:

    "scaler_params.target" = [0.3, 1.0]              # compose: the scaler's parameter
    "placement_params.node_mem_threshold" = [0.6, 0.95]
    "params.target" = [0.3, 1.0]                     # guarded: the inner policy's
    "guards.cooldown.cooldown_s" = [10, 120]         # guarded: a guard's (worn if not listed)

The inner policy of `X_params` is the one the sibling parameter `X` names (`params`: the
sibling `policy`), as held in `[fixed]` or by the policy's default, so `compose` with
`[fixed] scaler = "kpa"` checks `scaler_params.*` against kpa's parameters: their types,
bounds and choices, as a top-level one is checked. Paths nest (a composed `guarded`
placement: `placement_params.params.node_mem_threshold`).

Candidates are flat (dotted names: what tune.json and the tables show); `nest` turns one into
the nested tables a policy is built from (`policies.make(policy, nest(flat))`). Pure, but for
resolving policy references (which may import a policy file).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from policies import PolicyError, make, resolve
from policies.guards import GUARDS, Guarded
from policies.registry import coerce_params, params_type

SIGNIFICANT = 6  # searched floats are rounded to this many significant digits


# ----------------------------------------------------------------------------- dimensions


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: a number range (`int` or `float`, optionally log) or choices.
    `name` is the parameter's (dotted for a nested one)."""

    name: str
    kind: str  # "int" | "float" | "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.kind == "int" and not self.log:  # each integer equally likely, ends included
            return int(rng.integers(int(self.low), int(self.high) + 1))
        return self.from_unit(float(rng.random()))

    def from_unit(self, u: float) -> Any:
        """The value at `u` in [0, 1] along the range (rounded: integers, or 6 digits)."""
        u = min(max(float(u), 0.0), 1.0)
        if self.log:
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + u * (self.high - self.low)
        if self.kind == "int":
            return int(min(max(round(value), self.low), self.high))
        return min(max(float(f"{value:.{SIGNIFICANT}g}"), self.low), self.high)

    def to_unit(self, value: float) -> float:
        """Where `value` (clipped into the range) lies in [0, 1]."""
        value = min(max(float(value), self.low), self.high)
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high)
                                                             - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def describe(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        low, high = (int(self.low), int(self.high)) if self.kind == "int" else (self.low,
                                                                                self.high)
        return {"kind": self.kind, "low": low, "high": high, "log": self.log}

    def __str__(self) -> str:
        if self.kind == "choice":
            return "{" + ", ".join(show(c) for c in self.choices) + "}"
        d = self.describe()
        return f"[{show(d['low'])}, {show(d['high'])}]" + (" log" if self.log else "")


def show(value: Any) -> str:
    """A value as the tables print it: 1,234.5, 0.1234, inf, '-' for NaN, JSON otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return json.dumps(value) if not isinstance(value, str) else value
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if abs(value) >= 100 or value.is_integer():
        return f"{value:,.1f}"
    return f"{value:.4g}"


# ----------------------------------------------------------------------------- nesting


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A candidate's parameters as the policy takes them: each dotted name set inside the
    tables it names (merged with a table given whole, which is copied, never changed).
    `nest({"scaler": "hpa", "scaler_params.target": 0.5})` is
    `{"scaler": "hpa", "scaler_params": {"target": 0.5}}`. Pure."""
    out: dict[str, Any] = {k: copy.deepcopy(v) for k, v in flat.items() if "." not in k}
    for key, value in flat.items():
        if "." not in key:
            continue
        *tables, leaf = key.split(".")
        here = out
        for table in tables:
            inner = here.get(table)
            here[table] = dict(inner) if isinstance(inner, Mapping) else {}
            here = here[table]
        here[leaf] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Target:
    """Where a (possibly dotted) key lands: parameter `leaf` of the policy class `cls`,
    named `who` in messages ("hpa (compose's scaler_params)")."""

    cls: type
    ref: str  # the policy as coerce_params names it in a message ("hpa", "guard cooldown")
    who: str
    leaf: str
    hint: Any
    default: Any
    given: Mapping[str, Any]  # what [fixed] holds at that level, as a whole table


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(params_type(cls))}


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _named_by(table: str) -> str:
    """The sibling parameter naming the policy whose parameters `table` holds."""
    return "policy" if table == "params" else table.removesuffix("_params")


def target(policy: str, key: str, fixed: Mapping[str, Any],
           searched: frozenset[str] = frozenset()) -> Target:
    """Resolve `key` against `policy` with [fixed] (flat) as given; raises PolicyError with
    a message naming the bad part (and listing the parameters it could have been)."""
    cls, ref, who = resolve(policy), policy, f"policy {policy!r}"
    given: Mapping[str, Any] = nest(fixed)
    parts = key.split(".")
    prefix: list[str] = []
    i = 0
    while i < len(parts) - 1:
        table, fields = parts[i], _fields(cls)
        if table not in fields:
            raise PolicyError(f"{who} has no parameter {table!r} (parameters: "
                              f"{', '.join(fields) or 'none'})")
        hint = typing.get_type_hints(params_type(cls))[table]
        if typing.get_origin(hint) not in (dict, Mapping) and hint not in (dict, Mapping):
            raise PolicyError(f"{who}: {table!r} is not a table of parameters, so "
                              f"{'.'.join(parts[i + 1:])!r} cannot be inside it")
        inner = given.get(table, _default(fields[table]))
        inner = inner if isinstance(inner, Mapping) else {}
        if table == "guards" and issubclass(cls, Guarded):
            guard = parts[i + 1]
            if guard not in GUARDS or i + 2 >= len(parts):
                raise PolicyError(f"{who}: {'.'.join(parts[i:])!r} needs a guard and its "
                                  f"parameter (guards: {', '.join(GUARDS)})")
            cls, ref, who = GUARDS[guard], f"guard {guard}", f"guard {guard!r}"
            raw = inner.get(guard)
            given = raw if isinstance(raw, Mapping) else {}
            prefix += [table, guard]
            i += 2
            continue
        sibling = _named_by(table)
        path = ".".join([*prefix, sibling])
        if sibling not in fields or typing.get_type_hints(params_type(cls))[sibling] is not str:
            raise PolicyError(f"{who}: {table!r} holds no policy's parameters that tune can "
                              f"check (no {sibling!r} naming its policy)")
        if path in searched:
            raise PolicyError(f"{path!r} is searched, so the policy {table!r} configures is "
                              f"not known: hold {path!r} in [fixed] to search its parameters")
        ref = given.get(sibling, _default(fields[sibling]))
        try:
            cls = resolve(ref)
        except PolicyError as exc:
            raise PolicyError(f"{path} = {ref!r}: {exc}") from None
        who = f"policy {ref!r} (the {'.'.join([*prefix, table])} of {policy!r})"
        given = inner
        prefix.append(table)
        i += 1
    fields, leaf = _fields(cls), parts[-1]
    if leaf not in fields:
        raise PolicyError(f"{who} has no parameter {leaf!r} (parameters: "
                          f"{', '.join(fields) or 'none'})")
    return Target(cls, ref, who, leaf, typing.get_type_hints(params_type(cls))[leaf],
                  _default(fields[leaf]), given)


# ----------------------------------------------------------------------------- checking


def policy_space(policy: str, space: Any, fixed: Any, problems: list[str]
                 ) -> tuple[tuple[Dimension, ...], dict[str, Any], dict[str, Any]]:
    """Check the policy, [fixed] and [space] (keys top-level or dotted); return the
    dimensions, [fixed] (flat) and the default of every searched parameter (flat)."""
    if not isinstance(space, Mapping) or not space:
        problems.append("[space] must be a table of parameter -> [low, high] or choices, "
                        f"got {space!r}")
        space = {}
    if not isinstance(fixed, Mapping):
        problems.append(f"[fixed] must be a table of parameter = value, got {fixed!r}")
        fixed = {}
    fixed = dict(fixed)
    if not policy:
        return (), fixed, {}
    try:
        resolve(policy)
    except PolicyError as exc:
        problems.append(f"policy: {exc}")
        return (), fixed, {}
    searched = frozenset(space)
    fixed_ok = all([_fixed_ok(policy, key, value, fixed, searched, problems)
                    for key, value in fixed.items()])
    dims, defaults = [], {}
    for name, value in space.items():
        where = f"space.{name}"
        if name in fixed:
            problems.append(f"{where}: also in [fixed]; a parameter is searched or held")
            continue
        try:
            found = target(policy, name, fixed if fixed_ok else {}, searched)
        except PolicyError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if found.leaf in found.given:
            problems.append(f"{where}: also in [fixed] (inside its table); a parameter is "
                            "searched or held")
            continue
        dim = _dimension(name, value, found.hint, problems)
        given = dim.choices if dim and dim.kind == "choice" else (
            (dim.describe()["low"], dim.describe()["high"]) if dim else ())
        inner = dict(found.given) if fixed_ok else {}
        ok = all([_coerces(found, {**inner, found.leaf: v}, where, problems) for v in given])
        if dim and ok:
            dims.append(dim)
            defaults[name] = found.default
    if fixed_ok:
        try:  # the policy itself may check more than each parameter (a nested policy, ...)
            make(policy, nest({**defaults, **fixed}))
        except PolicyError as exc:
            problems.append(f"policy {policy!r} with [fixed]: {exc}")
    return tuple(dims), fixed, defaults


def _fixed_ok(policy: str, key: str, value: Any, fixed: Mapping[str, Any],
              searched: frozenset[str], problems: list[str]) -> bool:
    others = {k: v for k, v in fixed.items() if k != key}
    try:
        found = target(policy, key, others if "." in key else {}, searched)
    except PolicyError as exc:
        problems.append(f"[fixed] {key}: {exc}")
        return False
    if "." in key and found.leaf in found.given:
        problems.append(f"[fixed] {key}: given twice (also inside its table)")
        return False
    return _coerces(found, {found.leaf: value}, "[fixed]", problems)


def _coerces(found: Target, params: dict[str, Any], where: str, problems: list[str]) -> bool:
    try:
        coerce_params(found.cls, params, policy=found.ref)
    except PolicyError as exc:
        problems.append(f"{where}: {exc}")
        return False
    return True


def _dimension(name: str, value: Any, hint: Any, problems: list[str]) -> Dimension | None:
    where = f"space.{name}"
    kind = "int" if hint is int else "float" if hint is float else "choice"
    if isinstance(value, Mapping):
        unknown = set(value) - {"low", "high", "log", "choices"}
        if unknown:
            problems.append(f"{where}: unknown field {sorted(unknown)[0]!r} (known: low, high, "
                            "log, choices)")
            return None
        if "choices" in value:
            return _choices(name, value["choices"], problems)
        low, high, log = value.get("low"), value.get("high"), value.get("log", False)
    elif isinstance(value, list) and kind != "choice" and len(value) == 2 and all(
            _is_number(v) for v in value):
        low, high, log = value[0], value[1], False
    elif isinstance(value, list):
        return _choices(name, value, problems)
    else:
        problems.append(f"{where} must be [low, high], a list of choices or a table, "
                        f"got {value!r}")
        return None
    return _range(name, kind, low, high, log, problems)


def _range(name: str, kind: str, low: Any, high: Any, log: Any,
           problems: list[str]) -> Dimension | None:
    where = f"space.{name}"
    if kind == "choice":
        problems.append(f"{where}: a range needs a number parameter; give a list of choices")
        return None
    if not (_is_number(low) and _is_number(high)):
        problems.append(f"{where}: low and high must be numbers, got {low!r} and {high!r}")
        return None
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        problems.append(f"{where}: {name} is an integer; bounds must be whole numbers, got "
                        f"[{low!r}, {high!r}]")
        return None
    if not low < high:
        problems.append(f"{where}: low {low!r} must be below high {high!r} (hold a value in "
                        "[fixed])")
        return None
    if not isinstance(log, bool) or (log and low <= 0):
        problems.append(f"{where}: log must be true or false, and log needs low > 0; "
                        f"got log = {log!r}, low = {low!r}")
        return None
    return Dimension(name, kind, float(low), float(high), log)


def _choices(name: str, values: Any, problems: list[str]) -> Dimension | None:
    if not isinstance(values, list) or not values:
        problems.append(f"space.{name}: choices must be a non-empty list, got {values!r}")
        return None
    keys = [json.dumps(v, sort_keys=True) for v in values]
    if len(set(keys)) < len(keys):
        problems.append(f"space.{name}: choices repeat a value: {values!r}")
        return None
    return Dimension(name, "choice", choices=tuple(values))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value)
