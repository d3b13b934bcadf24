"""Jaseci 1.4's ops as data: names, paths, argument names, and how a body becomes arguments.

Jaseci serves every op at `/js_admin/<op>` (admin) or `/js/<op>` (a user's), the path built
from the op's name (jaseci_serv/jac_api/api.py). `OPS` lists the JSORC ops of Jaseci 1.4.2.6
with its signatures (jaseci/extens/api/jsorc_api.py, config_api.py, walker_api.py; a test
reads them from Jaseci's source); `coerce_args` turns a request body into the keyword
arguments of one (pure):

- jsctl sends every parameter of the signature, `dict` ones as JSON text
  (`"policy_params": "{}"`), None as null, and its own `output`; JSORC's tests send `op`; a
  form sends strings. All are accepted; any other field is refused, naming it.
- A Jaseci parameter that means nothing to jsorc (walker_run's `nd`, `snt`, `profiling`...) is
  accepted at its default only: another value would be ignored, so it is refused, with why.

JSORC's policy names map to jsorc's registered ones (`registered_policy`), and its Evaluation
parameters to jsorc's names (`jsorc_policy_params`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jsorc_live.api_models import BadRequest, read_json_value
from jsorc_live.runtime import RuntimeRefusal

__all__ = ["ADMIN", "JASECI_KITS", "JSORC_POLICIES", "MANUAL_POLICIES", "OPS", "USER", "Arg",
           "Op", "coerce_args", "jsorc_policy_params", "registered_policy", "request_schema"]

# --------------------------------------------------------------------------- names

#: JSORC's policy names (any case) -> jsorc's registered ones.
JSORC_POLICIES: Mapping[str, str] = {"default": "default", "evaluation": "evaluation",
                                     "adaptive": "adaptive", "predictive": "predictive"}

#: JSORC's Evaluation parameters -> jsorc's (`policies.jsorc`).
JSORC_POLICY_PARAMS: Mapping[str, str] = {"eval_phase": "eval_phase_s",
                                          "perf_phase": "perf_phase_s",
                                          "jaseci_runtime_mem": "runtime_memory_mb"}

#: Policies that place nothing: under them, automation on still leaves loads to the user.
MANUAL_POLICIES = frozenset({"default", "none"})

#: Jaseci's AI-kit config modules: their models are not jsorc's example actions.
JASECI_KITS = frozenset({"jaseci_ai_kit.config", "jac_nlp.config", "jac_speech.config",
                         "jac_vision.config", "jac_misc.config"})


def registered_policy(name: str) -> str:
    """jsorc's registered name for one of JSORC's policy names (any case); others as given
    (a registered name or module:Class, which the registry checks against the server's
    allow-list before importing anything). A name that is not a non-empty string is refused."""
    if not isinstance(name, str) or not name.strip():
        raise RuntimeRefusal(f"policy name must be a non-empty string, got {name!r:.80}")
    return JSORC_POLICIES.get(name.casefold(), name)


def jsorc_policy_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """JSORC's Evaluation parameters under jsorc's names (pure). `node_mem` is refused:
    jsorc reads the node's memory, it is not a parameter."""
    if "node_mem" in params:
        raise RuntimeRefusal("policy_params node_mem: jsorc measures the node's memory "
                             "itself (psutil); leave node_mem out")
    return {JSORC_POLICY_PARAMS.get(k, k): v for k, v in params.items()}


# --------------------------------------------------------------------------- arguments

_REQUIRED: Any = object()
ADMIN, USER = "js_admin", "js"


@dataclass(frozen=True)
class Arg:
    """One parameter of a Jaseci op: its name, type (str, bool, int, float, dict or object:
    any JSON) and default. `fixed`: Jaseci's, without meaning here; only the default (or
    null) is accepted, and `why` says why."""

    name: str
    kind: type = str
    default: Any = _REQUIRED
    fixed: bool = False
    why: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


@dataclass(frozen=True)
class Op:
    """A Jaseci op: where it is served, its arguments, and the JaseciApi method running it."""

    name: str
    prefix: str
    args: tuple[Arg, ...]
    method: str

    @property
    def path(self) -> str:
        return f"/{self.prefix}/{self.name}"


#: Fields clients add to every op: jsctl's `-o/--output` (a file it writes itself) and the
#: op's own name (JSORC's tests post it).
CLIENT_FIELDS = ("output", "op")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _coerce(op: str, arg: Arg, value: Any) -> Any:
    where = f"{op}: {arg.name}"
    if arg.kind is object:
        return value
    if arg.kind is dict:
        if isinstance(value, str):  # jsctl sends dict parameters as JSON text
            if not value.strip():
                return {}
            try:
                value = read_json_value(value)
            except BadRequest as exc:
                raise RuntimeRefusal(f"{where} must be a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise RuntimeRefusal(f"{where} must be a JSON object, got {value!r:.80}")
        return value
    if arg.kind is bool:
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, bool):
            return value
        raise RuntimeRefusal(f"{where} must be true or false, got {value!r:.80}")
    if arg.kind in (int, float):
        number = value
        if isinstance(value, str):
            try:
                number = int(value) if arg.kind is int else float(value)
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, int | float) \
                or not math.isfinite(number) or (arg.kind is int and number != int(number)):
            what = "an integer" if arg.kind is int else "a number"
            raise RuntimeRefusal(f"{where} must be {what}, got {value!r:.80}")
        return int(number) if arg.kind is int else float(number)
    if not isinstance(value, str):
        raise RuntimeRefusal(f"{where} must be a string, got {value!r:.80}")
    if arg.required and not value:
        raise RuntimeRefusal(f"{where} must be a non-empty string")
    return value


def coerce_args(op: Op, body: Mapping[str, Any]) -> dict[str, Any]:
    """The op's keyword arguments from a request body (pure); RuntimeRefusal (400) names
    a missing, unknown or ill-typed field."""
    if body.get("op", op.name) != op.name:
        raise RuntimeRefusal(f"field op is {body['op']!r} but this is {op.path}")
    known = {a.name for a in op.args}
    unknown = sorted(set(body) - known - set(CLIENT_FIELDS))
    if unknown:
        takes = ", ".join(a.name for a in op.args) or "no arguments"
        raise RuntimeRefusal(f"{op.name}: unknown field(s) {', '.join(unknown)} "
                             f"({op.name} takes {takes})")
    out: dict[str, Any] = {}
    for arg in op.args:
        value = body.get(arg.name)
        if value is None:  # absent, or jsctl's None
            if arg.required:
                raise RuntimeRefusal(f"{op.name}: missing field {arg.name!r}")
            out[arg.name] = arg.default
            continue
        value = _coerce(op.name, arg, value)
        if arg.fixed and value != arg.default:
            raise RuntimeRefusal(f"{op.name}: {arg.name}={value!r} is not supported: "
                                 f"{arg.why} (leave it out, or {arg.default!r})")
        out[arg.name] = value
    return out


_KIND_SCHEMAS: Mapping[type, list[dict[str, Any]]] = {
    str: [{"type": "string"}],
    bool: [{"type": "boolean"}, {"type": "string", "enum": sorted(_TRUE | _FALSE)}],
    int: [{"type": "integer"}, {"type": "string", "pattern": r"^\s*[+-]?[0-9]+\s*$"}],
    float: [{"type": "number"},
            {"type": "string", "pattern": r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)"
                                         r"([eE][+-]?[0-9]+)?\s*$"}],
    dict: [{"type": "object"}, {"type": "string", "description": "the object as JSON text"}],
}


def _arg_schema(arg: Arg) -> dict[str, Any]:
    """What `_coerce` takes for `arg` (null is its default), as JSON Schema."""
    if arg.kind is object:
        return {"description": "any JSON value"}
    if arg.fixed:  # only the default means anything here
        if isinstance(arg.default, bool):
            words = sorted(_TRUE if arg.default else _FALSE)
            kinds: list[dict[str, Any]] = [{"const": arg.default},
                                           {"type": "string", "enum": words}]
        elif arg.default is None:
            kinds = []
        else:
            kinds = [{"const": arg.default}]
        kinds.append({"type": "null"})
        return {"anyOf": kinds, "description": f"not supported: {arg.why}"}
    kinds = [dict(k) for k in _KIND_SCHEMAS[arg.kind]]
    if arg.kind is str and arg.required:
        kinds[0]["minLength"] = 1
    if not arg.required:
        kinds.append({"type": "null"})
    return {"anyOf": kinds} if len(kinds) > 1 else kinds[0]


def request_schema(op: Op) -> dict[str, Any]:
    """The JSON Schema of `op`'s body, as `coerce_args` reads it (pure): jsctl's strings
    for numbers and booleans, null for a default, and the clients' own fields."""
    properties: dict[str, Any] = {arg.name: _arg_schema(arg) for arg in op.args}
    properties["op"] = {"const": op.name, "description": "the op's name (JSORC's tests)"}
    properties["output"] = {"description": "jsctl's -o: a file jsctl writes itself"}
    return {"type": "object", "properties": properties,
            "required": [arg.name for arg in op.args if arg.required],
            "additionalProperties": False}


def _op(name: str, *args: Arg, prefix: str = ADMIN, method: str = "") -> Op:
    return Op(name, prefix, args, method or name.removeprefix("jsorc_"))


# Jaseci 1.4.2.6's signatures (jaseci/extens/api/jsorc_api.py, config_api.py, walker_api.py),
# in their order; jsorc's own extensions to actions_load (url, replicas) are optional.
OPS: Mapping[str, Op] = {op.name: op for op in (
    _op("jsorc_actions_config", Arg("config"), Arg("name")),
    _op("jsorc_actions_load", Arg("name"), Arg("mode"), Arg("url", str, None),
        Arg("replicas", int, None)),
    _op("jsorc_actions_status", Arg("name")),
    _op("jsorc_actions_unload", Arg("name"), Arg("mode", str, "auto"),
        Arg("retire_svc", bool, True, fixed=True,
            why="jsorc always stops the replicas it started for an unloaded action")),
    _op("jsorc_actionpolicy_set", Arg("policy_name"), Arg("policy_params", dict, {})),
    _op("jsorc_actionpolicy_get"),
    _op("jsorc_trackact_start"),
    _op("jsorc_trackact_stop"),
    _op("jsorc_benchmark_start"),
    _op("jsorc_benchmark_report"),
    _op("jsorc_benchmark_stop", Arg("report", bool, True)),
    _op("jsorc_tracksys_start"),
    _op("jsorc_tracksys_report"),
    _op("jsorc_tracksys_stop"),
    _op("jsorc_loadtest", Arg("test"), Arg("experiment", str, ""), Arg("mem", int, 0),
        Arg("policy", str, "all_local"), Arg("experiment_duration", float, 180.0),
        Arg("eval_phase", float, 10.0), Arg("perf_phase", float, 100.0)),
    _op("jsorc_refresh"),
    # do_check: Jaseci's check of the name against its list; jsorc knows its two names
    # whatever the value, so both values are honoured alike.
    _op("config_get", Arg("name"), Arg("do_check", bool, True), method="config_get"),
    _op("config_set", Arg("name"), Arg("value", object), Arg("do_check", bool, True),
        method="config_set"),
    _op("service_info", Arg("name"), method="service_info"),
    _op("service_refresh", Arg("name"), method="service_refresh"),
    _op("walker_run", Arg("name"),
        Arg("nd", str, None, fixed=True, why="jsorc's walkers run on no graph"),
        Arg("ctx", dict, {}),
        Arg("_req_ctx", dict, {}, fixed=True, why="jsorc's walkers read only ctx"),
        Arg("snt", str, None, fixed=True, why="jsorc has no sentinels"),
        Arg("profiling", bool, False, fixed=True, why="jsorc does not profile walkers"),
        Arg("is_async", bool, False, fixed=True, why="jsorc runs walkers synchronously"),
        prefix=USER, method="walker_run"),
)}
