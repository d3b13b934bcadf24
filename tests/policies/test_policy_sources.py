"""Policies from anywhere: a file outside the repository by its path, and an installed
package's entry point, with the same one-line errors and allow-list as `module:Class`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import policies
import policies.autoscalers
from policies import PolicyError, PolicyNotAllowed
from policies.sources import file_module_name

REPO = Path(__file__).resolve().parents[2]
SIM = [sys.executable, "-m", "jsorc_sim.cli"]
SCENARIO = REPO / "experiments" / "scenarios" / "jsorc_loadtest.toml"

# A policy that imports a sibling module (helper) and leaves a flag when its module runs.
MINE = '''
from dataclasses import dataclass
from pathlib import Path

from policies import Decision, Placement, param
from {helper} import THRESHOLD_MB

RUNS = Path(__file__).with_name("imported.count")
RUNS.write_text(str(int(RUNS.read_text()) + 1 if RUNS.exists() else 1))


@dataclass(frozen=True)
class MineParams:
    threshold_mb: float = param(THRESHOLD_MB, "actions bigger than this go remote", minimum=0)


class Mine:
    """Big actions remote, the rest local."""

    Params = MineParams

    def __init__(self, params=None):
        self.params = params or MineParams()

    def reset(self, seed):
        pass

    def decide(self, observation):
        return Decision({{
            name: Placement.remote(1) if a.local_memory_mb > self.params.threshold_mb
            else Placement.local() for name, a in observation.actions.items()}}, "size rule")


class NotAPolicy:
    def __init__(self, *args, **kwargs):
        Path(__file__).with_name("instantiated.flag").write_text("built")
'''


@pytest.fixture
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside the repository holding mine.py and its sibling helper module."""
    folder = tmp_path_factory.mktemp("own_policies")
    assert REPO not in folder.parents
    helper = f"helper_{folder.name.replace('-', '_')}"
    (folder / f"{helper}.py").write_text("THRESHOLD_MB = 1500.0\n")
    (folder / "mine.py").write_text(MINE.format(helper=helper))
    return folder


def _by_hand(path: Path, name: str) -> type:
    """The class at path:name imported without the registry, for comparisons."""
    spec = importlib.util.spec_from_file_location(f"by_hand_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    cls = getattr(module, name)
    assert isinstance(cls, type)
    return cls


def test_a_file_outside_the_repository_is_a_policy_by_its_path(policy_dir: Path) -> None:
    ref = f"{policy_dir / 'mine.py'}:Mine"
    before = list(sys.path)
    policy = policies.make(ref, {"threshold_mb": "900"})
    assert policy.params.threshold_mb == 900.0
    assert sys.path == before, "the file's folder is on sys.path only while it is imported"
    # Once per process: the same class, the module's code run once.
    assert policies.resolve(ref) is type(policy)
    assert (policy_dir / "imported.count").read_text() == "1"
    assert type(policy).__module__ == file_module_name((policy_dir / "mine.py").resolve())
    assert [p.name for p in policies.describe(ref)] == ["threshold_mb"]


def test_a_relative_path_is_from_the_current_folder_and_tilde_is_home(
        policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(policy_dir.parent)
    relative = f"{policy_dir.name}/mine.py:Mine"
    assert policies.absolute_ref(relative) == f"{policy_dir / 'mine.py'}:Mine"
    assert policies.resolve(relative) is policies.resolve(f"{policy_dir / 'mine.py'}:Mine")
    assert policies.absolute_ref(relative, base_dir="/elsewhere") == "/elsewhere/" + relative
    monkeypatch.setenv("HOME", str(policy_dir.parent))
    assert policies.absolute_ref(f"~/{relative}") == f"{policy_dir / 'mine.py'}:Mine"
    for other in ("hpa", "policies.autoscalers:Hpa"):
        assert policies.absolute_ref(other) == other


def test_bad_policy_files_are_one_line_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("x = 1\n\ndef decide(:\n")
    (tmp_path / "raises.py").write_text("import math\nraise RuntimeError('no')\n")
    (tmp_path / "plain.py").write_text("class Plain:\n    pass\n")
    cases = {
        f"{tmp_path}/absent.py:Mine": f"policy file '{tmp_path}/absent.py' does not exist",
        f"{tmp_path}/broken.py:Mine": f"policy file '{tmp_path}/broken.py' line 3: SyntaxError",
        f"{tmp_path}/raises.py:Mine": f"policy file '{tmp_path}/raises.py' failed to import: "
                                      f"RuntimeError: no (at {tmp_path}/raises.py:2)",
        f"{tmp_path}/plain.py:Mine": f"policy file '{tmp_path}/plain.py' has no class 'Mine' "
                                     "(its classes: Plain)",
        f"{tmp_path}/plain.py:Plain": "does not implement the Policy protocol",
        f"{tmp_path}/plain.py": "name the class too",
        f"{tmp_path}/plain.py:not-a-name": "is not a class name",
    }
    for ref, message in cases.items():
        with pytest.raises(PolicyError) as refused:
            policies.make(ref, {})
        assert message in str(refused.value) and "\n" not in str(refused.value), ref
    failed = [m for m in sys.modules if m.startswith("_jsorc_policy_file_broken")
              or m.startswith("_jsorc_policy_file_raises")]
    assert failed == [], "a file that failed to import leaves no module behind"


def test_a_class_that_is_not_a_policy_is_never_built(policy_dir: Path) -> None:
    with pytest.raises(PolicyError, match="does not implement the Policy protocol"):
        policies.make(f"{policy_dir / 'mine.py'}:NotAPolicy", {})
    assert not (policy_dir / "instantiated.flag").exists()


def test_an_allow_list_takes_a_file_by_its_absolute_path_only(policy_dir: Path) -> None:
    path = policy_dir / "mine.py"
    with pytest.raises(PolicyNotAllowed) as refused:
        policies.make(f"{path}:Mine", {}, allowed_modules=["mine", "other.*"])
    assert f"policy file '{path}' is not allowed" in str(refused.value)
    assert f"--policy-file {path}" in str(refused.value)
    assert not (policy_dir / "imported.count").exists(), "refused before importing"
    allowed = policies.check_allow_list([str(policy_dir / "." / "mine.py")])
    assert allowed == (str(path),)
    assert type(policies.make(f"{path}:Mine", {}, allowed_modules=allowed)).__name__ == "Mine"
    for bad in ("relative/mine.py", "/abs/mine.txt"):
        with pytest.raises(PolicyError, match=r"or the absolute path of a \.py file"):
            policies.check_allow_list([bad])


def test_a_file_already_imported_is_not_imported_again(tmp_path: Path) -> None:
    name = f"served_{tmp_path.name.replace('-', '_')}"
    path = tmp_path / f"{name}.py"
    path.write_text(MINE.format(helper="math").replace("from math import THRESHOLD_MB",
                                                       "THRESHOLD_MB = 10.0")
                    + f"\nfrom policies import register\nregister({name!r})(Mine)\n")
    try:
        assert policies.load_policy_file(path) == name  # as `jsorc serve --policy-file` does
        assert policies.resolve(f"{path}:Mine") is sys.modules[name].Mine
        assert (tmp_path / "imported.count").read_text() == "1"
        library = Path(policies.autoscalers.__file__ or "")
        assert policies.resolve(f"{library}:Hpa") is policies.resolve("hpa")
    finally:
        sys.modules.pop(name, None)
        policies.registry._REGISTRY.pop(name, None)


def _dist(where: Path, package: str, entries: dict[str, str]) -> None:
    """A throwaway installed distribution: its module and a dist-info with entry points."""
    module = f"{package}_policies"
    (where / f"{module}.py").write_text(MINE.format(helper="math").replace(
        "from math import THRESHOLD_MB", "THRESHOLD_MB = 1500.0"))
    info = where / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[jsorc.policies]\n" + "".join(
        f"{name} = {module}:{cls}\n" for name, cls in entries.items()))


def test_an_installed_packages_entry_point_is_a_policy_by_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = f"pkg_{tmp_path.name.replace('-', '_')}"
    _dist(tmp_path, package, {f"{package}_mine": "Mine", "hpa": "Mine"})
    monkeypatch.syspath_prepend(str(tmp_path))
    module = f"{package}_policies"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            listed = policies.names()
        assert f"{package}_mine" in listed and listed == sorted(listed)
        shadow = [str(w.message) for w in caught]
        assert any(f"'hpa' of package {package} ({module}:Mine) is shadowed by the built-in "
                   "policies.autoscalers.Hpa" in m for m in shadow), shadow
        assert policies.package_of(f"{package}_mine") == package
        assert policies.package_of("hpa") is None
        assert policies.resolve("hpa") is policies.resolve("policies.autoscalers:Hpa")
        assert module not in sys.modules, "listing imports no entry point's module"
        policy = policies.make(f"{package}_mine", {"threshold_mb": 10})
        assert type(policy).__module__ == module and policy.params.threshold_mb == 10.0
        # On a server the entry point's module must be allowed like module:Class.
        with pytest.raises(PolicyNotAllowed, match=f"'{module}' is not allowed"):
            policies.make(f"{package}_mine", {}, allowed_modules=[])
        assert policies.make(f"{package}_mine", {}, allowed_modules=[module]) is not None
    finally:
        sys.modules.pop(module, None)


def test_the_cli_runs_a_file_by_path_and_lists_an_entry_point(
        policy_dir: Path, tmp_path: Path) -> None:
    package = f"pkg_{tmp_path.name.replace('-', '_')}"
    _dist(tmp_path, package, {"mypolicy": "Mine"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    run = [*SIM, "run", str(SCENARIO), "--app", "flow_analysis", "--duration", "120",
           "--seed", "1", "--json", "--no-progress"]
    by_path = subprocess.run([*run, "--policy", f"{policy_dir / 'mine.py'}:Mine"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert by_path.returncode == 0, by_path.stderr
    by_name = subprocess.run([*run, "--policy", "mypolicy"], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=300)
    assert by_name.returncode == 0, by_name.stderr
    listing = subprocess.run([*SIM, "policies"], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert f"mypolicy (from package {package}): Big actions remote" in listing.stdout

    from jsorc_sim.simulate import simulate

    # The same rule imported by hand (no registry) gives the same run.
    expected = simulate(SCENARIO, _by_hand(policy_dir / "mine.py", "Mine")(), app="flow_analysis",
                        duration_s=120, seed=1).report()
    for answer in (by_path, by_name):
        assert json.loads(answer.stdout)["walker_run"] == expected["walker_run"]

