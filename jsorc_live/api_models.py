"""What the HTTP API accepts and answers: strict JSON, the request and response models.

Every request body is read by `read_json_object` (a JSON object; NaN, Infinity, -Infinity
and numbers too large for a float are refused, naming the constant: Python's json module
would otherwise accept them and they would slip past every declared range) and checked by
its route's request model (`check_body`: strict types, unknown fields refused, each problem
named with its value). A refusal is `BadRequest`, which the app answers 400 in JSORC's shape
`{"success": false, "message": ...}`. The same models give the OpenAPI schema
(jsorc_live.api_schema), so what is documented is what is checked.

The models check types only; the service checks values (a mode's name, a known action),
keeping its own messages. Pure: no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "ActionAnswer",
    "ActionName",
    "ActionStatus",
    "ActionpolicySet",
    "ActionsConfig",
    "ActionsLoad",
    "ActionsUnload",
    "Answer",
    "BadRequest",
    "ConfigAnswer",
    "ConfigGet",
    "ConfigSet",
    "Empty",
    "Login",
    "NonFinite",
    "PolicyAnswer",
    "Refusal",
    "ReportAnswer",
    "ServiceName",
    "StatusAnswer",
    "TokenAnswer",
    "WalkerRun",
    "WalkerRunAnswer",
    "WalkerSet",
    "WalkerSetAnswer",
    "WalkerStep",
    "check_body",
    "non_finite",
    "plain",
    "read_json_object",
    "read_json_value",
]

LOAD_MODE_NAMES = ("module", "local", "remote")
UNLOAD_MODE_NAMES = ("auto", "module", "local", "remote")


class BadRequest(ValueError):
    """A body that is not a JSON object of the route's fields: 400, nothing changed."""


class NonFinite(BadRequest):
    """JSON text holding NaN, Infinity, -Infinity or a number too large for a float."""


# --------------------------------------------------------------------------- JSON


def _no_constant(name: str) -> Any:
    raise NonFinite(f"malformed JSON body: {name} is not a JSON number (send a finite "
                     "number, or null)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise NonFinite(f"malformed JSON body: {text} is too large for a number")
    return value


def read_json_value(raw: bytes | str) -> Any:
    """Any JSON value, strictly (no NaN, no infinities); BadRequest names what is wrong."""
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest("malformed JSON body: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, int digit limits
        raise BadRequest(f"malformed JSON body: {exc}") from None


def read_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a dict (an empty body is `{}`); BadRequest names what is wrong."""
    if not raw.strip():
        return {}
    data = read_json_value(raw)
    if not isinstance(data, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(data).__name__}")
    return data


def non_finite(value: Any, where: str) -> str | None:
    """Where `value` (a JSON value, or a k=v string from the CLI) holds NaN or an infinity,
    as a float or as text a float parser would take ("nan", "-inf", "Infinity"); else None.
    Pure."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where}={value!r}"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return None if math.isfinite(number) else f"{where}={value!r}"
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = non_finite(item, f"{where}.{key}")
            if found:
                return found
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = non_finite(item, f"{where}[{i}]")
            if found:
                return found
    return None


def check_body(model: type[BaseModel], data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` checked by `model`, as plain data with the defaults filled in."""
    try:
        return model.model_validate(data).model_dump()
    except ValidationError as exc:
        raise BadRequest("; ".join(_problem(err) for err in exc.errors())) from None


def _problem(err: Any) -> str:
    where = ".".join(str(part) for part in err["loc"])
    if err["type"] == "missing":
        return f"missing field {where!r}"
    if err["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    return f"field {where!r}: {err['msg']}, got {err.get('input')!r:.80}"


def plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities to None, tuples to lists, enums and placements to
    strings (an answer must always serialise: starlette refuses NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


# --------------------------------------------------------------------------- requests


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Empty(_Body):
    """No fields (an empty body or `{}`)."""


class ActionName(_Body):
    name: str = Field(min_length=1, description="a configured action", examples=["text_seg"])


class ActionsConfig(ActionName):
    config: str = Field(min_length=1, description="a trusted config module",
                        examples=["jsorc_live.actions.config"])


class ActionsLoad(ActionName):
    mode: str = Field(json_schema_extra={"enum": list(LOAD_MODE_NAMES)})
    url: str | None = Field(default=None, description="attach this running action server "
                            "(http(s)://host:port; with mode remote)")
    replicas: int | None = Field(default=None, ge=1, description="remote replicas "
                                 "(default 1; at most the server's max_replicas)")


class ActionsUnload(ActionName):
    mode: str = Field(default="auto", json_schema_extra={"enum": list(UNLOAD_MODE_NAMES)})


class ActionpolicySet(_Body):
    policy_name: str = Field(min_length=1, description="a registered policy or JSORC's "
                             "name (Default, Evaluation...)", examples=["hpa", "all_remote"])
    policy_params: dict[str, Any] = Field(default_factory=dict,
                                          description="the policy's parameters, name: value")


class TrackactCalls(_Body):
    since: int | None = Field(default=None, ge=0,
                              description="a cursor from an earlier answer; left out: no "
                                          "calls, only the cursor now")


class BenchmarkWindow(_Body):
    since: int | None = Field(default=None, ge=0,
                              description="a request-log cursor from an earlier answer; left "
                                          "out: no report, only the cursor and clock now")
    start: float | None = Field(default=None, ge=0, allow_inf_nan=False,
                                description="the runtime's clock when the window began (the "
                                            "earlier answer's `now`): throughput's span")


class ConfigGet(_Body):
    name: str | None = Field(default=None, min_length=1,
                             description="one setting; all of them when left out")


class ConfigSet(_Body):
    name: str = Field(min_length=1, examples=["automation", "backoff_interval"])
    value: Any = Field(description="a JSON value, or text the setting reads (\"2.5\")")


class WalkerStep(_Body):
    action: str = Field(min_length=1)
    function: str = Field(min_length=1)
    args: dict[str, str] = Field(default_factory=dict,
                                 description="parameter: the ctx key it takes its value from")
    defaults: dict[str, Any] = Field(default_factory=dict,
                                     description="parameter: value when the ctx lacks its key")


class WalkerSet(_Body):
    name: str = Field(min_length=1, description="a new walker (built-in ones are kept)")
    steps: list[WalkerStep] = Field(min_length=1)


class WalkerRun(_Body):
    name: str = Field(min_length=1, examples=["flow_analysis"])
    ctx: dict[str, Any] = Field(default_factory=dict)


class ServiceName(_Body):
    name: str = Field(min_length=1, description="a kept-alive service")


class Login(BaseModel):
    """Jaseci's login (a JSON object or a form)."""

    email: str
    password: str


# --------------------------------------------------------------------------- answers


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class Refusal(_Answer):
    """Every refusal: the status says which kind, the message says what and why."""

    success: Literal[False]
    message: str


class Answer(_Answer):
    success: Literal[True]
    message: str | None = None


class ActionStatus(_Answer):
    name: str
    mode: Literal["module", "remote", "unloaded"]
    placement: str
    desired: str
    transition: bool
    in_flight: int


class ActionAnswer(Answer):
    action_status: ActionStatus


class PolicyAnswer(Answer):
    policy: str
    params: dict[str, Any]
    decisions: list[Any]


class ConfigAnswer(Answer):
    config: dict[str, Any] | None = None
    name: str | None = None
    value: Any = None


class StatusAnswer(Answer):
    config: dict[str, Any]
    policy: str
    walkers: list[str]
    actions: dict[str, ActionStatus]
    # Which store keeps the state across restarts, when it last saved (jsorc_live.store).
    state: dict[str, Any] | None = None


class CallsAnswer(Answer):
    calls: list[dict[str, Any]]
    cursor: int
    lost: int = 0  # calls after `since` the call log (its newest 1 M) dropped before this read
    tracking: bool  # whether a `trackact` session is running (this read does not touch it)


class ReportAnswer(Answer):
    report: dict[str, Any]


class WindowAnswer(Answer):
    cursor: int  # the request log's cursor now: pass it as `since` next
    now: float  # the runtime's clock now
    report: dict[str, Any] | None = None  # JSORC's benchmark report, when `since` was given


class WalkerSetAnswer(Answer):
    walker: str
    steps: int


class WalkerRunAnswer(Answer):
    report: list[Any]
    request_id: int
    latency_ms: float


class TokenAnswer(_Answer):
    token: str
    expiry: None = None
