"""The stand-in kubelet: every Pod object of the dev cluster becomes real processes on this
machine, and the Pod's ``status`` says how they are.

For each pod (whoever created it: the workload controller for Deployments, or a client):

- an address of its own (pods.AddressPool: 127.0.X.N, every declared port free on it), its
  containers started as processes (pods.container_argv / container_env), output appended to
  ``LOG_DIR/NAMESPACE_POD_CONTAINER.log``, each run after a ``--- TIME COMMAND`` line (so
  ``kubectl logs``, which reads it through the API, shows the runs before a restart too,
  where a real kubelet keeps only the current and ``--previous`` one);
- probes (pods.run_probe) on a worker pool, never blocking the loop: a startupProbe gates the
  others, a readinessProbe sets the container's ``ready`` (successThreshold /
  failureThreshold), a livenessProbe that fails failureThreshold times restarts the
  container; without a readinessProbe a container is ready once started. ``periodSeconds``
  is capped by ``probe_period_cap_s`` (default 0.2 s) so pods turn ready promptly;
  ``initialDelaySeconds`` and ``timeoutSeconds`` are as given;
- a container whose process exits is restarted as ``restartPolicy`` says (Always for
  Deployments): ``restartCount`` grows, ``lastState.terminated`` records the exit, the pod is
  not Ready meanwhile; repeated crashes back off (``backoff_base_s`` doubling up to
  ``backoff_cap_s``, ``CrashLoopBackOff``);
- a pod marked for deletion (graceful deletion) is stopped: SIGTERM to each container's
  process group, SIGKILL after ``deletionGracePeriodSeconds`` (capped by ``grace_cap_s``),
  then the Pod object is deleted with grace 0; a pod that vanishes from the API (forced
  deletion, its namespace deleted) is stopped the same way;
- status: phase, ``podIP``/``podIPs``, ``hostIP`` 127.0.0.1, conditions (PodScheduled,
  Initialized, PodReadyToStartContainers, ContainersReady, Ready) with transition times,
  ``containerStatuses`` (state, lastState, ready, started, restartCount, ``containerID``
  ``devcluster://PID``); written through ``/status`` only when it changed.

:meth:`Kubelet.snapshot` lists the pods it runs (:class:`PodInfo`); :meth:`Kubelet.shutdown`
stops every process it started and waits for them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from jsorc_live.devcluster.apiclient import ApiCallError, ControlPlaneClient, path
from jsorc_live.devcluster.pods import (
    AddressPool,
    ContainerConfigError,
    ContainerProcess,
    Probe,
    container_argv,
    container_env,
    probe_of,
    run_probe,
)
from jsorc_live.devcluster.store import timestamp
from jsorc_live.devcluster.workloads import POD_TEMPLATE_HASH

__all__ = ["ContainerInfo", "Kubelet", "PodInfo", "pod_log_path"]

log = logging.getLogger(__name__)


def pod_log_path(log_dir: Path, namespace: str, pod: str, container: str) -> Path:
    return log_dir / f"{namespace}_{pod}_{container}.log"


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    image: str
    pid: int | None  # None while not running
    ready: bool
    restarts: int
    ports: tuple[int, ...]
    log_path: Path


@dataclass(frozen=True)
class PodInfo:
    """A pod the kubelet runs. ``pid`` is its first container's process (None while it is
    not running); ``deployment`` the Deployment that owns it, if any."""

    name: str
    namespace: str
    ip: str
    pid: int | None
    ready: bool
    deployment: str | None
    uid: str
    restarts: int
    terminating: bool
    containers: tuple[ContainerInfo, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(c.pid for c in self.containers if c.pid is not None)


@dataclass
class _ProbeState:
    probe: Probe
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0
    future: Future[bool] | None = None


@dataclass
class _Container:
    spec: dict[str, Any]
    process: ContainerProcess | None = None
    restarts: int = 0
    ready: bool = False
    started: bool = False
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    last_state: dict[str, Any] = field(default_factory=dict)
    next_start: float = 0.0
    done_code: int | None = None  # exited for good (restartPolicy)
    started_at: str = ""
    env: dict[str, str] = field(default_factory=dict)
    probes: dict[str, _ProbeState] = field(default_factory=dict)
    killing: Future[int] | None = None

    @property
    def name(self) -> str:
        return str(self.spec.get("name", ""))


@dataclass
class _Pod:
    namespace: str
    name: str
    uid: str
    ip: str
    pod: dict[str, Any]
    containers: list[_Container]
    start_time: str
    ready: bool = False
    ready_changed: str = ""
    stopping: Future[None] | None = None
    written: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        return path("", "v1", "pods", self.namespace, self.name)


class Kubelet:
    """Runs the dev cluster's pods (see the module docstring). ``sync`` is called by one
    thread (the control loop); ``snapshot`` may be called from any."""

    def __init__(self, client: ControlPlaneClient, *, log_dir: Path, addresses: AddressPool,
                 workdir: Path, env: Mapping[str, str], grace_cap_s: float = 10.0,
                 probe_period_cap_s: float | None = 0.2, backoff_base_s: float = 0.5,
                 backoff_cap_s: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.log_dir = log_dir
        self.addresses = addresses
        self.workdir = workdir
        self.env = dict(env)
        self.grace_cap_s = grace_cap_s
        self.probe_period_cap_s = probe_period_cap_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.clock = clock
        self._runs: dict[tuple[str, str], _Pod] = {}
        self._lock = threading.Lock()
        self._probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="devcluster-probe")
        self._stoppers = ThreadPoolExecutor(max_workers=16,
                                            thread_name_prefix="devcluster-stop")
        self._closed = False
        self.started_pids: set[int] = set()  # every container process it ever started

    # ----------------------------------------------------------------- public

    def snapshot(self) -> list[PodInfo]:
        with self._lock:
            runs = list(self._runs.values())
        return [_info(run, self.log_dir) for run in runs]

    def shutdown(self) -> list[int]:
        """Stop every process (idempotent); the pids it ever started that are still alive
        afterwards (none, unless something survives SIGKILL)."""
        with self._lock:
            self._closed = True
            runs = list(self._runs.values())
        futures = [run.stopping or self._stoppers.submit(self._stop_pod, run, self.grace_cap_s)
                   for run in runs]
        for future in futures:
            future.result()
        for run in runs:
            for c in run.containers:
                if c.killing is not None:
                    c.killing.result()
            self._forget(run)
        self._probes.shutdown(wait=True, cancel_futures=True)
        self._stoppers.shutdown(wait=True)
        return sorted(pid for pid in self.started_pids if _alive(pid))

    # ----------------------------------------------------------------- the pass

    def sync(self, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One pass over the pods the API lists; returns them with their status as this
        pass left it."""
        now = self.clock()
        out: list[dict[str, Any]] = []
        seen = set()
        for pod in pods:
            meta = pod["metadata"]
            key = (meta["namespace"], meta["name"])
            seen.add(key)
            run = self._runs.get(key)
            if meta.get("deletionTimestamp"):
                if self._terminate(run, pod):
                    continue
            elif run is None:
                if self._closed:
                    continue
                run = self._admit(pod)
            if run is None:
                out.append(pod)
                continue
            run.pod = pod
            if run.stopping is None:
                for container in run.containers:
                    self._step(run, container, now)
            out.append(self._report(run, now))
        for key, run in list(self._runs.items()):
            if key not in seen:  # deleted without grace, or its namespace went
                if run.stopping is None:
                    run.stopping = self._stoppers.submit(self._stop_pod, run, 0.0)
                elif run.stopping.done():
                    self._forget(run)
        return out

    def _terminate(self, run: _Pod | None, pod: dict[str, Any]) -> bool:
        """A pod marked for deletion: stop it, then delete it for good. True once done
        with it (nothing more to report)."""
        url = path("", "v1", "pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
        if run is None or (run.stopping is not None and run.stopping.done()):
            if run is not None:
                self._forget(run)
            try:
                self.client.delete(url, grace_s=0)
            except ApiCallError as exc:
                log.info("final delete of %s: %s", url, exc)
            return True
        if run.stopping is None:
            grace = pod["metadata"].get("deletionGracePeriodSeconds",
                                        (pod.get("spec") or {}).get(
                                            "terminationGracePeriodSeconds", 30))
            for c in run.containers:
                c.ready = False
            run.stopping = self._stoppers.submit(self._stop_pod, run,
                                                 min(float(grace), self.grace_cap_s))
        return False

    def _admit(self, pod: dict[str, Any]) -> _Pod | None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
        ports = sorted({int(p["containerPort"]) for c in containers
                        for p in c.get("ports") or [] if isinstance(p.get("containerPort"), int)})
        try:
            ip = self.addresses.allocate(ports)
        except RuntimeError as exc:
            log.warning("pod %s/%s: %s", meta["namespace"], meta["name"], exc)
            return None
        now = timestamp(self.clock())
        run = _Pod(meta["namespace"], meta["name"], str(meta.get("uid", "")), ip, pod,
                   [_Container(dict(c)) for c in containers], now, ready_changed=now)
        with self._lock:
            self._runs[(run.namespace, run.name)] = run
        log.info("pod %s/%s at %s", run.namespace, run.name, ip)
        return run

    def _forget(self, run: _Pod) -> None:
        with self._lock:
            if self._runs.get((run.namespace, run.name)) is run:
                del self._runs[(run.namespace, run.name)]
        self.addresses.release(run.ip)

    # ----------------------------------------------------------------- containers

    def _step(self, run: _Pod, c: _Container, now: float) -> None:
        if c.done_code is not None:
            return
        if c.killing is not None and c.killing.done():
            c.killing = None
        if c.process is not None and c.killing is None:
            code = c.process.poll()
            if code is not None:
                self._exited(run, c, code, now)
        if c.process is None and now >= c.next_start:
            self._start(run, c, now)
        if c.process is not None and c.killing is None:
            self._probe(run, c, now)

    def _start(self, run: _Pod, c: _Container, now: float) -> None:
        pod = {**run.pod, "status": {**(run.pod.get("status") or {}), "podIP": run.ip}}
        try:
            env = container_env(c.spec, pod, run.ip, self.env, self._lookup)
            argv = container_argv(c.spec, env, run.ip)
            probes = {kind: probe_of(c.spec.get(f"{kind}Probe"), c.spec, run.ip)
                      for kind in ("startup", "readiness", "liveness")}
        except ContainerConfigError as exc:
            c.waiting, c.next_start = ("CreateContainerConfigError", str(exc)), now + 1.0
            return
        workdir = Path(str(c.spec.get("workingDir") or self.workdir))
        try:
            c.process = ContainerProcess(argv, env, workdir if workdir.is_dir() else self.workdir,
                                         pod_log_path(self.log_dir, run.namespace, run.name,
                                                      c.name))
        except OSError as exc:
            c.waiting = ("RunContainerError", f"{type(exc).__name__}: {exc}")
            c.next_start = now + self._backoff(c.restarts + 1)
            return
        self.started_pids.add(c.process.pid)
        c.waiting, c.env, c.started_at = None, env, timestamp(now)
        c.probes = {kind: _ProbeState(p, next_at=now + p.initial_delay_s)
                    for kind, p in probes.items() if p is not None}
        c.started = "startup" not in c.probes
        c.ready = c.started and "readiness" not in c.probes
        log.info("pod %s/%s container %s: pid %d: %s", run.namespace, run.name, c.name,
                 c.process.pid, " ".join(argv))

    def _exited(self, run: _Pod, c: _Container, code: int, now: float) -> None:
        code = 128 - code if code < 0 else code  # killed by signal N: 128+N, as runtimes say
        c.last_state = {"terminated": {"exitCode": code,
                                       "reason": "Completed" if code == 0 else "Error",
                                       "startedAt": c.started_at,
                                       "finishedAt": timestamp(now)}}
        c.process, c.ready, c.started, c.probes = None, False, False, {}
        policy = (run.pod.get("spec") or {}).get("restartPolicy", "Always")
        if policy == "Never" or (policy == "OnFailure" and code == 0):
            c.done_code = code
            return
        c.restarts += 1
        delay = self._backoff(c.restarts)
        c.next_start = now + delay
        c.waiting = (("CrashLoopBackOff", f"back-off {delay:g}s restarting failed container="
                      f"{c.name} pod={run.name}") if delay > 0 else None)
        log.warning("pod %s/%s container %s exited with %d (restart %d)", run.namespace,
                    run.name, c.name, code, c.restarts)

    def _backoff(self, restarts: int) -> float:
        """No wait for the first restart, then base, 2 base, ... up to the cap."""
        if restarts <= 1:
            return 0.0
        return float(min(self.backoff_cap_s, self.backoff_base_s * 2 ** (restarts - 2)))

    def _probe(self, run: _Pod, c: _Container, now: float) -> None:
        for kind, state in c.probes.items():
            if (kind == "startup") == c.started:
                continue  # the startup probe runs until it succeeds, the others after
            if state.future is None:
                if now >= state.next_at:
                    state.future = self._probes.submit(run_probe, state.probe, c.env)
                continue
            if not state.future.done():
                continue
            ok = state.future.result()
            state.future = None
            period = state.probe.period_s
            if self.probe_period_cap_s is not None:
                period = min(period, self.probe_period_cap_s)
            state.next_at = now + period
            state.successes, state.failures = ((state.successes + 1, 0) if ok
                                               else (0, state.failures + 1))
            passed = state.successes >= state.probe.success_threshold
            failed = state.failures >= state.probe.failure_threshold
            if kind == "startup" and passed:
                c.started = True
                c.ready = "readiness" not in c.probes
            elif kind == "readiness" and (passed or failed):
                c.ready = passed
            if failed and kind in ("startup", "liveness") and c.process is not None:
                log.warning("pod %s/%s container %s: %s probe failed %d times: restarting",
                            run.namespace, run.name, c.name, kind, state.failures)
                c.ready = False
                grace = min(float((run.pod.get("spec") or {}).get(
                    "terminationGracePeriodSeconds", 30)), self.grace_cap_s)
                c.killing = self._stoppers.submit(c.process.stop, grace)
                return

    def _stop_pod(self, run: _Pod, grace_s: float) -> None:
        processes = [c.process for c in run.containers if c.process is not None]
        for process in processes:
            process.terminate()
        deadline = time.monotonic() + grace_s
        for process in processes:
            process.stop(max(0.0, deadline - time.monotonic()))
        log.info("pod %s/%s stopped", run.namespace, run.name)

    def _lookup(self, kind: str, namespace: str, name: str, key: str | None
                ) -> dict[str, str] | None:
        obj = self.client.get(path("", "v1", kind, namespace, name))
        if obj is None:
            return None
        data = {str(k): str(v) for k, v in (obj.get("data") or {}).items()}
        if kind == "secrets":
            try:
                data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            except (binascii.Error, UnicodeDecodeError):
                return None
            data.update({str(k): str(v) for k, v in (obj.get("stringData") or {}).items()})
        return data

    # ----------------------------------------------------------------- status

    def _report(self, run: _Pod, now: float) -> dict[str, Any]:
        terminating = bool(run.pod["metadata"].get("deletionTimestamp"))
        ready = bool(run.containers) and all(c.ready for c in run.containers) \
            and not terminating
        if ready != run.ready:
            run.ready, run.ready_changed = ready, timestamp(now)
        status = _pod_status(run, terminating)
        if status != run.written:
            try:
                if self.client.patch(run.url + "/status", {"status": status}) is not None:
                    run.written = status
            except ApiCallError as exc:
                log.info("status of pod %s/%s: %s", run.namespace, run.name, exc)
        return {**run.pod, "status": status}


def _container_status(c: _Container) -> dict[str, Any]:
    image = str(c.spec.get("image", ""))
    out: dict[str, Any] = {"name": c.name, "image": image, "imageID": "", "ready": c.ready,
                           "started": c.process is not None and c.started,
                           "restartCount": c.restarts, "lastState": dict(c.last_state)}
    if c.process is not None:
        out["state"] = {"running": {"startedAt": c.started_at}}
        out["containerID"] = f"devcluster://{c.process.pid}"
    elif c.done_code is not None:
        out["state"] = dict(c.last_state)
        out["lastState"] = {}
    else:
        reason, message = c.waiting or ("ContainerCreating", "")
        out["state"] = {"waiting": {"reason": reason, **({"message": message} if message
                                                          else {})}}
    return out


def _pod_status(run: _Pod, terminating: bool) -> dict[str, Any]:
    containers = run.containers
    if containers and all(c.done_code is not None for c in containers):
        phase = "Succeeded" if all(c.done_code == 0 for c in containers) else "Failed"
    elif any(c.process is not None or c.restarts for c in containers):
        phase = "Running"
    else:
        phase = "Pending"
    ready = "True" if run.ready else "False"

    def cond(kind: str, status: str, since: str) -> dict[str, Any]:
        return {"type": kind, "status": status, "lastProbeTime": None,
                "lastTransitionTime": since}

    return {
        "phase": phase,
        "conditions": [cond("PodReadyToStartContainers", "True", run.start_time),
                       cond("Initialized", "True", run.start_time),
                       cond("Ready", ready, run.ready_changed),
                       cond("ContainersReady", ready, run.ready_changed),
                       cond("PodScheduled", "True", run.start_time)],
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": run.ip, "podIPs": [{"ip": run.ip}],
        "startTime": run.start_time,
        "qosClass": (run.pod.get("status") or {}).get("qosClass", "BestEffort"),
        "containerStatuses": [_container_status(c) for c in containers],
    }


def _info(run: _Pod, log_dir: Path) -> PodInfo:
    meta = run.pod.get("metadata") or {}
    containers = tuple(
        ContainerInfo(c.name, str(c.spec.get("image", "")),
                      c.process.pid if c.process is not None else None, c.ready, c.restarts,
                      tuple(int(p["containerPort"]) for p in c.spec.get("ports") or []
                            if isinstance(p.get("containerPort"), int)),
                      pod_log_path(log_dir, run.namespace, run.name, c.name))
        for c in run.containers)
    return PodInfo(name=run.name, namespace=run.namespace, ip=run.ip,
                   pid=containers[0].pid if containers else None,
                   ready=run.ready, deployment=_deployment_of(meta), uid=run.uid,
                   restarts=sum(c.restarts for c in containers),
                   terminating=bool(meta.get("deletionTimestamp")) or run.stopping is not None,
                   containers=containers,
                   annotations=dict(meta.get("annotations") or {}))


def _deployment_of(meta: Mapping[str, Any]) -> str | None:
    suffix = (meta.get("labels") or {}).get(POD_TEMPLATE_HASH)
    for ref in meta.get("ownerReferences") or []:
        name = str(ref.get("name", ""))
        if ref.get("kind") == "ReplicaSet" and suffix and name.endswith(f"-{suffix}"):
            return name[: -len(suffix) - 1]
    return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
