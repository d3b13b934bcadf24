"""The research notebooks run top to bottom in a fresh kernel, in fast mode, and draw.

Each notebook is executed with nbclient from the repository root and from `notebooks/` (both
must work: a notebook finds the repository by walking up to pyproject.toml), with
JSORC_NOTEBOOK_FAST=1, which its parameter cell reads to shorten the runs. The notebooks are
kept in git without outputs, so diffs show only what changed in the code and text.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

from tests.conftest import REPO

NOTEBOOKS = REPO / "notebooks"
# name -> figures it must draw at least (outputs with image/png)
FIGURES = {
    "01_quickstart.ipynb": 1,  # latency over time, placement changes and replicas
    "02_compare_policies.ipynb": 2,  # means with CIs, paired differences (+ the runner's)
    "03_write_a_policy.ipynb": 1,  # comparison: means with CIs and paired differences
    "04_learned_policy.ipynb": 1,  # PPO against model_based and hpa: latency, latency vs cost
}
# name -> the modules of an optional extra it needs (skipped, saying so, when they are missing)
EXTRAS = {"04_learned_policy.ipynb": ("stable_baselines3", "torch")}


class ThisPythonKernel(AsyncKernelManager):
    """"python3" is this interpreter's ipykernel (ipykernel's built-in spec), never a python3
    kernelspec that happens to be installed elsewhere on the machine (~/.local/share/jupyter,
    /usr/share/jupyter) and may point at another Python without jsorc."""

    @default("kernel_spec_manager")
    def _only_the_native_kernel(self) -> KernelSpecManager:
        return KernelSpecManager(kernel_dirs=[], parent=self)


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def test_every_notebook_is_tested() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)


def test_the_kernel_is_this_python() -> None:
    import sys

    spec = ThisPythonKernel(kernel_name="python3").kernel_spec
    assert spec is not None and spec.argv[0] == sys.executable


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_saved_valid_and_without_outputs(name: str) -> None:
    nb = read(name)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), \
        f"{name}: clear the outputs before saving (clean diffs)"
    # the parameter cell, near the top, switches to short runs in fast mode
    assert any("JSORC_NOTEBOOK_FAST" in cell.source and "DURATION_S" in cell.source
               for cell in code[:3]), f"{name}: no parameter cell near the top"


def execute(name: str, cwd: Path) -> nbformat.NotebookNode:
    nb = read(name)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            kernel_manager_class=ThisPythonKernel,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on an error
    return nb


@pytest.mark.parametrize("cwd", [REPO, NOTEBOOKS], ids=["from-root", "from-notebooks"])
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_runs_and_draws(name: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = [m for m in EXTRAS.get(name, ()) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{name} needs the `rl` extra ({', '.join(missing)} missing): "
                    "pip install -e '.[rl]' (make rl-env)")
    monkeypatch.setenv("JSORC_NOTEBOOK_FAST", "1")  # the kernel inherits this environment
    nb = execute(name, cwd)
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    errors = [out for out in outputs if out.output_type == "error"]
    assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
    figures = sum(1 for out in outputs if "image/png" in out.get("data", {}))
    assert figures >= FIGURES[name], f"{name}: {figures} figures drawn, expected {FIGURES[name]}"
    printed = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert f"repository: {REPO}" in printed  # found by walking up from `cwd`
