"""Issue 18: files the tools write load back by path, quantized models reload bit-identically, packaging."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_ext import DCSolverScheduler, USFScheduler
from diffusers_ext.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool_outputs(tmp_path_factory):
    """``calibrate-dc --cpr-out`` and ``search --out`` run as a user would (small settings), in a tmp folder."""
    folder = tmp_path_factory.mktemp("tools")
    cpr, schedule = folder / "cpr.json", folder / "schedule.json"
    assert main(["calibrate-dc", "--model", "gmm", "--nfe", "4,6", "--samples", "2", "--reference-steps", "20",
                 "--iterations", "2", "--out", str(folder / "cal.jsonl"), "--cpr-out", str(cpr)]) == 0
    assert main(["search", "--model", "gmm", "--nfe", "4", "--budget", "40", "--samples", "2",
                 "--archive", str(folder / "archive.jsonl"), "--out", str(schedule)]) == 0
    return cpr, schedule


def _reloaded_without_the_file(tmp_path, source, cls, option, **kwargs):
    """``cls(option=<a copy of source>, **kwargs)`` saved, the copy deleted, then read back."""
    copy = tmp_path / source.name
    copy.write_text(source.read_text())
    scheduler = cls(**{option: str(copy)}, **kwargs)
    scheduler.save_pretrained(tmp_path / "scheduler")
    copy.unlink()
    return type(scheduler).from_pretrained(tmp_path / "scheduler")


@pytest.mark.parametrize("as_path", [str, Path])
def test_calibrate_dc_cpr_file_loads_by_path(tool_outputs, tmp_path, as_path):
    cpr_file, _ = tool_outputs
    contents = json.loads(cpr_file.read_text())
    sched = DCSolverScheduler(dc_cpr=as_path(cpr_file), dc_guidance_scale=1.0)
    assert sched.config.dc_cpr == contents  # the contents, not the path, are the config
    expected = DCSolverScheduler(dc_cpr=contents, dc_guidance_scale=1.0).resolve_ratios(5)
    np.testing.assert_array_equal(sched.resolve_ratios(5), expected)
    assert not np.all(expected == 1.0)  # a real calibration, not the uncalibrated default

    # the saved config carries the CPR itself: it reloads after the file is gone
    reloaded = _reloaded_without_the_file(tmp_path, cpr_file, DCSolverScheduler, "dc_cpr", dc_guidance_scale=1.0)
    assert reloaded.config.dc_cpr == contents
    np.testing.assert_array_equal(reloaded.resolve_ratios(5), expected)


@pytest.mark.parametrize("as_path", [str, Path])
def test_search_schedule_file_loads_by_path(tool_outputs, tmp_path, as_path):
    _, schedule_file = tool_outputs
    contents = json.loads(schedule_file.read_text())
    sched = USFScheduler(solver_schedule=as_path(schedule_file))
    assert sched.config.solver_schedule == contents
    sched.set_timesteps(4)
    np.testing.assert_allclose(sched.timesteps.numpy(), contents["timesteps"][:-1][-4:], atol=1e-4)

    reloaded = _reloaded_without_the_file(tmp_path, schedule_file, USFScheduler, "solver_schedule")
    assert reloaded.config.solver_schedule == contents
    reloaded.set_timesteps(4)
    assert torch.equal(reloaded.timesteps, sched.timesteps)


@pytest.mark.parametrize("make", [lambda p: DCSolverScheduler(dc_cpr=p, dc_guidance_scale=1.0),
                                  lambda p: USFScheduler(solver_schedule=p)], ids=["dc_cpr", "solver_schedule"])
def test_bad_config_files_name_the_path_and_choices(tmp_path, make):
    missing = tmp_path / "missing.json"
    with pytest.raises(ValueError, match=rf"{re.escape(str(missing))}.*no such file.*digits"):
        make(str(missing))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}.*not valid JSON"):
        make(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"something": 1}))
    with pytest.raises(ValueError, match=re.escape(str(wrong))):
        make(wrong)


def test_shipped_names_still_load_by_name():
    assert DCSolverScheduler(dc_cpr="digits", dc_guidance_scale=1.0).config.dc_cpr == "digits"
    assert USFScheduler(solver_schedule="digits-nfe5").config.solver_schedule == "digits-nfe5"


# ---------------------------------------------------------------------------------------------- quantization
def test_quantized_conv_does_not_depend_on_input_layout():
    """A channels-last input (diffusers' resnet shortcut in eval mode) and its contiguous copy (training mode)
    must give the same bits, or FP8 input rounding downstream amplifies a last-bit difference."""
    from diffusers_ext.quant import QuantizedLayer

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(128, 64, 1)
    layer = QuantizedLayer(conv, "fp4_e2m1", torch.full((64,), 0.01), activation_format="fp8_e4m3",
                           input_scale=0.02)
    mismatches = 0
    for batch in (1, 8, 20):
        x = torch.randn(batch, 128, 4, 4)
        mismatches += not torch.equal(layer(x.contiguous(memory_format=torch.channels_last)), layer(x))
    assert mismatches == 0


def test_learned_rounding_reloads_bit_identically(tmp_path):
    from diffusers_ext import DPMSolverPPScheduler
    from diffusers_ext.models.digits import load_pipeline, make_unet
    from diffusers_ext.quant import collect_layer_inputs, load_quantized, quantize, save_quantized

    pipe = load_pipeline(DPMSolverPPScheduler)
    labels = torch.arange(4)
    calibration = collect_layer_inputs(pipe.unet, lambda: pipe(
        class_labels=labels, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt"))
    skip = ("conv_in", "conv_out", "time_embedding", "class_embedding", "down_blocks", "mid_block", "up_blocks.1")
    quantize(pipe.unet, "fp4_e2m1", "fp8_e4m3", calibration, rounding="learned", skip=skip,
             rounding_iterations=4, progress=False)
    assert pipe.unet.quantization_report["learned_rounding_kept"] > 0
    path = save_quantized(pipe.unet, tmp_path / "unet.safetensors")
    reloaded = load_quantized(make_unet(), path)
    assert reloaded.training is False and pipe.unet.training is False
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for batch in (8, 20):
            x, classes = torch.randn(batch, 1, 8, 8, generator=g), torch.arange(batch) % 11
            for t in range(999, 0, -50):
                a, b = reloaded(x, t, class_labels=classes).sample, pipe.unet(x, t, class_labels=classes).sample
                assert torch.equal(a, b), f"batch {batch}, t={t}: differs by {(a - b).abs().max():.3g}"


# ---------------------------------------------------------------------------------------------- packaging
def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements) -> set[str]:
    return {_canonical(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in requirements if "extra ==" not in r}


def test_every_imported_distribution_is_a_runtime_dependency():
    """What the package imports is a declared dependency (or comes with one), not left to the [dev] extra; the
    optional packages (``diffusers_ext.optional.OPTIONAL``, imported through its ``require``) come with their
    extra (tests/test_optional_deps.py)."""
    from diffusers_ext.optional import OPTIONAL

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _names(project["dependencies"])
    provided = declared | {name for dist in declared for name in _names(md.requires(dist) or [])}
    modules = set()
    for path in (ROOT / "diffusers_ext").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.partition(".")[0])
    distributions = md.packages_distributions()
    third_party = {m for m in modules if m not in sys.stdlib_module_names and m not in ("diffusers_ext", *OPTIONAL)}
    missing = {m: distributions.get(m) for m in third_party
               if not any(_canonical(d) in provided for d in distributions.get(m, [m]))}
    assert not missing, f"imported but not declared in [project.dependencies]: {missing}"
    assert "accelerate" in declared  # diffusers warns on every pipeline load without it
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().split()[:3] == ["Apache", "License", "Version"]
