"""Finding policies by name or import path, and building them with checked parameters.

A policy class follows one convention: a class attribute `Params`, a frozen dataclass whose
fields (made with `param`) carry a default, a one-line doc and optional bounds; and an
`__init__(self, params: Params | None = None)`. `register("name")` adds such a class to the
registry; `make("name", {"k": v})` or `get("mypkg.mod:MyPolicy", k=v)` builds one, coercing
strings from a command line to the field's type and refusing unknown or out-of-range values
with a one-line message that names them.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from policies.contract import Policy

T = TypeVar("T", bound=type)

# The one piece of module state in `policies`: the table of names, filled at import time by
# `register` decorators (like Gymnasium's registry). Policies themselves hold no global state.
_REGISTRY: dict[str, type] = {}


class PolicyError(ValueError):
    """An unknown policy, an unknown parameter, or a parameter of the wrong type or range."""


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of a policy, for listings (`jsorc-sim policies`)."""

    name: str
    type: str
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None


def param(
    default: Any,
    doc: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A `Params` field with its documentation and bounds (checked when a policy is built)."""
    meta = {"doc": doc, "minimum": minimum, "maximum": maximum}
    if isinstance(default, dict):
        # Never a shared mutable default: each Params instance gets its own copy.
        snapshot = dict(default)
        return dataclasses.field(default_factory=lambda: dict(snapshot), metadata=meta)
    if isinstance(default, list | set):
        default = tuple(default)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class NoParams:
    """For policies that take no parameters."""


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a policy available as `name`."""

    def add(cls: T) -> T:
        known = _REGISTRY.get(name)
        # The same class defined again (a re-run notebook cell, a reloaded module) replaces
        # itself; another class may not take a name.
        same = known is not None and (known.__module__, known.__qualname__) == (
            cls.__module__, cls.__qualname__)
        if known is not None and known is not cls and not same:
            raise PolicyError(f"policy name {name!r} is already registered to {known}")
        params = getattr(cls, "Params", None)
        if params is None or not dataclasses.is_dataclass(params):
            raise PolicyError(f"policy {cls.__name__} needs a `Params` frozen dataclass")
        _REGISTRY[name] = cls
        setattr(cls, "policy_name", name)  # noqa: B010  (mypy: T is any class)
        return cls

    return add


def names() -> list[str]:
    """Every registered policy name, sorted."""
    _load_library()
    return sorted(_REGISTRY)


def resolve(ref: str) -> type:
    """The policy class for a registered name or a `module:Class` import path."""
    _load_library()
    if ref in _REGISTRY:
        return _REGISTRY[ref]
    if ":" not in ref:
        raise PolicyError(
            f"unknown policy {ref!r}; registered: {', '.join(sorted(_REGISTRY))} "
            "(or give an import path module:Class)"
        )
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PolicyError(f"cannot import policy module {module_name!r}: {exc}") from None
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise PolicyError(f"{ref!r}: module {module_name!r} has no class {attr!r}")
    return cls


def params_type(cls: type) -> type:
    params = getattr(cls, "Params", NoParams)
    if not dataclasses.is_dataclass(params):
        raise PolicyError(f"{cls.__name__}.Params must be a dataclass")
    return params


def make(ref: str, params: Mapping[str, Any] | None = None) -> Policy:
    """Build a policy from a name or import path and raw parameters (strings or values)."""
    cls = resolve(ref)
    built = coerce_params(cls, params or {}, policy=ref)
    policy = cls(built) if getattr(cls, "Params", None) is not None else cls()
    if not isinstance(policy, Policy):
        raise PolicyError(f"{ref!r} does not implement the Policy protocol (reset, decide, params)")
    return policy


def get(ref: str, params: Mapping[str, Any] | None = None, **kwargs: Any) -> Policy:
    """`get("all_remote", replicas=2)`: like `make`, with parameters as keywords too."""
    return make(ref, {**(params or {}), **kwargs})


def describe(ref: str) -> list[ParamInfo]:
    """The parameters of a policy with their types, defaults and docs."""
    cls = resolve(ref)
    ptype = params_type(cls)
    hints = typing.get_type_hints(ptype)
    infos = []
    for f in dataclasses.fields(ptype):
        default: Any = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        infos.append(
            ParamInfo(
                name=f.name,
                type=_type_name(hints[f.name]),
                default=default,
                doc=str(f.metadata.get("doc", "")),
                minimum=f.metadata.get("minimum"),
                maximum=f.metadata.get("maximum"),
            )
        )
    return infos


def coerce_params(cls: type, raw: Mapping[str, Any], *, policy: str = "") -> Any:
    """Build `cls.Params` from raw values, checking names, types and bounds."""
    ptype = params_type(cls)
    who = policy or cls.__name__
    fields = {f.name: f for f in dataclasses.fields(ptype)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise PolicyError(f"policy {who!r} has no parameter {unknown[0]!r} (parameters: {known})")
    hints = typing.get_type_hints(ptype)
    values = {}
    for name, value in raw.items():
        coerced = _coerce(value, hints[name], f"{who}.{name}")
        _check_bounds(coerced, fields[name], f"{who}.{name}")
        values[name] = coerced
    try:
        return ptype(**values)
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"policy {who!r}: {exc}") from None


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        is_none = value is None or (isinstance(value, str) and value.lower() == "none")
        if is_none and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except PolicyError as exc:
                errors.append(str(exc))
        raise PolicyError(errors[0] if errors else f"{where}: cannot use {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise PolicyError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise PolicyError(f"{where} must be an int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise PolicyError(f"{where} must be an int, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise PolicyError(f"{where} must be a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise PolicyError(f"{where} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise PolicyError(f"{where} must be a string, got {value!r}")
    if origin in (dict, Mapping, typing.Mapping) or hint in (dict, Mapping):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise PolicyError(f"{where} must be a JSON object, got {value!r}") from None
        if not isinstance(value, Mapping):
            raise PolicyError(f"{where} must be a table/mapping, got {value!r}")
        return dict(value)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise PolicyError(f"{where} must be a list, got {value!r}")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        item = args[0] if args else Any
        return tuple(_coerce(v, item, where) if item is not Any else v for v in value)
    return value


def _check_bounds(value: Any, f: dataclasses.Field[Any], where: str) -> None:
    low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if low is not None and value < low:
            raise PolicyError(f"{where} must be >= {low}, got {value}")
        if high is not None and value > high:
            raise PolicyError(f"{where} must be <= {high}, got {value}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _load_library() -> None:
    # The built-in policies register themselves on import; importing here (not at the top)
    # keeps `policies.registry` importable by the library modules that register into it.
    importlib.import_module("policies.library")
