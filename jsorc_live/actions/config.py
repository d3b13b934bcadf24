"""Action configs, like jaseci_ai_kit's ``ACTION_CONFIGS``: per action, the module that
implements it, the memory a local copy takes, and what a backend needs to start it remotely.

``ACTION_CONFIGS`` holds the example actions (``jsorc_live.actions.examples``). Their memory
is a fraction of the real models' (jaseci_ai_kit's figures, :data:`REAL_MEMORY_MB`): 1/50 by
default so that the demo fits a small machine, set with the environment variable
``JSORC_ACTION_SCALE`` (a number in (0, 1], 1 for the real sizes) before this module is
imported, or per config with :func:`example_configs`.

``jsorc actions config NAME CONFIG_MODULE`` looks a config up with :func:`load_action_config`,
which imports only config modules it is told to trust (by default this one): a config
module's name comes from a request, so it is never imported just because it was named.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsorc_live.runtime_types import check_timeout

__all__ = [
    "ACTION_CONFIGS",
    "DEFAULT_CONFIG_MODULE",
    "DEFAULT_SCALE",
    "REAL_MEMORY_MB",
    "SCALE_ENV",
    "ActionConfig",
    "ConfigError",
    "KubernetesSpec",
    "action_scale",
    "example_configs",
    "load_action_config",
    "parse_cpu",
    "parse_memory_mb",
    "scaled_memory_mb",
    "server_command",
]

SCALE_ENV = "JSORC_ACTION_SCALE"
DEFAULT_SCALE = 1 / 50
DEFAULT_CONFIG_MODULE = "jsorc_live.actions.config"
EXAMPLES_PACKAGE = "jsorc_live.actions.examples"

#: Local memory of the real models in MB: jaseci_ai_kit's ACTION_CONFIGS
#: (``local_mem_requirement``); vc_tts and stt have no config there and are ESTIMATES, the
#: same as the simulator's scenario (experiments/scenarios/jsorc_loadtest.toml).
REAL_MEMORY_MB: Mapping[str, float] = {
    "use_enc": 3998,
    "use_qa": 2157,
    "text_seg": 1706,
    "sbert_sim": 1209,
    "tfm_ner": 1014,
    "bi_enc": 334,
    "cl_summer": 152,
    "ent_ext": 4050,
    "vc_tts": 2600,  # ESTIMATE: voice-cloning TTS (synthesiser + vocoder + speaker encoder)
    "stt": 1500,  # ESTIMATE: a Whisper-base-sized speech-to-text model with its runtime
}

#: Memory of an action-server process beside its model's weights (Python, numpy, pydantic,
#: uvicorn, Starlette, prometheus-client): 68 MB RSS measured here (use_enc: 148 MB in all
#: for 80 MB of weights), rounded up.
SERVER_OVERHEAD_MB = 70.0

#: Image the Kubernetes backend runs; built from this package (not published yet).
DEFAULT_IMAGE = "jsorc/action-server:0.1.0"

#: jac-splice-orc's per-module keys, read as aliases by :meth:`ActionConfig.from_dict`:
#: ``lib_mem_size_req`` ("2Gi") is a replica's memory, ``lib_cpu_req`` ("500m") its CPU,
#: ``load_type`` (local/remote) the mode a first call loads the action in.
SPLICE_ALIASES: Mapping[str, str] = {"lib_mem_size_req": "remote_memory_mb",
                                     "lib_cpu_req": "remote_cores", "load_type": "default_mode"}
MODES = ("local", "remote")

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_memory_mb(value: object) -> float:
    """A Kubernetes memory quantity in MB (MiB): "2Gi" -> 2048, "512Mi" -> 512, "1G" ->
    953.67, a bare number of bytes. A number (not a string) is taken as MB already."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _QUANTITY.match(value) if isinstance(value, str) else None
    unit = match.group(2) if match else ""
    if match is None or (unit and unit not in _BINARY and unit not in _DECIMAL):
        raise ConfigError(f"memory must be a quantity like 2Gi, 512Mi or 1G, got {value!r}")
    factor = _BINARY.get(unit) or _DECIMAL.get(unit) or 1
    return float(match.group(1)) * factor / 2**20


def parse_cpu(value: object) -> float:
    """A Kubernetes CPU quantity in cores: "500m" -> 0.5, "2" -> 2.0; a number is cores."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _QUANTITY.match(value) if isinstance(value, str) else None
    if match is None or match.group(2) not in ("", "m"):
        raise ConfigError(f"cpu must be a quantity like 500m or 2, got {value!r}")
    return float(match.group(1)) / (1000.0 if match.group(2) == "m" else 1.0)


class ConfigError(LookupError):
    """A config module that is not trusted or has no such action, or a bad config."""


def action_scale(environ: Mapping[str, str] | None = None) -> float:
    """The fraction of the real model sizes the examples allocate: ``JSORC_ACTION_SCALE``
    from ``environ`` (default ``os.environ``), else 1/50. Refuses anything outside (0, 1]."""
    env = os.environ if environ is None else environ
    raw = env.get(SCALE_ENV, "").strip()
    if not raw:
        return DEFAULT_SCALE
    try:
        scale = float(raw)
    except ValueError:
        raise ConfigError(f"{SCALE_ENV} must be a number in (0, 1], got {raw!r}") from None
    if not (0 < scale <= 1) or math.isnan(scale):
        raise ConfigError(f"{SCALE_ENV} must be a number in (0, 1], got {raw!r}")
    return scale


def scaled_memory_mb(action: str, scale: float | None = None) -> float:
    """``action``'s real memory times ``scale`` (default :func:`action_scale`), in MB."""
    if action not in REAL_MEMORY_MB:
        raise ConfigError(f"no real memory figure for {action!r}; known: {sorted(REAL_MEMORY_MB)}")
    s = action_scale() if scale is None else scale
    if not (0 < s <= 1):
        raise ConfigError(f"scale must be in (0, 1], got {s!r}")
    return round(REAL_MEMORY_MB[action] * s, 3)


@dataclass(frozen=True)
class KubernetesSpec:
    """What the Kubernetes backend needs for one replica: the image, the container port, the
    container command, and requests (= limits) of CPU cores and memory."""

    image: str
    port: int
    command: tuple[str, ...]
    cpu: float
    memory_mb: int


@dataclass(frozen=True)
class ActionConfig:
    """One action's config.

    ``module`` implements it (an importable module name); ``local_memory_mb`` is what a local
    copy takes on the runtime's node (its weights; the loader measures the real figure),
    ``remote_memory_mb`` what one replica's process takes, ``remote_cores`` the cores a
    replica gets (> 0; the Kubernetes CPU request, and, rounded up, the calls one replica
    serves at once in the observations). ``setup`` is passed to the module's ``setup()``
    locally and remotely (as the server's ``--setup``), so both copies are the same model.
    ``real_memory_mb`` is the real model's figure when this one is scaled down.
    ``default_mode`` (local/remote) is where a first call to an unloaded action loads it.
    ``image``, ``port`` and ``container_command`` are a Kubernetes replica's container: the
    command defaults to the action server for ``module`` on all interfaces at ``port``.
    ``call_timeout_s`` is each call's deadline (a finite number of seconds > 0; None: the
    runtime's, 30 s by default); ``idempotent`` declares that a call may run twice without
    harm, so one that was sent and got no answer may be sent again (a call that was never
    sent is always sent again).
    """

    name: str
    module: str
    local_memory_mb: float
    remote_memory_mb: float
    remote_cores: float = 1.0
    setup: Mapping[str, Any] = field(default_factory=dict)
    real_memory_mb: float | None = None
    image: str = DEFAULT_IMAGE
    port: int = 80
    default_mode: str = "local"
    container_command: tuple[str, ...] | None = None
    call_timeout_s: float | None = None
    idempotent: bool = False

    def __post_init__(self) -> None:
        if self.default_mode not in MODES:
            raise ConfigError(f"action {self.name!r}: default_mode (load_type) must be local "
                              f"or remote, got {self.default_mode!r}")
        if not isinstance(self.port, int) or isinstance(self.port, bool) \
                or not 0 < self.port < 65536:
            raise ConfigError(f"action {self.name!r}: port must be 1-65535, got {self.port!r}")
        command: object = self.container_command  # from a plain mapping: any JSON value
        if command is not None:
            if not isinstance(command, list | tuple) or not command \
                    or not all(isinstance(c, str) for c in command):
                raise ConfigError(f"action {self.name!r}: command must be a non-empty list "
                                  f"of strings, got {command!r}")
            object.__setattr__(self, "container_command", tuple(command))
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", self.module):
            raise ConfigError(f"action {self.name!r}: module {self.module!r} is not a module name")
        for what in ("local_memory_mb", "remote_memory_mb", "remote_cores"):
            value = getattr(self, what)
            if not (isinstance(value, int | float) and not isinstance(value, bool)
                    and value >= 0 and math.isfinite(value)):
                raise ConfigError(f"action {self.name!r}: {what} must be >= 0, got {value!r}")
        if self.remote_cores <= 0:  # a replica with no core serves nothing
            raise ConfigError(f"action {self.name!r}: remote_cores must be > 0, "
                              f"got {self.remote_cores!r}")
        try:
            check_timeout(self.call_timeout_s, f"action {self.name!r}: call_timeout_s",
                          optional=True)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not isinstance(self.idempotent, bool):
            raise ConfigError(f"action {self.name!r}: idempotent must be true or false, "
                              f"got {self.idempotent!r}")

    def command(
        self, host: str = "127.0.0.1", port: int = 0, *, python: str | None = None
    ) -> list[str]:
        """The command line of one replica for the process backend (``port=0``: the server
        picks a free port and prints it, see ``server.py``)."""
        return server_command(self.module, host, port, setup=self.setup, python=python)

    def kubernetes(self) -> KubernetesSpec:
        """The replica's container for the Kubernetes backend (all interfaces, ``port``)."""
        return KubernetesSpec(
            image=self.image,
            port=self.port,
            command=self.container_command or tuple(
                server_command(self.module, "0.0.0.0", self.port, setup=self.setup,
                               python="python")
            ),
            cpu=self.remote_cores,
            memory_mb=math.ceil(self.remote_memory_mb),
        )

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> ActionConfig:
        """A config from a plain mapping: this class's field names, jaseci_ai_kit's
        (``module``, ``local_mem_requirement``; its Kubernetes manifests are not used), or
        jac-splice-orc's (:data:`SPLICE_ALIASES`; ``command`` for ``container_command``)."""
        if "module" not in data:
            raise ConfigError(f"action {name!r}: config has no 'module'")
        data = dict(data)
        for alias, field_name in (*SPLICE_ALIASES.items(), ("command", "container_command")):
            if alias in data:
                if field_name in data:
                    raise ConfigError(f"action {name!r}: give {field_name} or {alias}, not both")
                data[field_name] = data.pop(alias)
        local = float(data.get("local_memory_mb", data.get("local_mem_requirement", 0.0)))
        remote = data.get("remote_memory_mb", local + SERVER_OVERHEAD_MB)
        known = {"setup", "real_memory_mb", "image", "port", "default_mode",
                 "container_command", "call_timeout_s", "idempotent"}
        extra: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        if "remote_cores" in data:
            extra["remote_cores"] = parse_cpu(data["remote_cores"])
        return cls(
            name=name,
            module=str(data["module"]),
            local_memory_mb=local,
            remote_memory_mb=parse_memory_mb(remote),
            **extra,
        )


def server_command(
    module: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    setup: Mapping[str, Any] | None = None,
    python: str | None = None,
) -> list[str]:
    """The command line of an action server for ``module`` (a module name or a .py file):
    ``python -m jsorc_live.actions.server MODULE --host H --port P [--setup JSON]``."""
    cmd = [python or sys.executable, "-m", "jsorc_live.actions.server", module,
           "--host", host, "--port", str(port)]
    if setup:
        cmd += ["--setup", json.dumps(dict(setup), sort_keys=True)]
    return cmd


def example_configs(scale: float | None = None) -> dict[str, ActionConfig]:
    """Configs of the example actions at ``scale`` (default :func:`action_scale`)."""
    out: dict[str, ActionConfig] = {}
    for name, real in REAL_MEMORY_MB.items():
        mb = scaled_memory_mb(name, scale)
        out[name] = ActionConfig(
            name=name,
            module=f"{EXAMPLES_PACKAGE}.{name}",
            local_memory_mb=mb,
            remote_memory_mb=round(mb + SERVER_OVERHEAD_MB, 3),
            setup={"memory_mb": mb},
            real_memory_mb=real,
        )
    return out


ACTION_CONFIGS: dict[str, ActionConfig] = example_configs()


def load_action_config(
    config_module: str,
    name: str,
    *,
    trusted: Collection[str] = (DEFAULT_CONFIG_MODULE,),
) -> ActionConfig:
    """``name``'s config from ``config_module``'s ``ACTION_CONFIGS``.

    Only modules in ``trusted`` are imported (an operator widens it, a request never does);
    entries may be :class:`ActionConfig` or plain mappings (see :meth:`ActionConfig.from_dict`).
    """
    if config_module not in trusted:
        raise ConfigError(
            f"config module {config_module!r} is not trusted (trusted: {sorted(trusted)})"
        )
    try:
        module = importlib.import_module(config_module)
    except ImportError as e:
        raise ConfigError(f"config module {config_module!r} cannot be imported: {e}") from e
    configs = getattr(module, "ACTION_CONFIGS", None)
    if not isinstance(configs, Mapping):
        raise ConfigError(f"config module {config_module!r} has no ACTION_CONFIGS mapping")
    if name not in configs:
        raise ConfigError(
            f"no action {name!r} in {config_module}.ACTION_CONFIGS; it has {sorted(configs)}"
        )
    entry = configs[name]
    if isinstance(entry, ActionConfig):
        return entry
    if isinstance(entry, Mapping):
        return ActionConfig.from_dict(name, entry)
    raise ConfigError(f"{config_module}.ACTION_CONFIGS[{name!r}] is a {type(entry).__name__}")
