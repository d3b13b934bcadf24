"""Loading and checking scenarios: defaults, refusals that name the field and the value,
`for_app`, and the resolved scenario a run writes (which must repeat the run)."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import pandas.testing as pdt
import pytest
import tomli_w

from jsorc_sim.scenario import Scenario, ScenarioError, from_dict, load, override, parse_value
from jsorc_sim.simulate import simulate
from policies import Placement

REPO = Path(__file__).resolve().parents[2]
LOADTEST = REPO / "experiments" / "scenarios" / "jsorc_loadtest.toml"

MINIMAL: dict[str, Any] = {
    "actions": {"a": {"service": {"dist": "const", "mean_ms": 10}}},
    "apps": {"w": {"calls": ["a"]}},
}


def minimal(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(MINIMAL)
    raw.update(copy.deepcopy(changes))
    return raw


def with_action(**fields: Any) -> dict[str, Any]:
    raw = minimal()
    raw["actions"]["a"].update(fields)
    return raw


def write_toml(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(raw))
    return path


def attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


# ----------------------------------------------------------------------------- good input


def test_the_loadtest_scenario_loads() -> None:
    s = load(LOADTEST)
    assert s.name == "jsorc_loadtest", "the name defaults to the file's stem"
    assert (s.duration_s, s.warmup_s) == (1800.0, 60.0)
    assert (s.node.cores, s.node.memory_mb, s.node.runtime_memory_mb, s.node.restart_s) == \
        (4, 4096.0, 300.0, 30.0)
    assert s.network.rtt_ms == 8.0
    assert len(s.actions) == 10 and len(s.apps) == 8
    assert s.actions["use_enc"].local_memory_mb == 3998.0
    assert s.actions["use_enc"].service.dist == "lognormal"
    assert s.apps["sentence_pairing"].calls == ("sbert_sim", "bi_enc")
    assert all(call in s.actions for app in s.apps.values() for call in app.calls)
    assert (s.workload.kind, s.workload.clients, s.workload.think_ms) == ("closed", 1, 0.0)
    assert s.workload.mix == {app: 1.0 for app in s.apps}, "no mix: equal weights"
    assert s.placement == {} and s.policy.name == "none"
    assert Path(s.base_dir) == LOADTEST.parent, "relative paths resolve beside the file"


# The README's table "Every field and its default", for a scenario with one action (with a
# service) and one app.
DEFAULTS = [
    ("name", "scenario"),
    ("seed", 0),
    ("duration_s", 600.0),
    ("warmup_s", 0.0),
    ("timeline_s", 10.0),
    ("node.cores", 4),
    ("node.memory_mb", 4096.0),
    ("node.runtime_memory_mb", 300.0),
    ("node.restart_s", 30.0),
    ("network.rtt_ms", 0.0),
    ("network.bandwidth_mbps", 1000.0),
    ("actions.a.local_memory_mb", 0.0),
    ("actions.a.local_load_s", 0.0),
    ("actions.a.remote_start_s", 0.0),
    ("actions.a.replica_memory_mb", 0.0),
    ("actions.a.remote_cores", 1),
    ("actions.a.local_slowdown", 1.0),
    ("actions.a.payload_kb", 0.0),
    ("actions.a.per_size_ms", 0.0),
    ("actions.a.startup_cv", 0.0),
    ("actions.a.default_mode", "local"),
    ("actions.a.remote_queue", "shared"),
    ("actions.a.service.cv", 1.0),
    ("apps.w.compute_ms", 0.0),
    ("workload.kind", "closed"),
    ("workload.clients", 1),
    ("workload.think_ms", 0.0),
    ("workload.rate_per_s", 1.0),
    ("workload.trace_format", "auto"),
    ("workload.spread", "uniform"),
    ("workload.llm_size", "total"),
    ("workload.time_scale", 1.0),
    ("workload.mix", {"w": 1.0}),
    ("workload.map", {}),
    ("workload.unmapped", "mix"),
    ("placement", {}),
    ("policy.name", "none"),
    ("policy.interval_s", 10.0),
    ("policy.params", {}),
    ("policy.on_error", "keep"),
]


@pytest.mark.parametrize(("field", "default"), DEFAULTS, ids=[f for f, _ in DEFAULTS])
def test_a_minimal_scenario_gets_every_documented_default(field: str, default: Any) -> None:
    value = attr(from_dict(minimal()), field)
    assert value == default, f"{field}: default {default!r}, got {value!r}"
    assert type(value) is type(default), f"{field}: {type(value).__name__} value {value!r}"


def test_a_service_without_dist_is_exponential_and_replicas_default_to_local_memory() -> None:
    s = from_dict(with_action(service={"mean_ms": 25}, local_memory_mb=512))
    assert (s.actions["a"].service.dist, s.actions["a"].service.mean_ms) == ("exp", 25.0)
    assert s.actions["a"].replica_memory_mb == 512.0
    s = from_dict(with_action(local_memory_mb=512, remote_memory_mb=700))
    assert s.actions["a"].replica_memory_mb == 700.0


def test_placements_parse_from_strings_and_tables() -> None:
    raw = minimal(actions={n: {"service": {"mean_ms": 5}} for n in "abcd"},
                  placement={"a": "local", "b": "remote:3", "c": {"mode": "remote"},
                             "d": {"mode": "remote", "replicas": 2}})
    assert from_dict(raw).placement == {
        "a": Placement.local(), "b": Placement.remote(3), "c": Placement.remote(1),
        "d": Placement.remote(2)}


# ----------------------------------------------------------------------------- bad input

# (what is wrong, the raw scenario, what the message must name)
BAD = [
    ("unknown top-level field", minimal(bogus=1), ["unknown field 'bogus'"]),
    ("unknown field in an action", with_action(bogus=1),
     ["[actions.a]", "unknown field 'bogus'"]),
    ("unknown field in a section", minimal(node={"ram": 4}), ["[node]", "'ram'"]),
    ("negative load time", with_action(local_load_s=-1), ["actions.a.local_load_s", "-1"]),
    ("negative start time", with_action(remote_start_s=-0.5),
     ["actions.a.remote_start_s", "-0.5"]),
    ("negative think time", minimal(workload={"think_ms": -3}), ["workload.think_ms", "-3"]),
    ("zero restart time", minimal(node={"restart_s": 0}), ["node.restart_s", "0"]),
    ("NaN duration", minimal(duration_s=math.nan), ["duration_s", "nan"]),
    ("negative seed", minimal(seed=-1), ["seed", "-1"]),
    ("fractional cores", minimal(node={"cores": 2.5}), ["node.cores", "2.5"]),
    ("wrong type", minimal(node={"cores": "four"}), ["node.cores", "'four'"]),
    ("bool as a number", minimal(workload={"clients": True}), ["workload.clients", "True"]),
    ("unknown action in calls", minimal(apps={"w": {"calls": ["a", "zz"]}}),
     ["apps.w.calls", "'zz'"]),
    ("calls not a list", minimal(apps={"w": {"calls": "a"}}), ["apps.w.calls", "'a'"]),
    ("missing calls", minimal(apps={"w": {}}), ["[apps.w]", "'calls'"]),
    ("missing service", minimal(actions={"a": {}}), ["[actions.a]", "'service'"]),
    ("service not a table", with_action(service=10), ["actions.a.service", "10"]),
    ("bad dist name", with_action(service={"dist": "gauss"}),
     ["actions.a.service.dist", "'gauss'"]),
    ("zero mean", with_action(service={"dist": "exp", "mean_ms": 0}),
     ["actions.a.service.mean_ms", "0"]),
    ("empirical without a file", with_action(service={"dist": "empirical"}),
     ["actions.a.service", "file"]),
    ("bad default mode", with_action(default_mode="cloud"),
     ["actions.a.default_mode", "'cloud'"]),
    ("bad queue", with_action(remote_queue="random"), ["actions.a.remote_queue", "'random'"]),
    ("bad placement word", minimal(placement={"a": "cloud"}), ["placement.a", "'cloud'"]),
    ("bad replica count", minimal(placement={"a": "remote:x"}), ["placement.a", "'remote:x'"]),
    ("zero replicas", minimal(placement={"a": "remote:0"}), ["placement.a", "0"]),
    ("replicas on local", minimal(placement={"a": "local:2"}), ["placement.a", "'local:2'"]),
    ("placement table field", minimal(placement={"a": {"mode": "remote", "count": 2}}),
     ["placement.a", "'count'"]),
    ("placement of an unknown action", minimal(placement={"zz": "local"}),
     ["placement", "'zz'"]),
    ("mix naming an unknown app", minimal(workload={"mix": {"nope": 1}}),
     ["workload.mix", "'nope'"]),
    ("negative mix weight", minimal(workload={"mix": {"w": -1}}), ["workload.mix.w", "-1"]),
    ("map to an unknown app", minimal(workload={"map": {"abcdef": "nope"}}),
     ["workload.map.abcdef", "'nope'"]),
    ("trace kind without a trace", minimal(workload={"kind": "trace"}),
     ["workload.trace", 'kind = "trace"']),
    ("bad workload kind", minimal(workload={"kind": "burst"}), ["workload.kind", "'burst'"]),
    ("bad on_error", minimal(policy={"on_error": "crash"}), ["policy.on_error", "'crash'"]),
    ("params not a table", minimal(policy={"params": 5}), ["policy.params", "5"]),
    ("warm-up past the end", minimal(duration_s=100, warmup_s=100), ["warmup_s", "100"]),
    ("no actions", {"apps": {}, "actions": {}}, ["[actions]"]),
    ("section not a table", minimal(node=5), ["[node]", "5"]),
]


@pytest.mark.parametrize(("raw", "named"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_the_field_path_and_value(raw: dict[str, Any],
                                                            named: list[str]) -> None:
    with pytest.raises(ScenarioError) as caught:
        from_dict(raw, source="bad.toml")
    message = str(caught.value)
    assert message.startswith("bad.toml: "), f"the message names the source: {message!r}"
    for part in named:
        assert part in message, f"{part!r} missing from {message!r}"
    assert caught.value.source == "bad.toml"
    assert caught.value.problems, "the problems are listed one by one"


def test_several_problems_are_all_listed_in_one_error() -> None:
    raw = minimal(bogus=1, node={"cores": "four"}, placement={"a": "cloud"})
    raw["actions"]["a"]["local_load_s"] = -1
    raw["apps"]["w"]["calls"] = ["a", "zz"]
    with pytest.raises(ScenarioError) as caught:
        from_dict(raw, source="many.toml")
    problems = caught.value.problems
    assert len(problems) == 5, problems
    message = str(caught.value)
    assert message.startswith("many.toml: 5 problems:\n"), message
    for part in ("'bogus'", "node.cores", "'four'", "actions.a.local_load_s", "-1",
                 "apps.w.calls", "'zz'", "placement.a", "'cloud'"):
        assert part in message, f"{part!r} missing from {message!r}"
    assert message.count("\n") == 5, "one line per problem"


def test_a_trace_file_that_does_not_exist_is_named(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "s.toml",
                      minimal(workload={"kind": "trace", "trace": "traces/missing.csv"}))
    with pytest.raises(ScenarioError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert "workload.trace" in message
    assert str(tmp_path / "traces" / "missing.csv") in message, \
        "the path is resolved beside the scenario file and named"


def test_an_empirical_samples_file_that_does_not_exist_is_named(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "s.toml",
                      with_action(service={"dist": "empirical", "file": "nope.txt"}))
    with pytest.raises(ScenarioError, match=r"actions\.a\.service\.file.*nope\.txt"):
        load(path)


def test_a_missing_file_and_malformed_toml_are_scenario_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("duration_s = [\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load(bad)


def test_a_runtime_larger_than_the_node_is_refused() -> None:
    with pytest.raises(ScenarioError, match="runtime_memory_mb"):
        from_dict(minimal(node={"memory_mb": 200, "runtime_memory_mb": 300}))


def test_base_dir_is_not_a_scenario_field() -> None:
    with pytest.raises(ScenarioError, match="base_dir"):
        from_dict(minimal(base_dir="/etc"))


# ----------------------------------------------------------------------------- for_app


def test_for_app_keeps_only_that_app_and_its_actions() -> None:
    s = dataclasses.replace(load(LOADTEST), placement={"sbert_sim": Placement.remote(2),
                                                       "use_enc": Placement.local()})
    one = s.for_app("sentence_pairing")
    assert list(one.apps) == ["sentence_pairing"]
    assert set(one.actions) == {"sbert_sim", "bi_enc"}
    assert one.placement == {"sbert_sim": Placement.remote(2)}
    assert one.workload.mix == {"sentence_pairing": 1.0}
    assert (one.node, one.network, one.duration_s) == (s.node, s.network, s.duration_s)
    assert len(s.apps) == 8, "the original is left alone"


def test_for_app_of_a_mapped_trace_keeps_only_that_apps_streams() -> None:
    raw = minimal(actions={"a": {"service": {"mean_ms": 5}}, "b": {"service": {"mean_ms": 5}}},
                  apps={"w": {"calls": ["a"]}, "v": {"calls": ["b"]}},
                  workload={"map": {"stream1": "w", "stream2": "v"}})
    one = from_dict(raw).for_app("v")
    assert one.workload.map == {"stream2": "v"}
    assert one.workload.unmapped == "drop", "other streams are other apps' traffic"


def test_for_app_of_an_unknown_app_names_it() -> None:
    with pytest.raises(ScenarioError, match=r"unknown app 'nope'.*sentence_pairing"):
        load(LOADTEST).for_app("nope")


# ----------------------------------------------------------------------------- round trip


def test_the_resolved_scenario_written_by_save_repeats_the_run(tmp_path: Path) -> None:
    first = simulate(LOADTEST, "static", params={"placements": {"sbert_sim": "remote:2"}},
                     seed=7, duration_s=150, app="sentence_pairing")
    out = first.save(tmp_path / "run")
    resolved = load(out / "scenario.toml")

    assert resolved.seed == 7 and resolved.duration_s == 150.0
    assert (resolved.policy.name, dict(resolved.policy.params)) == \
        ("static", {"placements": {"sbert_sim": "remote:2"}})
    assert list(resolved.apps) == ["sentence_pairing"]
    table = resolved.to_dict()
    assert table == {**first.scenario.to_dict(), "policy": table["policy"]}, \
        "apart from the policy actually run, the resolved scenario is the one simulated"
    again = simulate(resolved)
    assert again.report() == first.report(), "same resolved scenario, same seed: same report"
    pdt.assert_frame_equal(again.calls, first.calls)
    pdt.assert_frame_equal(again.decisions, first.decisions)


def test_the_resolved_scenario_of_a_run_with_sample_files_repeats_the_run(
        tmp_path: Path) -> None:
    (tmp_path / "scenario").mkdir()
    (tmp_path / "scenario" / "samples.txt").write_text("10\n20\n30\n")
    path = write_toml(tmp_path / "scenario" / "s.toml", with_action(
        service={"dist": "empirical", "file": "samples.txt"}) | {"duration_s": 30})
    first = simulate(path, "all_remote", seed=3)
    out = first.save(tmp_path / "run")
    again = simulate(out / "scenario.toml")
    assert again.report() == first.report()


def test_scenario_objects_are_plain_frozen_data() -> None:
    s = from_dict(minimal())
    assert isinstance(s, Scenario)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 3  # type: ignore[misc]
    assert from_dict(s.to_dict()) == s, \
        "to_dict() is a scenario table that loads back to the same scenario"


# ----------------------------------------------------------------------------- overrides

PARSED = [  # (text after `--set path=`, the value)
    ("8", 8),
    ("2.5", 2.5),
    ("-1", -1),
    ("true", True),
    ('"x"', "x"),
    ("'remote:2'", "remote:2"),
    ("poisson", "poisson"),  # not TOML: a string
    ("remote:2", "remote:2"),
    ("", ""),
    ("[1, 2]", [1, 2]),
    ('{ dist = "const", mean_ms = 5 }', {"dist": "const", "mean_ms": 5}),
    ("1\nother = 2", "1\nother = 2"),  # more than one value is no value: the text itself
]


@pytest.mark.parametrize(("text", "value"), PARSED, ids=[repr(t) for t, _ in PARSED])
def test_override_values_are_read_as_toml(text: str, value: Any) -> None:
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_override_checks_the_changed_table_and_keeps_the_original() -> None:
    s = from_dict(MINIMAL)
    changed = override(s, {"node.cores": 8, "actions.a.service.mean_ms": 5},
                       source="test")
    assert changed.node.cores == 8 and changed.actions["a"].service.mean_ms == 5.0
    assert s.node.cores == 4 and s.actions["a"].service.mean_ms == 10.0, "s is unchanged"
    with pytest.raises(ScenarioError) as bad:
        override(s, {"node.cores": 0, "nodes.cores": 1}, source="test",
                 label=lambda path: f"--set {path}")
    assert str(bad.value) == ("test: --set nodes.cores: no table 'nodes' on the way to "
                              "'nodes.cores'")
    with pytest.raises(ScenarioError, match=r"^test: node\.cores must be > 0, got 0$"):
        override(s, {"node.cores": 0}, source="test")
