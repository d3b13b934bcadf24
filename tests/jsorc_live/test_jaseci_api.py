"""Jaseci's API over jsorc, without Jaseci: argument handling, META_CONFIG, login, shapes.

The op table is checked against Jaseci 1.4.2.6's own source (read with `ast`, not imported)
when .jaseci-venv is there; the HTTP cases run an in-process app with stand-in actions
(tests/jsorc_live/test_api_cli.py) through a uvicorn server in a thread on 127.0.0.1.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from jsorc_live.api import JsorcService, Settings, make_app
from jsorc_live.inproc import app_in_thread
from jsorc_live.jaseci_api import jaseci_status, runs_of
from jsorc_live.jaseci_login import AdminCredentials, LoginLimiter
from jsorc_live.jaseci_ops import OPS, Arg, Op, coerce_args
from jsorc_live.jaseci_states import StateRecorder
from jsorc_live.kube.settings import KubeSettings
from jsorc_live.meta_config import KubernetesConfig, MetaConfig, MetaConfigError, parse_meta_config
from jsorc_live.runtime import ActionInfo, Runtime, RuntimeRefusal, Step, Walker
from tests.jsorc_live.servers import JASECI_VENV
from tests.jsorc_live.test_api_cli import StandIn, StandInReplicas

TOKEN = "t0ken"
ADMIN = {"Authorization": f"token {TOKEN}"}
JASECI_SITE = next(iter(sorted(JASECI_VENV.glob("lib/python3*/site-packages/jaseci"))), None)

# --------------------------------------------------------------------------- the op table


def jaseci_signatures() -> dict[str, list[str]]:
    """Every API method of Jaseci's jsorc, config and walker APIs: op -> parameter names."""
    assert JASECI_SITE is not None
    out: dict[str, list[str]] = {}
    for name in ("jsorc_api.py", "config_api.py", "walker_api.py"):
        tree = ast.parse((JASECI_SITE / "extens" / "api" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.decorator_list:
                out[node.name] = [a.arg for a in node.args.args if a.arg != "self"]
    return out


@pytest.mark.skipif(JASECI_SITE is None, reason=".jaseci-venv missing: run `make jaseci-env`")
def test_every_jsorc_op_of_jaseci_is_served_with_its_argument_names() -> None:
    jaseci = jaseci_signatures()
    jsorc_ops = {n for n in jaseci if n.startswith("jsorc_")}
    assert jsorc_ops <= set(OPS), jsorc_ops - set(OPS)
    extensions = {"jsorc_actions_load": ["url", "replicas"]}  # jsorc's, optional
    for name, op in OPS.items():
        ours = [a.name for a in op.args]
        assert ours == jaseci[name] + extensions.get(name, []), name
        assert op.path == f"/{'js' if name == 'walker_run' else 'js_admin'}/{name}"


OP = Op("demo", "js_admin", (Arg("name"), Arg("params", dict, {}), Arg("report", bool, True),
                             Arg("mem", int, 0),
                             Arg("snt", str, None, fixed=True, why="no sentinels")), "demo")


@pytest.mark.parametrize(("body", "expected"), [
    # jsctl: every parameter, dicts as JSON text, None as null, plus its own `output`
    ({"name": "a", "params": "{}", "report": True, "mem": 0, "snt": None, "output": ""},
     {"name": "a", "params": {}, "report": True, "mem": 0, "snt": None}),
    ({"name": "a", "params": '{"k": 1}'}, {"name": "a", "params": {"k": 1}, "report": True,
                                           "mem": 0, "snt": None}),
    # JSORC's tests: the op's name in the body, dicts as objects
    ({"op": "demo", "name": "a", "params": {"k": 1}, "report": False},
     {"name": "a", "params": {"k": 1}, "report": False, "mem": 0, "snt": None}),
    # a form: every value a string
    ({"name": "a", "params": "", "report": "false", "mem": "3"},
     {"name": "a", "params": {}, "report": False, "mem": 3, "snt": None}),
])
def test_arguments_as_jsctl_and_jsorc_send_them(body: dict[str, Any],
                                                 expected: dict[str, Any]) -> None:
    assert coerce_args(OP, body) == expected


@pytest.mark.parametrize(("body", "words"), [
    ({}, "missing field 'name'"),
    ({"name": ""}, "non-empty"),
    ({"name": "a", "nope": 1, "zap": 2}, "unknown field(s) nope, zap (demo takes name, params"),
    ({"name": "a", "params": "[1]"}, "params must be a JSON object"),
    ({"name": "a", "params": "{bad"}, "params must be a JSON object"),
    ({"name": "a", "report": "maybe"}, "report must be true or false"),
    ({"name": "a", "mem": 1.5}, "mem must be an integer"),
    ({"name": "a", "mem": True}, "mem must be an integer"),
    ({"name": "a", "snt": "urn:uuid:1"}, "snt='urn:uuid:1' is not supported: no sentinels"),
    ({"op": "other", "name": "a"}, "field op is 'other'"),
])
def test_bad_arguments_are_refused_naming_the_field(body: dict[str, Any], words: str) -> None:
    with pytest.raises(RuntimeRefusal, match=None) as refused:
        coerce_args(OP, body)
    assert words in str(refused.value) and refused.value.status == 400


# --------------------------------------------------------------------------- META_CONFIG

BASE = Settings().as_dict()


def test_meta_config_keys_are_the_settings_keys() -> None:
    assert list(MetaConfig.model_fields) == list(BASE)
    assert set(KubernetesConfig.model_fields) == set(KubeSettings().as_dict())


@pytest.mark.parametrize(("raw", "expected"), [
    ('{"automation": true}', {**BASE, "automation": True}),
    ({"backoff_interval": 2, "keep_alive": ["promon", "redis", "prometheus"]},
     {**BASE, "backoff_interval": 2.0, "keep_alive": ["prometheus", "redis"]}),
    ('{"kubernetes": {"in_cluster": true, "config": null}}',
     {**BASE, "kubernetes": {"in_cluster": True, "config": None, "context": None,
                             "keep_on_shutdown": False}}),
])
def test_meta_config_reads_onto_the_current_settings(raw: Any, expected: dict[str, Any]
                                                     ) -> None:
    assert parse_meta_config(raw, BASE).as_settings() == expected


@pytest.mark.parametrize(("raw", "words"), [
    ("{not json", "not JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"automation": "true"}', "automation: Input should be a valid boolean (got 'true')"),
    ('{"backoff_interval": NaN}', "backoff_interval: Input should be a finite number"),
    ('{"backoff_interval": 1e999}', "backoff_interval: Input should be a finite number"),
    ('{"backoff_interval": 0}', "backoff_interval: Input should be greater than 0"),
    ('{"keep_alive": "promon"}', "keep_alive: Input should be a valid list"),
    ('{"pre_loaded_services": []}', "pre_loaded_services: unknown key (known: automation"),
    ('{"kubernetes": {"in_cluster": 1, "cluster": "x"}}',
     "kubernetes.in_cluster: Input should be a valid boolean (got 1); kubernetes.cluster: "
     "unknown key"),
    ('{"kubernetes": "yes"}', "kubernetes: must be true, false, null or an object"),
])
def test_a_bad_meta_config_names_every_bad_key(raw: str, words: str) -> None:
    with pytest.raises(MetaConfigError) as refused:
        parse_meta_config(raw, BASE)
    assert words in str(refused.value)
    assert str(refused.value).startswith("META_CONFIG refused, nothing changed: ")


# --------------------------------------------------------------------------- login


def test_credentials_compare_both_fields_and_need_both_variables() -> None:
    creds = AdminCredentials("Admin@Example.com", "pw")
    assert creds.matches("admin@example.com", "pw")
    assert not creds.matches("admin@example.com", "PW")
    assert not creds.matches("other@example.com", "pw")
    assert "pw" not in repr(creds)
    assert AdminCredentials.from_env({}) is None
    with pytest.raises(ValueError, match="JSORC_ADMIN_PASSWORD is not set"):
        AdminCredentials.from_env({"JSORC_ADMIN_EMAIL": "a@b.c"})


def test_the_limiter_allows_a_few_failures_per_window() -> None:
    now = [100.0]
    limiter = LoginLimiter(3, 60.0, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.wait_s("1.2.3.4") == 0
        limiter.failed("1.2.3.4")
    assert limiter.wait_s("1.2.3.4") == pytest.approx(60.0)
    assert limiter.wait_s("5.6.7.8") == 0  # per address
    now[0] += 30
    assert limiter.wait_s("1.2.3.4") == pytest.approx(30.0)
    now[0] += 30.5
    assert limiter.wait_s("1.2.3.4") == 0  # the oldest failure left the window
    limiter.failed("1.2.3.4")
    limiter.succeeded("1.2.3.4")
    assert limiter.wait_s("1.2.3.4") == 0


# --------------------------------------------------------------------------- shapes


def test_action_status_module_is_an_object() -> None:
    assert jaseci_status({"mode": "module", "module": "pkg.mod"})["module"] == {"name": "pkg.mod"}


def row(rid: int, app: str, action: str, ts: float = 1.0) -> dict[str, Any]:
    return {"ts": ts, "request_id": rid, "app": app, "action": action, "ok": True}


def test_trackact_counts_each_runs_calls_by_action_and_function() -> None:
    steps = {"flow": (Step("seg", "split"), Step("enc", "encode"), Step("seg", "join"))}
    rows = [row(1, "flow", "seg", 5.0), row(2, "flow", "enc"), row(1, "flow", "enc"),
            row(2, "flow", "seg"), row(1, "flow", "seg"), row(3, "gone", "x")]
    runs = runs_of(rows, lambda app: steps.get(app, ()), lambda ts: ts + 1000)
    assert [r["request_id"] for r in runs] == [1, 2, 3]  # in the order the runs started
    assert runs[0]["actions_calls"] == {"seg.split": 1, "enc.encode": 1, "seg.join": 1}
    assert runs[0]["ts"] == 1005.0 and len(runs[0]["calls"]) == 3
    # run 2 was tracked from its second step on
    assert runs[1]["actions_calls"] == {"enc.encode": 1, "seg.join": 1}
    assert runs[2]["actions_calls"] == {"x": 1}  # a walker no longer known: no function


def test_states_open_with_a_reasoned_null_and_read_each_interval_after() -> None:
    now = [10.0]
    asked: list[tuple[float, float]] = []

    def readings(start: float, stop: float) -> tuple[list[dict[str, Any]] | None, str]:
        asked.append((start, stop))
        return [{"name": "runtime"}], ""

    states = StateRecorder(lambda: {"a": {"mode": "module"}}, readings, lambda: 3600.0,
                           clock=lambda: now[0])
    states.start()
    now[0] = 12.5
    report = states.stop()
    assert report["active"] is False
    first, last = report["states"]
    assert first["prometheus"] is None and "opens" in first["prometheus_reason"]
    assert last == {"ts": 12.5, "actions": {"a": {"mode": "module"}},
                    "prometheus": [{"name": "runtime"}]}
    assert asked == [(10.0, 12.5)]
    assert states.stop()["states"] == report["states"]  # not running: no new state


# --------------------------------------------------------------------------- HTTP


class Client:
    """httpx against an in-process app served on a real 127.0.0.1 port."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)

    def post(self, path: str, *, json: Any = None, data: Any = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        return self.http.post(path, json=json, data=data, headers=headers)


@pytest.fixture()
def app_client(request: pytest.FixtureRequest) -> Iterator[tuple[Client, JsorcService]]:
    """An in-process app with stand-in actions; login credentials from the test's
    `credentials` parameter (none: login off)."""
    pair = getattr(request, "param", None)
    credentials = AdminCredentials(*pair) if pair else None
    replicas = StandInReplicas()
    runtime = Runtime(load_local=lambda info: StandIn(), connect=replicas.connect,
                      replicas=replicas, walkers=[Walker("flow", (Step("a", "f"),))])
    service = JsorcService(runtime, replicas,
                           load_config=lambda module, name: ActionInfo(name, f"mod_{name}"))
    try:
        with app_in_thread(make_app(service, TOKEN, credentials=credentials)) as url:
            yield Client(url), service
    finally:
        service.close()


def test_login_is_off_without_credentials_and_says_how(
        app_client: tuple[Client, JsorcService]) -> None:
    client, _ = app_client
    answer = client.post("/user/token/", data={"email": "a@b.c", "password": "x"})
    assert answer.status_code == 503
    assert "JSORC_ADMIN_EMAIL and JSORC_ADMIN_PASSWORD" in answer.json()["message"]


@pytest.mark.parametrize("app_client", [("admin@example.com", "s3cret")], indirect=True)
def test_login_form_or_json_then_rate_limited(app_client: tuple[Client, JsorcService]
                                              ) -> None:
    client, _ = app_client
    good = {"email": "admin@example.com", "password": "s3cret"}
    assert client.post("/user/token/", data=good).json()["token"] == TOKEN  # jsctl's form
    assert client.post("/user/token", json=good).json()["token"] == TOKEN
    for _ in range(5):
        wrong = client.post("/user/token/", data={**good, "password": "guess"})
        assert wrong.status_code == 400 and "token" not in wrong.json()
    limited = client.post("/user/token/", data=good)  # the right pair too, until it passes
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert "too many failed logins" in limited.json()["message"]
    assert client.post("/user/token/", data={"email": "x"}).status_code == 429


def test_admin_paths_take_the_token_schemes(app_client: tuple[Client, JsorcService]
                                            ) -> None:
    client, _ = app_client
    path = "/js_admin/jsorc_actionpolicy_get"
    assert client.post(path, json={}).status_code == 401
    assert client.post(path, json={}, headers={"Authorization": "token wrong"}
                       ).status_code == 403
    for headers in (ADMIN, {"Authorization": f"Bearer {TOKEN}"}):
        for p in (path, path + "/"):
            assert client.post(p, json={}, headers=headers).json()["policy"] == "default"
    # jsorc's own paths stay
    assert client.post("/jsorc/actionpolicy/get", json={}, headers=ADMIN).status_code == 200
    # /js/walker_run is as public as /walker_run, but a token sent must be right
    run = {"name": "flow", "ctx": "{}"}
    client.post("/js_admin/jsorc_actions_config", json={"name": "a", "config": "x"},
                headers=ADMIN)
    assert client.post("/js/walker_run", json=run).json()["success"] is True
    assert client.post("/js/walker_run", json=run, headers={"Authorization": "token no"}
                       ).status_code == 403


def test_a_malformed_meta_config_changes_nothing(app_client: tuple[Client, JsorcService]
                                                 ) -> None:
    client, service = app_client
    before = client.post("/js_admin/config_get", json={"name": "META_CONFIG"},
                         headers=ADMIN).json()
    assert json.loads(before) == service.settings.as_dict()
    for value in ('{"automation": "yes"}', '{"backoff_interval": -1, "colour": "red"}',
                  "{nope", '{"kubernetes": {"in_cluster": true}}'):
        answer = client.post("/js_admin/config_set", headers=ADMIN,
                             json={"name": "META_CONFIG", "value": value, "do_check": True})
        assert answer.status_code in (400, 409), answer.text
        assert "refused, nothing changed" in answer.json()["message"]
    assert client.post("/js_admin/config_get", json={"name": "JSORC_CONFIG"},
                       headers=ADMIN).json() == before
    info = client.post("/js_admin/service_info", json={"name": "meta"}, headers=ADMIN).json()
    assert info["pending"] is None
    unknown = client.post("/js_admin/config_get", json={"name": "MAIL_CONFIG"}, headers=ADMIN)
    assert unknown.status_code == 404 and "META_CONFIG" in unknown.json()["message"]


def test_meta_config_takes_effect_on_service_refresh_meta(
        app_client: tuple[Client, JsorcService]) -> None:
    client, service = app_client
    starts = service.controller_info()["starts"]
    answer = client.post("/js_admin/config_set/", headers=ADMIN, json={
        "name": "META_CONFIG", "value": {"automation": True, "backoff_interval": 0.5}})
    assert answer.status_code == 200 and "set!" in answer.json()[0]
    assert service.settings.automation is False  # not before the refresh
    assert json.loads(client.post("/js_admin/config_get", headers=ADMIN,
                                  json={"name": "META_CONFIG"}).json())["automation"] is True
    refreshed = client.post("/js_admin/service_refresh", json={"name": "meta"}, headers=ADMIN)
    assert refreshed.json()["success"] is True
    assert service.settings.automation is True and service.settings.backoff_interval == 0.5
    assert service.controller_info()["starts"] == starts + 1


def test_actions_load_is_idempotent_and_a_new_count_scales(
        app_client: tuple[Client, JsorcService]) -> None:
    client, service = app_client

    def load(**body: Any) -> dict[str, Any]:
        answer = client.post("/js_admin/jsorc_actions_load", headers=ADMIN,
                             json={"name": "a", **body})
        assert answer.status_code == 200, answer.text
        status: dict[str, Any] = answer.json()["action_status"]
        return status

    client.post("/js_admin/jsorc_actions_config", json={"config": "x", "name": "a"},
                headers=ADMIN)
    assert load(mode="module")["module"] == {"name": "mod_a"}
    assert load(mode="module")["mode"] == "module"
    assert load(mode="remote")["desired"] == "remote:1"
    assert load(mode="remote")["desired"] == "remote:1"  # polled until READY, JSORC-style
    assert load(mode="remote", replicas=2)["desired"] == "remote:2"
    assert load(mode="remote")["desired"] == "remote:2"  # no count: the current one
    assert service.runtime.router("a").desired.replicas == 2


@pytest.mark.parametrize("name", ["Evaluation", "evaluation", "EVALUATION", "Adaptive",
                                  "Predictive", "Default"])
def test_jsorc_policy_names_in_any_case_echoed_as_set(
        app_client: tuple[Client, JsorcService], name: str) -> None:
    client, service = app_client
    answer = client.post("/js_admin/jsorc_actionpolicy_set", headers=ADMIN,
                         json={"policy_name": name, "policy_params": "{}", "output": ""})
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"].startswith(f"Action optimization policy configured as {name}")
    got = client.post("/js_admin/jsorc_actionpolicy_get", json={}, headers=ADMIN).json()
    assert got["policy"] == name
    assert type(service.controller.policy).__name__.lower() == name.lower()


def test_jsorc_policy_parameters_by_jsorc_names(app_client: tuple[Client, JsorcService]
                                                ) -> None:
    client, _ = app_client
    answer = client.post("/js_admin/jsorc_actionpolicy_set", headers=ADMIN, json={
        "policy_name": "Evaluation",
        "policy_params": '{"eval_phase": 5, "perf_phase": 50, "jaseci_runtime_mem": 200}'})
    params = answer.json()["params"]
    assert (params["eval_phase_s"], params["perf_phase_s"], params["runtime_memory_mb"]) \
        == (5.0, 50.0, 200.0)
    refused = client.post("/js_admin/jsorc_actionpolicy_set", headers=ADMIN, json={
        "policy_name": "Evaluation", "policy_params": {"node_mem": 4096}})
    assert refused.status_code == 400 and "node_mem" in refused.json()["message"]
    unknown = client.post("/js_admin/jsorc_actionpolicy_set", headers=ADMIN,
                          json={"policy_name": "Cleverest"})
    assert unknown.status_code == 400 and "unknown policy" in unknown.json()["message"]
    got = client.post("/js_admin/jsorc_actionpolicy_get", json={}, headers=ADMIN).json()
    assert got["policy"] == "Evaluation"  # the refusals changed nothing


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/js_admin/service_refresh", {"name": "mail"}, 404, "unknown service 'mail'"),
    ("/js_admin/service_info", {"name": "task"}, 404, "services: meta"),
    ("/js_admin/jsorc_actions_config", {"name": "use_enc", "config": "jac_nlp.config"}, 404,
     "Jaseci's AI kit"),
    ("/js_admin/jsorc_actions_unload", {"name": "a", "retire_svc": False}, 400,
     "jsorc always stops the replicas"),
    ("/js/walker_run", {"name": "flow", "nd": "urn:uuid:x"}, 400, "no graph"),
    ("/js_admin/jsorc_loadtest", {"test": "other"}, 400, "synthetic_apps"),
    ("/js_admin/jsorc_loadtest", {"test": "synthetic_apps", "experiment": "nope"}, 404,
     "flow"),
    ("/js_admin/jsorc_loadtest", {"test": "synthetic_apps", "experiment": "flow",
                                  "policy": "evaluation"}, 409, "automation on"),
    ("/js_admin/jsorc_loadtest", {"test": "synthetic_apps", "experiment": "flow",
                                  "mem": 4}, 400, "mem"),
    ("/js_admin/jsorc_actions_status", {"name": "a", "colour": 1}, 400, "unknown field(s)"),
    ("/js_admin/config_get", {}, 400, "missing field 'name'"),
])
def test_refusals_are_clear(app_client: tuple[Client, JsorcService], path: str,
                            body: dict[str, Any], status: int, words: str) -> None:
    client, _ = app_client
    answer = client.post(path, json=body, headers=ADMIN)
    assert answer.status_code == status, answer.text
    assert answer.json()["success"] is False and words in answer.json()["message"]


def test_jsorc_refresh_applies_the_config(app_client: tuple[Client, JsorcService]) -> None:
    client, service = app_client
    client.post("/js_admin/config_set", headers=ADMIN,
                json={"name": "JSORC_CONFIG", "value": '{"backoff_interval": 3}'})
    answer = client.post("/js_admin/jsorc_refresh", json={}, headers=ADMIN).json()
    assert answer["running_interval"] == 3.0 and answer["config"]["backoff_interval"] == 3.0
    assert service.settings.backoff_interval == 3.0


def test_benchmark_and_trackact_answer_jsorcs_shapes(app_client: tuple[Client, JsorcService]
                                                     ) -> None:
    client, _ = app_client
    assert client.post("/js_admin/jsorc_trackact_stop", json={}, headers=ADMIN).json() == []
    assert client.post("/js_admin/jsorc_benchmark_stop", json={}, headers=ADMIN).json() == {}
    client.post("/js_admin/jsorc_actions_config", json={"config": "x", "name": "a"},
                headers=ADMIN)
    client.post("/js_admin/jsorc_benchmark_start", json={}, headers=ADMIN)
    client.post("/js_admin/jsorc_trackact_start", json={}, headers=ADMIN)
    client.post("/js/walker_run", json={"name": "flow"})
    tracked = client.post("/js_admin/jsorc_trackact_stop", json={}, headers=ADMIN).json()
    assert [run["actions_calls"] for run in tracked] == [{"a.f": 1}]
    report = client.post("/js_admin/jsorc_benchmark_report", json={}, headers=ADMIN).json()
    assert set(report["walker_run"]) == {"flow", "all"}
    stopped = client.post("/js_admin/jsorc_benchmark_stop", json={"report": False},
                          headers=ADMIN).json()
    assert stopped == {}


def test_a_staged_meta_config_applies_its_changes_not_the_settings_it_copied(
        app_client: tuple[Client, JsorcService]) -> None:
    client, service = app_client
    assert service.settings.backoff_interval != 3.0
    staged = client.post("/js_admin/config_set/", headers=ADMIN, json={
        "name": "META_CONFIG", "value": {"automation": True}})
    assert staged.status_code == 200
    service.config_set("backoff_interval", 3.0)  # an operator's change after the staging
    refreshed = client.post("/js_admin/service_refresh", json={"name": "meta"}, headers=ADMIN)
    assert refreshed.status_code == 200, refreshed.text
    # The document's own change is applied; the interval it only copied does not undo 3 s.
    assert service.settings.automation is True and service.settings.backoff_interval == 3.0
    assert "every 3 s" in refreshed.json()["message"]
