"""The services jsorc provides (Prometheus, Redis, PostgreSQL as definitions), the names
JSORC gave them, the health probes, and Prometheus' scrape config: the half of keep-alive that
knows services, beside jsorc_live.service_defs (what a definition is) and jsorc_live.services
(which runs them).

`builtin_definitions`, `check_keep_alive` and `scrape_config` are pure but for the glob that
finds PostgreSQL's version folder; the probes ask the service.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from jsorc_live.service_defs import HealthCheck, HealthKind, ServiceDefinition, expand

__all__ = ["ALIASES", "BUILTIN_NAMES", "NOT_PROVIDED", "POSTGRES_USER", "ScrapeTarget",
           "builtin_definitions", "check_keep_alive", "postgres_bindir", "probe",
           "prometheus_command", "prometheus_ready", "redis_ping", "scrape_config"]

#: JSORC's names of the services jsorc keeps alive under another name.
ALIASES: Mapping[str, str] = {"promon": "prometheus", "prome": "prometheus",
                              "jaseci-db": "postgresql"}

#: Services JSORC's MetaService knew that jsorc does not run, and what they were.
NOT_PROVIDED: Mapping[str, str] = {
    "task": "Jaseci's Celery task queue", "mail": "Jaseci's e-mail sender",
    "elastic": "Jaseci's Elasticsearch logger", "stripe": "Jaseci's Stripe billing",
    "kube": "JSORC's Kubernetes client (jsorc's is `jsorc serve --backend kube`)",
}

#: The services jsorc provides itself (`builtin_definitions`' keys).
BUILTIN_NAMES = ("prometheus", "redis", "postgresql")

#: The role the kept-alive PostgreSQL's database URL logs in as.
POSTGRES_USER = "jsorc"


# --------------------------------------------------------------------------- built-ins


def prometheus_command(binary: str, host: str, port: int, data: Path, config: Path
                       ) -> list[str]:
    """Prometheus' command line (tests/deploy runs the same Prometheus by hand)."""
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address={host}:{port}", "--storage.tsdb.retention.time=1d",
            "--log.level=warn"]


def postgres_bindir(root: Path = Path("/usr/lib/postgresql")) -> Path | None:
    """Debian's newest PostgreSQL (/usr/lib/postgresql/<version>/bin), None if none."""
    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", path.parent.parent.name)) or (0,)

    found = sorted((p.parent for p in root.glob("*/bin/postgres")), key=lambda p: version(p))
    return found[-1] if found else None


def builtin_definitions(pg_bindir: Path | None = None) -> dict[str, ServiceDefinition]:
    """prometheus, redis and postgresql, each on {host}:{port} (pure but for finding
    PostgreSQL's folder when `pg_bindir` is not given)."""
    pg = pg_bindir or postgres_bindir()
    # Not installed: the bare name is not on PATH either, so the service reads MISSING.
    postgres, initdb = (str(pg / "postgres"), str(pg / "initdb")) if pg else ("postgres",
                                                                             "initdb")
    return {
        "prometheus": ServiceDefinition(
            "prometheus", ("prometheus", "--config.file={config}",
                           "--storage.tsdb.path={data}", "--web.listen-address={host}:{port}",
                           "--storage.tsdb.retention.time=1d", "--log.level=warn"),
            HealthCheck(HealthKind.HTTP, "/-/ready"), package="prometheus", scheme="http",
            reloads_on_sighup=True),
        "redis": ServiceDefinition(
            "redis", ("redis-server", "--bind", "{host}", "--port", "{port}", "--save", "",
                      "--appendonly", "no", "--dir", "{data}", "--daemonize", "no",
                      "--protected-mode", "yes"),
            HealthCheck(HealthKind.REDIS), package="redis-server", scheme="redis"),
        # A password (scram) even on loopback: any local user reaches 127.0.0.1. The socket
        # goes in the service's folder, not /var/run/postgresql, which Debian's root owns.
        "postgresql": ServiceDefinition(
            "postgresql", (postgres, "-D", "{data}", "-h", "{host}", "-p", "{port}",
                           "-k", "{workdir}", "-c", "unix_socket_permissions=0700"),
            HealthCheck(HealthKind.POSTGRESQL, timeout_s=2.0),
            init=(initdb, "-D", "{data}", "-U", POSTGRES_USER, "--pwfile={password_file}",
                  "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"),
            package="postgresql", scheme="postgresql", user="nobody", persistent=True),
    }


def check_keep_alive(names: Iterable[str], defined: Iterable[str]) -> list[str]:
    """`names` in jsorc's spelling (JSORC's aliases mapped, duplicates dropped); ValueError
    naming every name jsorc does not provide, what it was in JSORC, and what jsorc keeps
    alive (`defined`: the built-ins and the user's `services`) (pure)."""
    known = list(defined)
    out = list(dict.fromkeys(ALIASES.get(n, n) for n in names))
    bad = [n for n in out if n not in known]
    if bad:
        said = ", ".join(f"{n} ({NOT_PROVIDED[n]})" if n in NOT_PROVIDED
                         else f"{n} (not a service jsorc knows)" for n in bad)
        aliases = {v: k for k, v in ALIASES.items() if k != "prome"}
        offered = ", ".join(f"{n} (JSORC's {aliases[n]})" if n in aliases else n
                            for n in known)
        raise ValueError(f"jsorc does not provide {said}: it keeps alive {offered}, and any "
                         "command defined under META_CONFIG `services`")
    return out


# --------------------------------------------------------------------------- probes


def prometheus_ready(host: str, port: int) -> bool:
    return _http(host, port, "/-/ready", 0.5)


def _http(host: str, port: int, path: str, timeout_s: float) -> bool:
    try:
        return httpx.get(f"http://{host}:{port}{path}", timeout=timeout_s).is_success
    except httpx.HTTPError:
        return False


def redis_ping(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """PING over a raw socket (RESP): True on +PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _postgres(host: str, port: int, password: str | None, timeout_s: float) -> bool:
    import psycopg  # only where PostgreSQL is kept alive

    try:  # libpq counts whole seconds, at least 2
        with psycopg.connect(host=host, port=port, user=POSTGRES_USER, password=password or "",
                             dbname="postgres", connect_timeout=max(2, round(timeout_s))
                             ) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


def probe(check: HealthCheck, host: str, port: int, values: Mapping[str, str],
          password: str | None = None) -> bool:
    """Does the service on host:port answer `check`? (`values` fill a command's
    placeholders.)"""
    if check.kind is HealthKind.HTTP:
        return _http(host, port, check.path, check.timeout_s)
    if check.kind is HealthKind.REDIS:
        return redis_ping(host, port, check.timeout_s)
    if check.kind is HealthKind.POSTGRESQL:
        return _postgres(host, port, password, check.timeout_s)
    if check.kind is HealthKind.COMMAND:
        try:
            return subprocess.run(expand(check.command, values), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=check.timeout_s, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False
    try:
        with socket.create_connection((host, port), timeout=check.timeout_s):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- scrape config


@dataclass(frozen=True)
class ScrapeTarget:
    """A /metrics endpoint: the runtime, or a replica of `action`."""

    url: str  # http://host:port
    role: str  # "runtime" | "replica"
    action: str = ""
    pid: int | None = None  # when known (psutil needs it; Prometheus does not)

    @property
    def instance(self) -> str:
        return self.url.split("://", 1)[-1].rstrip("/")

    @property
    def name(self) -> str:
        return self.role if self.role == "runtime" else f"{self.action}@{self.instance}"


def scrape_config(targets: Sequence[ScrapeTarget], interval_s: float = 1.0) -> str:
    """Prometheus' config (JSON, a subset of YAML): one job `jsorc` scraping every target's
    /metrics, labelled with its role, action and name (pure)."""
    interval = f"{max(round(interval_s * 1000), 100)}ms"
    static = []
    urls = {t for t in targets if t.url}  # the runtime's URL is unknown until it serves
    for t in sorted(urls, key=lambda t: (t.role != "runtime", t.action, t.url)):
        labels = {"role": t.role, "name": t.name}
        if t.action:
            labels["action"] = t.action
        static.append({"targets": [t.instance], "labels": labels})
    doc: dict[str, Any] = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval,
                   "evaluation_interval": "15s"},
        "scrape_configs": [{"job_name": "jsorc", "metrics_path": "/metrics",
                            "scrape_interval": interval, "scrape_timeout": interval,
                            "static_configs": static}],
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
