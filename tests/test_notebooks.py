"""The Colab notebooks: committed executed, run top to bottom (re-executed here with smaller settings)."""

import ast
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]

# Injected right after each notebook's settings cell (tag "parameters"): smaller than the defaults where that is
# safe, since this test only checks that the notebook runs. It never reads the stored outputs.
TEST_SETTINGS = {
    "dc_solver_dualfast.ipynb": "CALIBRATION = dict(num_samples=2, reference_steps=20, iterations=2)\nSWEEP_NFES = [5]",
    "masked_diffusion.ipynb": "MDLM_LONG, STEPS, TAIL_STEPS = 200, 50, [10, 100]",
    "quantization.ipynb": "SAMPLES, ITERATIONS = 10, 5",
    "quickstart.ipynb": "",
    "schedule_search.ipynb": "",
    "tune.ipynb": "SAMPLES, FID_SAMPLES, REFINE = 2, 20, False",
}


def settings_cell(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one settings cell tagged 'parameters'"
    return tagged[0]


def assigned_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        for target in node.targets if isinstance(node, ast.Assign) else []:
            names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    index = settings_cell(nb)
    override = TEST_SETTINGS[path.name]
    assert assigned_names(override) <= assigned_names(nb.cells[index].source), "override only existing settings"
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(override))
    for cell in nb.cells:  # start from a clean notebook, whatever is stored
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    if path.name == "quickstart.ipynb":
        assert len((tmp_path / "results" / "quickstart_sweep.jsonl").read_text().splitlines()) == 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_committed_executed_with_scale_up_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert path.stat().st_size < 1_000_000
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "every code cell executed"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "a plot stored as PNG"
    assert not [c for c in nb.cells if "execution" in c.metadata], "no execution timing metadata"
    index = settings_cell(nb)
    assert nb.cells[index - 1].cell_type == "markdown" and nb.cells[index - 1].source.startswith("## Scale up")
    lines = [line for line in nb.cells[index].source.splitlines() if line and not line.startswith("#")]
    assert lines and all("full" in line.split("#", 1)[-1] for line in lines), "each setting names its full value"
    assert "`REPO`" in nb.cells[0].source, "the first markdown cell shows the one edit for Colab"


def run_install_cell(path, monkeypatch, *, colab: bool, repo: str | None = None):
    """Run the notebook's first code cell with diffusers_ext not importable; return the pip commands it ran."""
    source = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code").source
    if repo is not None:
        source = source.replace(ast.literal_eval(source.split("REPO = ", 1)[1].split("  #")[0]), repo)
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "diffusers_ext" else real_find_spec(n))
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda cmd, *a, **k: calls.append(cmd))
    exec(compile(source, path.name, "exec"), {})
    return calls


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_install_cell_outside_colab_does_nothing(path, monkeypatch):
    assert run_install_cell(path, monkeypatch, colab=False) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_install_cell_on_colab_needs_only_repo(path, monkeypatch):
    with pytest.raises(ValueError, match="REPO"):
        run_install_cell(path, monkeypatch, colab=True)
    url = "git+https://github.com/someone/diffusers-ext.git"
    calls = run_install_cell(path, monkeypatch, colab=True, repo=url)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", url]]
