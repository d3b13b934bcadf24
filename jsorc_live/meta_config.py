"""META_CONFIG, the document JSORC is turned on with, checked at the door.

Jaseci 1.4's users turn JSORC on with `config_set META_CONFIG` (a JSON string, or an object)
then `service_refresh meta`; Jaseci 1.4.2 names the same document `JSORC_CONFIG`. Its keys are
JSORC's, which are jsorc's `Settings` (jsorc_live.api):

    {"automation": true, "backoff_interval": 10, "namespace": "default",
     "keep_alive": ["promon", "redis"], "kubernetes": {"in_cluster": true, "config": null}}

`parse_meta_config(raw, base)` reads a document onto `base` (the keys it leaves out keep their
value, so `{"automation": true}` alone is a whole document) and checks every key with
pydantic: unknown keys, wrong types (strict: `"true"` is not a boolean), NaN and infinities are
refused with a message naming each (`MetaConfigError`). JSORC's service names in `keep_alive`
become jsorc's (`promon`, `prome`: prometheus). `apply_to(settings, doc)` sets a checked
document on the live settings all at once: every key is first set on a copy, so a value the
settings refuse changes nothing. Both are pure but for the settings they are handed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["CONFIG_NAMES", "SERVICE_ALIASES", "KubernetesConfig", "MetaConfig",
           "MetaConfigError", "apply_to", "parse_meta_config"]

#: The names Jaseci gives the document: the seed's, and Jaseci 1.4.2's.
CONFIG_NAMES = ("META_CONFIG", "JSORC_CONFIG")

#: JSORC's names of the services jsorc keeps alive under another name.
SERVICE_ALIASES: Mapping[str, str] = {"promon": "prometheus", "prome": "prometheus"}


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


class MetaConfig(BaseModel):
    """The whole document; every key is required here because `parse_meta_config` fills
    the ones a request leaves out from the current settings."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    automation: bool
    backoff_interval: float = Field(gt=0)
    namespace: str = Field(min_length=1)
    keep_alive: list[str]
    kubernetes: bool | KubernetesConfig | None  # None, false: no Kubernetes
    max_replicas: int = Field(ge=1)  # the replica cap of any one action

    @field_validator("keep_alive")
    @classmethod
    def _jsorc_names(cls, names: list[str]) -> list[str]:
        if any(not name for name in names):
            raise ValueError("service names must be non-empty")
        return list(dict.fromkeys(SERVICE_ALIASES.get(n, n) for n in names))

    def as_settings(self) -> dict[str, Any]:
        """The document as `Settings.set` takes it (JSON values)."""
        return self.model_dump(mode="json")


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
        where = ".".join(loc) or "(document)"
        if err["type"] == "extra_forbidden":
            out.append(f"{where}: unknown key (known: {known_here})")
        else:
            out.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return out


def apply_to(settings: Any, doc: MetaConfig) -> None:
    """Set every key of `doc` on `settings` (a dataclass with `set(name, value)`, which may
    refuse a value by raising): on a copy first, then on the live object, so a refusal
    leaves it as it was."""
    trial = copy.deepcopy(settings)
    for key, value in doc.as_settings().items():
        trial.set(key, value)
    for f in dataclasses.fields(settings):
        setattr(settings, f.name, getattr(trial, f.name))
