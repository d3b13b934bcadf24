"""Finding policies by name, import path or file, and building them with checked parameters.

A policy class follows one convention: a class attribute `Params`, a frozen dataclass whose
fields (made with `param`) carry a default, a one-line doc and optional bounds; and an
`__init__(self, params: Params | None = None)`. `register("name")` adds such a class to the
registry; `make("name", {"k": v})` or `get("mypkg.mod:MyPolicy", k=v)` builds one, coercing
strings from a command line to the field's type and refusing unknown or out-of-range values
with a one-line message that names them.

Numbers: NaN and the infinities are refused by every numeric parameter, whether it comes
through `make` or is given to a `Params` dataclass directly (`CheckedParams`). No parameter
takes infinity for "no limit": a limit that can be lifted is Optional, None meaning none
(`replica_bounds.max_replicas`).

A reference is a registered name; a name an installed package declares in the
`jsorc.policies` entry-point group; an import path `pkg.mod:Cls`; or a file
`path/to/mine.py:Cls` (policies.sources says how files and entry points are loaded).

Import paths and trust: `make("pkg.mod:Cls")` imports `pkg.mod`, which runs its code. A
library user may import anything (`allowed_modules=None`, the default). A server passes the
modules its operator allowed (`allowed_modules=[...]`, possibly empty): then a module is
imported only if its name is listed exactly or falls under a listed `pkg.*` pattern (any
module below `pkg`, not `pkg` itself; importing `pkg.mod` runs `pkg/__init__` too), and that
is decided before anything is imported. A policy file is allowed when the list names its
absolute path (`jsorc serve --policy-file`), an entry point when its module is allowed.
Registered names always work, and so does the import
path of a registered class already imported. The class found must then look like a policy
(`reset` and `decide`, and with an allow-list a `Params` dataclass) before it is
instantiated. Policies built inside a policy (`compose`, `guarded`) are held to the same
allow-list.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import importlib.util
import json
import keyword
import math
import sys
import types
import typing
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from policies import sources
from policies.contract import Policy
from policies.errors import PolicyError as PolicyError
from policies.errors import PolicyNotAllowed as PolicyNotAllowed
from policies.errors import is_file_entry

T = TypeVar("T", bound=type)

# The one piece of module state in `policies`: the table of names, filled at import time by
# `register` decorators (like Gymnasium's registry). Policies themselves hold no global state.
_REGISTRY: dict[str, type] = {}


# The allow-lists of the `make` calls under way, so that a policy building others in its
# constructor (`compose`, `guarded`) cannot reach modules its caller could not: a module must
# be allowed by every list in the chain.
AllowLists = tuple[tuple[str, ...], ...]
_ENCLOSING: contextvars.ContextVar[AllowLists] = contextvars.ContextVar(
    "policies_allowed_modules", default=())


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


class CheckedParams:
    """Base of a `Params` dataclass: checks every numeric field when it is built, however it
    is built (`make`, `Params(...)`, `dataclasses.replace`): finite, and within the bounds
    its `param` declares. A subclass with its own `__post_init__` calls this one first."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check_number(getattr(self, f.name), f, f"{type(self).__name__}.{f.name}")


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
    """Every policy name, sorted: the registered ones and those installed packages declare in
    the `jsorc.policies` entry-point group (a registered name wins a clash, with a warning
    naming both)."""
    _load_library()
    declared = sources.entry_point_policies()
    for name, declared_policy in declared.items():
        if name in _REGISTRY:
            warnings.warn(sources.shadowed(declared_policy, _REGISTRY[name]), stacklevel=2)
    return sorted({*_REGISTRY, *declared})


def package_of(name: str) -> str | None:
    """The installed package whose `jsorc.policies` entry point provides `name`; None for a
    registered policy (a built-in, or one whose module was imported) and an unknown name."""
    _load_library()
    if name in _REGISTRY:
        return None
    declared = sources.entry_point_policies().get(name)
    return declared.package if declared is not None else None


def resolve(ref: str, allowed_modules: Collection[str] | None = None) -> type:
    """The policy class for a registered name, an entry-point name, a `module:Class` import
    path or a `path/to/file.py:Class` file reference (see policies.sources).

    `allowed_modules`: None imports any module (library use); a collection (the live server's,
    possibly empty) imports only the modules it names and the files it lists by absolute path
    (see the module's docstring), checked before anything is imported. Either way the class
    must look like a policy."""
    return _resolve(ref, _allow_lists(allowed_modules))


def _resolve(ref: str, allow_lists: AllowLists) -> type:
    _load_library()
    if not isinstance(ref, str):
        raise PolicyError(f"a policy is a name, module:Class or file.py:Class, got {ref!r}")
    if ref in _REGISTRY:
        return _REGISTRY[ref]
    file = sources.file_ref(ref)
    if file is not None:
        for allowed in allow_lists:
            if not file_allowed(file.path, allowed):
                raise PolicyNotAllowed(str(file.path), allowed, file=True)
        cls: Any = sources.load_file_class(file)
    elif ":" not in ref:
        cls = _entry_point_class(ref, allow_lists)
    else:
        cls = _import_path_class(ref, allow_lists)
    _check_policy_class(cls, ref, need_params=bool(allow_lists))
    return typing.cast(type, cls)


def _entry_point_class(ref: str, allow_lists: AllowLists) -> type:
    declared = sources.entry_point_policies().get(ref)
    if declared is None:
        raise PolicyError(
            f"unknown policy {ref!r}; registered: {', '.join(names())} "
            "(or give an import path module:Class, or a file path/to/file.py:Class)"
        )
    for allowed in allow_lists:
        if not module_allowed(declared.module, allowed):
            raise PolicyNotAllowed(declared.module, allowed)
    return sources.load_entry_point(declared)


def _import_path_class(ref: str, allow_lists: AllowLists) -> Any:
    module_name, _, attr = ref.partition(":")
    if not _is_dotted_name(module_name) or not attr.isidentifier():
        raise PolicyError(f"{ref!r} is not an import path module:Class (nor a file "
                          "path/to/file.py:Class)")
    cls = _registered_at(module_name, attr)
    if cls is None:
        for allowed in allow_lists:
            if not module_allowed(module_name, allowed):
                raise PolicyNotAllowed(module_name, allowed)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise PolicyError(f"cannot import policy module {module_name!r}: {exc} (a module "
                              "must be importable: installed, or on PYTHONPATH; a file can be "
                              "given as path/to/file.py:Class)") from None
        cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise PolicyError(f"{ref!r}: module {module_name!r} has no class {attr!r}")
    return cls


def check_allow_list(entries: Collection[str]) -> tuple[str, ...]:
    """The allow-list as a tuple, after checking each entry: a module name (`pkg.mod`), a
    package pattern (`pkg.*`) or the absolute path of a policy file (`/srv/mine.py`, kept
    resolved). Raises PolicyError naming a bad entry (`*` alone included: an allow-list that
    allows everything is None, which only library code passes)."""
    if isinstance(entries, str):
        raise PolicyError(f"allowed policy modules must be a list of names, got {entries!r}")
    out = []
    for entry in entries:
        bad = PolicyError(f"allowed policy module {entry!r} is not a module name (pkg.mod), a "
                          "package pattern (pkg.*) or the absolute path of a .py file")
        if isinstance(entry, str) and is_file_entry(entry):
            path = Path(entry).expanduser()
            if not path.is_absolute() or path.suffix != ".py":
                raise bad
            out.append(str(path.resolve()))
            continue
        name = entry[:-2] if isinstance(entry, str) and entry.endswith(".*") else entry
        if not isinstance(name, str) or not _is_dotted_name(name):
            raise bad
        out.append(entry)
    return tuple(out)


def module_allowed(module: str, allowed: Collection[str]) -> bool:
    """Whether `module` is named by `allowed`: exactly, or under a `pkg.*` pattern."""
    for entry in allowed:
        if entry.endswith(".*"):
            if module.startswith(entry[:-1]):  # "pkg." : below pkg, not pkg itself
                return True
        elif module == entry:
            return True
    return False


def file_allowed(path: Path, allowed: Collection[str]) -> bool:
    """Whether the policy file at `path` (absolute, resolved) is one `allowed` lists."""
    return str(path) in allowed


def load_policy_file(path: str | Path) -> str:
    """Import the Python file at `path` as a module named after it (`my_policies.py`:
    `my_policies`) and return that name, for an allow-list. Its `register` decorators run.
    Raises PolicyError when the file is missing, its name is not a module name or is taken
    by a module already imported, or importing it fails."""
    file = Path(path).expanduser().resolve()
    name = file.stem
    if file.suffix != ".py":
        raise PolicyError(f"policy file {str(path)!r} is not a .py file")
    if not file.is_file():
        raise PolicyError(f"policy file {str(path)!r} does not exist")
    if not _is_dotted_name(name) or "." in name:
        raise PolicyError(f"policy file {str(path)!r}: {name!r} is not a module name")
    if name in sys.modules:
        known = getattr(sys.modules[name], "__file__", None)
        if known is not None and Path(known).resolve() == file:
            return name
        raise PolicyError(f"policy file {str(path)!r}: a module named {name!r} is already "
                          "imported; rename the file")
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise PolicyError(f"policy file {str(path)!r} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # Its folder is on the search path while it imports, so it may import its siblings (as
    # a file given by path to `jsorc-sim run` may: policies.sources).
    sys.path.insert(0, str(file.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise PolicyError(f"policy file {str(path)!r} failed to import: "
                          f"{sources.describe_exception(exc)}") from None
    finally:
        sys.path.remove(str(file.parent))
    return name


def _is_dotted_name(name: str) -> bool:
    parts = name.split(".")
    return all(p.isidentifier() and not keyword.iskeyword(p) for p in parts)


def _allow_lists(given: Collection[str] | None) -> AllowLists:
    """The enclosing `make`s' allow-lists, and the caller's (never wider than theirs)."""
    enclosing = _ENCLOSING.get()
    return enclosing if given is None else (*enclosing, check_allow_list(given))


def _registered_at(module: str, attr: str) -> type | None:
    """The registered class at `module:attr` if that module is already imported (so naming
    a built-in by its import path imports nothing and needs no allow-list)."""
    loaded = sys.modules.get(module)
    cls = getattr(loaded, attr, None) if loaded is not None else None
    return cls if isinstance(cls, type) and cls in _REGISTRY.values() else None


def _check_policy_class(cls: type, ref: str, *, need_params: bool) -> None:
    # Before instantiating: `subprocess:Popen` must never be called with our parameters.
    missing = [m for m in ("reset", "decide") if not callable(getattr(cls, m, None))]
    if missing:
        raise PolicyError(f"{ref!r} does not implement the Policy protocol (reset, decide, "
                          f"params): {cls.__name__} has no {' or '.join(missing)}")
    params = getattr(cls, "Params", None)
    if params is None and not need_params:
        return
    if not (isinstance(params, type) and dataclasses.is_dataclass(params)):
        raise PolicyError(f"{ref!r} is not a policy class: it needs a `Params` dataclass "
                          "(see policies.registry)")


@contextlib.contextmanager
def _allow_lists_of_this_make(allow_lists: AllowLists) -> Iterator[None]:
    token = _ENCLOSING.set(allow_lists)
    try:
        yield
    finally:
        _ENCLOSING.reset(token)


def params_type(cls: type) -> type:
    params = getattr(cls, "Params", NoParams)
    if not dataclasses.is_dataclass(params):
        raise PolicyError(f"{cls.__name__}.Params must be a dataclass")
    return params


def make(ref: str, params: Mapping[str, Any] | None = None, *,
         allowed_modules: Collection[str] | None = None) -> Policy:
    """Build a policy from a name or import path and raw parameters (strings or values).

    `allowed_modules`: see `resolve`. Whatever building the policy raises becomes a
    PolicyError naming the policy."""
    allow_lists = _allow_lists(allowed_modules)
    cls = _resolve(ref, allow_lists)
    if params is not None and not isinstance(params, Mapping):
        raise PolicyError(f"policy {ref!r}: parameters must be a mapping of name: value, "
                          f"got {params!r}")
    built = coerce_params(cls, params or {}, policy=ref)
    with _allow_lists_of_this_make(allow_lists):
        try:
            policy = cls(built) if getattr(cls, "Params", None) is not None else cls()
        except PolicyError:
            raise
        except Exception as exc:  # a user's constructor: one message, not a traceback
            raise PolicyError(f"policy {ref!r}: building it raised {type(exc).__name__}: "
                              f"{exc}") from None
    if not isinstance(policy, Policy):
        raise PolicyError(f"{ref!r} does not implement the Policy protocol (reset, decide, params)")
    return policy


def get(ref: str, params: Mapping[str, Any] | None = None, *,
        allowed_modules: Collection[str] | None = None, **kwargs: Any) -> Policy:
    """`get("all_remote", replicas=2)`: like `make`, with parameters as keywords too."""
    return make(ref, {**(params or {}), **kwargs}, allowed_modules=allowed_modules)


def describe(ref: str, allowed_modules: Collection[str] | None = None) -> list[ParamInfo]:
    """The parameters of a policy with their types, defaults and docs."""
    cls = resolve(ref, allowed_modules)
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
        check_number(coerced, fields[name], f"{who}.{name}")
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
        number: float | None = None
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise PolicyError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(number):
            raise PolicyError(f"{where} must be a finite number, got {value!r}")
        return number
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


def check_number(value: Any, f: dataclasses.Field[Any], where: str) -> None:
    """Refuse a numeric `value` of field `f` that is not finite or is out of its bounds."""
    low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise PolicyError(f"{where} must be a finite number, got {value}")
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
