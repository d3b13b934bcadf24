"""Policies by `module:Class` only from allowed modules, decided before anything is imported,
and only classes that are policies are ever instantiated."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import policies
from policies import PolicyError, PolicyNotAllowed

# Written into tmp_path and put on sys.path: importing it leaves a file behind, and building
# its non-policy class leaves another, so a test sees whether either ever happened.
MARKER = '''
from pathlib import Path
from dataclasses import dataclass
from policies import Decision, param

HERE = Path(__file__).parent
(HERE / "imported.flag").write_text("the module's code ran")


class NotAPolicy:
    def __init__(self, *args, **kwargs):
        (HERE / "instantiated.flag").write_text("built")


@dataclass(frozen=True)
class FineParams:
    replicas: int = param(1, "replicas", minimum=1)
    share: float = param(0.5, "a fraction", minimum=0.0, maximum=1.0)


class Fine:
    Params = FineParams

    def __init__(self, params=None):
        self.params = params or FineParams()

    def reset(self, seed):
        pass

    def decide(self, observation):
        return Decision.keep("fine")
'''


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A fresh module (unique name) and package `<name>_pkg.sub` on sys.path."""
    name = f"marker_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MARKER)
    package = tmp_path / f"{name}_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sub.py").write_text(MARKER.replace('HERE = Path(__file__).parent',
                                                   'HERE = Path(__file__).parent.parent'))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, tmp_path
    for module in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[module]


def test_a_module_not_allowed_is_refused_before_it_is_imported(
        marker: tuple[str, Path]) -> None:
    name, where = marker
    for allowed in ([], ["other"], [f"{name}.*"], [f"{name}_pkg"]):
        with pytest.raises(PolicyNotAllowed) as refused:
            policies.make(f"{name}:Fine", {}, allowed_modules=allowed)
        message = str(refused.value)
        assert repr(name) in message and f"--allow-policy-module {name}" in message
    assert not (where / "imported.flag").exists()
    assert name not in sys.modules


def test_this_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    already = "this" in sys.modules
    with pytest.raises(PolicyNotAllowed, match="'this'"):
        policies.make("this:Nope", {}, allowed_modules=[])
    assert capfd.readouterr() == ("", "")
    assert ("this" in sys.modules) == already


def test_an_allowed_module_works_exactly_or_by_package_pattern(
        marker: tuple[str, Path]) -> None:
    name, where = marker
    policy = policies.make(f"{name}:Fine", {"replicas": "3"}, allowed_modules=[name])
    assert policy.params.replicas == 3
    assert (where / "imported.flag").exists()
    sub = policies.make(f"{name}_pkg.sub:Fine", {}, allowed_modules=[f"{name}_pkg.*"])
    assert type(sub).__name__ == "Fine"


def test_a_class_that_is_not_a_policy_is_never_instantiated(
        marker: tuple[str, Path]) -> None:
    name, where = marker
    with pytest.raises(PolicyError, match="does not implement the Policy protocol"):
        policies.make(f"{name}:NotAPolicy", {}, allowed_modules=[name])
    with pytest.raises(PolicyError, match="does not implement the Policy protocol"):
        policies.make(f"{name}:NotAPolicy", {})  # library use too
    assert not (where / "instantiated.flag").exists()
    with pytest.raises(PolicyError, match="Popen has no reset or decide"):
        policies.make("subprocess:Popen", {"args": "true"}, allowed_modules=["subprocess"])


def test_registered_names_and_their_import_paths_always_work() -> None:
    for name in policies.names():
        assert policies.resolve(name, allowed_modules=[]) is policies.resolve(name)
    assert type(policies.make("policies.autoscalers:Hpa", {}, allowed_modules=[])).__name__ \
        == "Hpa"


def test_policies_built_inside_a_policy_are_held_to_the_same_list(
        marker: tuple[str, Path]) -> None:
    name, where = marker
    for ref, params in (("compose", {"placement": f"{name}:Fine"}),
                        ("guarded", {"policy": f"{name}:Fine"})):
        with pytest.raises(PolicyError, match=f"policy module '{name}' is not allowed"):
            policies.make(ref, params, allowed_modules=[])
    assert not (where / "imported.flag").exists()
    composed = policies.make("compose", {"placement": f"{name}:Fine"}, allowed_modules=[name])
    assert type(composed).__name__ == "Compose"
    # Library use outside any list is unchanged.
    assert type(policies.make("guarded", {"policy": f"{name}:Fine"})).__name__ == "Guarded"


@pytest.mark.parametrize("entry", ["*", "", "a..b", "../x", "os.path:join", "import", ".x"])
def test_bad_allow_list_entries_are_refused(entry: str) -> None:
    with pytest.raises(PolicyError, match="is not a module name"):
        policies.check_allow_list([entry])


def test_a_bad_import_path_is_refused_without_importing() -> None:
    for ref in ("os.path:join.x", ":Cls", "a b:C", "..rel:C"):
        with pytest.raises(PolicyError, match="not an import path"):
            policies.make(ref, {}, allowed_modules=["os.*"])


def test_a_policy_file_is_loaded_as_its_module_and_registers_its_names(
        tmp_path: Path) -> None:
    name = f"policyfile_{tmp_path.name.replace('-', '_')}"
    path = tmp_path / f"{name}.py"
    path.write_text(MARKER + textwrap.dedent(f'''
        from policies import register

        @register("{name}")
        class Registered(Fine):
            pass
        '''))
    try:
        assert policies.load_policy_file(path) == name
        assert policies.load_policy_file(path) == name  # the same file again: a no-op
        assert type(policies.make(name, {}, allowed_modules=[])).__name__ == "Registered"
        policy = policies.make(f"{name}:Fine", {}, allowed_modules=[name])
        assert policy.params.share == 0.5
    finally:
        sys.modules.pop(name, None)
        policies.registry._REGISTRY.pop(name, None)
    with pytest.raises(PolicyError, match=r"missing\.py' does not exist"):
        policies.load_policy_file(tmp_path / "missing.py")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(PolicyError, match=r"not a \.py file"):
        policies.load_policy_file(tmp_path / "notes.txt")
    clash = tmp_path / "json.py"
    clash.write_text("")
    with pytest.raises(PolicyError, match="a module named 'json' is already imported"):
        policies.load_policy_file(clash)
    broken = tmp_path / f"broken_{name}.py"
    broken.write_text("raise RuntimeError('no')\n")
    with pytest.raises(PolicyError, match="failed to import: RuntimeError: no"):
        policies.load_policy_file(broken)
    assert f"broken_{name}" not in sys.modules


def test_a_constructor_that_raises_becomes_a_policy_error(marker: tuple[str, Path]) -> None:
    name, where = marker
    (where / f"{name}_bad.py").write_text(MARKER + textwrap.dedent('''
        class Exploding(Fine):
            def __init__(self, params=None):
                raise RuntimeError("kaboom")
        '''))
    with pytest.raises(PolicyError, match="building it raised RuntimeError: kaboom"):
        policies.make(f"{name}_bad:Exploding", {}, allowed_modules=[f"{name}_bad"])
