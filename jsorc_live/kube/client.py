"""The official client, set up from the settings, and what its failures mean.

`api_client(settings)` builds a `kubernetes.client.ApiClient` in-cluster or from a kubeconfig
(a path or its text) and context, and refuses a missing or invalid one with one line naming
what is missing (`KubeError`). `classify(exc, ...)` is pure: it turns whatever a call raised
(an `ApiException`, a urllib3 error, a timeout) into a `Failure` whose `kind` says what the
reconciler does next; `backoff` is the retry delay with full jitter.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from jsorc_live.kube.settings import KubeSettings, is_inline


class KubeError(RuntimeError):
    """The kube backend cannot work: one line naming what is missing or refused."""


def api_client(settings: KubeSettings, *, pool_size: int = 16) -> client.ApiClient:
    """An ApiClient for `settings`; raises KubeError naming the kubeconfig, the context, or
    the missing in-cluster environment. With neither `in_cluster` nor `config`, the default
    kubeconfig, or in a pod without one the service account."""
    configuration = client.Configuration()
    if resolved(settings).in_cluster:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise KubeError(f"not running in a Kubernetes pod ({exc}); give a kubeconfig "
                            "instead of in_cluster") from None
    else:
        doc, where = _kubeconfig(settings.config)
        contexts = [c.get("name") for c in doc.get("contexts") or [] if isinstance(c, dict)]
        context = settings.context or doc.get("current-context")
        if not context:
            raise KubeError(f"{where} names no current-context; pass --context "
                            f"(it has: {', '.join(map(str, contexts)) or 'no contexts'})")
        if context not in contexts:
            raise KubeError(f"context {context!r} is not in {where} "
                            f"(it has: {', '.join(map(str, contexts)) or 'no contexts'})")
        try:
            config.load_kube_config_from_dict(doc, context=context,
                                              client_configuration=configuration)
        except (ConfigException, KeyError, TypeError, ValueError) as exc:
            raise KubeError(f"{where} is not a usable kubeconfig: "
                            f"{type(exc).__name__}: {exc}") from None
    # One attempt per call: the reconciler retries with backoff, and a stalled request
    # must not become four (urllib3's default retries).
    configuration.retries = 0
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def resolved(settings: KubeSettings) -> KubeSettings:
    """`settings` with the default made explicit: in a pod with neither `in_cluster` nor a
    kubeconfig (none given, none at the default path), the pod's service account, as
    kubectl and client-go do."""
    in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if not settings.in_cluster and settings.config is None and in_pod \
            and not default_kubeconfig().is_file():
        return dataclasses.replace(settings, in_cluster=True, context=None)
    return settings


def _kubeconfig(source: str | None) -> tuple[dict[str, Any], str]:
    """The kubeconfig document and how to name it in messages."""
    if source is not None and is_inline(source):
        text, where = source, "the inline kubeconfig"
    else:
        path = Path(source) if source is not None else default_kubeconfig()
        where = f"kubeconfig {path}"
        if not path.is_file():
            hint = "" if source is not None else " (set KUBECONFIG or pass --kubeconfig)"
            raise KubeError(f"{where} does not exist{hint}")
        try:
            text = path.read_text()
        except OSError as exc:
            raise KubeError(f"{where} cannot be read: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KubeError(f"{where} is not YAML: {first}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("clusters"), list):
        raise KubeError(f"{where} is not a kubeconfig (no clusters list)")
    return doc, where


def default_kubeconfig() -> Path:
    """$KUBECONFIG's first entry, else ~/.kube/config (what kubectl reads)."""
    env = os.environ.get("KUBECONFIG", "")
    first = next((p for p in env.split(os.pathsep) if p), "")
    return Path(first) if first else Path.home() / ".kube" / "config"


# --------------------------------------------------------------------------- failures


class FailureKind(enum.Enum):
    """What to do after a failed call."""

    RELIST = "relist"  # 410 Gone: the watch's resourceVersion expired
    CONFLICT = "conflict"  # 409: already exists (adopt) or modified meanwhile (re-read)
    MISSING = "missing"  # 404 of the object: create it next pass
    RETRY = "retry"  # 429, 5xx, timeouts, connection errors: back off and retry
    FATAL = "fatal"  # 400/401/403/422, a missing namespace: retrying as is cannot help


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    status: int | None
    message: str  # one line naming the resource
    retry_after_s: float | None = None


def classify(exc: BaseException, *, verb: str, resource: str, namespace: str,
             server: str = "the API server") -> Failure:
    """What a failed `verb` of `resource` (e.g. "deployment jsorc-use-enc") means. Pure."""
    if isinstance(exc, ApiException):
        return _api_failure(exc, verb, resource, namespace)
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, urllib3.exceptions.NewConnectionError | ConnectionError):
        # (NewConnectionError is a ConnectTimeoutError in urllib3: test it first.)
        return Failure(FailureKind.RETRY, None, f"{verb} {resource}: cannot reach {server}: "
                       f"{_one_line(exc)}")
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return Failure(FailureKind.RETRY, None, f"{verb} {resource}: {server} did not answer "
                       "in time")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return Failure(FailureKind.RETRY, None, f"{verb} {resource}: cannot reach {server}: "
                       f"{_one_line(exc)}")
    return Failure(FailureKind.RETRY, None,
                   f"{verb} {resource}: {type(exc).__name__}: {_one_line(exc)}")


def _api_failure(exc: ApiException, verb: str, resource: str, namespace: str) -> Failure:
    status = int(exc.status or 0)
    body = _status_body(exc)
    message = _one_line(body.get("message") or exc.reason or "")
    details = body.get("details")
    details = details if isinstance(details, dict) else {}
    what = f"{verb} {resource} in namespace {namespace}"
    if status == 404 and (details.get("kind") == "namespaces"
                          or f'namespaces "{namespace}" not found' in message):
        return Failure(FailureKind.FATAL, 404, f"{what}: namespace {namespace!r} does not "
                       "exist (create it, or pass --namespace)")
    if status == 404:
        return Failure(FailureKind.MISSING, 404, f"{what}: not found")
    if status == 409:
        return Failure(FailureKind.CONFLICT, 409, f"{what}: conflict: {message}")
    if status == 410:
        return Failure(FailureKind.RELIST, 410, f"{what}: expired: {message}")
    if status == 401:
        return Failure(FailureKind.FATAL, 401, f"{what}: unauthorised: the credentials were "
                       f"refused ({message})")
    if status == 403:
        return Failure(FailureKind.FATAL, 403, f"{what}: forbidden: {message or 'no reason'} "
                       "(the Role must grant jsorc_live/kube/rbac.py's CALLS)")
    if status == 429 or status >= 500 or status == 0:
        retry_after = _retry_after(exc)
        return Failure(FailureKind.RETRY, status or None,
                       f"{what}: HTTP {status or '?'} {message}".rstrip(), retry_after)
    return Failure(FailureKind.FATAL, status, f"{what}: HTTP {status}: {message}")


def _status_body(exc: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(exc: ApiException) -> float | None:
    headers = exc.headers or {}
    try:
        return float(headers.get("Retry-After", ""))
    except ValueError:
        return None


def _one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text[:300]


def backoff(attempt: int, rand: random.Random, *, base_s: float = 0.2,
            cap_s: float = 10.0) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (attempt 0 is the first
    retry), at least a tenth of the base so retries never spin."""
    ceiling = min(cap_s, base_s * 2.0 ** max(0, attempt))
    return max(base_s / 10.0, rand.uniform(0.0, ceiling))
