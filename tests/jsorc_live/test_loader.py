"""Loading action modules in-process: the allow-list, setup(), calls with the errors a server
would answer, memory measured with psutil on load and unload, unload draining calls."""

from __future__ import annotations

import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from jsorc_live.actions.config import ACTION_CONFIGS
from jsorc_live.actions.examples import _model  # noqa: F401 -- numpy imported before measuring
from jsorc_live.actions.loader import (
    ActionLoadError,
    AllowList,
    LocalModule,
    ModuleNotAllowedError,
    rss_mb,
)
from jsorc_live.actions.registry import ActionArgumentError, ActionCallError
from tests.jsorc_live.servers import SAMPLE

USE_ENC = "jsorc_live.actions.examples.use_enc"


@pytest.fixture
def allow() -> AllowList:
    allow = AllowList.from_configs()
    allow.register_file(SAMPLE)
    return allow


def write_module(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


# ----------------------------------------------------------------------- the allow-list


@pytest.mark.parametrize(
    "name", ["os", "subprocess", "jsorc_live.actions.server", "sample_actions"]
)
def test_a_module_not_on_the_allow_list_is_refused_by_name(name: str) -> None:
    with pytest.raises(ModuleNotAllowedError, match=rf"action module '{name}' is not allowed"):
        LocalModule.load(name)  # the default list: the example configs' modules


def test_the_default_allow_list_is_the_modules_the_configs_name() -> None:
    assert AllowList.from_configs().names == {c.module for c in ACTION_CONFIGS.values()}


@pytest.mark.parametrize("name", ["../etc/passwd", "a b", "x;import os", "", "1abc"])
def test_a_string_that_is_not_a_module_name_is_refused(name: str) -> None:
    with pytest.raises(ActionLoadError, match="not a module name"):
        AllowList([name])
    with pytest.raises(ActionLoadError, match="not a module name"):
        LocalModule.load(name)


def test_an_allowed_module_that_is_not_installed_says_so() -> None:
    with pytest.raises(ActionLoadError, match=r"'no_such_package_xyz.actions' is not installed"):
        LocalModule.load("no_such_package_xyz.actions",
                         allow=AllowList(["no_such_package_xyz.actions"]))


def test_a_registered_file_loads_under_its_name(allow: AllowList) -> None:
    assert "sample_actions" in allow
    local = LocalModule.load("sample_actions", allow=allow)
    assert local.call("double", {"x": 21}) == 42
    assert local.call("demo.twice", {"x": 2}) == 4
    assert local.spec() == {**local.spec(remote_only=True), "demo.local_only": []}
    local.unload()


def test_only_python_files_can_be_registered(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x = 1")
    with pytest.raises(ActionLoadError, match=r"not an existing \.py file"):
        AllowList().register_file(tmp_path / "notes.txt")
    with pytest.raises(ActionLoadError, match=r"not an existing \.py file"):
        AllowList().register_file(tmp_path / "missing.py")


# ------------------------------------------------------------------------------ setup()


def test_setup_runs_at_load_with_its_defaults_or_the_given_values(allow: AllowList) -> None:
    default = LocalModule.load("sample_actions", allow=allow)
    given = LocalModule.load("sample_actions", allow=allow, setup={"factor": 7})
    assert (default.setup_result, default.call("factor")) == (3, 3)
    assert (given.setup_result, given.call("factor")) == (7, 7)  # each load its own copy
    assert "sample_actions" not in sys.modules  # and the shared import state untouched
    default.unload()
    given.unload()


@pytest.mark.parametrize(
    ("source", "setup", "message"),
    [
        ("def setup(path, retries=3): pass", None,
         r"setup\(\) parameters \['path'\] have no default"),
        ("def setup(n=1): raise RuntimeError('no GPU')", None, r"setup\(\) failed: no GPU"),
        ("def setup(n: int = 1): pass", {"n": "many"}, r"setup\(\) failed: .*n: Input should"),
        ("x = 1", {"n": 2}, r"has no setup\(\) to take \['n'\]"),
        ("raise ImportError('missing dependency')", None, "failed to import: missing dependency"),
    ],
    ids=["required parameter", "setup raises", "bad setup value", "no setup", "import fails"],
)
def test_a_module_that_cannot_be_set_up_is_refused_with_the_reason(
    tmp_path: Path, source: str, setup: dict[str, object] | None, message: str
) -> None:
    allow = AllowList()
    name = allow.register_file(write_module(tmp_path, "broken_actions", source))
    with pytest.raises(ActionLoadError, match=message):
        LocalModule.load(name, allow=allow, setup=setup)


# ------------------------------------------------------------------------------- calls


def test_calls_fail_as_an_action_server_would_answer(allow: AllowList) -> None:
    local = LocalModule.load("sample_actions", allow=allow)
    with pytest.raises(ActionCallError) as unknown:
        local.call("nope", {})
    assert unknown.value.status == 404
    with pytest.raises(ActionArgumentError) as invalid:
        local.call("double", {"x": "abc"})
    assert invalid.value.status == 422 and invalid.value.errors[0]["loc"] == ["body", "x"]
    with pytest.raises(ActionCallError, match="ValueError: kaput") as raised:
        local.call("boom", {"msg": "kaput"})
    assert raised.value.status == 500 and isinstance(raised.value.__cause__, ValueError)
    assert local.call("local_only") == "here"  # local calls reach every action
    local.unload()


# ---------------------------------------------------------------- memory and unloading


def test_load_and_unload_are_measured_and_the_memory_comes_back(allow: AllowList) -> None:
    LocalModule.load(USE_ENC, setup={"memory_mb": 4}).unload()  # first-use costs out of the way
    local = LocalModule.load(USE_ENC, setup={"memory_mb": 64})
    assert 0.95 * 64 <= local.memory_mb <= 64 + 12
    assert local.rss_loaded_mb == pytest.approx(rss_mb(), abs=8)
    assert len(local.call("encode", {"text": ["memory is real"]})[0]) == 512
    released = local.unload()
    assert local.loaded is False
    assert released == local.released_mb
    assert released >= 0.9 * 64
    assert local.rss_unloaded_mb is not None
    assert local.rss_unloaded_mb - local.rss_before_mb < 8


def test_unloading_even_releases_weights_someone_still_points_at() -> None:
    LocalModule.load(USE_ENC, setup={"memory_mb": 4}).unload()
    local = LocalModule.load(USE_ENC, setup={"memory_mb": 48})
    kept = local.action("encode").fn  # a reference to the module's function (and its globals)
    assert local.unload() >= 0.9 * 48
    assert callable(kept)


def test_unload_waits_for_calls_in_flight_then_refuses_new_ones(allow: AllowList) -> None:
    local = LocalModule.load("sample_actions", allow=allow)
    results: list[object] = []
    call = threading.Thread(target=lambda: results.append(local.call("nap", {"seconds": 0.4})))
    call.start()
    deadline = time.monotonic() + 5
    while local.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert local.in_flight == 1
    start = time.monotonic()
    local.unload(timeout_s=5)
    assert time.monotonic() - start >= 0.2  # it waited for the nap
    call.join(timeout=5)
    assert results and results[0] == {"slept": 0.4, "peak": 1}
    with pytest.raises(ActionCallError) as after:
        local.call("double", {"x": 1})
    assert after.value.status == 503


def test_an_unload_that_times_out_leaves_the_module_serving(allow: AllowList) -> None:
    local = LocalModule.load("sample_actions", allow=allow)
    call = threading.Thread(target=lambda: local.call("nap", {"seconds": 0.5}))
    call.start()
    deadline = time.monotonic() + 5
    while local.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    with pytest.raises(TimeoutError, match="1 calls still running"):
        local.unload(timeout_s=0.05)
    assert local.loaded and local.call("double", {"x": 2}) == 4
    call.join(timeout=5)
    local.unload()
