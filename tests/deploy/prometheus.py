"""deploy/prometheus/prometheus.yml on loopback: the same jobs and relabelling, with Kubernetes
discovery swapped for what runs here (Debian's Prometheus is built without it, and no API
server runs here), and a real Prometheus process running it.

- job `jsorc` (pod discovery): a file of targets carrying the `__meta_kubernetes_pod_*` labels
  Kubernetes discovery would give each pod (`pod_target` builds one from a pod object);
- job `cadvisor` (node discovery, https to the kubelet): one static target over http, with
  the config's own token file stanza pointed at a temporary file;
- every interval shortened to `interval_s`.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from jsorc_live.services import prometheus_command
from tests.deploy.manifests import PROMETHEUS_CONFIG
from tests.jsorc_live.binaries import need, poll
from tests.jsorc_live.servers import free_port


def meta_name(prefix: str, key: str) -> str:
    """Prometheus' label for a Kubernetes label or annotation key."""
    return prefix + re.sub(r"[^a-zA-Z0-9_]", "_", key)


def pod_target(pod: Mapping[str, Any], ip: str, *, phase: str = "Running"
               ) -> list[dict[str, Any]]:
    """What Kubernetes pod discovery gives for `pod` (an object with metadata and spec)
    at `ip`: one target per declared container port."""
    meta = pod["metadata"]
    common = {"__meta_kubernetes_namespace": meta.get("namespace", ""),
              "__meta_kubernetes_pod_name": meta["name"], "__meta_kubernetes_pod_ip": ip,
              "__meta_kubernetes_pod_phase": phase}
    for key, value in (meta.get("labels") or {}).items():
        common[meta_name("__meta_kubernetes_pod_label_", key)] = value
    for key, value in (meta.get("annotations") or {}).items():
        common[meta_name("__meta_kubernetes_pod_annotation_", key)] = value
    out = []
    for container in pod["spec"]["containers"]:
        for port in container.get("ports", []):
            out.append({"targets": [f"{ip}:{port['containerPort']}"],
                        "labels": {**common, "__meta_kubernetes_pod_container_name":
                                   container["name"],
                                   "__meta_kubernetes_pod_container_port_name":
                                   port.get("name", ""),
                                   "__meta_kubernetes_pod_container_port_number":
                                   str(port["containerPort"])}})
    return out


def loopback_config(*, pods_sd: Path, cadvisor: str, credentials: Path,
                    cadvisor_path: str | None = None, interval_s: float = 1.0
                    ) -> dict[str, Any]:
    """deploy's config with discovery swapped (see the module's docstring); `cadvisor` is
    host:port, `cadvisor_path` its metrics path (default the config's)."""
    doc: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    interval = f"{round(interval_s * 1000)}ms"
    doc["global"].update(scrape_interval=interval, scrape_timeout=interval)
    for job in doc["scrape_configs"]:
        sd = job.pop("kubernetes_sd_configs", None)
        if "scrape_interval" in job:
            job.update(scrape_interval=interval, scrape_timeout=interval)
        if sd is None:
            continue
        (role,) = {s["role"] for s in sd}
        if role == "pod":
            job["file_sd_configs"] = [{"files": [str(pods_sd)], "refresh_interval": interval}]
        elif role == "node":
            job["static_configs"] = [{"targets": [cadvisor]}]
            job["scheme"] = "http"
            job.pop("tls_config", None)
            job["authorization"]["credentials_file"] = str(credentials)
            if cadvisor_path is not None:
                job["metrics_path"] = cadvisor_path
        else:
            raise AssertionError(f"job {job['job_name']}: no loopback stand-in for {role}")
    return doc


@contextlib.contextmanager
def running_prometheus(config: Mapping[str, Any], folder: Path) -> Iterator[str]:
    """A Debian Prometheus on a free loopback port running `config`; its URL. Stopped (and
    killed if it must be) at the end."""
    binary = need("prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(dict(config)))
    port = free_port()
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(prometheus_command(binary, "127.0.0.1", port, folder / "data",
                                                   path), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {log.read_text(errors='replace')}")
        try:
            return httpx.get(url + "/-/ready", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        poll(ready, 20, "prometheus ready")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def instant(url: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """An instant query's result (the series and their values)."""
    params: dict[str, str] = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    answer = httpx.get(url + "/api/v1/query", params=params, timeout=5)
    answer.raise_for_status()
    result: list[dict[str, Any]] = answer.json()["data"]["result"]
    return result


def active_targets(url: str) -> list[dict[str, Any]]:
    answer = httpx.get(url + "/api/v1/targets", params={"state": "active"}, timeout=5)
    answer.raise_for_status()
    targets: list[dict[str, Any]] = answer.json()["data"]["activeTargets"]
    return targets
