"""deploy/: every manifest validates offline against Kubernetes' own schemas (strict), alone and
as `kubectl kustomize deploy/` renders it; the runtime's Role grants exactly the calls the kube
backend makes; the objects fit together (selectors, ports, volumes, the ServiceAccount, the
META_CONFIG the settings parser reads); the Prometheus config keeps what tracksys reads; the
image's `pip install .` works from what the Dockerfile copies and gives both entry points; the
README recipe builds, loads and applies what the manifests name.

(`kubectl apply --dry-run=client -k` needs an API server's discovery even so: test_apply.py
runs it against the dev cluster.)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from jsorc_live import cli
from jsorc_live.actions import config as action_configs
from jsorc_live.api import Settings
from jsorc_live.kube.settings import KubeSettings
from jsorc_live.meta_config import apply_to, parse_meta_config
from jsorc_live.tracksys import CADVISOR_METRICS
from tests.conftest import REPO
from tests.deploy.manifests import (
    DEPLOY,
    GENERATED,
    PROMETHEUS_CONFIG,
    containers,
    find,
    kustomization,
    load_all,
    object_files,
    pod_template,
    rendered,
    rules_of,
)
from tests.jsorc_live.binaries import need

# The oldest Kubernetes the manifests promise (kubectl here is 1.32) and the newest
# kubernetes-validate knows.
VERSIONS = ("1.32", kubernetes_validate.utils.latest_version())
NAMESPACE = "jsorc"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def validate(doc: dict[str, Any], version: str, where: str) -> None:
    """Strict validation (unknown fields refused); a kind without a schema fails too."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{where}: {doc['kind']}/{doc['metadata']['name']} is not valid "
                    f"Kubernetes {version}: {path}: {exc.message}")
    except SchemaNotFoundError as exc:
        pytest.fail(f"{where}: {exc.message}")


# --------------------------------------------------------------------------- schemas


def test_every_manifest_file_is_in_the_kustomization() -> None:
    listed = {(DEPLOY / r).resolve() for r in kustomization()["resources"]}
    generated = {(DEPLOY / f).resolve() for g in kustomization().get("configMapGenerator", [])
                 for f in g.get("files", [])}
    assert listed == {p.resolve() for p in object_files()}
    assert generated == {p.resolve() for p in GENERATED}
    assert kustomization()["namespace"] == NAMESPACE


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", object_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_each_manifest_validates_strictly(path: Path, version: str) -> None:
    docs = load_all(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        validate(doc, version, str(path.relative_to(REPO)))


@pytest.mark.parametrize("version", VERSIONS)
def test_the_kustomize_rendering_validates_strictly(version: str) -> None:
    objs = rendered()
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
    for doc in objs:
        validate(doc, version, "kubectl kustomize deploy/")
        namespaced = doc["kind"] not in CLUSTER_SCOPED
        assert (doc["metadata"].get("namespace") == NAMESPACE) is namespaced, doc["metadata"]
    assert {k.split("/")[0] for k in kinds} == {
        "Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole",
        "ClusterRoleBinding", "ConfigMap", "Deployment", "Service", "StatefulSet"}, kinds
    assert len(objs) == 21, kinds  # 19, and PostgreSQL's StatefulSet and Service


# --------------------------------------------------------------------------- RBAC


def test_the_runtimes_role_grants_exactly_the_calls_the_kube_backend_makes() -> None:
    rbac = pytest.importorskip("jsorc_live.kube.rbac", reason="the kube backend's call table "
                               "(jsorc_live/kube/rbac.py) does not exist yet")
    calls = {(group, resource, verb) for (group, resource), verbs in rbac.CALLS.items()
             for verb in verbs}
    for role in (find(load_all(DEPLOY / "rbac.yaml"), "Role", "jsorc"),
                 find(rendered(), "Role", "jsorc")):
        granted = rules_of(role)
        assert not any("*" in triple for triple in granted), "no wildcards"
        missing, extra = sorted(calls - granted), sorted(granted - calls)
        assert not missing and not extra, (f"Role jsorc lacks {missing} (the backend calls "
                                           f"them) and grants {extra} (nothing calls them)")


def test_the_runtime_runs_as_its_service_account_bound_to_that_role_only() -> None:
    objs = rendered()
    assert pod_template(objs, "jsorc")["spec"]["serviceAccountName"] == "jsorc"
    find(objs, "ServiceAccount", "jsorc")
    binding = find(objs, "RoleBinding", "jsorc")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "jsorc"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "jsorc",
                                    "namespace": NAMESPACE}]
    bound = [o["metadata"]["name"] for o in objs if o["kind"].endswith("RoleBinding")
             for s in o["subjects"] if s["kind"] == "ServiceAccount" and s["name"] == "jsorc"]
    assert bound == ["jsorc"], "only RoleBinding jsorc may name the runtime's ServiceAccount"


# What Prometheus' Kubernetes service discovery and the kubelet ask of its ServiceAccount.
SD_NEEDS = {
    ("Role", "pod"): {("", "pods", "list"), ("", "pods", "watch")},
    ("ClusterRole", "node"): {("", "nodes", "list"), ("", "nodes", "watch")},
    ("ClusterRole", "/metrics/cadvisor"): {("", "nodes/metrics", "get")},  # kubelet authz
}


def test_prometheus_may_do_what_its_scrape_config_needs_and_no_more() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    uses = {sd["role"] for job in config["scrape_configs"]
            for sd in job.get("kubernetes_sd_configs", [])}
    uses |= {job["metrics_path"] for job in config["scrape_configs"]
             if job.get("metrics_path") == "/metrics/cadvisor"}
    objs = rendered()
    for kind in ("Role", "ClusterRole"):
        name = "prometheus" if kind == "Role" else "jsorc-prometheus"
        needed = set().union(*(v for (k, use), v in SD_NEEDS.items() if k == kind and
                               use in uses))
        assert rules_of(find(objs, kind, name)) == needed, kind
    assert pod_template(objs, "prometheus")["spec"]["serviceAccountName"] == "prometheus"
    for kind, role in (("RoleBinding", "Role"), ("ClusterRoleBinding", "ClusterRole")):
        name = "prometheus" if kind == "RoleBinding" else "jsorc-prometheus"
        binding = find(objs, kind, name)
        assert binding["roleRef"]["kind"] == role and binding["roleRef"]["name"] == name
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prometheus",
                                        "namespace": NAMESPACE}]


# --------------------------------------------------------------------------- wiring


def meta_config() -> dict[str, Any]:
    config_map = find(rendered(), "ConfigMap", "jsorc-meta-config")
    doc = json.loads(config_map["data"]["meta_config.json"])
    assert isinstance(doc, dict)
    return doc


def serve_args(objs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The runtime container's `jsorc serve` command line as the CLI parses it in the pod
    (its environment: the downward API's POD_NAMESPACE)."""
    template = pod_template(objs, "jsorc")
    (runtime,) = containers(template)
    command = runtime["command"]
    assert command[:2] == ["jsorc", "serve"], command
    env = {e["name"]: e for e in runtime["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    monkeypatch.setenv("POD_NAMESPACE", find(objs, "Deployment", "jsorc")["metadata"]
                       ["namespace"])
    return cli.build_parser().parse_args(command[1:])


def test_the_meta_config_is_jsorcs_and_agrees_with_how_the_runtime_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    doc = meta_config()
    assert set(doc) == {"automation", "backoff_interval", "namespace", "keep_alive",
                        "kubernetes", "max_replicas"}
    # `services` (user-defined keep-alive commands) is the process backend's: left out.
    assert set(doc) | {"services"} == set(Settings().as_dict())
    assert doc["keep_alive"] == [], "in a cluster Prometheus is a Deployment, not kept alive"
    assert doc["automation"] is True
    # The settings `jsorc serve` starts with in the pod; `config_set META_CONFIG` parses the
    # document over them and sets it on a copy: the backend's keys must agree.
    args = serve_args(rendered(), monkeypatch)
    settings = Settings(namespace=args.namespace, kubernetes=KubeSettings(
        in_cluster=args.in_cluster, config=args.kubeconfig, context=args.context,
        keep_on_shutdown=args.keep_on_shutdown))
    apply_to(settings, parse_meta_config(json.dumps(doc), settings.as_dict()))
    assert settings.as_dict() == {**doc, "kubernetes": KubeSettings(in_cluster=True).as_dict(),
                                  "services": {}}
    assert settings.namespace == NAMESPACE


def test_the_runtime_serves_the_kube_backend_where_its_service_and_probes_look(
        monkeypatch: pytest.MonkeyPatch) -> None:
    objs = rendered()
    template = pod_template(objs, "jsorc")
    (runtime,) = containers(template)
    args = serve_args(objs, monkeypatch)
    assert args.backend == "kube" and args.in_cluster and args.namespace == NAMESPACE
    assert args.host == "0.0.0.0" and args.kubeconfig is None
    assert hasattr(__import__(args.config, fromlist=["ACTION_CONFIGS"]), "ACTION_CONFIGS")
    ports = {p["name"]: p["containerPort"] for p in runtime["ports"]}
    assert ports == {"http": args.port}
    for probe in ("readinessProbe", "livenessProbe"):
        assert runtime[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    for name in ("jsorc", "prometheus"):
        service = find(objs, "Service", name)
        labels = pod_template(objs, name)["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name
        (port,) = service["spec"]["ports"]
        (container,) = containers(pod_template(objs, name))
        assert port["targetPort"] in {p["name"] for p in container["ports"]}, name
    # The backend adopts and deletes what carries its label: never the runtime itself.
    from jsorc_live.kube.manifests import MANAGED_BY
    for name in ("jsorc", "prometheus"):
        meta = [find(objs, "Deployment", name)["metadata"], pod_template(objs, name)["metadata"]]
        assert not any(MANAGED_BY in (m.get("labels") or {}) for m in meta), name


def test_the_runtime_finds_its_token_and_prometheus(
        monkeypatch: pytest.MonkeyPatch) -> None:
    objs = rendered()
    template = pod_template(objs, "jsorc")
    (runtime,) = containers(template)
    env = {e["name"]: e for e in runtime["env"]}
    mounts = {m["name"]: m["mountPath"] for m in runtime["volumeMounts"]}
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    # The root filesystem is read-only: /tmp is the pod's own.
    assert runtime["securityContext"]["readOnlyRootFilesystem"] is True
    assert mounts == {"tmp": "/tmp"} and "emptyDir" in volumes["tmp"]
    assert env["JSORC_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "jsorc-token",
                                                               "key": "token"}
    url = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", serve_args(objs, monkeypatch).prometheus_url)
    assert url, "--prometheus-url names a Service of the namespace"
    service = find(objs, "Service", url[1])
    assert [p["port"] for p in service["spec"]["ports"]] == [int(url[2])]
    # Prometheus reads the generated ConfigMap (its name carries the content's hash).
    prom = pod_template(objs, "prometheus")
    (config_volume,) = [v for v in prom["spec"]["volumes"] if "configMap" in v]
    generated = find(objs, "ConfigMap", "jsorc-prometheus")
    assert config_volume["configMap"]["name"] == generated["metadata"]["name"]
    assert generated["data"]["prometheus.yml"] == PROMETHEUS_CONFIG.read_text()
    (container,) = containers(prom)
    assert "--config.file=/etc/prometheus/prometheus.yml" in container["args"]


# --------------------------------------------------------------------------- Prometheus


def test_postgresql_is_a_statefulset_with_a_volume_per_pod_and_a_secret_password() -> None:
    """deploy/postgresql-statefulset.yaml (validated with the rest above): the headless
    Service names the StatefulSet's pods; the data is on the claim template's volume; the
    password comes from a Secret, never from the manifests."""
    objs = rendered()
    sts = find(objs, "StatefulSet", "jsorc-postgresql")
    svc = find(objs, "Service", "jsorc-postgresql")
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == "jsorc-postgresql"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert svc["spec"]["ports"][0]["targetPort"] in ports and ports["postgresql"] == 5432
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert "data" in claims and mounts["data"] == "/var/lib/postgresql/data"
    env = {e["name"]: e for e in container["env"]}
    assert env["PGDATA"]["value"].startswith(mounts["data"] + "/")
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "jsorc-postgresql", "key": "password"}
    assert not any(o["kind"] == "Secret" for o in objs), "the password is the operator's"
    security = sts["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0


def test_the_runtime_keeps_its_state_in_the_statefulsets_database(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """deployment.yaml's JSORC_DATABASE_URL names the StatefulSet's first pod through its
    headless Service, as the user and database the image creates (POSTGRES_USER, _DB), with
    the password of the same Secret; Kubernetes expands $(PGPASSWORD), defined before it."""
    from psycopg.conninfo import conninfo_to_dict

    objs = rendered()
    (runtime,) = containers(pod_template(objs, "jsorc"))
    names = [e["name"] for e in runtime["env"]]
    env = {e["name"]: e for e in runtime["env"]}
    sts = find(objs, "StatefulSet", "jsorc-postgresql")
    (db,) = sts["spec"]["template"]["spec"]["containers"]
    db_env = {e["name"]: e for e in db["env"]}
    assert env["PGPASSWORD"]["valueFrom"] == db_env["POSTGRES_PASSWORD"]["valueFrom"]
    assert names.index("PGPASSWORD") < names.index("JSORC_DATABASE_URL")
    # What the pod sees once Kubernetes has expanded it (a hex password, as the README's):
    url = env["JSORC_DATABASE_URL"]["value"].replace("$(PGPASSWORD)", "0a1b2c")
    assert "$(" not in url
    parts = conninfo_to_dict(url)
    svc = find(objs, "Service", "jsorc-postgresql")
    assert parts == {"user": db_env["POSTGRES_USER"]["value"], "password": "0a1b2c",
                     "host": f"{sts['metadata']['name']}-0.{svc['metadata']['name']}",
                     "port": str(svc["spec"]["ports"][0]["port"]),
                     "dbname": db_env["POSTGRES_DB"]["value"]}
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    # `jsorc serve` in the pod reads it: --database defaults to $JSORC_DATABASE_URL.
    monkeypatch.setenv("JSORC_DATABASE_URL", url)
    assert serve_args(objs, monkeypatch).database == url


def test_the_prometheus_config_keeps_what_tracksys_and_the_backend_name() -> None:
    from jsorc_live.kube.manifests import ACTION_LABEL, MANAGED_BY, MANAGER

    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMETHEUS_CONFIG.read_text())
            ["scrape_configs"]}
    keep = [r for r in jobs["cadvisor"]["metric_relabel_configs"] if r["action"] == "keep"]
    by_label = {tuple(r["source_labels"]): r["regex"] for r in keep}
    assert set(by_label[("__name__",)].split("|")) == set(CADVISOR_METRICS.values())
    assert by_label[("namespace",)] == NAMESPACE
    assert jobs["cadvisor"]["metrics_path"] == "/metrics/cadvisor"

    def meta(prefix: str, key: str) -> str:  # Prometheus' name for a label or annotation
        return prefix + re.sub(r"[^a-zA-Z0-9_]", "_", key)

    relabels = jobs["jsorc"]["relabel_configs"]
    first = relabels[0]
    assert first["action"] == "keep" and first["source_labels"][0] == meta(
        "__meta_kubernetes_pod_label_", MANAGED_BY)
    assert first["regex"].startswith(f"{MANAGER};")
    action = [r for r in relabels if r.get("target_label") == "action"]
    assert [r["source_labels"] for r in action] == [[meta("__meta_kubernetes_pod_label_",
                                                          ACTION_LABEL)]]


def test_the_prometheus_config_passes_promtool_with_static_discovery(tmp_path: Path) -> None:
    """Debian's Prometheus is built without Kubernetes discovery, so promtool checks the
    config with the same jobs found through files instead."""
    from tests.deploy.prometheus import loopback_config

    promtool = need("promtool")
    sd = tmp_path / "pods.json"
    sd.write_text("[]")
    token = tmp_path / "token"
    token.write_text("t")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(loopback_config(pods_sd=sd, cadvisor="127.0.0.1:1",
                                                     credentials=token)))
    done = subprocess.run([promtool, "check", "config", str(config)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- image


def dockerfile() -> list[list[str]]:
    lines = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.startswith("#")]


def test_the_dockerfile_builds_from_python_slim_with_pip_install() -> None:
    steps = dockerfile()
    assert steps[0] == ["FROM", "python:3.11-slim"]
    copied = [src for step in steps if step[0] == "COPY" for src in step[1:-1]]
    for src in copied:
        assert (REPO / src).exists(), src
    run = " ".join(" ".join(step[1:]) for step in steps if step[0] == "RUN")
    assert "pip install ." in run
    packages = re.findall(r'"([a-z_]+)\*"', re.search(
        r"include = \[(.*)\]", (REPO / "pyproject.toml").read_text())[1])
    assert {*packages, "pyproject.toml", "README.md"} <= set(copied)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {f"!{src}" if "." in src else f"!{src}/" for src in copied} <= set(ignore)


def test_pip_install_of_what_the_dockerfile_copies_gives_both_entry_points(
        tmp_path: Path) -> None:
    """The image's `pip install .`, as a wheel built from exactly the COPY'd files; both
    commands the pods run start from it (and not from this checkout)."""
    context = tmp_path / "src"
    context.mkdir()
    for step in dockerfile():
        if step[0] == "COPY":
            for src in step[1:-1]:
                subprocess.run(["cp", "-r", str(REPO / src), str(context / src)], check=True)
    out = tmp_path / "wheel"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                           str(out), str(context)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}{done.stderr}"
    (wheel,) = out.glob("jsorc-*.whl")
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(unpacked)
        (entry,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = zf.read(entry).decode()
    assert re.search(r"^jsorc = jsorc_live\.cli:main$", entry_points, re.M), entry_points
    for cfg in action_configs.ACTION_CONFIGS.values():
        assert cfg.module.replace(".", "/") + ".py" in names, cfg.module
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    where = subprocess.run([sys.executable, "-c", "import jsorc_live; print(jsorc_live.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(unpacked)), where.stdout
    from jsorc_live.kube.manifests import default_spec
    action = default_spec("jsorc_live.actions.examples.bi_enc", {}, 100, 1).command
    assert list(action[:3]) == ["python", "-m", "jsorc_live.actions.server"], action
    for argv in (["-m", "jsorc_live.actions.server", "--help"],
                 ["-c", "from jsorc_live.cli import main; main(['serve', '--help'])"]):
        done = subprocess.run([sys.executable, *argv], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 and "--port" in done.stdout, done.stderr


# --------------------------------------------------------------------------- README


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"README has no section {title!r}"
    return match[1]


def test_the_readme_recipe_builds_loads_and_applies_what_the_manifests_name() -> None:
    recipe = readme_section("Kubernetes")
    objs = rendered()
    (runtime,) = containers(pod_template(objs, "jsorc"))
    images = {runtime["image"], action_configs.DEFAULT_IMAGE}
    build = re.search(r"^docker build .*$", recipe, re.M)
    assert build and "-f deploy/Dockerfile" in build[0], recipe
    assert images <= set(re.findall(r"-t (\S+)", build[0])), build[0]
    load = re.search(r"^kind load docker-image (.*)$", recipe, re.M)
    assert load and images <= set(load[1].split()), recipe
    secret = re.search(r"^kubectl create secret generic (\S+) -n (\S+) --from-literal=(\w+)=",
                       recipe, re.M)
    assert secret and secret.groups() == ("jsorc-token", NAMESPACE, "token"), recipe
    # The database's Secret before the manifests that read it.
    pg = re.search(r"^kubectl create secret generic jsorc-postgresql -n (\S+) "
                   r"--from-literal=password=\"\$\(openssl rand -hex", recipe, re.M)
    assert pg and pg[1] == NAMESPACE, recipe
    assert pg.start() < recipe.index("\nkubectl apply -k deploy/\n")
    # META_CONFIG from its ConfigMap, sent the Jaseci way.
    assert "kubectl get configmap jsorc-meta-config -n jsorc -o jsonpath='{.data.meta_config" \
        "\\.json}'" in recipe
    for line in ("/js_admin/config_set", "\\\"META_CONFIG\\\"", "/js_admin/service_refresh",
                 """'{"name": "meta"}'""", "kubectl apply -k deploy/", "jsorc actionpolicy set",
                 f"kubectl get deploy -n {NAMESPACE} -w"):
        assert line in recipe, line
