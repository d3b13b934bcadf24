"""`DevCluster`: a Kubernetes API, a controller manager and a kubelet on one machine.

    with DevCluster(namespace="jsorc") as cluster:
        cluster.url, cluster.kubeconfig      # http://127.0.0.1:PORT, a kubeconfig file
        ...                                  # any client: kubectl, kubernetes.client
        cluster.pods("jsorc")                # the pods the kubelet runs (PodInfo)
        cluster.faults.inject("PATCH", r"/scale$", status=409)
        cluster.metrics_url                  # cAdvisor-shaped /metrics of the pods

Three threads: the API (emulator.py served by kmock on its own event loop, 127.0.0.1,
``port`` 0 for a free one), the control loop (every ``sync_interval_s``: the workload
controller, the kubelet, the endpoints controllers, each through the API like their real
counterparts), and the metrics server (cadvisor.py). The namespaces ``default``,
``kube-system``, ``kube-public``, ``kube-node-lease`` and ``namespace`` exist from the start,
and one Node, ``jsorc-dev``. ``stop()`` (or leaving the ``with``) stops every pod process
(SIGTERM, SIGKILL after the grace period), the threads, and checks that no process it
started is left (:class:`DevClusterError` otherwise); it also runs at interpreter exit.

The kubeconfig (cluster, user with a bearer token, context ``jsorc-dev`` with the
namespace, current-context) is written to ``kubeconfig`` if given, else into a temporary
folder removed by ``stop()``; pod logs go to ``log_dir`` (default a temporary folder, also
removed unless given).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import kmock
import psutil
import yaml

from jsorc_live.devcluster.apiclient import ApiCallError, ControlPlaneClient, path
from jsorc_live.devcluster.cadvisor import CadvisorCollector, MetricsServer
from jsorc_live.devcluster.emulator import Emulator, QuietServer
from jsorc_live.devcluster.endpoints import EndpointsController
from jsorc_live.devcluster.faults import Faults
from jsorc_live.devcluster.kubelet import Kubelet, PodInfo, pod_log_path
from jsorc_live.devcluster.pods import AddressPool
from jsorc_live.devcluster.resources import find_resource
from jsorc_live.devcluster.store import NAMESPACES, Store, timestamp
from jsorc_live.devcluster.workloads import WorkloadController

__all__ = ["CONTEXT", "NODE_NAME", "DevCluster", "DevClusterError"]

log = logging.getLogger(__name__)

CONTEXT = "jsorc-dev"
NODE_NAME = "jsorc-dev"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
T = TypeVar("T")


class DevClusterError(RuntimeError):
    """The dev cluster cannot start (port taken...) or left a process behind."""


class DevCluster:
    """A dev cluster on loopback (see the module docstring)."""

    def __init__(self, namespace: str = "jsorc", port: int = 0,
                 kubeconfig: Path | None = None, *, log_dir: Path | None = None,
                 token: str | None = None, sync_interval_s: float = 0.1,
                 grace_period_s: float = 10.0, probe_period_s: float | None = 0.2,
                 workdir: Path | None = None, env: Mapping[str, str] | None = None,
                 start_timeout_s: float = 15.0) -> None:
        if not _NAMESPACE.match(namespace):
            raise ValueError(f"namespace must be a DNS-1123 label (lowercase letters, digits, "
                             f"'-'), got {namespace!r}")
        if not 0 <= port < 65536:
            raise ValueError(f"port must be 0 (a free one) or a TCP port, got {port!r}")
        if sync_interval_s <= 0 or grace_period_s < 0:
            raise ValueError("sync_interval_s must be > 0 and grace_period_s >= 0")
        self.namespace = namespace
        self.port = port
        self.token = token or secrets.token_hex(16)
        self.faults = Faults()
        self.sync_interval_s = sync_interval_s
        self.grace_period_s = grace_period_s
        self.probe_period_s = probe_period_s
        self.workdir = Path(workdir) if workdir is not None else Path.cwd()
        self.env = dict(os.environ if env is None else env)
        self.start_timeout_s = start_timeout_s
        self._kubeconfig_arg = Path(kubeconfig) if kubeconfig is not None else None
        self._log_dir_arg = Path(log_dir) if log_dir is not None else None
        self._tmp: Path | None = None
        self._url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emulator: Emulator | None = None
        self._api_stop: asyncio.Event | None = None
        self._api_ready = threading.Event()
        self._api_error: BaseException | None = None
        self._api_thread: threading.Thread | None = None
        self._control: _ControlLoop | None = None
        self._kubelet: Kubelet | None = None
        self._metrics: MetricsServer | None = None
        self._addresses = AddressPool()
        self._state = "new"
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- properties

    def _running(self, what: str) -> None:
        if self._state != "running":
            raise DevClusterError(f"{what}: the dev cluster is not running (state {self._state})")

    @property
    def url(self) -> str:
        """The API server, ``http://127.0.0.1:PORT``."""
        self._running("url")
        assert self._url is not None
        return self._url

    @property
    def kubeconfig(self) -> Path:
        """The kubeconfig file this cluster wrote."""
        self._running("kubeconfig")
        return self._kubeconfig_path()

    @property
    def metrics_url(self) -> str:
        """The cAdvisor-shaped exporter, ``http://127.0.0.1:PORT/metrics``."""
        self._running("metrics_url")
        assert self._metrics is not None
        return self._metrics.url

    @property
    def log_dir(self) -> Path:
        """Where pod logs are written (``NAMESPACE_POD_CONTAINER.log``)."""
        if self._log_dir_arg is not None:
            return self._log_dir_arg
        assert self._tmp is not None, "not started"
        return self._tmp / "logs"

    @property
    def emulator(self) -> Emulator:
        """The API emulator (kmock's ``objects``/``requests`` for assertions; runs on its
        own loop: use :meth:`call` to act on it)."""
        self._running("emulator")
        assert self._emulator is not None
        return self._emulator

    def pods(self, namespace: str | None = None) -> list[PodInfo]:
        """The pods the kubelet runs (all namespaces when None), by namespace and name."""
        if self._kubelet is None:
            return []
        found = [p for p in self._kubelet.snapshot()
                 if namespace is None or p.namespace == namespace]
        return sorted(found, key=lambda p: (p.namespace, p.name))

    def wait_for_pods(self, count: int, *, namespace: str | None = None,
                      deployment: str | None = None, ready: bool = True,
                      timeout_s: float = 30.0) -> list[PodInfo]:
        """Poll until exactly ``count`` pods (not terminating; of ``deployment`` if given;
        ready if ``ready``) run; raises TimeoutError naming what it saw."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [p for p in self.pods(namespace) if not p.terminating
                     and (deployment is None or p.deployment == deployment)]
            good = [p for p in found if p.ready or not ready]
            if len(good) == count == len(found):
                return good
            if time.monotonic() > deadline:
                raise TimeoutError(f"wanted {count} {'ready ' if ready else ''}pods, have "
                                   f"{[(p.name, p.ready) for p in found]}")
            time.sleep(0.05)

    def call(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the API's event loop (e.g. ``cluster.call(lambda s:
        s.compact())`` to expire every watch's resourceVersion)."""
        self._running("call")
        assert self._loop is not None and self._emulator is not None
        store = self._emulator.store

        async def run() -> T:
            return fn(store)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10.0)

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> DevCluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> DevCluster:
        with self._lock:
            if self._state != "new":
                raise DevClusterError(f"a DevCluster starts once (state {self._state})")
            self._state = "starting"
        try:
            self._start()
        except BaseException:
            self._state = "running"  # let stop() take down what started
            self.stop()
            raise
        self._state = "running"
        atexit.register(self.stop)
        return self

    def _start(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="jsorc-devcluster-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._api_thread = threading.Thread(target=self._serve_api, name="devcluster-api",
                                            daemon=True)
        self._api_thread.start()
        if not self._api_ready.wait(self.start_timeout_s):
            raise DevClusterError(f"the API did not start within {self.start_timeout_s:g} s")
        if self._api_error is not None:
            raise DevClusterError(f"cannot serve the API on 127.0.0.1:{self.port}: "
                                  f"{type(self._api_error).__name__}: {self._api_error}"
                                  ) from self._api_error
        assert self._url is not None
        self._write_kubeconfig()
        self._addresses.claim()
        client = ControlPlaneClient(self._url, self.token)
        self._kubelet = Kubelet(client, log_dir=self.log_dir, addresses=self._addresses,
                                workdir=self.workdir, env=self.env,
                                grace_cap_s=self.grace_period_s,
                                probe_period_cap_s=self.probe_period_s)
        self._control = _ControlLoop(client, self._kubelet, self.sync_interval_s)
        self._control.start()
        self._metrics = MetricsServer(CadvisorCollector(self.pods))
        log.info("dev cluster API at %s, kubeconfig %s", self._url, self._kubeconfig_path())

    def stop(self) -> None:
        """Stop every pod process and the threads (idempotent)."""
        with self._lock:
            if self._state in ("new", "stopped"):
                self._state = "stopped"
                return
            self._state = "stopping"
        atexit.unregister(self.stop)
        if self._control is not None:
            self._control.stop()
        left: list[int] = []
        if self._kubelet is not None:
            left = self._kubelet.shutdown()
        if self._control is not None:
            self._control.client.close()
        if self._metrics is not None:
            self._metrics.close()
        if self._loop is not None and self._api_stop is not None:
            self._loop.call_soon_threadsafe(self._api_stop.set)
        if self._api_thread is not None:
            self._api_thread.join(timeout=15.0)
        self._addresses.close()
        self._state = "stopped"
        if self._tmp is not None:
            keep = self._log_dir_arg is None and left
            if not keep:
                shutil.rmtree(self._tmp, ignore_errors=True)
        if left:
            raise DevClusterError(f"pod processes still running after stop: {sorted(left)}")

    @property
    def started_pids(self) -> frozenset[int]:
        """Every pod process the kubelet started (to check, after stop, that none is left)."""
        return frozenset(self._kubelet.started_pids) if self._kubelet is not None \
            else frozenset()

    # ----------------------------------------------------------------- internals

    def _kubeconfig_path(self) -> Path:
        if self._kubeconfig_arg is not None:
            return self._kubeconfig_arg
        assert self._tmp is not None
        return self._tmp / "kubeconfig"

    def _write_kubeconfig(self) -> None:
        doc = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": CONTEXT, "cluster": {"server": self._url}}],
            "users": [{"name": CONTEXT, "user": {"token": self.token}}],
            "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT,
                                                       "namespace": self.namespace}}],
            "current-context": CONTEXT,
        }
        target = self._kubeconfig_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_text(yaml.safe_dump(doc, sort_keys=False))
        partial.chmod(0o600)
        partial.replace(target)  # readers never see half a file

    def _serve_api(self) -> None:
        try:
            asyncio.run(self._api_main())
        except BaseException as exc:  # reported to start(), which raises it
            self._api_error = exc
            self._api_ready.set()

    async def _api_main(self) -> None:
        log_dir = self.log_dir
        emulator = Emulator(token=self.token, faults=self.faults,
                            logs=lambda ns, pod, c: pod_log_path(log_dir, ns, pod, c or ""))
        served = kmock.Server(emulator, host="127.0.0.1", port=self.port,
                              server_cls=QuietServer)
        async with emulator, served as server:
            emulator.server_address = f"127.0.0.1:{server.port}"
            _seed(emulator.store, self.namespace)
            self._loop, self._emulator = asyncio.get_running_loop(), emulator
            self._api_stop = asyncio.Event()
            self._url = f"http://127.0.0.1:{server.port}"
            self._api_ready.set()
            await self._api_stop.wait()
            emulator.close_watches()
            await asyncio.sleep(0.05)  # let the watch handlers write their end


def _seed(store: Store, namespace: str) -> None:
    for name in dict.fromkeys((*SYSTEM_NAMESPACES, namespace)):
        store.create(NAMESPACES, None, {"metadata": {"name": name}})
    nodes = find_resource("", "v1", "nodes")
    assert nodes is not None
    cores, memory = os.cpu_count() or 1, psutil.virtual_memory().total
    store.create(nodes, None, {"metadata": {"name": NODE_NAME, "labels": {
        "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/control-plane": ""}}})
    now = timestamp(time.time())
    capacity = {"cpu": str(cores), "memory": f"{memory // 1024}Ki", "pods": "254"}
    store.replace(nodes, None, NODE_NAME, {"status": {
        "capacity": capacity, "allocatable": capacity,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                      {"type": "Hostname", "address": NODE_NAME}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "the dev cluster's kubelet is posting ready status",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "nodeInfo": {"kubeletVersion": "v1.32.0-jsorc-devcluster", "operatingSystem": "linux",
                     "architecture": "amd64", "containerRuntimeVersion": "devcluster://1"},
    }}, subresource="status")


_LISTS = {
    "deployments": ("apps", "v1", "deployments"),
    "replicasets": ("apps", "v1", "replicasets"),
    "services": ("", "v1", "services"),
    "endpointslices": ("discovery.k8s.io", "v1", "endpointslices"),
    "endpoints": ("", "v1", "endpoints"),
}


class _ControlLoop:
    """Every interval: list the pods (and, when anything changed or every ``resync_s``,
    the rest), then the workload controller, the kubelet, the endpoints controllers."""

    def __init__(self, client: ControlPlaneClient, kubelet: Kubelet, interval_s: float,
                 resync_s: float = 2.0) -> None:
        self.client = client
        self.kubelet = kubelet
        self.workloads = WorkloadController(client, NODE_NAME)
        self.endpoints = EndpointsController(client)
        self.interval_s = interval_s
        self.resync_s = resync_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="devcluster-control",
                                        daemon=True)
        self._cache: dict[str, list[dict[str, Any]]] = {}
        self._seen_rv = -1
        self._listed_at = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.tick()
            except (ApiCallError, OSError, ValueError, concurrent.futures.CancelledError,
                    RuntimeError) as exc:
                log.warning("dev cluster control loop: %s: %s", type(exc).__name__, exc)
            except Exception:
                log.exception("dev cluster control loop")
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - began)))

    def tick(self) -> None:
        pods, rv = self.client.list(path("", "v1", "pods"))
        now = time.monotonic()
        if rv != self._seen_rv or now - self._listed_at > self.resync_s:
            for name, where in _LISTS.items():
                self._cache[name] = self.client.list(path(*where))[0]
            self._listed_at = now
        self._seen_rv = rv
        stamp = timestamp(time.time())
        pods = self.workloads.sync(self._cache["deployments"], self._cache["replicasets"],
                                   pods, stamp)
        pods = self.kubelet.sync(pods)
        self.endpoints.sync(self._cache["services"], pods, self._cache["endpointslices"],
                            self._cache["endpoints"])

