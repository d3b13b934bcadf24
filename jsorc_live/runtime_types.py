"""The types the live runtime, its routers and the backends share.

A module of its own so that the router (jsorc_live.router), the runtime that holds the
routers (jsorc_live.runtime) and the backends that start replicas (jsorc_live.backend,
jsorc_live.kube) can name them without importing each other. jsorc_live.runtime re-exports
every name, so `from jsorc_live.runtime import ActionInfo, Replica, ...` keeps working.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from policies import Mode

if TYPE_CHECKING:
    from jsorc_live.actions.config import KubernetesSpec


class RuntimeRefusal(ValueError):
    """A request the runtime refuses (unknown action or walker, bad mode...): a 4xx."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class CallFailed(RuntimeError):
    """An action call that failed (the action raised, or no placement answered in time)."""


class LocalHandle(Protocol):
    """An action module loaded into this process (jsorc_live.actions.loader.LocalModule)."""

    @property
    def memory_mb(self) -> float: ...

    def call(self, name: str, kwargs: dict[str, Any]) -> Any: ...

    def unload(self) -> object: ...


class RemoteClient(Protocol):
    """A client of one action server (jsorc_live.actions.client.RemoteActions)."""

    def call(self, name: str, kwargs: dict[str, Any]) -> Any: ...


@dataclass(frozen=True, slots=True)
class Replica:
    """One remote replica: an action server at `url`.

    A backend names the replicas it runs: the process backend by `pid`, the Kubernetes
    backend by `pod` (a pod's processes are not ours to measure). A replica with neither is
    an attached server: not ours to stop.
    """

    action: str
    url: str
    pid: int | None = None
    pod: str | None = None

    @property
    def owned(self) -> bool:
        """A backend started it (and stops it); False for an attached server."""
        return self.pid is not None or self.pod is not None


class ReplicaSource(Protocol):
    """What the router needs of a backend (see backend.Backend).

    A backend may also have `capacity(info) -> int | None`: how many replicas of the action
    it can hold (None: it cannot tell). The router reads it with getattr, so a backend
    without it still works."""

    def start_replica(self, info: ActionInfo) -> Replica: ...

    def stop_replica(self, replica: Replica) -> None: ...

    def healthy(self, replica: Replica) -> bool: ...


class TransportError(Exception):
    """Raised by a remote invoker when the replica did not answer at all.

    `sent` says whether the request may have reached the action: False only when it was
    certainly never sent (the connection was refused or never made), which is always safe
    to send again elsewhere; True (the default, the safe guess) when it was sent and no
    answer came (read timeout, connection reset), which the router retries only for an
    idempotent action. An error the action itself returned is not a TransportError."""

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass(frozen=True, slots=True)
class ActionInfo:
    """What the runtime knows of a configured action (from an ActionConfig).

    `call_timeout_s` is each call's deadline (None: the runtime's `call_timeout_s`);
    `idempotent` says a call may run twice without harm, so a call that was sent and got
    no answer may be sent again."""

    name: str
    module: str
    local_memory_mb: float = 0.0
    remote_memory_mb: float = 0.0
    default_mode: Mode = Mode.LOCAL
    setup: Mapping[str, Any] = field(default_factory=dict)  # the module's setup() arguments
    replica_cores: int = 1  # cores of one remote replica: the calls it serves at once
    kubernetes: KubernetesSpec | None = None  # a Kubernetes replica's container
    call_timeout_s: float | None = None
    idempotent: bool = False

    def __post_init__(self) -> None:
        cores = self.replica_cores
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
            raise ValueError(f"action {self.name!r}: replica_cores must be an int >= 1, "
                             f"got {cores!r}")
        check_timeout(self.call_timeout_s, f"action {self.name!r}: call_timeout_s",
                      optional=True)
        if not isinstance(self.idempotent, bool):
            raise ValueError(f"action {self.name!r}: idempotent must be true or false, "
                             f"got {self.idempotent!r}")


def check_timeout(value: object, what: str, *, optional: bool = False) -> None:
    """Refuse a timeout that is not a finite number > 0 (None too, unless `optional`)."""
    if value is None and optional:
        return
    if not (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a finite number of seconds > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class CallTiming:
    """How long a call took where it ran: `service_ms` inside the action, `network_ms` the
    rest of a remote round trip (NaN when the server did not say how long it worked)."""

    service_ms: float
    network_ms: float


#: Sends one call to a replica: (function, kwargs, timeout_s) -> (result, timing). The
#: timeout is what is left of the call's deadline: the invoker waits no longer for an answer.
Invoker = Callable[[str, dict[str, Any], float], tuple[Any, CallTiming]]

#: Whether the action server at a URL answers its spec within a timeout (the health check
#: of a replica no backend owns: an attached server).
Probe = Callable[[str, float], bool]
