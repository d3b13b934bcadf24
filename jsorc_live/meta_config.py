"""META_CONFIG, the document JSORC is turned on with, checked at the door.

Jaseci 1.4's users turn JSORC on with `config_set META_CONFIG` (a JSON string, or an object)
then `service_refresh meta`; Jaseci 1.4.2 names the same document `JSORC_CONFIG`. Its keys are
JSORC's, which are jsorc's `Settings` (jsorc_live.api):

    {"automation": true, "backoff_interval": 10, "namespace": "default",
     "keep_alive": ["promon", "redis", "jaseci-db"],
     "kubernetes": {"in_cluster": true, "config": null}}

and jsorc's own `services`, a table of user-defined services keep_alive may name (any
command; binding it to 127.0.0.1 is the user's job, as is what it serves):

    "services": {"web": {"command": ["python3", "-m", "http.server", "--bind", "127.0.0.1",
                                     "{port}"],
                         "health": {"kind": "http", "path": "/"},
                         "backoff": {"initial_s": 0.5, "max_s": 30, "factor": 2},
                         "config_version": "1"}}

`parse_meta_config(raw, base)` reads a document onto `base` (the keys it leaves out keep their
value, so `{"automation": true}` alone is a whole document) and checks every key with
pydantic: unknown keys, wrong types (strict: `"true"` is not a boolean), NaN and infinities are
refused with a message naming each (`MetaConfigError`). JSORC's service names in `keep_alive`
become jsorc's (`promon`, `prome`: prometheus; `jaseci-db`: postgresql); names jsorc does not
provide (JSORC's `task`, `mail`, any unknown name) are refused with one message naming each
and what jsorc keeps alive. `apply_to(settings, doc)` sets a checked
document on the live settings all at once: every key is first set on a copy, so a value the
settings refuse changes nothing. Both are pure but for the settings they are handed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Collection, Mapping
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from jsorc_live.service_defs import Backoff, HealthCheck, HealthKind, ServiceDefinition
from jsorc_live.service_kinds import ALIASES, BUILTIN_NAMES, NOT_PROVIDED, check_keep_alive

__all__ = ["CONFIG_NAMES", "SERVICE_ALIASES", "BackoffSpec", "HealthSpec", "KubernetesConfig",
           "MetaConfig", "MetaConfigError", "UserService", "apply_to", "check_services",
           "definitions_of", "parse_meta_config"]

#: The names Jaseci gives the document: the seed's, and Jaseci 1.4.2's.
CONFIG_NAMES = ("META_CONFIG", "JSORC_CONFIG")

#: JSORC's names of the services jsorc keeps alive under another name.
SERVICE_ALIASES: Mapping[str, str] = ALIASES

SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


class MetaConfigError(ValueError):
    """A META_CONFIG that is not JSON, not an object, or has a bad key: nothing changed."""


class KubernetesConfig(BaseModel):
    """How the kube backend reaches its API server (jsorc_live.kube.settings.KubeSettings
    reads the same keys; a test keeps the two equal)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    in_cluster: bool = False
    config: str | None = Field(default=None, min_length=1)
    context: str | None = Field(default=None, min_length=1)
    keep_on_shutdown: bool = False


class HealthSpec(BaseModel):
    """A user service's health check: `tcp` (the port accepts), `http` (GET path answers
    2xx) or `command` (exits 0; the command's placeholders as in the service's)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    kind: Literal["tcp", "http", "command"]
    path: str = Field(default="/", pattern=r"^/")
    command: list[str] | None = Field(default=None, min_length=1)
    timeout_s: float = Field(default=1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _command_if_command(self) -> Self:
        if (self.kind == "command") != (self.command is not None):
            raise ValueError("give `command` with kind command, and only then")
        return self


class BackoffSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    initial_s: float = Field(default=0.5, gt=0, le=3600)
    max_s: float = Field(default=30.0, gt=0, le=3600)
    factor: float = Field(default=2.0, ge=1, le=10)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.initial_s > self.max_s:
            raise ValueError(f"initial_s {self.initial_s} is above max_s {self.max_s}")
        return self


class UserService(BaseModel):
    """One entry of META_CONFIG `services`. The command's words may hold {host}, {port}
    (a free port jsorc picks on 127.0.0.1), {data}, {workdir}: the service must bind where
    it is told, which jsorc cannot check."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    command: list[str] = Field(min_length=1)
    health: HealthSpec
    backoff: BackoffSpec = Field(default_factory=BackoffSpec)
    config_version: str = ""

    @field_validator("command")
    @classmethod
    def _words(cls, words: list[str]) -> list[str]:
        if not words[0]:
            raise ValueError("the program (the command's first word) is empty")
        return words

    def definition(self, name: str) -> ServiceDefinition:
        h, b = self.health, self.backoff
        return ServiceDefinition(
            name, tuple(self.command),
            HealthCheck(HealthKind(h.kind), h.path, tuple(h.command or ()), h.timeout_s),
            Backoff(b.initial_s, b.factor, b.max_s), self.config_version)


class MetaConfig(BaseModel):
    """The whole document; every key is required here because `parse_meta_config` fills
    the ones a request leaves out from the current settings."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    automation: bool
    backoff_interval: float = Field(gt=0)
    namespace: str = Field(min_length=1)
    # Before keep_alive: `apply_to` sets the keys in this order, and keep_alive may name
    # a service the same document defines.
    services: dict[str, UserService] = Field(default_factory=dict)
    keep_alive: list[str]
    kubernetes: bool | KubernetesConfig | None  # None, false: no Kubernetes
    max_replicas: int = Field(ge=1)  # the replica cap of any one action

    @field_validator("keep_alive")
    @classmethod
    def _jsorc_names(cls, names: list[str]) -> list[str]:
        if any(not name for name in names):
            raise ValueError("service names must be non-empty")
        return list(dict.fromkeys(SERVICE_ALIASES.get(n, n) for n in names))

    @field_validator("services")
    @classmethod
    def _service_names(cls, services: dict[str, UserService]) -> dict[str, UserService]:
        for name in services:
            _check_name(name)
        return services

    @model_validator(mode="after")
    def _provided(self) -> Self:
        try:
            check_keep_alive(self.keep_alive, [*BUILTIN_NAMES, *self.services])
        except ValueError as exc:
            raise ValueError(f"keep_alive: {exc}") from None
        return self

    def as_settings(self) -> dict[str, Any]:
        """The document as `Settings.set` takes it (JSON values)."""
        return self.model_dump(mode="json")


def _check_name(name: str) -> None:
    if not SERVICE_NAME.match(name):
        raise ValueError(f"service name {name!r}: lower-case letters, digits, - and _, "
                         "starting with a letter, at most 40")
    if name in BUILTIN_NAMES or name in ALIASES or name in NOT_PROVIDED:
        raise ValueError(f"service name {name!r} is JSORC's or jsorc's own: pick another")


def check_services(raw: Any) -> dict[str, Any]:
    """A `services` table checked (ValueError naming the bad entry), as JSON values."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"config services must be an object of name -> {{command, health, "
                         f"backoff, config_version}}, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for name, spec in raw.items():
        _check_name(str(name))
        try:
            out[str(name)] = UserService.model_validate(spec).model_dump(mode="json")
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(entry)'}: "
                                 f"{e['msg']}" for e in exc.errors())
            raise ValueError(f"config services.{name} refused: {problems}") from None
    return out


def definitions_of(services: Mapping[str, Any]) -> dict[str, ServiceDefinition]:
    """The definitions of a checked `services` table (`check_services`' output)."""
    return {name: UserService.model_validate(spec).definition(name)
            for name, spec in services.items()}


def parse_meta_config(raw: Any, base: Mapping[str, Any], *, name: str = "META_CONFIG"
                      ) -> MetaConfig:
    """`raw` (a JSON string or an object) over `base`, checked; MetaConfigError otherwise."""
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MetaConfigError(f"{name} refused, nothing changed: not JSON ({exc}); "
                                  "send an object like {\"automation\": true}") from None
    if not isinstance(raw, Mapping):
        raise MetaConfigError(f"{name} refused, nothing changed: it must be a JSON object "
                              f"of {', '.join(MetaConfig.model_fields)}, got "
                              f"{type(raw).__name__}")
    try:
        return MetaConfig.model_validate({**base, **raw})
    except ValidationError as exc:
        raise MetaConfigError(f"{name} refused, nothing changed: "
                              + "; ".join(_problems(exc, raw))) from None


def _problems(exc: ValidationError, raw: Mapping[str, Any]) -> list[str]:
    """One short line per bad key. The `kubernetes` union reports both of its branches;
    keep the one the value was meant for."""
    known = ", ".join(MetaConfig.model_fields)
    out: list[str] = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        if loc[:1] == ["kubernetes"] and len(loc) > 1:
            if not isinstance(raw.get("kubernetes"), Mapping):
                line = ("kubernetes: must be true, false, null or an object {"
                        + ", ".join(KubernetesConfig.model_fields) + "}")
                if line not in out:
                    out.append(line)
                continue
            if loc[1] != "KubernetesConfig":
                continue
            loc = ["kubernetes", *loc[2:]]
            known_here = ", ".join(KubernetesConfig.model_fields)
        else:
            known_here = known
        if loc[:1] == ["services"] and len(loc) > 2:
            known_here = ", ".join(_nested_fields(loc[2:]))
        if not loc and err["type"] == "value_error":  # the whole-document check
            out.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        where = ".".join(loc) or "(document)"
        if err["type"] == "extra_forbidden":
            out.append(f"{where}: unknown key (known: {known_here})")
        else:
            out.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return out


def _nested_fields(loc: list[str]) -> list[str]:
    """The keys allowed where a `services` entry's unknown key `loc[-1]` sits."""
    nested: dict[str, type[BaseModel]] = {"health": HealthSpec, "backoff": BackoffSpec}
    model: type[BaseModel] = UserService
    for part in loc[:-1]:
        model = nested.get(part, model)
    return list(model.model_fields)


def apply_to(settings: Any, doc: MetaConfig, only: Collection[str] | None = None) -> None:
    """Set every key of `doc` (or those in `only`) on `settings` (a dataclass with
    `set(name, value)`, which may refuse a value by raising): on a copy first, then on the
    live object, so a refusal leaves it as it was."""
    trial = copy.deepcopy(settings)
    items = {k: v for k, v in doc.as_settings().items() if only is None or k in only}
    if "services" in items and "keep_alive" in items:
        # The two change together: keep_alive may drop a service the new table drops too,
        # which the services key alone refuses while keep_alive still names it.
        trial.set("keep_alive", [])
    for key, value in items.items():
        trial.set(key, value)
    for f in dataclasses.fields(settings):
        setattr(settings, f.name, getattr(trial, f.name))
