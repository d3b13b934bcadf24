"""deploy/grafana: the dashboard has the operator's panels and every query of it is PromQL a
real Prometheus accepts, over series that exist; the provisioning points Grafana at that
Prometheus and at the dashboard's folder; the Deployment mounts what the provisioning names.

The live half runs deploy/prometheus/prometheus.yml on loopback (tests/deploy/prometheus.py)
scraping a real `jsorc serve` as the runtime's pod, its real bi_enc replica as an action pod,
and a cAdvisor-shaped exporter for both pods, so the cluster's labels (namespace, pod, role,
action) are the ones the queries see. Grafana itself is not in Debian and cannot run here:
its variables are substituted the way Grafana does for "All" before each query is sent.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge

from jsorc_live.kube.manifests import build, default_spec
from jsorc_live.tracksys import CADVISOR_METRICS
from tests.deploy.manifests import (
    GRAFANA_DASHBOARD,
    GRAFANA_PROVISIONING,
    containers,
    find,
    pod_template,
    rendered,
)
from tests.deploy.prometheus import loopback_config, pod_target, running_prometheus
from tests.deploy.test_prometheus_config import metrics_server
from tests.jsorc_live.binaries import need, poll
from tests.jsorc_live.test_tracksys import TOKEN, jsorc_serve

# The built-in /dashboard's panels (README, "The live system"), by title.
PANELS = {
    "Placement", "Replicas: ready and desired", "Call latency p50 and p95 (local and remote)",
    "Node memory", "Node CPU", "Replica memory", "Replica CPU", "Walker throughput",
    "Walker latency p50 and p95", "Kept-alive services", "Decisions",
}
# What Grafana puts for its built-in interval variables (any valid duration parses the same).
BUILTINS = {"__rate_interval": "15s", "__interval": "5s", "__range": "5m"}
NAMESPACE = "jsorc"
RUNTIME_POD, REPLICA_POD = "jsorc-7d9f8b6c5-abcde", "jsorc-bi-enc-6d5f4c-klmno"
# What the cAdvisor stand-in reports for each pod: (working set bytes, CPU seconds so far).
CADVISOR = {RUNTIME_POD: (300e6, 40.0), REPLICA_POD: (120e6, 7.0)}


def dashboard() -> dict[str, Any]:
    doc = json.loads(GRAFANA_DASHBOARD.read_text())
    assert isinstance(doc, dict)
    return doc


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too; rows themselves are not panels."""
    out = []
    for panel in doc["panels"]:
        out.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    return out


def by_title(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in panels(doc)}


def variables(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in doc["templating"]["list"]}


def substitute(expr: str, doc: dict[str, Any]) -> str:
    """`expr` as Grafana sends it with every query variable on "All" (its allValue) and the
    built-in intervals set; nothing Grafana would replace may be left."""
    values = dict(BUILTINS)
    for name, var in variables(doc).items():
        if var["type"] == "query":
            values[name] = var["allValue"]
    names = "|".join(sorted(map(re.escape, values), key=len, reverse=True))
    out = re.sub(rf"\$\{{({names})\}}|\$({names})\b",
                 lambda m: values[m[1] or m[2]], expr)
    assert "$" not in out, f"a Grafana variable the test does not know is left in: {out}"
    return out


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str  # as Grafana sends it (substituted)


def queries(doc: dict[str, Any]) -> list[Query]:
    """Every panel's every target, and each query variable's series selector."""
    out = [Query(p["title"], t["refId"], substitute(t["expr"], doc))
           for p in panels(doc) for t in p.get("targets", [])]
    for name, var in variables(doc).items():
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *(\w+)\)", var["query"]["query"])
            assert match, f"variable {name}: not label_values(selector, label)"
            out.append(Query(f"${name}", "var", substitute(match[1], doc)))
    return out


# --------------------------------------------------------------------------- the JSON


def test_the_dashboard_has_the_operators_panels_on_one_datasource_variable() -> None:
    doc = dashboard()
    assert doc["schemaVersion"] >= 39, "a current Grafana's schema (11.x: 39 and up)"
    assert doc["uid"] and len(doc["uid"]) <= 40, "a fixed uid: a fixed URL /d/<uid>"
    titles = [p["title"] for p in panels(doc)]
    assert set(titles) >= PANELS, sorted(PANELS - set(titles))
    assert len(titles) == len(set(titles)), "titles are unique"
    ids = [p["id"] for p in panels(doc)] + [p["id"] for p in doc["panels"]
                                            if p["type"] == "row"]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    source = variables(doc)["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    for panel in panels(doc):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "text":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, \
            panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == panel["datasource"] and t["expr"].strip(), panel["title"]
    # No decisions series in jsorc's /metrics: the panel sends the reader to /dashboard.
    decisions = by_title(doc)["Decisions"]
    assert decisions["type"] == "text" and "/dashboard" in decisions["options"]["content"]
    assert "jsorc_url" in variables(doc)


def test_the_placement_panel_maps_its_encoding_to_the_placements() -> None:
    panel = by_title(dashboard())["Placement"]
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    texts = {int(k): v["text"] for k, v in mapping["options"].items()}
    # The query adds 1 for local and 2 for remote; neither is 0.
    assert texts == {0: "unloaded", 1: "local", 2: "remote"}
    (target,) = panel["targets"]
    assert 'placement="local"' in target["expr"] and '2 * sum' in target["expr"]


def test_substitution_leaves_grafanas_all_values_and_intervals() -> None:
    doc = dashboard()
    got = substitute('rate(x{a=~"$action", n=~"${namespace}"}[$__rate_interval])', doc)
    assert got == 'rate(x{a=~".*", n=~".*"}[15s])'
    with pytest.raises(AssertionError, match="left in"):
        substitute("x[$__unknown]", doc)


def test_the_dashboard_reads_only_the_cadvisor_series_prometheus_keeps() -> None:
    """deploy/prometheus drops every other cAdvisor series at scrape time."""
    exprs = " ".join(q.expr for q in queries(dashboard()))
    used = set(re.findall(r"\b(container_[a-z_]+)\b", exprs))
    assert used and used <= set(CADVISOR_METRICS.values()), used


# --------------------------------------------------------------------------- provisioning


def provisioning(name: str) -> dict[str, Any]:
    (path,) = [p for p in GRAFANA_PROVISIONING if p.name == name]
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict) and doc["apiVersion"] == 1, path
    return doc


def test_the_datasource_is_the_namespaces_prometheus_under_the_variables_uid() -> None:
    (source,) = provisioning("datasources.yaml")["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    assert source["uid"] == variables(dashboard())["datasource"]["current"]["value"]
    url = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", source["url"])
    assert url, source["url"]
    service = find(rendered(), "Service", url[1])
    assert [p["port"] for p in service["spec"]["ports"]] == [int(url[2])]
    assert service["spec"]["selector"].items() <= pod_template(rendered(), url[1])[
        "metadata"]["labels"].items()


def test_grafana_mounts_the_dashboard_where_the_provisioning_looks() -> None:
    objs = rendered()
    template = pod_template(objs, "grafana")
    (grafana,) = containers(template)
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in grafana["volumeMounts"]}
    (provider,) = provisioning("dashboards.yaml")["providers"]
    assert provider["type"] == "file"
    folder = mounts[provider["options"]["path"]]
    generated = find(objs, "ConfigMap", "jsorc-grafana-dashboards")
    assert volumes[folder["name"]]["configMap"]["name"] == generated["metadata"]["name"]
    assert json.loads(generated["data"][GRAFANA_DASHBOARD.name]) == dashboard()
    assert generated["metadata"]["labels"]["grafana_dashboard"] == "1"  # sidecar pick-up
    config = find(objs, "ConfigMap", "jsorc-grafana-provisioning")
    for kind in ("datasources", "dashboards"):
        mount = mounts[f"/etc/grafana/provisioning/{kind}/{kind}.yaml"]
        assert volumes[mount["name"]]["configMap"]["name"] == config["metadata"]["name"]
        assert config["data"][mount["subPath"]] == \
            next(p for p in GRAFANA_PROVISIONING if p.name == mount["subPath"]).read_text()
    home = {e["name"]: e.get("value") for e in grafana["env"]}
    assert home["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == \
        f"{provider['options']['path']}/{GRAFANA_DASHBOARD.name}"
    service = find(objs, "Service", "grafana")
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in grafana["ports"]}


# --------------------------------------------------------------------------- live


def cadvisor_registry() -> CollectorRegistry:
    """cAdvisor's two per-container series for the runtime's and the replica's pods: one
    container each, and the pod-level row (container="") cAdvisor also writes."""
    registry = CollectorRegistry()
    labels = ["namespace", "pod", "container"]
    memory = Gauge("container_memory_working_set_bytes", "", labels, registry=registry)
    cpu = Counter("container_cpu_usage_seconds", "", labels, registry=registry)
    for pod, (working_set, cpu_s) in CADVISOR.items():
        for container in ("main", ""):
            memory.labels(NAMESPACE, pod, container).set(working_set)
            cpu.labels(NAMESPACE, pod, container).inc(cpu_s)
    return registry


def admin(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(url + path, json=body, headers={"Authorization": f"token {TOKEN}"},
                        timeout=60)
    assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text}"
    out: dict[str, Any] = answer.json()
    return out


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def as_pod(template: dict[str, Any], name: str, at: str) -> list[dict[str, Any]]:
    """Kubernetes discovery's target for a pod of `template` named `name`, at the
    host:port of `at` (a server started here) instead of the pod IP and port."""
    pod = copy.deepcopy(template)
    pod["metadata"] = {**pod["metadata"], "name": name, "namespace": NAMESPACE}
    host, port = host_port(at)
    (target,) = pod_target(pod, host)
    return [{**target, "targets": [f"{host}:{port}"]}]


@dataclass(frozen=True)
class Live:
    prometheus: str
    runs: int


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Prometheus (deploy's config) scraping `jsorc serve` as the runtime's pod, with bi_enc
    on one remote replica (an action pod), cl_summer local, redis kept alive, walkers run."""
    need("prometheus")
    tmp = tmp_path_factory.mktemp("grafana")
    objs = rendered()
    with contextlib.ExitStack() as stack:
        url, _ = stack.enter_context(jsorc_serve(tmp))
        for name, mode in (("bi_enc", "remote"), ("cl_summer", "local")):
            admin(url, "/jsorc/actions/config", {"name": name,
                                                 "config": "jsorc_live.actions.config"})
            admin(url, "/jsorc/actions/load", {"name": name, "mode": mode})
        poll(lambda: admin(url, "/jsorc/actions/status", {"name": "bi_enc"})["action_status"]
             .get("remote", {}).get("status") == "READY", 60, "bi_enc replica READY")
        replica = admin(url, "/jsorc/actions/status",
                        {"name": "bi_enc"})["action_status"]["remote"]["url"]
        admin(url, "/jsorc/config/set", {"name": "keep_alive", "value": ["redis"]})
        steps = [{"action": "bi_enc", "function": "cos_sim_score", "args": {"q": "q", "a": "a"}},
                 {"action": "cl_summer", "function": "summarize", "args": {"text": "q"}}]
        admin(url, "/jsorc/walker/set", {"name": "pairs", "steps": steps})

        action_template = build("bi_enc", dataclasses.replace(
            default_spec("jsorc_live.actions.examples.bi_enc", {}, 100, 1),
            port=host_port(replica)[1]), NAMESPACE, 1).deployment["spec"]["template"]
        cadvisor_ip, cadvisor_port = stack.enter_context(metrics_server(cadvisor_registry()))
        sd = tmp / "pods.json"
        sd.write_text(json.dumps([*as_pod(pod_template(objs, "jsorc"), RUNTIME_POD, url),
                                  *as_pod(action_template, REPLICA_POD, replica)]))
        token = tmp / "token"
        token.write_text("not-checked")
        config = loopback_config(pods_sd=sd, cadvisor=f"{cadvisor_ip}:{cadvisor_port}",
                                 credentials=token)
        prom = stack.enter_context(running_prometheus(config, tmp / "prometheus"))
        poll(lambda: len(instant(prom, 'up{job="jsorc"} == 1')) == 2 or None, 30,
             "Prometheus scraping the runtime and the replica", every_s=0.25)
        runs = 0
        ctx = {"q": "Where is my flight? " * 5, "a": "When does the plane leave? " * 5}
        deadline = time.monotonic() + 4.0
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.monotonic() < deadline:
                answer = http.post("/walker_run", json={"name": "pairs", "ctx": ctx})
                assert answer.status_code == 200, answer.text
                runs += 1
        yield Live(prom, runs)


def query(prom: str, expr: str) -> httpx.Response:
    return httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10)


def instant(prom: str, expr: str) -> list[dict[str, Any]]:
    answer = query(prom, expr)
    assert answer.status_code == 200, f"{expr}: {answer.status_code} {answer.text}"
    result: list[dict[str, Any]] = answer.json()["data"]["result"]
    return result


def test_prometheus_refuses_a_query_that_does_not_parse(live: Live) -> None:
    """The check below can fail: a parse error is 400 bad_data."""
    answer = query(live.prometheus, "sum by (action (jsorc_replicas_ready)")
    assert answer.status_code == 400 and answer.json()["errorType"] == "bad_data"


def test_every_query_parses_and_finds_series(live: Live) -> None:
    """Every target of every panel, and every variable's selector: accepted by Prometheus
    and answered with series (so each metric and label it names exists), once the walker
    runs' calls have been scraped."""
    todo = queries(dashboard())

    def empty() -> list[Query] | None:
        left = [q for q in todo if not instant(live.prometheus, q.expr)]
        return None if left else []

    with contextlib.suppress(AssertionError):
        poll(empty, 20, "every query answered", every_s=1.0)
    missing = [f"{q.panel} {q.ref}: {q.expr}" for q in todo
               if not instant(live.prometheus, q.expr)]
    assert not missing, "queries with no series:\n" + "\n".join(missing)
    print(f"\n{len(todo)} queries, each with series, after {live.runs} walker runs")


def values(live: Live, panel: str, ref: str) -> dict[tuple[str, ...], float]:
    """The panel target's answer: {its series' label values, sorted by name: value}."""
    (q,) = [q for q in queries(dashboard()) if q.panel == panel and q.ref == ref]
    return {tuple(v for _, v in sorted(r["metric"].items())): float(r["value"][1])
            for r in instant(live.prometheus, q.expr)}


def test_the_panels_show_what_was_placed_and_measured(live: Live) -> None:
    placed = values(live, "Placement", "A")
    mapping = by_title(dashboard())["Placement"]["fieldConfig"]["defaults"]["mappings"][0]
    shown = {k: mapping["options"][str(int(v))]["text"] for k, v in placed.items()}
    assert shown == {("bi_enc",): "remote", ("cl_summer",): "local"}
    assert values(live, "Replicas: ready and desired", "A")[("bi_enc",)] == 1
    assert values(live, "Replicas: ready and desired", "B")[("bi_enc",)] == 1
    p50 = values(live, "Call latency p50 and p95 (local and remote)", "A")
    assert set(p50) == {("bi_enc", "remote"), ("cl_summer", "local")}
    # cAdvisor's pod rows joined to the scrape targets' roles: each panel has its own pod,
    # counted once (the pod-level row, container="", is left out).
    assert values(live, "Node memory", "A") == {(NAMESPACE, RUNTIME_POD, "runtime"):
                                                CADVISOR[RUNTIME_POD][0]}
    assert values(live, "Replica memory", "A") == {("bi_enc", NAMESPACE, REPLICA_POD,
                                                    "replica"): CADVISOR[REPLICA_POD][0]}
    process = values(live, "Replica memory", "B")
    assert list(process) and all(v > 20e6 for v in process.values()), process
    throughput = values(live, "Walker throughput", "A")
    assert set(throughput) == {("pairs", "true")} and throughput[("pairs", "true")] > 0
    assert set(values(live, "Walker latency p50 and p95", "B")) == {("pairs",)}
    services = values(live, "Kept-alive services", "A")
    assert [k[0] for k in services] == ["redis"] and set(services.values()) == {1.0}


def test_the_new_series_count_every_walker_run_and_call_once(live: Live) -> None:
    """What the walker and latency panels rate, against the runs the fixture made: each run
    is one successful walker run and one call to each of its two actions."""
    def scraped(expr: str) -> dict[str, float] | None:
        got = {r["metric"].get("action", ""): float(r["value"][1])
               for r in instant(live.prometheus, expr)}
        return got if got and set(got.values()) == {float(live.runs)} else None

    poll(lambda: scraped('sum(jsorc_walker_runs_total{role="runtime", ok="true"})'), 15,
         f"{live.runs} walker runs scraped", every_s=0.5)
    assert scraped('sum(jsorc_walker_latency_seconds_count{role="runtime"})')
    calls = poll(lambda: scraped(
        'sum by (action) (jsorc_call_latency_seconds_count{role="runtime"})'), 15,
        "every call scraped", every_s=0.5)
    assert set(calls) == {"bi_enc", "cl_summer"}
    assert not instant(live.prometheus, 'jsorc_walker_runs_total{ok="false"}')
