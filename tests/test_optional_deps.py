"""Issue 13: torch-fidelity, matplotlib and scikit-learn are the [eval] extra; without them the package imports and
the schedulers run, and what needs them raises an ImportError naming the package and the pip command of the extra.

Missing packages are simulated (``sys.modules[name] = None``), never uninstalled."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffusers_ext.cli import main
from diffusers_ext.optional import OPTIONAL, MissingDependency, require, require_extra

ROOT = Path(__file__).resolve().parents[1]
PIP_EVAL = "pip install 'diffusers-ext[eval]'"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _by_name(requirements: list[str]) -> dict[str, str]:
    """{canonical distribution name: requirement string without comments}."""
    return {_canonical(re.match(r"[A-Za-z0-9._-]+", r).group()): r for r in requirements}


def _extra_only_modules() -> list[str]:
    """Top-level modules installed only by an extra (none of their distributions is a core dependency)."""
    project = _pyproject()
    core = set(_by_name(project["dependencies"]))
    extras = set().union(*(_by_name(reqs) for reqs in project["optional-dependencies"].values())) - core
    return sorted(m for m, dists in md.packages_distributions().items()
                  if dists and all(_canonical(d) in extras for d in dists))


# Shared by this process and the child below (which cannot import this file: pytest is hidden there).
_SCHEDULER_RUN = """
def scheduler_run():
    import torch
    from diffusers_ext import DPMSolverPPScheduler, UniPCScheduler

    out = []
    for cls in (DPMSolverPPScheduler, UniPCScheduler):
        scheduler = cls()
        scheduler.set_timesteps(6)
        x = torch.linspace(-2.0, 2.0, 8).reshape(1, 2, 2, 2)
        for t in scheduler.timesteps:
            x = scheduler.step(0.1 * x + 0.05, t, x).prev_sample
        out += x.flatten().tolist()
    return out
"""

# Runs in a fresh interpreter whose extra-only packages are hidden; prints one JSON line.
_CHILD = _SCHEDULER_RUN + r"""
import contextlib, importlib, io, json, pkgutil, sys
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None
import diffusers_ext
import diffusers_ext.cli


def attempt(call):
    try:
        call()
        return None
    except ImportError as err:
        return [type(err).__name__, str(err)]


modules = [m.name for m in pkgutil.walk_packages(diffusers_ext.__path__, "diffusers_ext.")]
failed = {name: attempt(lambda: importlib.import_module(name)) for name in modules if name != "diffusers_ext.__main__"}
from diffusers_ext.eval.sweep import plot, run_sweep
from diffusers_ext.models.digits import load_digits

summary = [{"scheduler": "a", "guidance": 1.0, "nfe": 5, "mean": 1.0, "std": 0.0}]
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    cli_rc = diffusers_ext.cli.main(["fid", "a", "b"])
print(json.dumps({"scheduler": scheduler_run(), "import_errors": {k: v for k, v in failed.items() if v},
                  "plot": attempt(lambda: plot(summary, "never.png", "FID")),
                  "run_sweep": attempt(lambda: run_sweep("digits", ["dpm++2m"], [5], num_samples=2, out="never.jsonl")),
                  "load_digits": attempt(load_digits), "cli_fid": [cli_rc, stderr.getvalue()]}))
"""


def _scheduler_run() -> list[float]:
    namespace = {}
    exec(_SCHEDULER_RUN, namespace)
    return namespace["scheduler_run"]()


def test_package_and_schedulers_work_without_extras_and_eval_entry_points_name_the_extra(tmp_path):
    hidden = _extra_only_modules()
    assert {"torch_fidelity", "matplotlib", "sklearn", "transformers", "pytest"} <= set(hidden)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(hidden)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["scheduler"] == _scheduler_run()  # the same numbers as with every extra installed
    # only the FID harness itself needs torch-fidelity at import; every other module imports without the extras
    assert set(result["import_errors"]) == {"diffusers_ext.eval.fid", "diffusers_ext.eval.digits_extractor"}
    for kind, message in [*result["import_errors"].values(), result["run_sweep"]]:
        assert kind == "MissingDependency" and "torch-fidelity" in message and PIP_EVAL in message, message
    kind, message = result["plot"]
    assert kind == "MissingDependency" and "matplotlib" in message and "plots" in message and PIP_EVAL in message
    kind, message = result["load_digits"]
    assert kind == "MissingDependency" and "scikit-learn" in message and PIP_EVAL in message
    rc, stderr = result["cli_fid"]  # one line, no traceback
    assert rc == 2 and stderr.startswith("diffusers-ext fid: error: The optional package torch-fidelity")
    assert PIP_EVAL in stderr and "Traceback" not in stderr
    assert not list(tmp_path.iterdir())  # nothing written (no plot, no results file)


def test_load_digits_names_the_extra(monkeypatch):
    from diffusers_ext.models.digits import load_digits

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(MissingDependency, match=re.escape(PIP_EVAL)) as info:
        load_digits("train")
    assert "scikit-learn" in str(info.value) and "digits data" in str(info.value)


def test_demo_fails_before_running_when_an_eval_package_is_missing(monkeypatch, tmp_path, capsys):
    """Before: the GMM part ran, then the digits part died with a bare ImportError traceback (files written)."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "demo"
    assert main(["demo", "--nfe", "5", "--samples", "2", "--digits-samples", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and PIP_EVAL in err and "--gmm-only" in err
    assert not out.exists()


def test_sweep_fails_before_running_when_matplotlib_is_missing(monkeypatch, tmp_path, capsys):
    """Before: the whole sweep ran and wrote its results, then the plot died with a bare ImportError."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "sweep.jsonl"
    assert main(["sweep", "--model", "gmm", "--nfe", "3", "--samples", "2", "--scheduler", "dpm++2m",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffusers-ext sweep: error: The optional package matplotlib") and PIP_EVAL in err
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_require_rejects_unknown_names():
    with pytest.raises(ValueError, match="Unknown optional module 'scipy'; valid choices: torch_fidelity, "):
        require("scipy", "x")
    with pytest.raises(ValueError, match="Unknown extra 'evals'; valid choices: eval"):
        require_extra("evals", "x")
    assert require("sklearn.datasets", "x").load_digits is not None  # a submodule of an optional package


def test_extras_are_consistent():
    project = _pyproject()
    core = _by_name(project["dependencies"])
    extras = {name: _by_name(reqs) for name, reqs in project["optional-dependencies"].items()}
    assert set(extras) == {"eval", "quant", "all", "dev", "bench-quant"}  # bench-quant: benchmark anchors only
    assert not set(extras["bench-quant"]) & set(extras["dev"])  # the tests never need them
    for module, (package, extra) in OPTIONAL.items():  # the table behind the error messages matches pyproject
        assert _canonical(package) in extras[extra], f"{module}: {package} is not in [{extra}]"
        assert _canonical(package) not in core, f"{package} is optional but a core dependency"
        assert _canonical(package) in map(_canonical, md.packages_distributions().get(module, [])), module
    assert {_canonical(p) for p, e in OPTIONAL.values() if e == "eval"} <= set(extras["eval"])
    for name in ("all", "dev"):  # the same requirement strings, so a raised minimum cannot drift apart
        for included in ("eval", "quant"):
            assert extras[included].items() <= extras[name].items(), f"[{name}] lacks part of [{included}]"
    assert extras["all"] == {**extras["eval"], **extras["quant"]}
    assert {"pytest", "ruff", "nbclient", "transformers"} <= set(extras["dev"]) - set(extras["all"])
    assert {"diffusers", "torch", "numpy", "scipy", "safetensors", "tqdm", "accelerate"} <= set(core)
    assert not set(core) & {"torch-fidelity", "matplotlib", "scikit-learn", "torchvision"}


def test_makefile_installs_dev_for_tests_and_eval_for_the_demo(tmp_path):
    """Runs make in a copy with a stand-in .venv/bin/python that logs its arguments."""
    (tmp_path / "Makefile").write_text((ROOT / "Makefile").read_text())
    (tmp_path / "pyproject.toml").write_text("")
    os.utime(tmp_path / "pyproject.toml", (1e9, 1e9))
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$*" >> calls.log\n')
    python.chmod(0o755)

    def make(target: str) -> list[str]:
        subprocess.run(["make", "-s", target], cwd=tmp_path, check=True, capture_output=True, timeout=60)
        calls = (tmp_path / "calls.log").read_text().splitlines()
        (tmp_path / "calls.log").unlink()
        return calls

    upgrade_pip = "-m pip install -q --upgrade pip"
    assert make("demo") == [upgrade_pip, "-m pip install -q -e .[eval]", "-m diffusers_ext demo"]
    assert make("demo") == ["-m diffusers_ext demo"]  # installed once
    assert make("test") == [upgrade_pip, "-m pip install -q -e .[dev]", "-m pytest -q"]
    assert make("test") == ["-m pytest -q"]
    os.utime(tmp_path / "pyproject.toml")  # an edited pyproject.toml: reinstalled ([dev] serves the demo too)
    assert make("demo") == [upgrade_pip, "-m pip install -q -e .[eval]", "-m diffusers_ext demo"]
    assert make("test") == [upgrade_pip, "-m pip install -q -e .[dev]", "-m pytest -q"]
    assert make("demo") == ["-m diffusers_ext demo"]


def test_train_digits_fails_before_creating_its_folder_without_scikit_learn(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    out = tmp_path / "weights"
    assert main(["train-digits", "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffusers-ext train-digits: error: The optional package scikit-learn") and PIP_EVAL in err
    assert not out.exists()
