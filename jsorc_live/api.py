"""The live runtime's service: POST /walker_run, JSORC's admin API, /metrics.

`JsorcService` holds the runtime, the backend, the controller and the META_CONFIG-like
settings, and answers every admin command as plain data (refusals raise `RuntimeRefusal`,
which `make_app` (jsorc_live.api_routes) turns into `{"success": false, "message": ...}` with
its 4xx status). The admin API lives under /jsorc/ and needs the token (`Authorization: token
T` or `Bearer T`): 401 without one, 403 with a wrong one. Every endpoint takes a JSON object,
checked field by field (jsorc_live.api_models; bad: 400, and nothing changes); walker runs and
the admin API run on separate thread pools, and bodies are size-limited (jsorc_live.limits).

Answers keep JSORC's shapes: `{"success": true, "action_status": {"mode": ...,
"remote": {"url": ..., "status": "STARTING|READY"}}}`. Jaseci 1.4's own paths alias the admin
API for `jsctl` and JSORC's clients (`/js_admin/<op>`, `/js/walker_run`, `POST /user/token/`
with the admin's email and password): jsorc_live.jaseci_api.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI

import policies
from jsorc_live.api_models import BadRequest, NonFinite, non_finite, plain, read_json_value
from jsorc_live.api_routes import make_app
from jsorc_live.backend import Backend, PersistentBackend
from jsorc_live.controller import Controller, LiveObserver, apply_to_runtime, params_of
from jsorc_live.jaseci_login import AdminCredentials
from jsorc_live.jaseci_ops import MANUAL_POLICIES, registered_policy
from jsorc_live.kube.settings import (
    KubeSettings,
    KubeSettingsError,
    check_namespace,
    parse_kube_settings,
)
from jsorc_live.limits import DEFAULT_MAX_BODY_BYTES, PoolSizes
from jsorc_live.meta_config import check_services
from jsorc_live.runtime import (
    ActionInfo,
    CallTiming,
    Invoker,
    Replica,
    Runtime,
    RuntimeRefusal,
    Step,
    TransportError,
    Walker,
    loadtest_walkers,
)
from jsorc_live.service_kinds import BUILTIN_NAMES, check_keep_alive
from jsorc_live.store import StateKeeper
from policies import Mode, Placement, PlacementError

log = logging.getLogger(__name__)

MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
LOAD_MODES = {"module": Mode.LOCAL, "local": Mode.LOCAL, "remote": Mode.REMOTE}
UNLOAD_MODES = {"auto": None, "module": Mode.LOCAL, "local": Mode.LOCAL, "remote": Mode.REMOTE}


@dataclass
class Settings:
    """The META_CONFIG-like document `config get/set` reads and writes.

    `kubernetes` is false (the process backend) or the kube backend's KubeSettings, and
    `namespace` the namespace it manages: both are chosen at start (`jsorc serve --backend
    kube --kubeconfig F --namespace NS`); setting them to another value later is refused.
    `max_replicas` caps the replicas of any one action (`jsorc serve --max-replicas`);
    JsorcService hands it to the runtime.
    """

    automation: bool = False
    backoff_interval: float = 10.0
    namespace: str = "default"
    keep_alive: tuple[str, ...] = ()
    kubernetes: KubeSettings | None = None
    max_replicas: int = 32
    # META_CONFIG `services` (jsorc_live.meta_config.check_services), as JSON values.
    services: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        kube: bool | dict[str, Any] = (False if self.kubernetes is None
                                       else self.kubernetes.as_dict())
        return {"automation": self.automation, "backoff_interval": self.backoff_interval,
                # services before keep_alive, which may name one (MetaConfig's order)
                "namespace": self.namespace, "services": dict(self.services),
                "keep_alive": list(self.keep_alive),
                "kubernetes": kube, "max_replicas": self.max_replicas}

    def set(self, name: str, value: Any) -> None:
        """Set one field from a JSON value or a command-line string, checked."""
        if not isinstance(name, str) or name not in self.as_dict():
            raise RuntimeRefusal(f"unknown config {name!r} (known: "
                                 f"{', '.join(self.as_dict())})", 404)
        if name == "services":
            try:
                services = check_services(read_json_value(value.encode())
                                          if isinstance(value, str) else value)
            except (ValueError, BadRequest) as exc:
                raise RuntimeRefusal(str(exc)) from None
            # keep_alive may name only services there are: a definition it names is not
            # dropped under it (a restart would refuse the pair).
            gone = [n for n in self.keep_alive if n not in BUILTIN_NAMES and n not in services]
            if gone:
                raise RuntimeRefusal(f"config services: keep_alive names {', '.join(gone)}, "
                                     "which this value leaves out: take "
                                     f"{'it' if len(gone) == 1 else 'them'} out of keep_alive "
                                     "first")
            self.services = services
            return
        if isinstance(value, str) and name != "namespace":
            try:  # the CLI's text: JSON when it reads as JSON (never NaN or an infinity)
                value = read_json_value(value.encode())
            except NonFinite:
                raise RuntimeRefusal(f"config {name} must be finite, got {value!r}") from None
            except BadRequest:
                value = [v for v in value.split(",") if v] if name == "keep_alive" else value
        if name == "automation":
            if not isinstance(value, bool):
                raise RuntimeRefusal(f"config {name} must be true or false, got {value!r}")
            self.automation = value
        elif name == "kubernetes":
            try:
                kube = parse_kube_settings(value)
            except KubeSettingsError as exc:
                raise RuntimeRefusal(str(exc)) from None
            if kube != self.kubernetes:
                raise RuntimeRefusal("the backend is chosen at start: restart with `jsorc "
                                     "serve --backend kube [--kubeconfig F] [--context C]`"
                                     if kube else "the kube backend is running; restart "
                                     "with `jsorc serve --backend process`", 409)
        elif name == "backoff_interval":
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value <= 0:
                raise RuntimeRefusal(f"config backoff_interval must be a number of seconds "
                                     f"> 0, got {value!r}")
            self.backoff_interval = float(value)
        elif name == "max_replicas":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RuntimeRefusal(f"config max_replicas must be an int >= 1, "
                                     f"got {value!r}")
            self.max_replicas = value
        elif name == "namespace":
            if not isinstance(value, str) or not value:
                raise RuntimeRefusal(f"config namespace must be a non-empty string, "
                                     f"got {value!r}")
            if self.kubernetes is not None and value != self.namespace:
                raise RuntimeRefusal(f"the kube backend manages namespace {self.namespace!r}, "
                                     "chosen at start: restart with `jsorc serve --namespace "
                                     f"{value}`", 409)
            self.namespace = value
        else:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise RuntimeRefusal(f"config keep_alive must be a list of service names, "
                                     f"got {value!r}")
            try:
                self.keep_alive = tuple(check_keep_alive(value,
                                                         [*BUILTIN_NAMES, *self.services]))
            except ValueError as exc:
                raise RuntimeRefusal(f"config keep_alive: {exc}") from None


ConfigLoader = Callable[[str, str], ActionInfo]  # (config module, action) -> info


def info_of(cfg: Any) -> ActionInfo:
    """The runtime's view of an ActionConfig (jsorc_live.actions.config).

    A replica's cores are whole for the observations (the calls it serves at once): a
    fractional Kubernetes CPU request still serves one call, so the count is rounded up.
    A config without `call_timeout_s` leaves the deadline to the runtime's."""
    default = str(getattr(cfg, "default_mode", "local"))
    timeout = getattr(cfg, "call_timeout_s", None)
    return ActionInfo(name=cfg.name, module=cfg.module,
                      local_memory_mb=float(cfg.local_memory_mb),
                      remote_memory_mb=float(cfg.remote_memory_mb),
                      default_mode=Mode.REMOTE if default == "remote" else Mode.LOCAL,
                      setup=dict(getattr(cfg, "setup", {}) or {}),
                      replica_cores=max(1, math.ceil(float(getattr(cfg, "remote_cores", 1)))),
                      kubernetes=cfg.kubernetes() if hasattr(cfg, "kubernetes") else None,
                      call_timeout_s=None if timeout is None else float(timeout),
                      idempotent=bool(getattr(cfg, "idempotent", False)))


class JsorcService:
    """Every admin command as a method returning JSORC-shaped data."""

    def __init__(self, runtime: Runtime, backend: Backend | None, *,
                 load_config: ConfigLoader, policy: str = "default",
                 settings: Settings | None = None,
                 allowed_policy_modules: tuple[str, ...] = ()) -> None:
        self.runtime = runtime
        # The modules `actionpolicy set module:Class` may import (policies.registry): the
        # operator's, from start-up; none by default, registered names always work.
        self.allowed_policy_modules = policies.check_allow_list(allowed_policy_modules)
        self._load_config = load_config
        self.backend = backend
        self.settings = settings or Settings()
        self._lock = threading.Lock()
        self._closed = False
        # Action name -> the config module it was configured from (what a restart reloads),
        # and what keeps the state across restarts (jsorc_live.store; `jsorc serve` sets it).
        self.action_configs: dict[str, str] = {}
        self.state: StateKeeper | None = None
        # The walkers the runtime came with (JSORC's loadtest apps): `walker set` keeps them.
        self.builtin_walkers = frozenset(runtime.walkers)
        self.apply_settings()
        # The name as it was given (JSORC's `Evaluation` is echoed back as set), and the
        # registered policy with its parameters that the controller is rebuilt from.
        self.policy_name = policy
        self._policy_ref = registered_policy(policy)
        self._policy_params: dict[str, Any] = {}
        self._controller_starts = 1
        self.controller = self._controller(policies.make(
            self._policy_ref, {}, allowed_modules=self.allowed_policy_modules))
        self.observer = LiveObserver(runtime, backend)
        self.controller.start(self.observer.observe, lambda: self.settings.backoff_interval,
                              lambda: self.settings.automation)

    def apply_settings(self) -> None:
        """Hand the settings the runtime reads to it (after `config set`, META_CONFIG)."""
        self.runtime.max_replicas = self.settings.max_replicas

    def _controller(self, policy: policies.Policy) -> Controller:
        return Controller(policy, self.policy_name, apply=apply_to_runtime(self.runtime),
                          known=lambda: list(self.runtime.routers), clock=self.runtime.now,
                          max_replicas=lambda: self.runtime.max_replicas)

    # ----------------------------------------------------------------- actions

    def actions_config(self, name: str, config: str) -> dict[str, Any]:
        if not MODULE_NAME.match(config):
            raise RuntimeRefusal(f"config must be a module name like "
                                 f"jsorc_live.actions.config, got {config!r}")
        info = self._load_config(config, name)
        known = self.runtime.routers.get(name)
        if known is not None and known.info == info:
            # The same config again changes nothing (JSORC's clients configure before every
            # load), so it is no reason to refuse while the action is loaded.
            router, message = known, f"config of {name} from {config}: unchanged"
        else:
            self.runtime.configure(info)
            router = self.runtime.router(name)
            message = f"config of {name} loaded from {config}"
        self.action_configs[name] = config
        adopted = (self.backend.adopted().get(name, 0)
                   if isinstance(self.backend, PersistentBackend) else 0)
        if adopted and router.desired.mode is Mode.UNLOADED:
            # A previous controller left this action's replicas running: take them over
            # rather than start new ones (the backend hands the running pods out).
            router.set_placement(Placement.remote(adopted))
            message += f"; adopted its {adopted} running replica(s)"
        return {"success": True, "message": message, "action_status": router.status()}

    def actions_load(self, name: str, mode: str, url: str | None = None,
                     replicas: int | None = None) -> dict[str, Any]:
        """Load `name` as a module or as remote replicas (`replicas`, default 1; `url`
        attaches a running server instead). Idempotent, as JSORC's: the same mode again
        answers the current status (how JSORC's clients poll a remote load until READY),
        and another replica count (or server) in the same mode is a scale (or a move)."""
        router = self.runtime.router(name)
        wanted = _mode(mode, LOAD_MODES, "load")
        self._manual_allowed()
        if url is not None and wanted is not Mode.REMOTE:
            raise RuntimeRefusal("url attaches an action server: use it with -mode remote")
        if url is not None and not re.match(r"^https?://[^\s/]+", url):
            raise RuntimeRefusal(f"url must be http(s)://host:port, got {url!r}")
        if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int)
                                     or replicas < 1):
            raise RuntimeRefusal(f"replicas must be an int >= 1, got {replicas!r}")
        if url is not None and replicas not in (None, 1):
            raise RuntimeRefusal("an attached server (url) is one replica: leave replicas out")
        have = router.desired
        if have.mode is wanted:
            remote = router.status().get("remote") or {}
            attached = remote.get("url") if remote.get("attached") else None
            if wanted is Mode.LOCAL or (replicas in (None, have.replicas)
                                        and url in (None, attached)):
                return {"success": True, "action_status": router.status()}
        if url is None and wanted is Mode.REMOTE and self.backend is None:
            raise RuntimeRefusal("no backend to start replicas with: give a url", 409)
        replicas = replicas or 1
        if wanted is Mode.LOCAL:
            router.set_placement(Placement.local())
            # Module loads answer when the module is in (JSORC's behaviour); remote loads
            # answer at once, STARTING until a replica answers.
            router.wait_settled(self.runtime.call_timeout_s)
            if router.last_error:
                raise RuntimeRefusal(router.last_error, 422)
        else:
            router.set_placement(Placement.remote(replicas), url=url)
        return {"success": True, "action_status": router.status()}

    def actions_status(self, name: str) -> dict[str, Any]:
        status = self.runtime.router(name).status()
        if isinstance(self.backend, PersistentBackend):
            described = self.backend.describe(name)
            if described:
                status["kubernetes"] = described
        return {"success": True, "action_status": status}

    def actions_unload(self, name: str, mode: str = "auto") -> dict[str, Any]:
        router = self.runtime.router(name)
        wanted = _mode(mode, UNLOAD_MODES, "unload")
        self._manual_allowed()
        have = router.desired.mode
        if have is Mode.UNLOADED:
            raise RuntimeRefusal(f"action {name!r} is not loaded", 409)
        if wanted is not None and have is not wanted:
            label = "module" if have is Mode.LOCAL else "remote"
            raise RuntimeRefusal(f"action {name!r} is loaded as {label}, not {mode}", 409)
        router.set_placement(Placement.unloaded())
        return {"success": True, "action_status": router.status()}

    def _manual_allowed(self) -> None:
        # JSORC's Default policy places nothing, so with it automation on still leaves loads
        # to the user (JSORC's own tests load actions with JSORC on); any other policy would
        # undo a manual move at its next step.
        if self.settings.automation and self._policy_ref not in MANUAL_POLICIES:
            raise RuntimeRefusal(f"automation is on and policy {self.policy_name} places "
                                 "actions; `jsorc config set automation false` (or the "
                                 "default policy) first", 409)

    # ----------------------------------------------------------------- policy

    def actionpolicy_set(self, policy_name: str, policy_params: Mapping[str, Any]
                         ) -> dict[str, Any]:
        """Set the policy by a registered name or import path, or by JSORC's name in any
        case (`Evaluation`: evaluation); `actionpolicy_get` echoes the name as given."""
        if not isinstance(policy_name, str) or not policy_name:
            raise RuntimeRefusal(f"policy_name must be a non-empty string, got "
                                 f"{policy_name!r:.80}")
        if not isinstance(policy_params, Mapping):
            raise RuntimeRefusal("policy_params must be an object of name: value")
        bad = non_finite(dict(policy_params), "policy_params")
        if bad:
            raise RuntimeRefusal(f"{bad}: policy parameters must be finite numbers; "
                                 "nothing changed")
        try:
            # A file's path as it resolves here, so a controller restart finds the same file.
            ref = policies.absolute_ref(registered_policy(policy_name))
            policy = policies.make(ref, dict(policy_params),
                                   allowed_modules=self.allowed_policy_modules)
        except policies.PolicyNotAllowed as exc:  # the operator's refusal, not a typo
            raise RuntimeRefusal(str(exc), 403) from None
        except (policies.PolicyError, PlacementError, TypeError, ValueError) as exc:
            raise RuntimeRefusal(str(exc)) from None
        except Exception as exc:  # a policy's own constructor may raise anything
            raise RuntimeRefusal(f"policy {policy_name} refused its parameters: "
                                 f"{type(exc).__name__}: {exc}") from None
        # Every check passes before the controller is replaced: a policy whose parameters
        # would not serialise (an infinity from a default) is refused, and nothing changes.
        bad = non_finite(params_of(policy), f"policy {policy_name}")
        if bad:
            raise RuntimeRefusal(f"{bad}: policy parameters must be finite; nothing changed")
        with self._lock:
            self.policy_name, self._policy_ref = policy_name, ref
            self._policy_params = dict(policy_params)
            self._replace_controller(policy)
        return self.actionpolicy_get()

    def restart_controller(self) -> None:
        """A new controller with a fresh copy of the policy (its state reset), as JSORC's
        MetaService reset did; the decision log carries over."""
        with self._lock:
            self._replace_controller(policies.make(
                self._policy_ref, self._policy_params,
                allowed_modules=self.allowed_policy_modules))

    def policy_choice(self) -> tuple[str, dict[str, Any]]:
        """The policy's resolved reference and its parameters as they were set."""
        with self._lock:
            return self._policy_ref, dict(self._policy_params)

    def controller_info(self) -> dict[str, Any]:
        return {"policy": self.policy_name, "starts": self._controller_starts,
                "automation": self.settings.automation,
                "backoff_interval": self.settings.backoff_interval}

    def _replace_controller(self, policy: policies.Policy) -> None:
        old = self.controller
        old.stop()
        self.controller = self._controller(policy)
        self.controller.decisions[:0] = old.decisions
        self.controller.events[:0] = old.events
        self._controller_starts += 1
        self.controller.start(self.observer.observe, lambda: self.settings.backoff_interval,
                              lambda: self.settings.automation)

    def actionpolicy_get(self) -> dict[str, Any]:
        params = {k: plain(v) for k, v in params_of(self.controller.policy).items()}
        return {"success": True, "policy": self.policy_name, "params": params,
                "decisions": self.controller.decisions[-20:],
                "controller": plain(self.controller.health())}

    # ----------------------------------------------------------------- tracking, benchmark

    def trackact_start(self) -> dict[str, Any]:
        dropped = self.runtime.track_start()
        if dropped is None:
            return {"success": True, "message": "tracking action calls"}
        return {"success": True, "restarted": True, "dropped": dropped,
                "message": f"tracking action calls: the session that was running was "
                           f"started again, and its {dropped} calls are not kept"}

    def trackact_stop(self) -> dict[str, Any]:
        rows = self.runtime.track_stop()
        # `lost`: calls of the session the call log no longer held (it keeps the newest 1 M).
        return {"success": True, "calls": [{k: plain(v) for k, v in r.items()} for r in rows],
                "lost": self.runtime.track_lost}

    def trackact_calls(self, since: int | None) -> dict[str, Any]:
        """The calls after cursor `since` and the cursor to pass next, leaving `trackact`
        (whoever started it) as it is."""
        rows, cursor, lost = self.runtime.calls_since(since)
        return {"success": True, "calls": [{k: plain(v) for k, v in r.items()} for r in rows],
                "cursor": cursor, "lost": lost, "tracking": self.runtime.track_active}

    def benchmark_start(self) -> dict[str, Any]:
        self.runtime.benchmark_start()
        # The runtime's clock (its now(), the ts of calls and decisions) at the start, so a
        # client can align its own times with the server's (jsorc loadtest's run.json).
        return {"success": True, "message": "benchmark started", "now": self.runtime.now()}

    def benchmark_stop(self) -> dict[str, Any]:
        return {"success": True, "report": plain(self.runtime.benchmark_stop())}

    def benchmark_report(self) -> dict[str, Any]:
        return {"success": True, "report": plain(self.runtime.benchmark_report())}

    def benchmark_window(self, since: int | None, start: float | None) -> dict[str, Any]:
        """A benchmark of one reader's own: with no `since`, the request log's cursor and
        the runtime's clock now; with them, JSORC's report over the walker runs after
        cursor `since` (throughput over the time since `start`, else since the first of
        them). A `benchmark start` session (a user's) is left as it is."""
        now = self.runtime.now()
        cursor = self.runtime.requests.cursor
        if since is None:
            return {"success": True, "cursor": cursor, "now": now}
        if start is not None and start > now:
            raise RuntimeRefusal(f"start {start} is later than the runtime's clock now ({now})",
                                 422)
        if since > cursor:
            raise RuntimeRefusal(f"since {since} is past the request log's cursor ({cursor})",
                                 422)
        rows, _ = self.runtime.requests.since(since)
        begin = start if start is not None else (rows[0][0] if rows else now)
        return {"success": True, "cursor": cursor, "now": now,
                "report": plain(self.runtime.walker_report(since, begin, now))}

    # ----------------------------------------------------------------- config, status

    def config_get(self, name: str | None = None) -> dict[str, Any]:
        doc = self.settings.as_dict()
        if name is None:
            return {"success": True, "config": doc}
        if not isinstance(name, str):
            raise RuntimeRefusal(f"config name must be a string, got {name!r:.80}")
        if name not in doc:
            raise RuntimeRefusal(f"unknown config {name!r} (known: {', '.join(doc)})", 404)
        return {"success": True, "name": name, "value": doc[name]}

    def config_set(self, name: str, value: Any) -> dict[str, Any]:
        self.settings.set(name, value)
        self.apply_settings()
        return {"success": True, "name": name, "value": self.settings.as_dict()[name]}

    def status(self) -> dict[str, Any]:
        return {"success": True, "config": self.settings.as_dict(),
                "policy": self.policy_name,
                "controller": plain(self.controller.health()),
                "walkers": sorted(self.runtime.walkers),
                "actions": {name: r.status() for name, r in sorted(self.runtime.routers.items())},
                "state": self.state.status() if self.state else {"store": None}}

    def walker_set(self, name: str, steps: Any) -> dict[str, Any]:
        """A user-defined walker: steps [{action, function, args: {param: ctx key},
        defaults: {param: value}}]. The built-in walkers cannot be replaced (409)."""
        if not isinstance(name, str) or not name:
            raise RuntimeRefusal(f"walker name must be a non-empty string, got {name!r:.80}")
        if name in self.builtin_walkers:
            raise RuntimeRefusal(f"walker {name!r} is built in (one of JSORC's loadtest "
                                 "apps) and cannot be replaced: choose another name", 409)
        if not isinstance(steps, list) or not steps:
            raise RuntimeRefusal("steps must be a non-empty list of {action, function, args}")
        parsed = tuple(_step(step) for step in steps)
        self.runtime.add_walker(Walker(name, parsed))
        return {"success": True, "walker": name, "steps": len(parsed)}

    # ----------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Stop the controller, unload every action, stop every replica (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.state is not None:  # the last save, before the actions are unloaded
            self.state.close()
        self.controller.stop()
        if isinstance(self.backend, PersistentBackend) and self.backend.detach():
            log.warning("leaving the replicas running for the next controller to adopt")
        self.runtime.close()
        if self.backend is not None:
            self.backend.shutdown()


def _step(step: Any) -> Step:
    """One walker step from its JSON form, every field checked."""
    def strings(value: Any) -> bool:
        return isinstance(value, str) and bool(value)

    if not isinstance(step, Mapping) or set(step) - {"action", "function", "args", "defaults"} \
            or not strings(step.get("action")) or not strings(step.get("function")):
        raise RuntimeRefusal(f"bad step {step!r:.120}: need action, function (non-empty "
                             "strings), optional args {param: ctx key} and defaults "
                             "{param: value}")
    args, defaults = step.get("args", {}), step.get("defaults", {})
    if not isinstance(args, Mapping) or not all(strings(k) and strings(v)
                                                for k, v in args.items()):
        raise RuntimeRefusal(f"step args must be an object of param: ctx key (strings), "
                             f"got {args!r:.80}")
    if not isinstance(defaults, Mapping) or not all(isinstance(k, str) for k in defaults):
        raise RuntimeRefusal(f"step defaults must be an object of param: value, got "
                             f"{defaults!r:.80}")
    return Step(step["action"], step["function"], dict(args), dict(defaults))


def _mode(mode: Any, table: Mapping[str, Mode | None], verb: str) -> Mode | None:
    if not isinstance(mode, str) or mode not in table:
        raise RuntimeRefusal(f"{verb} mode must be one of {', '.join(table)}, got {mode!r}")
    return table[mode]


__all__ = ["JsorcService", "Settings", "build_service", "connect_remote", "make_app"]


# --------------------------------------------------------------------------- wiring


def connect_remote(replica: Replica, timeout_s: float = 60.0) -> Invoker:
    """An invoker of the action server at `replica.url` (jsorc_live.actions.client): no
    answer at all is a TransportError, saying whether the request was sent (see the
    router's retries), an error answer is not. Each call waits for its answer at most the
    timeout the router gives it (what is left of the call's deadline); `timeout_s` is the
    client's default for other requests."""
    from jsorc_live.actions.client import NoAnswer, RemoteActions

    client = RemoteActions(replica.url, timeout_s=timeout_s)

    def invoke(name: str, kwargs: dict[str, Any], call_timeout_s: float) -> tuple[Any, CallTiming]:
        sent = time.perf_counter()
        try:
            result, service_ms = client.call_timed(name, kwargs,
                                                   timeout_s=max(call_timeout_s, 0.001))
        except NoAnswer as exc:
            raise TransportError(str(exc), sent=exc.sent) from exc
        # jsorc's servers say how long the action worked; the rest of the round trip is
        # network (and HTTP). Jaseci's do not: then both stay NaN and the row's latency
        # holds the total.
        round_trip_ms = (time.perf_counter() - sent) * 1000.0
        network_ms = max(0.0, round_trip_ms - service_ms) if service_ms == service_ms \
            else math.nan
        return result, CallTiming(service_ms, network_ms)

    return invoke


def build_service(token: str, *, backend: str = "process", config: str | None = None,
                  policy: str = "default", kube: KubeSettings | None = None,
                  namespace: str = "default",
                  kube_options: Mapping[str, Any] | None = None,
                  pools: PoolSizes | None = None,
                  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                  max_replicas: int = 32,
                  credentials: AdminCredentials | None = None,
                  allowed_policy_modules: tuple[str, ...] = (),
                  policy_files: tuple[str, ...] = (),
                  viewer_token: str | None = None) -> tuple[JsorcService, FastAPI]:
    """The service and its app over the real parts: jsorc_live.actions' loader and client,
    and the process backend or the kube one (`kube`: its settings, default kubeconfig when
    None; `namespace`; `kube_options`: KubeBackend's tuning). `config` configures every
    action of that config module. `pools`, `max_body_bytes`: the app's thread pools and body
    limit (jsorc_live.limits); `max_replicas`: the replica cap of any one action;
    `credentials`: the admin's login (default: JSORC_ADMIN_EMAIL, JSORC_ADMIN_PASSWORD).
    `allowed_policy_modules` (`pkg.mod` or `pkg.*`) and the modules of `policy_files` (each
    imported here, at start-up) are the only ones `actionpolicy set module:Class` may import,
    and `policy_files` the only files `actionpolicy set path/to/file.py:Class` may name;
    a bad entry or file raises policies.PolicyError. `viewer_token` opens /dashboard only
    (jsorc_live.dashboard). A kube
    backend that cannot reach its cluster raises jsorc_live.kube.KubeError (one line)."""
    from jsorc_live.actions import config as configs
    from jsorc_live.actions.loader import AllowList, LocalModule
    from jsorc_live.backend import ProcessBackend

    if backend not in ("process", "kube"):
        raise RuntimeRefusal(f"unknown backend {backend!r}; use process or kube")
    # Before any child process starts: a bad allow-list or policy file refuses the start.
    # A policy file is allowed by its module name and by its path (`actionpolicy set
    # /srv/mine.py:Mine`, as the path resolves on this machine).
    policy_modules = (*policies.check_allow_list(allowed_policy_modules),
                      *(entry for path in policy_files for entry in (
                          policies.load_policy_file(path),
                          str(Path(path).expanduser().resolve()))))

    # Config modules come from the operator (the default and `serve --config`), never from a
    # request; a configured action's module joins the loader's allow-list.
    trusted = {configs.DEFAULT_CONFIG_MODULE, *([config] if config else [])}
    allow = AllowList()

    def load_config(module: str, name: str) -> ActionInfo:
        try:
            cfg = configs.load_action_config(module, name, trusted=trusted)
        except configs.ConfigError as exc:
            raise RuntimeRefusal(str(exc), 404 if "no action" in str(exc) else 400) from None
        allow.allow(cfg.module)
        return info_of(cfg)

    def load_local(info: ActionInfo) -> LocalModule:
        return LocalModule.load(info.module, allow=allow, setup=info.setup)

    holder: dict[str, Runtime] = {}

    def on_dead(replica: Replica) -> None:
        holder["runtime"].replica_died(replica)

    replicas: Backend
    settings = Settings()
    settings.set("max_replicas", max_replicas)
    if backend == "kube":
        from jsorc_live.kube import KubeBackend
        from jsorc_live.kube.client import resolved

        settings.kubernetes = resolved(kube or KubeSettings())  # as META_CONFIG would say
        settings.namespace = check_namespace(namespace)
        replicas = KubeBackend.connect(settings.kubernetes, namespace, on_dead=on_dead,
                                       **dict(kube_options or {}))
    else:
        replicas = ProcessBackend(on_dead=on_dead)
    runtime = Runtime(load_local=load_local, connect=connect_remote, replicas=replicas,
                      walkers=loadtest_walkers())
    holder["runtime"] = runtime
    service = JsorcService(runtime, replicas, load_config=load_config, policy=policy,
                           settings=settings, allowed_policy_modules=policy_modules)
    if config is not None:
        module = importlib.import_module(config)
        for name in sorted(getattr(module, "ACTION_CONFIGS", {})):
            service.actions_config(name, config)
    # jsctl's login: the admin's email and password, from the environment of `jsorc serve`.
    credentials = credentials or AdminCredentials.from_env(os.environ)
    return service, make_app(service, token, credentials=credentials, pools=pools,
                             max_body_bytes=max_body_bytes, viewer_token=viewer_token)
