"""The node side of the stand-in kubelet: pod addresses on loopback, a container as a real
process, its command line and environment from the pod spec, and its probes.

- :class:`AddressPool`: pod IPs. 127.0.0.0/8 answers on ``lo``, so every pod gets an address of
  its own and binds the same port as its siblings, as pods do in a cluster. Each dev cluster
  takes a block ``127.0.X.0/24`` (the first free from 127.0.1.0), claimed with an ``flock``
  on a file in the temp folder, so clusters in other processes (parallel test workers) take
  other blocks; the lock dies with the process. An address is handed out only if every port
  the pod declares is free on it.
- :class:`ContainerProcess`: the container's command, in a process group of its own, output
  to a log file; stopped with SIGTERM to the group, then SIGKILL after the grace period.
- :func:`container_argv`: ``command`` + ``args`` with ``$(VAR)`` expanded from the container's
  env, as Kubernetes does; ``python``/``python3``/``python3.N`` become this interpreter
  (``sys.executable``), a program found beside it (the venv's ``bin``: ``jsorc``) is taken
  from there; ``--host X`` (or ``--host=X``) is rewritten to the pod's own IP, so a server
  told to bind 0.0.0.0 in its image binds its pod address here. A container without a
  ``command`` cannot run: there are no images on this machine.
- :func:`container_env`: this process's environment (the venv, PYTHONPATH...) under the
  container's ``env`` and ``envFrom``: values, ``$(VAR)`` references, ``fieldRef``
  (``metadata.name``/``namespace``/``uid``/``labels['k']``/``annotations['k']``,
  ``spec.nodeName``, ``spec.serviceAccountName``, ``status.podIP``/``podIPs``/``hostIP``),
  ``configMapKeyRef`` and ``secretKeyRef`` read through a lookup function (the API).
  ``POD_IP`` is not set unless the spec asks for it, as in a cluster.
- :func:`probe_of` / :func:`run_probe`: ``httpGet`` (path, numeric or named port, scheme
  HTTP), ``tcpSocket`` and ``exec`` probes, with their thresholds and timeouts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import httpx

__all__ = [
    "AddressPool",
    "ContainerConfigError",
    "ContainerProcess",
    "Probe",
    "container_argv",
    "container_env",
    "container_ports",
    "probe_of",
    "run_probe",
]

LOCK_DIR = Path(tempfile.gettempdir()) / "jsorc-devcluster-ips"
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD_MAP = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")

#: Reads a ConfigMap or Secret key: (kind "configmaps"|"secrets", namespace, name, key) ->
#: value, or None when the object or the key is missing.
Lookup = Callable[[str, str, str, str | None], Mapping[str, str] | None]


class ContainerConfigError(Exception):
    """A container the kubelet cannot start as specified (CreateContainerConfigError)."""


# --------------------------------------------------------------------------- addresses


class AddressPool:
    """Pod IPs in this cluster's 127.0.X.0/24 block (see the module docstring)."""

    def __init__(self, lock_dir: Path = LOCK_DIR, first_block: int = 1) -> None:
        self.lock_dir = lock_dir
        self.first_block = first_block
        self.block: int | None = None
        self._lock_file: IO[str] | None = None
        self._used: set[str] = set()
        self._next = 1

    def claim(self) -> int:
        """Take the first free block; returns its X (127.0.X.0/24)."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        for block in range(self.first_block, 255):
            handle = (self.lock_dir / f"127.0.{block}.lock").open("w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            self._lock_file, self.block = handle, block
            return block
        raise RuntimeError(f"no free 127.0.X.0/24 block: every lock in {self.lock_dir} is held")

    def allocate(self, ports: Sequence[int]) -> str:
        """The next address of the block on which every one of ``ports`` is free."""
        if self.block is None:
            self.claim()
        for _ in range(254):
            host = self._next
            self._next = host % 254 + 1  # round robin: a freed address is reused last
            ip = f"127.0.{self.block}.{host}"
            if ip not in self._used and all(port_free(ip, p) for p in ports):
                self._used.add(ip)
                return ip
        raise RuntimeError(f"no free pod address in 127.0.{self.block}.0/24 for ports "
                           f"{list(ports)}")

    def release(self, ip: str) -> None:
        self._used.discard(ip)

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None


def port_free(ip: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``ip`` now (as the action server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- processes


class ContainerProcess:
    """One run of a container's command (a restart is a new ContainerProcess)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path,
                 log_path: Path) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.started_at = time.time()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self._log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n"
                        .encode())
        self._log.flush()
        try:
            self.popen = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd,
                                          start_new_session=True)
        except OSError:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        """The exit code once it has exited (the rest of its group is killed then)."""
        code = self.popen.poll()
        if code is not None:
            self._kill_group(signal.SIGKILL)
            self._close_log()
        return code

    def terminate(self) -> None:
        """SIGTERM to the process group (no wait)."""
        if self.popen.poll() is None:
            self._kill_group(signal.SIGTERM)

    def stop(self, grace_s: float) -> int:
        """SIGTERM to the process group, SIGKILL after ``grace_s``; the exit code."""
        if self.popen.poll() is None:
            self._kill_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._kill_group(signal.SIGKILL)
                self.popen.wait(timeout=10.0)
        self._kill_group(signal.SIGKILL)  # anything the process left behind in its group
        self._close_log()
        return int(self.popen.returncode)

    def _kill_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def _close_log(self) -> None:
        with contextlib.suppress(OSError):
            self._log.close()


# --------------------------------------------------------------------------- command, env


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, others kept as written,
    ``$$`` is a literal ``$``."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR.sub(sub, text)


def resolve_program(program: str) -> str:
    """``python*`` is this interpreter; a bare name found beside it (the venv's bin) is
    taken from there; anything else is left to PATH."""
    if _PYTHON.match(os.path.basename(program)):
        return sys.executable
    if "/" not in program:
        beside = Path(sys.executable).parent / program
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
        found = shutil.which(program)
        if found:
            return found
    return program


def container_argv(container: Mapping[str, Any], env: Mapping[str, str], pod_ip: str
                   ) -> list[str]:
    """The command line of a container (see the module docstring)."""
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if not command:
        raise ContainerConfigError(
            f"container {container.get('name')!r} has no command: the dev cluster runs a "
            "container's command on this machine and cannot run an image's entrypoint")
    argv = [expand(part, env) for part in (*command, *args)]
    argv[0] = resolve_program(argv[0])
    out: list[str] = []
    rewrite = False
    for part in argv:
        if rewrite:
            out.append(pod_ip)
            rewrite = False
        elif part == "--host":
            out.append(part)
            rewrite = True
        elif part.startswith("--host="):
            out.append(f"--host={pod_ip}")
        else:
            out.append(part)
    return out


def _field(path: str, pod: Mapping[str, Any], pod_ip: str) -> str:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    simple = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
              "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
              "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
              "status.podIP": pod_ip, "status.podIPs": pod_ip, "status.hostIP": "127.0.0.1",
              "status.hostIPs": "127.0.0.1"}
    if path in simple:
        return str(simple[path] or "")
    if m := _FIELD_MAP.match(path):
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ContainerConfigError(f"unsupported fieldRef {path!r}")


def _ref_value(ref: Mapping[str, Any], kind: str, namespace: str, lookup: Lookup
               ) -> str | None:
    data = lookup(kind, namespace, str(ref.get("name", "")), str(ref.get("key", "")))
    key = str(ref.get("key", ""))
    if data is None or key not in data:
        if ref.get("optional"):
            return None
        what = "configmap" if kind == "configmaps" else "secret"
        raise ContainerConfigError(f'{what} "{ref.get("name")}" has no key {key!r} (or does '
                                   "not exist)")
    return data[key]


def container_env(container: Mapping[str, Any], pod: Mapping[str, Any], pod_ip: str,
                  base: Mapping[str, str], lookup: Lookup) -> dict[str, str]:
    """The environment of a container's process (see the module docstring)."""
    namespace = str((pod.get("metadata") or {}).get("namespace", "default"))
    own: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix", ""))
        for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            ref = source.get(key)
            if ref is None:
                continue
            data = lookup(kind, namespace, str(ref.get("name", "")), None)
            if data is None and not ref.get("optional"):
                raise ContainerConfigError(f'{kind[:-1]} "{ref.get("name")}" not found')
            own.update({prefix + k: v for k, v in (data or {}).items()})
    for item in container.get("env") or []:
        name = str(item.get("name", ""))
        source = item.get("valueFrom")
        if source is None:
            own[name] = expand(str(item.get("value", "")), own)
        elif "fieldRef" in source:
            own[name] = _field(str(source["fieldRef"].get("fieldPath", "")), pod, pod_ip)
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind = "configmaps" if "configMapKeyRef" in source else "secrets"
            value = _ref_value(source.get("configMapKeyRef") or source["secretKeyRef"], kind,
                               namespace, lookup)
            if value is not None:
                own[name] = value
        else:
            raise ContainerConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
    return {**base, "PYTHONUNBUFFERED": "1", **own}


def container_ports(container: Mapping[str, Any]) -> dict[str, int]:
    """Declared ports by name (unnamed ones under their number as a string)."""
    out = {}
    for port in container.get("ports") or []:
        number = port.get("containerPort")
        if isinstance(number, int):
            out[str(port.get("name") or number)] = number
    return out


# --------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Probe:
    """A probe as the kubelet runs it."""

    kind: str  # "http", "tcp", "exec"
    target: str  # URL, "host:port" or the command joined by NUL
    initial_delay_s: float = 0.0
    period_s: float = 10.0
    timeout_s: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


def probe_of(probe: Mapping[str, Any] | None, container: Mapping[str, Any], pod_ip: str
             ) -> Probe | None:
    """The Probe of a probe spec, or None when there is none (or of an unsupported kind)."""
    if not probe:
        return None
    timing = Probe("", "", initial_delay_s=float(probe.get("initialDelaySeconds", 0)),
                   period_s=float(probe.get("periodSeconds", 10)),
                   timeout_s=float(probe.get("timeoutSeconds", 1)),
                   success_threshold=int(probe.get("successThreshold", 1)),
                   failure_threshold=int(probe.get("failureThreshold", 3)))
    ports = container_ports(container)

    def port_of(value: Any) -> int:
        if isinstance(value, int):
            return value
        if str(value) in ports:
            return ports[str(value)]
        if str(value).isdigit():
            return int(value)
        raise ContainerConfigError(f"probe port {value!r} is not a port of container "
                                   f"{container.get('name')!r}")

    if "httpGet" in probe:
        get = probe["httpGet"]
        scheme = str(get.get("scheme", "HTTP")).lower()
        path = str(get.get("path", "/"))
        host = str(get.get("host") or pod_ip)
        path = path if path.startswith("/") else "/" + path
        url = f"{scheme}://{host}:{port_of(get.get('port'))}{path}"
        return replace(timing, kind="http", target=url)
    if "tcpSocket" in probe:
        sock = probe["tcpSocket"]
        target = f"{sock.get('host') or pod_ip}:{port_of(sock.get('port'))}"
        return replace(timing, kind="tcp", target=target)
    if "exec" in probe:
        command = [str(c) for c in (probe["exec"].get("command") or [])]
        return replace(timing, kind="exec", target="\0".join(command))
    return None


def run_probe(probe: Probe, env: Mapping[str, str] | None = None) -> bool:
    """One attempt: HTTP 200-399, a TCP connect, or exit code 0, within the timeout."""
    try:
        if probe.kind == "http":
            response = httpx.get(probe.target, timeout=probe.timeout_s)
            return 200 <= response.status_code < 400
        if probe.kind == "tcp":
            host, _, port = probe.target.rpartition(":")
            with socket.create_connection((host, int(port)), timeout=probe.timeout_s):
                return True
        command = probe.target.split("\0")
        done = subprocess.run([resolve_program(command[0]), *command[1:]], env=env,
                              capture_output=True, timeout=probe.timeout_s, check=False)
        return done.returncode == 0
    except (httpx.HTTPError, OSError, subprocess.TimeoutExpired, ValueError):
        return False
