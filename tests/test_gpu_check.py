"""bench/gpu_check.py without a GPU: the refusal without CUDA, the CPU dry run's results, the README block."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
GROUPS = ("correctness", "step_time", "compile", "fp8", "fhs", "cuda_graph")
MARKERS = ("<!-- step-cost-cuda:start -->", "<!-- step-cost-cuda:end -->")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(*args, timeout=300):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def _outside_block(text):
    start, end = text.index(MARKERS[0]), text.index(MARKERS[1])
    return text[:start], text[end:]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run (CPU, tiny sizes, Triton interpreter) into a temp folder, filling a temp README copy."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    readme = tmp / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    real_readme = (ROOT / "README.md").read_text()
    real_results = sorted(p.name for p in (ROOT / "bench" / "results").iterdir())
    proc = _run("--dry-run", "--out", tmp / "out", "--readme", readme)
    assert (ROOT / "README.md").read_text() == real_readme  # the real README and results are untouched
    assert sorted(p.name for p in (ROOT / "bench" / "results").iterdir()) == real_results
    results = {g: json.loads((tmp / "out" / f"gpu_{g}_cpu.json").read_text())
               for g in GROUPS if (tmp / "out" / f"gpu_{g}_cpu.json").exists()}
    return proc, results, tmp / "out", readme


def test_without_cuda_it_stops_at_once_and_writes_nothing(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    before = readme.read_text()
    real_results = sorted(p.name for p in (ROOT / "bench" / "results").iterdir())
    start = time.perf_counter()
    proc = _run("--out", tmp_path / "out", "--readme", readme, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--dry-run" in proc.stderr and "Nothing was written" in proc.stderr
    assert "[correctness]" not in proc.stdout  # no group started
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "out").exists() and readme.read_text() == before
    assert sorted(p.name for p in (ROOT / "bench" / "results").iterdir()) == real_results


def test_bad_group_is_refused_with_the_choices(tmp_path):
    proc = _run("--dry-run", "--groups", "speed", "--out", tmp_path / "out", timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'speed'" in proc.stderr and "correctness" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_writes_every_group(dry_run):
    proc, results, out, _ = dry_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(results) == sorted(GROUPS)
    assert not list(out.glob("*.tmp"))
    for group, r in results.items():
        assert {"benchmark", "group", "device", "dry_run", "machine", "seconds"} <= set(r), group
        assert r["group"] == group and r["device"] == "cpu" and r["dry_run"] is True and "error" not in r
        assert r["machine"]["triton_interpreter"] is True
    assert results["cuda_graph"]["graph"] == "skipped: needs CUDA (CUDA graphs, sync debug mode)"
    for row in results["cuda_graph"]["rows"]:  # the eager loops ran; syncs and graphs need CUDA
        assert row["ours_eager_loop_ms"] > 0 and row["diffusers_eager_loop_ms"] > 0
        assert row["ours_host_syncs_per_loop"] is None and "ours_graph_captured" not in row


def test_dry_run_numbers_are_real_comparisons(dry_run):
    _, results, _, _ = dry_run
    kernel = results["correctness"]["triton_vs_torch"]
    assert len(kernel) == 7 * 3 and all(r["passed"] for r in kernel)
    for r in kernel:
        assert 0 <= r["relative"] <= r["tolerance"]
    assert max(r["relative"] for r in kernel if r["dtype"] == "float32") < 1e-6
    assert max(r["relative"] for r in kernel if r["dtype"] == "bfloat16") > 1e-4  # bf16 rounding is visible
    theirs = results["correctness"]["vs_diffusers"]
    assert [r["scheduler"] for r in theirs] == ["DPM-Solver++ 2M", "DPM-Solver++ 3M", "UniPC bh2 (2)"]
    assert all(r["passed"] and r["relative_difference"] < 1e-5 for r in theirs)
    rows = results["step_time"]["rows"]
    assert len(rows) == 3 * 2 * 3  # latents x dtypes x schedulers (batch 1 in the dry run)
    for r in rows:
        assert r["ours_mb_per_step"] > 0 and r["copy_device_ms"] > 0
        assert r["speedup"] == pytest.approx(r["diffusers_step_ms"] / r["ours_step_ms"])
        assert r["relative_difference"] < (5e-3 if r["dtype"] == "float16" else 3e-2)
    for r in results["compile"]["rows"]:
        assert r["compiles_first_run"] <= 2 and r["compiles_two_runs"] <= 2 and r["relative_difference"] < 1e-5
    for r in results["fp8"]["rows"]:  # the real FP8 GEMM path: coarser than bf16, still close
        assert r["path"] == "torch._scaled_mm (cpu)"
        assert r["bf16_relative_error"] < r["fp8_relative_error"] < 0.1
    fhs = {r["sampler"]: r for r in results["fhs"]["rows"]}
    assert fhs["fhs"]["model_calls"] == fhs["fhs"]["length"] == 16
    assert 0 < fhs["mdlm-cached"]["model_calls"] <= fhs["mdlm-uncached"]["model_calls"] <= 20  # at most one per step


def test_kernel_check_catches_a_wrong_kernel(monkeypatch):
    """The Triton-vs-torch comparison fails when the kernel's output is off by 1%."""
    gpu_check = _load("gpu_check")
    real = gpu_check.KERNEL.triton_lincomb

    def off_by_one_percent(outs, *args, **kw):
        real(outs, *args, **kw)
        for o in outs:
            o.mul_(1.01)

    name, (cls, kw) = "DPM-Solver++ 2M", gpu_check.FAMILIES["DPM-Solver++ 2M"]
    good = gpu_check.kernel_row(name, cls, kw, "float32", (1, 2, 4, 4), gpu_check.torch.device("cpu"))
    monkeypatch.setattr(gpu_check.KERNEL, "triton_lincomb", off_by_one_percent)
    bad = gpu_check.kernel_row(name, cls, kw, "float32", (1, 2, 4, 4), gpu_check.torch.device("cpu"))
    assert good["passed"] and good["relative"] < 1e-6
    assert not bad["passed"] and bad["relative"] > 5e-3


def test_dry_run_fills_only_the_cuda_block_of_the_readme_copy(dry_run):
    proc, results, _, readme = dry_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    original, filled = (ROOT / "README.md").read_text(), readme.read_text()
    assert _outside_block(filled) == _outside_block(original)
    block = filled[filled.index(MARKERS[0]):filled.index(MARKERS[1])]
    assert "**Dry run on the CPU**" in block and "No GPU measurement yet" not in block
    first = results["step_time"]["rows"][0]
    assert f"**{first['speedup']:.2f}x**" in block and f"{first['ours_mb_per_step']:.1f}" in block
    assert f"{results['correctness']['vs_diffusers'][0]['relative_difference']:.1e}" in block


def test_report_fills_the_cuda_block_from_results_json(dry_run, tmp_path):
    _, results, out, _ = dry_run
    report = _load("report")
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    assert report.fill_cuda_block(readme, tmp_path / "none", device="cpu") is False  # no results: unchanged
    assert readme.read_text() == (ROOT / "README.md").read_text()
    assert report.fill_cuda_block(readme, out, device="cpu") is True
    text = readme.read_text()
    assert _outside_block(text) == _outside_block((ROOT / "README.md").read_text())
    fhs = results["fhs"]
    assert f"**{fhs['speedup_vs_mdlm_cached']:.1f}x**" in text
    assert report.fill_cuda_block(readme, out, device="cpu") is True and readme.read_text() == text  # idempotent
    # a group that failed is named, not rendered
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "gpu_fp8_cuda.json").write_text(json.dumps({**results["fp8"], "error": "Traceback ..."}))
    assert "- fp8: failed (see bench/results/gpu_fp8_cuda.json)." in report.gpu_check_block(broken)
    no_markers = tmp_path / "plain.md"
    no_markers.write_text("# no markers\n")
    with pytest.raises(ValueError, match="step-cost-cuda"):
        report.fill_cuda_block(no_markers, out, device="cpu")
    assert no_markers.read_text() == "# no markers\n"
