"""Action modules: the ``@jsorc_action`` decorator, :class:`ActionSpec` and how a call's JSON
parameters become a Python call.

An *action module* is a Python module whose functions are marked with ``@jsorc_action``; an
optional ``setup(...)`` (every parameter with a default) initialises it, and may itself be an
action. The decorator only marks the function: nothing is registered globally (unlike Jaseci's
``jaseci_action``, which fills a process-wide table at import), so loading and unloading a
module is a matter of holding or dropping it (see ``loader.py``).

Parameters travel as one JSON object, Jaseci 1.4's convention: each named parameter under its
name, ``*args`` as a list under the literal key ``"*args"``, ``**kwargs`` as an object under
``"**kwargs"``; an omitted parameter takes its default. :meth:`ActionSpec.bind` validates such
an object against the function's signature and annotations (pydantic, as Jaseci does) and turns
it into ``(args, kwargs)``. The local runtime and the action server both call through it, so a
call behaves the same wherever it runs.

Everything here is pure: no I/O, no global state.
"""

from __future__ import annotations

import inspect
import keyword
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import ModuleType
from typing import Any, TypeVar, overload

from pydantic import TypeAdapter, ValidationError

__all__ = [
    "ActionArgumentError",
    "ActionCallError",
    "ActionSpec",
    "actions_of",
    "find_action",
    "jsorc_action",
    "spec_of",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute the decorator sets on a function; its value is an :class:`_Mark`.
MARK_ATTR = "__jsorc_action__"

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


# Response header of jsorc's action servers: the action's own time (ms). Not part of Jaseci's
# protocol; Jaseci's servers do not send it and its clients ignore it.
SERVICE_HEADER = "X-Jsorc-Service-Ms"

class ActionCallError(Exception):
    """A call that did not produce a result.

    ``url`` is the action server's URL, or ``module:NAME`` for a local module; ``status`` the
    HTTP status it answered (local calls use the status the server would have sent: 404
    unknown action, 422 invalid parameters, 500 the action raised), ``None`` when nothing
    answered (timeout, connection refused).
    """

    def __init__(self, url: str, name: str, status: int | None, message: str) -> None:
        self.url = url
        self.name = name
        self.status = status
        self.message = message
        answered = "no answer" if status is None else f"HTTP {status}"
        super().__init__(f"action {name!r} at {url}: {answered}: {message}")


class ActionArgumentError(ActionCallError):
    """Parameters that do not fit the action's signature (HTTP 422).

    ``errors`` has the shape of FastAPI's ``detail``: ``[{"loc": ["body", PARAM, ...],
    "msg": ..., "type": ...}, ...]``.
    """

    def __init__(self, url: str, name: str, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        summary = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg', '')}"
            for e in errors
        )
        super().__init__(url, name, 422, summary or "invalid parameters")


@dataclass(frozen=True)
class _Mark:
    name: str | None
    group: str | None
    aliases: tuple[str, ...]
    allow_remote: bool


@overload
def jsorc_action(name: F) -> F: ...


@overload
def jsorc_action(
    name: str | None = None,
    *,
    group: str | None = None,
    aliases: Iterable[str] = (),
    allow_remote: bool = True,
) -> Callable[[F], F]: ...


def jsorc_action(
    name: str | F | None = None,
    *,
    group: str | None = None,
    aliases: Iterable[str] = (),
    allow_remote: bool = True,
) -> F | Callable[[F], F]:
    """Mark a function of an action module as an action; returns the function unchanged.

    ``name`` is the action's name and its server path (default: the function's name);
    ``group`` prefixes it in the spec, ``"group.name"`` (default: the module's last name
    component, as in Jaseci); each alias is another name for the same function, with its own
    spec key and path; ``allow_remote=False`` keeps it out of action servers. Use it bare
    (``@jsorc_action``) or called (``@jsorc_action(group="use")``).
    """
    if callable(name):
        return _mark(name, _Mark(None, None, (), True))
    mark = _Mark(name, group, tuple(aliases), allow_remote)
    for label in (name, *mark.aliases):
        if label is not None:
            _check_identifier(label, "action name")
    if group is not None:
        for part in group.split("."):
            _check_identifier(part, f"group {group!r}")

    def decorate(fn: F) -> F:
        return _mark(fn, mark)

    return decorate


def _mark(fn: F, mark: _Mark) -> F:
    if not callable(fn):
        raise TypeError(f"@jsorc_action marks functions, not {type(fn).__name__}")
    setattr(fn, MARK_ATTR, mark)
    return fn


def _check_identifier(label: str, what: str) -> None:
    if not isinstance(label, str) or not label.isidentifier() or keyword.iskeyword(label):
        raise ValueError(f"{what} must be a Python identifier, got {label!r}")


def _param_key(p: inspect.Parameter) -> str:
    if p.kind is inspect.Parameter.VAR_POSITIONAL:
        return f"*{p.name}"
    if p.kind is inspect.Parameter.VAR_KEYWORD:
        return f"**{p.name}"
    return p.name


@dataclass(frozen=True)
class ActionSpec:
    """One action: ``name`` (its path), ``group``, ``aliases``, ``params`` (the spec's
    parameter names in signature order, ``"*args"``/``"**kwargs"`` for the variadic ones),
    ``fn`` and ``allow_remote``."""

    name: str
    group: str
    aliases: tuple[str, ...]
    params: tuple[str, ...]
    fn: Callable[..., Any] = field(repr=False, compare=False)
    allow_remote: bool = True

    @classmethod
    def of(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        group: str,
        aliases: Iterable[str] = (),
        allow_remote: bool = True,
    ) -> ActionSpec:
        params = tuple(_param_key(p) for p in inspect.signature(fn).parameters.values())
        return cls(name or fn.__name__, group, tuple(aliases), params, fn, allow_remote)

    @property
    def key(self) -> str:
        """``"group.name"``, the action's key in a Jaseci spec."""
        return f"{self.group}.{self.name}"

    @property
    def keys(self) -> tuple[str, ...]:
        """The spec keys: ``group.name`` then ``group.alias`` for each alias."""
        return tuple(f"{self.group}.{n}" for n in self.paths)

    @property
    def paths(self) -> tuple[str, ...]:
        """The names a server answers ``POST /<name>/`` for: the name, then the aliases."""
        return (self.name, *self.aliases)

    @cached_property
    def _signature(self) -> inspect.Signature:
        return inspect.signature(self.fn)

    @cached_property
    def _validators(self) -> dict[str, TypeAdapter[Any] | None]:
        """Per spec key, the validator of its value (None: any value passes)."""
        try:
            hints = typing.get_type_hints(self.fn)
        except Exception:  # unresolvable annotations: validate shapes only
            hints = {}
        out: dict[str, TypeAdapter[Any] | None] = {}
        for p in self._signature.parameters.values():
            hint = hints.get(p.name, Any)
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                hint = list[hint]  # type: ignore[valid-type]
            elif p.kind is inspect.Parameter.VAR_KEYWORD:
                hint = dict[str, hint]  # type: ignore[valid-type]
            out[_param_key(p)] = None if hint is Any else _adapter(hint)
        return out

    def validate(self, params: Mapping[str, Any], *, url: str = "") -> dict[str, Any]:
        """Check ``params`` against the signature: unknown keys, missing required parameters,
        values that do not fit an annotation (coerced the way pydantic's lax mode does, as
        Jaseci's server does: ``"21"`` for an ``int`` is 21). Returns the validated values of
        the parameters given; raises :class:`ActionArgumentError` listing every problem."""
        errors: list[dict[str, Any]] = []
        values: dict[str, Any] = {}
        for key in params:
            if key not in self._validators:
                errors.append(_error((key,), "Extra inputs are not permitted", "extra_forbidden"))
        for p in self._signature.parameters.values():
            key = _param_key(p)
            if key not in params:
                required = p.default is inspect.Parameter.empty and p.kind in (
                    *_POSITIONAL,
                    inspect.Parameter.KEYWORD_ONLY,
                )
                if required:
                    errors.append(_error((key,), "Field required", "missing"))
                continue
            adapter = self._validators[key]
            if adapter is None:
                values[key] = params[key]
                continue
            try:
                values[key] = adapter.validate_python(params[key])
            except ValidationError as e:
                for err in e.errors(include_url=False):
                    errors.append(_error((key, *err["loc"]), err["msg"], err["type"]))
        if errors:
            raise ActionArgumentError(url, self.key, errors)
        return values

    def bind(self, params: Mapping[str, Any], *, url: str = "") -> tuple[list[Any], dict[str, Any]]:
        """Validate ``params`` and turn them into ``(args, kwargs)`` for ``fn``.

        Named parameters go by keyword unless something later must go by position (a
        positional-only parameter, or a ``"*args"`` list): then every parameter up to it goes
        by position, omitted ones with their default.
        """
        values = self.validate(params, url=url)
        sig = list(self._signature.parameters.values())
        positional = [p for p in sig if p.kind in _POSITIONAL]
        var_pos = next((p for p in sig if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
        var_pos_given = var_pos is not None and f"*{var_pos.name}" in values
        last_positional = len(positional) - 1 if var_pos_given else max(
            (
                i
                for i, p in enumerate(positional)
                if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.name in values
            ),
            default=-1,
        )
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for i, p in enumerate(positional):
            if i <= last_positional:
                args.append(values.get(p.name, p.default))
            elif p.name in values:
                kwargs[p.name] = values[p.name]
        if var_pos is not None and var_pos_given:
            args.extend(values[f"*{var_pos.name}"])
        for p in sig:
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name in values:
                kwargs[p.name] = values[p.name]
            elif p.kind is inspect.Parameter.VAR_KEYWORD and f"**{p.name}" in values:
                extra: dict[str, Any] = values[f"**{p.name}"]
                by_position = {q.name for q in positional[: last_positional + 1]}
                clash = sorted(set(extra) & (by_position | set(kwargs)))
                if clash:
                    raise ActionArgumentError(url, self.key, [
                        _error((f"**{p.name}", k), "Duplicates a named parameter",
                               "duplicate_argument")
                        for k in clash
                    ])
                kwargs.update(extra)
        return args, kwargs

    def call(self, params: Mapping[str, Any], *, url: str = "") -> Any:
        """``fn`` called with ``params`` (see :meth:`bind`); the function's own exceptions
        propagate unchanged."""
        args, kwargs = self.bind(params, url=url)
        return self.fn(*args, **kwargs)


def _adapter(hint: Any) -> TypeAdapter[Any] | None:
    try:
        return TypeAdapter(hint)
    except Exception:  # a type pydantic cannot validate (numpy arrays...): accept any value
        return None


def _error(loc: tuple[Any, ...], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": kind}


def actions_of(module: ModuleType) -> dict[str, ActionSpec]:
    """The actions of ``module`` by name: the functions defined in it (not imported into
    it) that carry ``@jsorc_action``, in definition order. A name or alias used twice is an
    error naming both."""
    default_group = module.__name__.rsplit(".", 1)[-1]
    found: dict[str, ActionSpec] = {}
    owner: dict[str, str] = {}
    for attr, fn in vars(module).items():
        mark = getattr(fn, MARK_ATTR, None)
        if not isinstance(mark, _Mark) or getattr(fn, "__module__", None) != module.__name__:
            continue
        spec = ActionSpec.of(
            fn,
            name=mark.name,
            group=mark.group or default_group,
            aliases=mark.aliases,
            allow_remote=mark.allow_remote,
        )
        for path in spec.paths:
            if path in owner:
                raise ValueError(
                    f"module {module.__name__}: action name {path!r} is used by both "
                    f"{owner[path]} and {attr}"
                )
            owner[path] = attr
        found[spec.name] = spec
    return found


def spec_of(actions: Mapping[str, ActionSpec], *, remote_only: bool = True) -> dict[str, list[str]]:
    """The Jaseci spec of ``actions``: ``{"group.name": [param, ...]}``, each alias its own
    key; with ``remote_only`` (the default) only the actions an action server serves."""
    return {
        key: list(spec.params)
        for spec in actions.values()
        if spec.allow_remote or not remote_only
        for key in spec.keys
    }


def find_action(actions: Mapping[str, ActionSpec], name: str) -> ActionSpec | None:
    """The action called ``name``: its name, an alias, or either as ``group.name``."""
    group, _, short = name.rpartition(".")
    for spec in actions.values():
        if short in spec.paths and (not group or group == spec.group):
            return spec
    return None
