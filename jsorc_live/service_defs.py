"""What a kept-alive service is: a definition (name, command or Kubernetes manifest, health
check, restart backoff, config version), as frozen data. The pure half of keep-alive:
jsorc_live.service_kinds holds the built-in definitions and the probes, jsorc_live.services
runs them.

A command is a list of words in which `{host}`, `{port}`, `{data}`, `{workdir}`, `{config}`
and `{password_file}` are replaced when the service starts (`expand`): the port is a free one
on 127.0.0.1, chosen once and kept across restarts, `data` a folder that survives them. Two
definitions that compare equal are the same service; any other difference (command, health,
backoff, config_version...) is a change, and a changed definition restarts its service.

Everything here is pure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

__all__ = ["PLACEHOLDERS", "Backoff", "HealthCheck", "HealthKind", "ServiceDefinition",
           "expand"]

#: The words a command may hold, replaced at start (see `expand`).
PLACEHOLDERS = ("host", "port", "data", "workdir", "config", "password_file")


@dataclass(frozen=True)
class Backoff:
    """Restart delays: `initial_s`, times `factor` after each failed run, at most `max_s`;
    a run that stayed up `reset_after_s` starts the sequence again."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    reset_after_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"Backoff needs 0 < initial_s <= max_s, got initial_s="
                             f"{self.initial_s}, max_s={self.max_s}")
        if self.factor < 1:
            raise ValueError(f"Backoff factor must be >= 1, got {self.factor}")

    def delays(self) -> Iterator[float]:
        """0.5, 1, 2, 4, ... capped at max_s (pure)."""
        delay = self.initial_s
        while True:
            yield delay
            delay = min(delay * self.factor, self.max_s)


class HealthKind(StrEnum):
    TCP = "tcp"  # the port accepts a connection
    HTTP = "http"  # GET http://host:port{path} answers 2xx
    COMMAND = "command"  # the command exits 0 within timeout_s
    REDIS = "redis"  # PING answers +PONG
    POSTGRESQL = "postgresql"  # a real connection and `SELECT 1`


@dataclass(frozen=True)
class HealthCheck:
    """How to ask a running service whether it answers."""

    kind: HealthKind
    path: str = "/"  # HTTP only
    command: tuple[str, ...] = ()  # COMMAND only; placeholders as in a service's command
    timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if self.kind is HealthKind.COMMAND and not self.command:
            raise ValueError("a command health check needs a command")
        if self.kind is HealthKind.HTTP and not self.path.startswith("/"):
            raise ValueError(f"an http health check's path starts with /, got {self.path!r}")
        if not 0 < self.timeout_s <= 60:
            raise ValueError(f"health timeout_s must be in (0, 60], got {self.timeout_s}")


@dataclass(frozen=True)
class ServiceDefinition:
    """One service jsorc can keep alive.

    `command` runs it as a process (the process backend); `manifest` is what a cluster runs
    instead (deploy/postgresql-statefulset.yaml for PostgreSQL), kept here so one definition
    names both. `init` runs once, before the first start, while the data folder is empty
    (PostgreSQL's initdb). `user`: PostgreSQL refuses to run as root, so when jsorc runs as
    root the service runs as this user, on folders it owns. `persistent`: the data lives in
    the state folder jsorc is given (it outlives `jsorc serve`), else in a temporary one that
    outlives only the service's restarts. `package` names the Debian package to install
    when the program is missing.
    """

    name: str
    command: tuple[str, ...] | None
    health: HealthCheck
    backoff: Backoff = field(default_factory=Backoff)
    config_version: str = ""
    manifest: Mapping[str, Any] | None = None
    init: tuple[str, ...] = ()
    package: str = ""
    scheme: str = "tcp"
    user: str | None = None
    persistent: bool = False
    reloads_on_sighup: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a service needs a name")
        if self.command is not None and not self.command:
            raise ValueError(f"service {self.name}: an empty command")
        if self.manifest is not None:  # frozen: a read-only view, compared by value
            object.__setattr__(self, "manifest", MappingProxyType(dict(self.manifest)))

    def __hash__(self) -> int:
        return hash((self.name, self.command, self.health, self.backoff, self.config_version))

    @property
    def program(self) -> str | None:
        """The program the command runs (looked up on PATH unless absolute)."""
        return self.command[0] if self.command else None


def expand(words: tuple[str, ...], values: Mapping[str, str]) -> list[str]:
    """`words` with each `{name}` of `values` replaced; other braces are left alone, so a
    command's own `{...}` (a JSON argument) survives (pure)."""
    out = []
    for word in words:
        for key, value in values.items():
            word = word.replace("{" + key + "}", value)
        out.append(word)
    return out
