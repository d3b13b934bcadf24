"""The kube backend: remote replicas are the pods of one Deployment per action.

The router asks for replicas one at a time, and this backend maps that onto a Deployment's
replica count:

- `start_replica(info)` raises the action's wanted count by one (the first creates its
  Service and Deployment), lets the reconciler scale through `/scale`, and waits (bounded by
  `ready_timeout_s`) for a pod whose endpoint is ready, that no replica holds yet, and whose
  action server answers its spec from here. It returns `Replica(action, "http://IP:PORT",
  pod=NAME)`; calls go straight to that address, balanced by the router.
- `stop_replica(replica)` (after the router drained it) lets the pod go: it sets
  `controller.kubernetes.io/pod-deletion-cost` low on that pod, so the scale-down by one
  removes it and not a busy one. At zero replicas the Deployment and Service are deleted.
- A held pod whose endpoint disappears or stops being ready is dead: its slot stays in the
  Deployment (whose controller replaces the pod) and `on_dead` tells the runtime, whose
  replacement `start_replica` takes the new pod instead of scaling up again.

The wanted count of an action is `held + starting + vacant`: pods handed to the router,
starts waiting for a pod, and slots no replica holds (a dead pod's, or those adopted from a
previous controller). Vacant slots are given to the next starts; they lapse after a grace.

Adoption (a restarted controller deletes nothing it still wants): at start the backend lists
the Deployments with jsorc's label and keeps each at its scale, as vacant slots, for
`adopt_grace_s`. `adopted()` tells the service, which loads each configured action remote
with that many replicas: its starts take the running pods, none is created or deleted. A
Deployment of an action nobody configures within the grace is deleted (jsorc owns it and no
one wants it); so is one whose pods nobody takes.

Shutdown deletes what jsorc owns unless `keep_on_shutdown`: then `detach()` (called before
the runtime unloads) turns the router's stops into letting go, and the next controller adopts
the Deployments. One jsorc per namespace: two would delete each other's objects.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsorc_live.actions.client import spec_answers
from jsorc_live.backend import ReplicaStartError
from jsorc_live.kube.client import Failure, FailureKind, KubeError, api_client, backoff, classify
from jsorc_live.kube.cluster import Cluster
from jsorc_live.kube.informer import ErrorLog, Informer
from jsorc_live.kube.manifests import (
    DELETION_COST,
    Endpoint,
    Objects,
    build,
    default_spec,
    endpoints,
    name_of,
    object_name,
    owner_action,
    ready_replicas,
    spec_replicas,
)
from jsorc_live.kube.reconcile import Op, Verb, Want, plan
from jsorc_live.kube.settings import KubeSettings, check_namespace
from jsorc_live.runtime import ActionInfo, Replica

log = logging.getLogger(__name__)

LOW_DELETION_COST = "-1000"
PROBE = "jsorc-probe"  # the name of the dry-run objects the start-up check creates


@dataclass
class _Action:
    """What the backend holds of one action (see the module docstring for the count)."""

    action: str
    name: str
    objects: Objects | None = None  # None: adopted, not configured yet
    held: dict[str, Replica] = field(default_factory=dict)  # pod -> the router's replica
    starting: int = 0
    vacant: int = 0
    vacant_until: float = 0.0
    probing: set[str] = field(default_factory=set)  # pods a start is checking
    passed_over: dict[str, float] = field(default_factory=dict)  # pod -> until (not taken)
    error: Failure | None = None  # a failure retrying cannot fix (or a name conflict)

    @property
    def wanted(self) -> int:
        return len(self.held) + self.starting + self.vacant

    @property
    def port(self) -> int:
        return self.objects.port if self.objects is not None else 80


class KubeBackend:
    """Replicas as pods of per-action Deployments in `cluster`'s namespace."""

    def __init__(self, cluster: Cluster, *, on_dead: Callable[[Replica], None] | None = None,
                 ready_timeout_s: float = 60.0, resync_s: float = 5.0,
                 adopt_grace_s: float = 600.0, keep_on_shutdown: bool = False,
                 watch_s: int = 60, probe: Callable[[str], bool] | None = None,
                 rand: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cluster = cluster
        self.namespace = cluster.namespace
        self.on_dead = on_dead
        self.ready_timeout_s = ready_timeout_s
        self.resync_s = resync_s
        self.adopt_grace_s = adopt_grace_s
        self.keep_on_shutdown = keep_on_shutdown
        self._probe = probe or (lambda url: spec_answers(url, timeout_s=2.0))
        self._rand = rand or random.Random(0)
        self._clock = clock
        self._actions: dict[str, _Action] = {}
        self._endpoints: dict[str, dict[str, Endpoint]] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pass_lock = threading.Lock()  # one reconcile pass at a time
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        self._closed = False
        self._detached = False
        self._failures = 0  # consecutive passes with a retryable failure
        self.errors = ErrorLog(log)
        self.passes = 0
        self.deployments = Informer(
            "deployments", cluster.list_deployments, cluster.watch_deployments,
            namespace=self.namespace, server=cluster.server, on_change=self._changed,
            errors=self.errors, watch_s=watch_s, rand=self._rand)
        self.slices = Informer(
            "endpointslices", cluster.list_endpoint_slices, cluster.watch_endpoint_slices,
            namespace=self.namespace, server=cluster.server, on_change=self._slices_changed,
            errors=self.errors, watch_s=watch_s, rand=self._rand)

    @classmethod
    def connect(cls, settings: KubeSettings, namespace: str, *,
                request_timeout_s: float = 10.0, **options: Any) -> KubeBackend:
        """A started backend for `settings` in `namespace` (each API call bounded by
        `request_timeout_s`): raises KubeError (one line) when the kubeconfig, the API
        server, the namespace or a permission is missing."""
        check_namespace(namespace)
        options.setdefault("keep_on_shutdown", settings.keep_on_shutdown)
        cluster = Cluster(api_client(settings), namespace, timeout_s=request_timeout_s)
        backend = cls(cluster, **options)
        backend.start()
        return backend

    # ----------------------------------------------------------------- lifecycle

    def check(self) -> list[dict[str, Any]]:
        """One list of each kind this backend reads and a dry-run create of each kind it
        writes: the API server answers, the namespace exists, the Role allows it. Returns
        jsorc's Deployments; raises KubeError."""
        deployments: list[dict[str, Any]] = []
        for kind, call in (("deployments", self.cluster.list_deployments),
                           ("services", self.cluster.list_services),
                           ("endpointslices", self.cluster.list_endpoint_slices)):
            try:
                answer = call()
            except Exception as exc:
                failure = classify(exc, verb="list", resource=kind, namespace=self.namespace,
                                   server=self.cluster.server)
                if failure.kind is FailureKind.MISSING:  # a list 404s: no such namespace
                    raise KubeError(f"list {kind} in namespace {self.namespace}: not found: "
                                    f"the namespace {self.namespace!r} does not exist (or "
                                    f"{self.cluster.server} does not serve {kind})") from None
                raise KubeError(failure.message) from None
            if kind == "deployments":
                deployments = [d for d in answer.get("items") or [] if isinstance(d, dict)]
        # A list in a namespace that does not exist answers an empty list; a create says
        # 404 (and 403 without the Role's create). Dry runs: the server stores nothing.
        probe = build(PROBE, default_spec(PROBE, {}, 64, 0.1), self.namespace, 0)
        for kind, create in (("deployment", self.cluster.create_deployment),
                             ("service", self.cluster.create_service)):
            try:
                create(probe.deployment if kind == "deployment" else probe.service,
                       dry_run=True)
            except Exception as exc:
                failure = classify(exc, verb="create (dry run)", resource=f"{kind} {probe.name}",
                                   namespace=self.namespace, server=self.cluster.server)
                if failure.kind is not FailureKind.CONFLICT:  # 409: the name is taken: fine
                    raise KubeError(failure.message) from None
        return deployments

    def start(self) -> None:
        """Check the cluster, adopt what a previous controller left, start the watches and
        the reconcile loop."""
        self._adopt(self.check())
        self.deployments.start()
        self.slices.start()
        self._loop = threading.Thread(target=self._run, name="kube-reconcile", daemon=True)
        self._loop.start()
        self.slices.synced.wait(timeout=10.0)

    def _adopt(self, deployments: Iterable[Mapping[str, Any]]) -> None:
        until = self._clock() + self.adopt_grace_s
        with self._lock:
            for deployment in deployments:
                action = owner_action(deployment)
                if action is None or name_of(deployment) != object_name(action):
                    continue
                replicas = spec_replicas(deployment)
                self._actions[action] = _Action(action, name_of(deployment), vacant=replicas,
                                                vacant_until=until)
                log.warning("adopted deployment %s/%s of action %s with %d replica(s); it is "
                            "kept %g s for the action's config", self.namespace,
                            name_of(deployment), action, replicas, self.adopt_grace_s)

    def adopted(self) -> dict[str, int]:
        """Actions with pods a previous controller left and no replica holds yet."""
        with self._lock:
            return {a.action: a.vacant for a in self._actions.values()
                    if a.vacant > 0 and not a.held and a.objects is None}

    def detach(self) -> bool:
        """Before the runtime unloads at shutdown: with keep_on_shutdown, stops only let the
        pods go (the next controller adopts them). True when the replicas outlive us."""
        with self._lock:
            self._detached = self.keep_on_shutdown
        return self._detached

    def shutdown(self) -> None:
        """Stop the loop and the watches; delete what jsorc owns unless kept (idempotent)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            keep = self.keep_on_shutdown
            if not keep:
                self._actions.clear()
            self._cond.notify_all()
        self._stop.set()
        self._kick.set()
        if self._loop is not None:
            self._loop.join(timeout=10.0)
        if not keep:
            deadline = time.monotonic() + 10.0
            while not self._reconcile() and time.monotonic() < deadline:
                time.sleep(backoff(self._failures, self._rand, cap_s=1.0))
        self.deployments.stop()
        self.slices.stop()

    # ----------------------------------------------------------------- Backend

    def start_replica(self, info: ActionInfo) -> Replica:
        """One more pod of the action's Deployment, once it is ready and answers."""
        spec = info.kubernetes or default_spec(info.module, info.setup,
                                               info.remote_memory_mb or 256.0,
                                               float(info.replica_cores))
        objects = build(info.name, spec, self.namespace, 1)
        with self._cond:
            if self._closed:
                raise ReplicaStartError("the kube backend is shut down")
            clash = next((a.action for a in self._actions.values()
                          if a.name == objects.name and a.action != info.name), None)
            if clash is not None:
                raise ReplicaStartError(f"actions {clash!r} and {info.name!r} map to the same "
                                        f"Kubernetes name {objects.name!r}; rename one")
            entry = self._actions.get(info.name)
            if entry is None:
                entry = self._actions[info.name] = _Action(info.name, objects.name)
                self._endpoints[entry.name] = endpoints(self.slices.items(), entry.name,
                                                        objects.port)
            entry.objects = objects
            entry.error = None
            if entry.vacant > 0:
                entry.vacant -= 1
            entry.starting += 1
        self._kick.set()
        try:
            return self._await_pod(entry, self._clock() + self.ready_timeout_s)
        except BaseException:
            with self._cond:
                entry.starting -= 1
            self._kick.set()
            raise

    def _await_pod(self, entry: _Action, deadline: float) -> Replica:
        while True:
            with self._cond:
                if self._closed:
                    raise ReplicaStartError("the kube backend shut down while a replica started")
                if entry.error is not None:
                    raise ReplicaStartError(entry.error.message)
                candidate = self._candidate(entry)
                if candidate is None:
                    left = deadline - self._clock()
                    if left <= 0:
                        raise ReplicaStartError(self._why_not_ready(entry))
                    self._cond.wait(min(left, 0.5))
                    continue
                entry.probing.add(candidate.pod)
            answers = self._probe(candidate.url)
            with self._cond:
                entry.probing.discard(candidate.pod)
                still = self._endpoints.get(entry.name, {}).get(candidate.pod)
                if answers and still is not None and still.ready and not self._closed:
                    entry.starting -= 1
                    replica = Replica(entry.action, candidate.url, pod=candidate.pod)
                    entry.held[candidate.pod] = replica
                    log.info("replica of %s ready: pod %s at %s", entry.action, candidate.pod,
                             candidate.url)
                    return replica
                entry.passed_over[candidate.pod] = self._clock() + 1.0  # retry it shortly

    def _candidate(self, entry: _Action) -> Endpoint | None:
        """A ready pod of the action no replica holds, no start is probing, not let go,
        once the Deployment reports one more ready replica than are held (so a replica is
        handed out when the cluster, not only its endpoint, says it is ready)."""
        deployment = self.deployments.items().get(entry.name)
        if deployment is None or ready_replicas(deployment) < len(entry.held) + 1:
            return None
        now = self._clock()
        entry.passed_over = {p: t for p, t in entry.passed_over.items() if t > now}
        for pod, endpoint in sorted(self._endpoints.get(entry.name, {}).items()):
            if endpoint.ready and pod not in entry.held and pod not in entry.probing \
                    and pod not in entry.passed_over:
                return endpoint
        return None

    def _why_not_ready(self, entry: _Action) -> str:
        deployment = self.deployments.items().get(entry.name)
        where = f"deployment {self.namespace}/{entry.name}"
        if deployment is None:
            state = "does not exist yet"
        else:
            state = (f"has {ready_replicas(deployment)}/{spec_replicas(deployment)} ready "
                     f"replica(s)")
        last = self.errors.last(f"deployment {entry.name}") or self.errors.last(
            f"service {entry.name}")
        return (f"no new ready pod of action {entry.action} within {self.ready_timeout_s:g} s: "
                f"{where} {state}" + (f"; last error: {last}" if last else ""))

    def stop_replica(self, replica: Replica) -> None:
        """Let the replica's pod go: lowest deletion cost, then one replica fewer."""
        with self._cond:
            entry = self._actions.get(replica.action)
            if entry is None or replica.pod is None or entry.held.get(replica.pod) != replica:
                return  # not ours, or already let go (a dead pod's slot is vacant)
            del entry.held[replica.pod]
            if self._detached:  # shutting down, kept: the pod stays for the next controller
                entry.vacant += 1
                entry.vacant_until = float("inf")
                return
            entry.passed_over[replica.pod] = self._clock() + 30.0  # going: never re-taken
            if not entry.held and not entry.starting:
                entry.vacant = 0  # nothing of the router's is left: no slot to keep
        self._mark_for_deletion(replica.pod)
        self._reconcile()

    def _mark_for_deletion(self, pod: str) -> None:
        for attempt in range(3):
            try:
                self.cluster.annotate_pod(pod, {DELETION_COST: LOW_DELETION_COST})
                self.errors.ok(f"pod {pod}")
                return
            except Exception as exc:
                failure = classify(exc, verb="patch", resource=f"pod {pod}",
                                   namespace=self.namespace, server=self.cluster.server)
                if failure.kind in (FailureKind.MISSING, FailureKind.FATAL):
                    if failure.kind is FailureKind.FATAL:
                        self.errors.failed(f"pod {pod}", failure.message)
                    return
                self.errors.failed(f"pod {pod}", failure.message)
                time.sleep(backoff(attempt, self._rand, cap_s=1.0))

    def replicas(self, action: str) -> list[Replica]:
        """The replicas handed to the router that are still ready."""
        with self._lock:
            entry = self._actions.get(action)
            if entry is None:
                return []
            eps = self._endpoints.get(entry.name, {})
            return [r for pod, r in sorted(entry.held.items())
                    if pod in eps and eps[pod].ready]

    def healthy(self, replica: Replica) -> bool:
        """Its pod still exists and is ready (from the watch's cache)."""
        with self._lock:
            entry = self._actions.get(replica.action)
            if entry is None or replica.pod is None or replica.pod not in entry.held:
                return False
            endpoint = self._endpoints.get(entry.name, {}).get(replica.pod)
            return endpoint is not None and endpoint.ready

    def describe(self, action: str) -> dict[str, Any]:
        """The action's objects as the cluster reports them (for status answers)."""
        with self._lock:
            entry = self._actions.get(action)
            if entry is None:
                return {}
            name, held, wanted = entry.name, sorted(entry.held), entry.wanted
            error = entry.error.message if entry.error else None
        deployment = self.deployments.items().get(name)
        return {"namespace": self.namespace, "deployment": name, "wanted": wanted,
                "replicas": spec_replicas(deployment) if deployment else 0,
                "ready": ready_replicas(deployment) if deployment else 0,
                "pods": held, "error": error}

    # ----------------------------------------------------------------- watch callbacks

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _slices_changed(self) -> None:
        """New endpoints: wake the starts; a held pod gone or not ready is dead."""
        slices = self.slices.items()
        dead: list[Replica] = []
        with self._cond:
            now = self._clock()
            self._endpoints = {}
            for entry in self._actions.values():
                eps = endpoints(slices, entry.name, entry.port)
                self._endpoints[entry.name] = eps
                entry.passed_over = {p: t for p, t in entry.passed_over.items()
                                     if t > now and p in eps}
                for pod, replica in list(entry.held.items()):
                    if pod not in eps or not eps[pod].ready:
                        del entry.held[pod]
                        entry.vacant += 1  # its Deployment replaces the pod: keep the slot
                        entry.vacant_until = max(entry.vacant_until,
                                                 now + self.ready_timeout_s + 30.0)
                        dead.append(replica)
            self._cond.notify_all()
        for replica in dead:
            log.warning("replica of %s lost: pod %s (%s) is gone or not ready",
                        replica.action, replica.pod, replica.url)
            if self.on_dead is not None:
                try:
                    self.on_dead(replica)
                except Exception:  # the runtime's handler must not end the watch
                    log.exception("on_dead handler failed for %s", replica)

    # ----------------------------------------------------------------- reconcile

    def _run(self) -> None:
        while not self._stop.is_set():
            delay = (self.resync_s if self._failures == 0
                     else backoff(self._failures - 1, self._rand, cap_s=self.resync_s))
            self._kick.wait(delay)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                self._reconcile()
            except Exception:  # nothing may end the loop
                log.exception("reconcile pass failed")
                self._failures += 1

    def _wants(self) -> dict[str, Want]:
        """Called holding the lock: lapse old vacancies, forget what nobody wants."""
        now = self._clock()
        wants = {}
        for action, entry in list(self._actions.items()):
            if entry.vacant and now >= entry.vacant_until:
                if entry.objects is None:
                    log.warning("deployment %s/%s of action %s: not configured within the "
                                "adoption grace; deleting it", self.namespace, entry.name,
                                action)
                entry.vacant = 0
            if entry.wanted > 0:
                wants[entry.name] = Want(action, entry.name, entry.wanted, entry.objects)
            elif not entry.probing:
                del self._actions[action]
        return wants

    def _reconcile(self) -> bool:
        """One pass: list, plan, write. True when every write succeeded."""
        with self._pass_lock:
            self.passes += 1
            try:
                deployments = self._owned(self.cluster.list_deployments())
                services = self._owned(self.cluster.list_services())
            except Exception as exc:
                self._failed(None, classify(exc, verb="list", resource="deployments/services",
                                            namespace=self.namespace,
                                            server=self.cluster.server), "list")
                return False
            self.errors.ok("list")
            with self._lock:
                wants = self._wants()
            failed: set[str] = set()
            for op in plan(wants, deployments, services):
                if not self._apply(op):
                    failed.add(op.action)
            with self._cond:
                for entry in self._actions.values():
                    if entry.action not in failed:
                        entry.error = None
            if not failed:
                self._failures = 0
            return not failed

    @staticmethod
    def _owned(answer: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {name_of(item): item for item in answer.get("items") or []
                if isinstance(item, dict) and owner_action(item) is not None}

    def _apply(self, op: Op) -> bool:
        try:
            self._write(op)
        except Exception as exc:
            failure = classify(exc, verb=op.verb.value, resource=op.resource,
                               namespace=self.namespace, server=self.cluster.server)
            return self._recover(op, failure)
        self.errors.ok(op.resource)
        if op.verb is Verb.CONFLICT:
            return False
        if op.verb is not Verb.SCALE:
            log.info("%s %s %s/%s (%s)", op.verb.value, op.kind, self.namespace, op.name,
                     op.reason)
        return True

    def _write(self, op: Op) -> None:
        cluster = self.cluster
        if op.verb is Verb.CONFLICT:
            self._failed(op, Failure(FailureKind.FATAL, 409, f"cannot manage action "
                                     f"{op.action}: {op.reason}"), op.resource)
        elif op.verb is Verb.CREATE:
            (cluster.create_deployment if op.kind == "deployment"
             else cluster.create_service)(dict(op.body))
        elif op.verb is Verb.PATCH:
            (cluster.patch_deployment if op.kind == "deployment"
             else cluster.patch_service)(op.name, dict(op.body))
        elif op.verb is Verb.SCALE:
            cluster.scale_deployment(op.name, op.replicas)
        elif op.kind == "deployment":
            cluster.delete_deployment(op.name)
        else:
            cluster.delete_service(op.name)

    def _recover(self, op: Op, failure: Failure) -> bool:
        """After a failed write: what the failure means for this object."""
        if failure.kind is FailureKind.MISSING and op.verb is Verb.DELETE:
            return True  # already gone
        if failure.kind is FailureKind.CONFLICT and op.verb is Verb.CREATE:
            return self._adopt_existing(op)
        if failure.kind in (FailureKind.MISSING, FailureKind.CONFLICT, FailureKind.RELIST):
            # Gone or changed meanwhile: the next pass lists again and creates or patches.
            self._failed(op, Failure(FailureKind.RETRY, failure.status, failure.message),
                         op.resource)
            return False
        self._failed(op, failure, op.resource)
        return False

    def _adopt_existing(self, op: Op) -> bool:
        """A 409 on create: the object exists. Ours: the next pass patches or scales it;
        another's: a conflict named once."""
        try:
            existing = (self.cluster.read_deployment if op.kind == "deployment"
                        else self.cluster.read_service)(op.name)
        except Exception as exc:
            self._failed(op, classify(exc, verb="get", resource=op.resource,
                                      namespace=self.namespace, server=self.cluster.server),
                         op.resource)
            return False
        owner = owner_action(existing)
        if owner == op.action:
            log.info("%s already exists (ours): adopting it", op.resource)
            self._failures += 1  # list again soon, to patch or scale it
            return False
        who = f"action {owner!r}'s" if owner else "not jsorc's"
        self._failed(op, Failure(FailureKind.FATAL, 409, f"cannot manage action {op.action}: "
                                 f"{op.resource} exists and is {who}"), op.resource)
        return False

    def _failed(self, op: Op | None, failure: Failure, key: str) -> None:
        """Log once; a failure that retrying cannot fix is the action's error (its starts
        raise it); a retryable one backs the loop off."""
        self.errors.failed(key, failure.message)
        if failure.kind is FailureKind.FATAL:
            with self._cond:
                targets = ([self._actions[op.action]] if op is not None
                           and op.action in self._actions else
                           list(self._actions.values()))
                for entry in targets:
                    if entry.starting:
                        entry.error = failure
                self._cond.notify_all()
        else:
            self._failures += 1
