"""What jsorc knows about each keep-alive service (the Debian binary, its command line, how
to ask whether it answers) and Prometheus' scrape config: the pure half of
jsorc_live.services, which runs them.

The command builders and `scrape_config` are pure; the readiness probes ask the service.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = ["KINDS", "ScrapeTarget", "ServiceKind", "prometheus_command", "prometheus_ready",
           "redis_command", "redis_ping", "scrape_config"]


# --------------------------------------------------------------------------- kinds


def prometheus_command(binary: str, host: str, port: int, data: Path, config: Path
                       ) -> list[str]:
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address={host}:{port}", "--storage.tsdb.retention.time=1d",
            "--log.level=warn"]


def redis_command(binary: str, host: str, port: int, data: Path, config: Path) -> list[str]:
    return [binary, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(data), "--daemonize", "no", "--protected-mode", "yes"]


def prometheus_ready(host: str, port: int) -> bool:
    try:
        return httpx.get(f"http://{host}:{port}/-/ready", timeout=0.5).status_code == 200
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


@dataclass(frozen=True)
class ServiceKind:
    """How to run one kind of service."""

    name: str
    binary: str  # looked up on PATH
    package: str  # the Debian package that ships it
    scheme: str  # of the service's URL
    command: Callable[[str, str, int, Path, Path], list[str]]  # binary, host, port, data, cfg
    ready: Callable[[str, int], bool]
    reloads_on_sighup: bool = False


KINDS: Mapping[str, ServiceKind] = {
    "prometheus": ServiceKind("prometheus", "prometheus", "prometheus", "http",
                              prometheus_command, prometheus_ready, reloads_on_sighup=True),
    "redis": ServiceKind("redis", "redis-server", "redis-server", "redis", redis_command,
                         redis_ping),
}


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
