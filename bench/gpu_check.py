"""GPU check (issue 16): the fused GPU paths measured on one CUDA GPU, in six groups, one JSON file each.

    python bench/gpu_check.py                            # CUDA: all groups (about 4 minutes on an H100/H200)
    python bench/gpu_check.py --groups fp8 fhs           # a subset
    python bench/gpu_check.py --dry-run --out /tmp/gc    # CPU: tiny sizes, Triton's interpreter (about 30 s)

1. correctness: the Triton ``lincomb`` path against the torch path, whole sampling loops of every family
   (DPM-Solver++ 2M/3M, UniPC, DEIS, DC-Solver, DualFast, USF) in fp32/fp16/bf16; loops equal diffusers'
   where the algorithms coincide (fp32).
2. step_time: time per ``step`` against diffusers at SD 1.5 / SDXL / Flux latent sizes, batch 1 and 8,
   fp16 and bf16 (CUDA events, medians), bytes moved per step and the time of a device copy moving as many
   bytes (goal: ours within 1.3x of the copy, at least 2x faster than diffusers).
3. cuda_graph: a whole sampling loop (dummy denoiser) captured in one CUDA graph with our scheduler; host
   syncs per loop (CUDA sync debug mode) and an attempt to capture diffusers' loop.
4. compile: ``torch.compile(step, fullgraph=True)``: compilations and time per step.
5. fp8: W8A8 FP8 Linear (``QuantizedLayer``, ``torch._scaled_mm``) against bf16 at 4096 x 4096, 1024-4096
   tokens: speed and error against a float64 reference.
6. fhs: First-Hitting against MDLM (cached and uncached) at vocabulary 50,257, length 1024.

Results go to ``bench/results/gpu_<group>_cuda.json`` and the README's step-cost-cuda block
(``bench/report.py``). Without CUDA (and without ``--dry-run``) it stops at once and writes nothing.
``--dry-run`` runs every group on the CPU with tiny sizes (Triton under ``TRITON_INTERPRET=1``; CUDA-only
parts are recorded as skipped) into a temporary folder, and touches no README unless ``--readme`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch

# cuda_graph last: its attempt to capture diffusers' loops may leave the CUDA stream unusable
GROUPS = ("correctness", "step_time", "compile", "fp8", "fhs", "cuda_graph")


def parse_args(argv=None) -> argparse.Namespace:
    """Options; without CUDA (and without --dry-run) a clear error and exit status 2, before any work."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny sizes, Triton interpreter; results to --out (default: a new temp folder)")
    parser.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS), metavar="GROUP",
                        help=f"groups to run (default all): {', '.join(GROUPS)}")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    parser.add_argument("--readme", type=Path, default=None,
                        help="README whose step-cost-cuda block is filled (default: README.md on CUDA, none in a "
                             "dry run)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error(f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False): this "
                     "check measures the GPU paths and needs one GPU. Nothing was written. For a CPU check of the "
                     "script itself, run with --dry-run.")
    if not args.dry_run and importlib.util.find_spec("triton") is None:
        parser.error("Triton is not importable: the fused GPU update needs it (it ships with CUDA builds of torch)")
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # before the library imports: a refusal comes at once
    if ARGS.dry_run:  # Triton's interpreter must be chosen before triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.setdefault("DIFFUSERS_EXT_BACKEND", "triton")  # the CPU run takes the kernel path as CUDA does

from torch.utils._python_dispatch import _disable_current_modes  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench scripts
import report  # noqa: E402
from masked_diffusion import make_scheduler  # noqa: E402
from step_cost import PAIRS, ByteCounter  # noqa: E402

from diffusers_ext import (  # noqa: E402
    DCSolverScheduler,
    DEISScheduler,
    DPMSolverPPScheduler,
    MaskedDiffusionPipeline,
    UniPCScheduler,
    USFScheduler,
)
from diffusers_ext.models import GaussianMixtureDenoiser  # noqa: E402
from diffusers_ext.models.tiny_masked_transformer import TinyMaskedTransformer  # noqa: E402
from diffusers_ext.quant import QuantizedLayer, get_format, input_scale, weight_scales  # noqa: E402
from diffusers_ext.sampling import model_fn, sample  # noqa: E402

KERNEL = importlib.import_module("diffusers_ext.kernels.lincomb")  # the module (the package exports the function)
ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# one main variant per family; USF runs its shipped 10-call schedule, so every loop makes 10 calls
FAMILIES = {
    "DPM-Solver++ 2M": (DPMSolverPPScheduler, {}),
    "DPM-Solver++ 3M": (DPMSolverPPScheduler, {"solver_order": 3}),
    "UniPC bh2": (UniPCScheduler, {}),
    "DEIS tAB3": (DEISScheduler, {}),
    "DC-Solver": (DCSolverScheduler, {"dc_cpr": "digits", "dc_guidance_scale": 1.0}),
    "DualFast (DPM-Solver++ 2M)": (DPMSolverPPScheduler, {"dualfast_strength": 0.3}),
    "USF (digits-nfe10)": (USFScheduler, {"solver_schedule": "digits-nfe10"}),
}
LOOP_STEPS = 10
# Triton vs torch path, per step on the same sample and model output: max |difference| / max |value|. Both
# accumulate in float32 and round once, but a stored history entry may differ by one unit in the last place,
# which the step's coefficients amplify: about 4 units at the largest value for fp16 / bf16
KERNEL_TOLERANCE = {"float32": 1e-6, "float16": 4e-3, "bfloat16": 3.2e-2}
DIFFUSERS_TOLERANCE = 1e-5  # relative L2 difference of whole fp32 loops (tests/test_faithfulness.py)


@dataclass(frozen=True)
class Sizes:
    latents: dict  # name -> (channels, height, width)
    batches: tuple
    loop_shape: tuple  # correctness loops
    steps: int  # step_time / cuda_graph / compile runs
    repeats: int
    fp8_features: int
    fp8_tokens: tuple
    vocab: int
    length: int
    mdlm_steps: int
    masked_repeats: int


FULL = Sizes(latents={"SD 1.5": (4, 64, 64), "SDXL": (4, 128, 128), "Flux": (16, 128, 128)}, batches=(1, 8),
             loop_shape=(4, 4, 64, 64), steps=20, repeats=5, fp8_features=4096, fp8_tokens=(1024, 2048, 4096),
             vocab=50257, length=1024, mdlm_steps=1000, masked_repeats=3)
TINY = Sizes(latents={"SD 1.5": (4, 4, 4), "SDXL": (4, 8, 8), "Flux": (16, 4, 4)}, batches=(1,),
             loop_shape=(2, 2, 4, 4), steps=4, repeats=1, fp8_features=64, fp8_tokens=(16, 32),
             vocab=64, length=16, mdlm_steps=20, masked_repeats=1)


# ----------------------------------------------------------------------------------- helpers
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device) -> float:
    """One call of ``fn``: CUDA events on the GPU (after a sync, so only its own work counts), else wall clock."""
    synchronize(device)
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - start)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end)


def median_ms(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(time_ms(fn, device) for _ in range(repeats))


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / a.norm())


def gmm_model(dtype: torch.dtype):
    """The exact Gaussian-mixture denoiser (float64 inside), returning the sample's dtype."""
    gmm = model_fn(GaussianMixtureDenoiser())
    return lambda x, t: gmm(x.float(), t).to(dtype)


def dummy_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A stand-in model without host work (capturable): a fixed map of the sample and the timestep."""
    return 0.9 * x + 1e-4 * t


def step_times(scheduler, outputs, x: torch.Tensor, step=None) -> tuple[torch.Tensor, list[float]]:
    """Run ``scheduler`` over fixed model outputs (no model call), timing each step; ``step(out, t, x)``
    replaces ``scheduler.step(...).prev_sample`` (e.g. a compiled step)."""
    step = step or (lambda out, t, x: scheduler.step(out, t, x).prev_sample)
    scheduler.set_timesteps(len(outputs), device=x.device)
    times = []
    for t, out in zip(scheduler.timesteps, outputs):
        def one(t=t, out=out):
            nonlocal x
            x = step(out, t, x)
        times.append(time_ms(one, x.device))
    return x, times


def bytes_per_step(scheduler, outputs, x: torch.Tensor) -> float:
    """Bytes moved per step: aten ops (``step_cost.ByteCounter``) plus the Triton kernel's own traffic
    (every input and history entry read once, every output and history row written once)."""
    counter, kernel = ByteCounter(x.numel()), [0]
    real = KERNEL.triton_lincomb

    def counted(outs, coeffs, tensors, history, write_slot, **kw):
        entries = [] if history is None else list(history.unbind(0))
        rows = 0 if write_slot is None else write_slot.numel()
        kernel[0] += sum(t.numel() * t.element_size() for t in [*outs, *tensors, *entries, *entries[:1] * rows])
        with _disable_current_modes():  # the launch itself (the interpreter's copies are not the kernel's)
            return real(outs, coeffs, tensors, history, write_slot, **kw)

    scheduler.set_timesteps(len(outputs), device=x.device)
    with mock.patch.object(KERNEL, "triton_lincomb", counted), counter:
        for t, out in zip(scheduler.timesteps, outputs):
            x = scheduler.step(out, t, x).prev_sample
    return (counter.bytes + kernel[0]) / len(outputs)


def captured(prepare, run):
    """``run()`` captured in one CUDA graph: warmed up once (``prepare(); run()``) on a side stream, then
    ``prepare()`` and the capture. Returns (graph, run's output)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        prepare()
        run()
    torch.cuda.current_stream().wait_stream(side)
    prepare()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    return graph, out


def device_ms(prepare, run, calls: int, device: torch.device, repeats: int) -> float:
    """GPU time of one of the ``calls`` units of work that ``run()`` does: a CUDA-graph replay (no launch or
    Python overhead) divided by ``calls``. On the CPU: wall clock of ``prepare(); run()``."""
    if device.type != "cuda":
        return median_ms(lambda: (prepare(), run()), device, repeats, warmup=0) / calls
    graph, _ = captured(prepare, run)
    return median_ms(graph.replay, device, max(repeats, 10)) / calls


def start_at_first_step(scheduler, steps: int, device: torch.device):
    """``set_timesteps`` and ``set_begin_index(0)``: a run that needs no timestep lookup (no host sync)."""
    def prepare():
        scheduler.set_timesteps(steps, device=device)
        scheduler.set_begin_index(0)
    return prepare


def copy_device_ms(nbytes: float, device: torch.device, repeats: int) -> float:
    """A device-to-device copy moving ``nbytes`` in all (reading half of them, writing the other half)."""
    src = torch.empty(max(1, int(nbytes) // 2), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return device_ms(lambda: None, lambda: [dst.copy_(src) for _ in range(10)], 10, device, repeats)


def fixed_output_loop(scheduler, outputs, x: torch.Tensor):
    """The steps of one run over fixed model outputs (timesteps set already)."""
    def run():
        y = x
        for t, out in zip(scheduler.timesteps, outputs):
            y = scheduler.step(out, t, y).prev_sample
        return y
    return run


def latent(shape, dtype, device, seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


@contextlib.contextmanager
def backend(name: str):
    """Route ``lincomb`` to the Triton kernel or the torch path (``DIFFUSERS_EXT_BACKEND``)."""
    old = os.environ.get("DIFFUSERS_EXT_BACKEND")
    os.environ["DIFFUSERS_EXT_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DIFFUSERS_EXT_BACKEND")
        else:
            os.environ["DIFFUSERS_EXT_BACKEND"] = old


def skipped(reason: str) -> dict:
    return {"skipped": reason}


# ----------------------------------------------------------------------------------- the six groups
def kernel_row(name: str, cls, kw: dict, dtype_name: str, shape, device: torch.device) -> dict:
    """One family and dtype: a scheduler on the Triton path and one on the torch path get the same sample and
    model output at every step (the torch path's trajectory), so the differences are the update's alone."""
    dtype, model = DTYPES[dtype_name], gmm_model(DTYPES[dtype_name])
    schedulers = {path: cls(**kw) for path in ("triton", "torch")}
    for scheduler in schedulers.values():
        scheduler.set_timesteps(LOOP_STEPS, device=device)
    x, worst = latent(shape, dtype, device), 0.0
    for t in schedulers["torch"].timesteps:
        out, new = model(x, t), {}
        for path, scheduler in schedulers.items():
            with backend(path):
                new[path] = scheduler.step(out, t, x).prev_sample.double()
        diff = float((new["triton"] - new["torch"]).abs().max()) / float(new["torch"].abs().max())
        worst, x = max(worst, diff), new["torch"].to(dtype)
    tolerance = KERNEL_TOLERANCE[dtype_name]
    return {"family": name, "dtype": dtype_name, "relative": worst, "tolerance": tolerance,
            "passed": worst <= tolerance}


def correctness(sizes: Sizes, device: torch.device) -> dict:
    """Triton vs torch path, every family and dtype; whole fp32 loops against diffusers."""
    kernel_rows = [kernel_row(name, cls, kw, dtype_name, sizes.loop_shape, device)
                   for name, (cls, kw) in FAMILIES.items() for dtype_name in DTYPES]
    diffusers_rows = []
    model = gmm_model(torch.float32)
    for name, (theirs_cls, ours_cls, kw) in PAIRS.items():
        x0, finals = latent(sizes.loop_shape, torch.float32, device, seed=1), {}
        for label, cls in (("diffusers", theirs_cls), ("ours", ours_cls)):
            scheduler = cls(**kw)
            scheduler.set_timesteps(LOOP_STEPS, device=device)
            finals[label] = sample(model, scheduler, x0.clone())
        rel = relative_difference(finals["diffusers"], finals["ours"])
        diffusers_rows.append({"scheduler": name, "dtype": "float32", "relative_difference": rel,
                               "tolerance": DIFFUSERS_TOLERANCE, "passed": rel < DIFFUSERS_TOLERANCE})
    return {"steps": LOOP_STEPS, "shape": list(sizes.loop_shape), "triton_vs_torch": kernel_rows,
            "vs_diffusers": diffusers_rows}


def step_time(sizes: Sizes, device: torch.device) -> dict:
    """Time and bytes per step, ours against diffusers, and against a device copy of the same bytes."""
    rows = []
    for latent_name, chw in sizes.latents.items():
        for batch in sizes.batches:
            for dtype_name in ("float16", "bfloat16"):
                shape, dtype = (batch, *chw), DTYPES[dtype_name]
                x0 = latent(shape, dtype, device)
                outputs = [latent(shape, dtype, device, seed=1 + i) for i in range(sizes.steps)]
                for name, (theirs_cls, ours_cls, kw) in PAIRS.items():
                    row = {"latent": latent_name, "shape": list(shape), "dtype": dtype_name, "scheduler": name}
                    finals = {}
                    for label, cls in (("diffusers", theirs_cls), ("ours", ours_cls)):
                        per_run = []
                        for _ in range(sizes.repeats):
                            finals[label], times = step_times(cls(**kw), outputs, x0)
                            per_run.append(statistics.median(times[2:]))  # past the warm-up steps
                        row[f"{label}_step_ms"] = statistics.median(per_run)
                        row[f"{label}_mb_per_step"] = bytes_per_step(cls(**kw), outputs, x0) / 2**20
                    scheduler = ours_cls(**kw)
                    row["ours_device_step_ms"] = device_ms(
                        start_at_first_step(scheduler, sizes.steps, device),
                        fixed_output_loop(scheduler, outputs, x0), sizes.steps, device, sizes.repeats)
                    row["copy_device_ms"] = copy_device_ms(row["ours_mb_per_step"] * 2**20, device, sizes.repeats)
                    row["speedup"] = row["diffusers_step_ms"] / row["ours_step_ms"]
                    row["ours_vs_copy"] = row["ours_device_step_ms"] / row["copy_device_ms"]
                    row["relative_difference"] = relative_difference(finals["diffusers"], finals["ours"])
                    rows.append(row)
                    print(f"  {latent_name:6s} b{batch} {dtype_name:8s} {name:16s} diffusers "
                          f"{row['diffusers_step_ms']:.3f} ms | ours {row['ours_step_ms']:.3f} ms "
                          f"{row['ours_mb_per_step']:.1f} MB, on the device {row['ours_device_step_ms']:.4f} ms "
                          f"| copy {row['copy_device_ms']:.4f} ms", flush=True)
    timing = "CUDA graph replay" if device.type == "cuda" else "wall clock (CPU)"
    return {"steps": sizes.steps, "device_timing": timing, "rows": rows,
            "goals": {"ours_vs_copy_at_most": 1.3, "speedup_at_least": 2.0}}


def host_syncs(run, device: torch.device) -> int | None:
    """Host-device synchronizations during ``run()`` (CUDA sync debug mode, one warning per sync); None on
    the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def eager_loop(scheduler, x: torch.Tensor, steps: int) -> torch.Tensor:
    return sample(dummy_denoiser, scheduler, x, steps)


def graph_loop(make, x: torch.Tensor, steps: int, repeats: int) -> dict:
    """A whole sampling loop (dummy denoiser) in one CUDA graph, replayed and compared with the eager loop; a
    failed capture is reported, not raised."""
    reference = make()
    start_at_first_step(reference, steps, x.device)()
    reference = sample(dummy_denoiser, reference, x)
    scheduler = make()
    try:
        graph, out = captured(start_at_first_step(scheduler, steps, x.device),
                              lambda: sample(dummy_denoiser, scheduler, x))
        graph.replay()
    except Exception as error:
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
        return {"captured": False, "error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"}
    return {"captured": True, "loop_ms": median_ms(graph.replay, x.device, repeats),
            "relative_difference_to_eager": relative_difference(reference, out)}


def cuda_graph(sizes: Sizes, device: torch.device) -> dict:
    """Eager sampling loops (dummy denoiser), ours and diffusers': time and host syncs per loop (default start,
    and after ``set_begin_index(0)``); on CUDA the same loops captured in one CUDA graph each."""
    shape, steps, rows = (1, *sizes.latents["SDXL"]), sizes.steps, []
    x = latent(shape, torch.float16, device)
    for name, (theirs_cls, ours_cls, kw) in PAIRS.items():
        row = {"scheduler": name, "shape": list(shape), "dtype": "float16", "steps": steps}
        for label, cls in (("ours", ours_cls), ("diffusers", theirs_cls)):
            make = functools.partial(cls, **kw)
            row[f"{label}_eager_loop_ms"] = median_ms(lambda m=make: eager_loop(m(), x, steps), device, sizes.repeats)
            for key, begin in (("host_syncs_per_loop", None), ("host_syncs_with_begin_index", 0)):
                scheduler = make()
                scheduler.set_timesteps(steps, device=device)
                if begin is not None:
                    scheduler.set_begin_index(begin)
                row[f"{label}_{key}"] = host_syncs(lambda s=scheduler: sample(dummy_denoiser, s, x), device)
        rows.append(row)
    if device.type != "cuda":
        return {"rows": rows, "graph": "skipped: needs CUDA (CUDA graphs, sync debug mode)"}
    for row, (theirs_cls, ours_cls, kw) in zip(rows, PAIRS.values()):  # diffusers' capture attempts last
        for label, cls in (("ours", ours_cls), ("diffusers", theirs_cls)):
            row.update({f"{label}_graph_{k}": v for k, v in
                        graph_loop(functools.partial(cls, **kw), x, steps, sizes.repeats).items()})
        if row["ours_graph_captured"]:
            row["ours_graph_speedup_vs_diffusers_eager"] = row["diffusers_eager_loop_ms"] / row["ours_graph_loop_ms"]
    return {"rows": rows}


def compile_row(scheduler_cls, kw: dict, compiler: str, outputs, x0: torch.Tensor) -> dict:
    """One scheduler's step through ``torch.compile(fullgraph=True)`` over two runs, against eager."""
    torch._dynamo.reset()
    compiles = []

    def counting(gm, example_inputs):
        compiles.append(1)
        return torch._dynamo.lookup_backend(compiler)(gm, example_inputs)

    scheduler = scheduler_cls(**kw)
    compiled = torch.compile(scheduler.step, fullgraph=True, backend=counting)

    def compiled_step(out, t, x):
        return compiled(out, t, x, return_dict=False)[0]

    start = time.perf_counter()
    step_times(scheduler, outputs, x0, compiled_step)
    first_run_s, first_run_compiles = time.perf_counter() - start, len(compiles)
    final, times = step_times(scheduler, outputs, x0, compiled_step)  # a second run
    eager_final, eager_times = step_times(scheduler_cls(**kw), outputs, x0)
    return {"backend": compiler, "compiles_first_run": first_run_compiles, "compiles_two_runs": len(compiles),
            "first_run_s": first_run_s, "compiled_step_ms": statistics.median(times[2:]),
            "eager_step_ms": statistics.median(eager_times[2:]),
            "relative_difference": relative_difference(eager_final, final)}


def compile_step(sizes: Sizes, device: torch.device) -> dict:
    """``torch.compile(step, fullgraph=True)``: compilations over two runs, first-run time, time per step."""
    compiler = "inductor" if device.type == "cuda" else "eager"  # the CPU check needs no C++ toolchain
    shape = (1, *sizes.latents["SDXL"])
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    x0 = latent(shape, dtype, device)
    outputs = [latent(shape, dtype, device, seed=1 + i) for i in range(sizes.steps)]
    rows = [{"scheduler": name, "dtype": str(dtype).replace("torch.", ""), "shape": list(shape),
             **compile_row(PAIRS[name][1], PAIRS[name][2], compiler, outputs, x0)}
            for name in ("DPM-Solver++ 2M", "UniPC bh2 (2)")]
    return {"steps": sizes.steps, "rows": rows}


def fp8_row(linear: torch.nn.Linear, x: torch.Tensor) -> dict:
    """One token count: the W8A8 layer's FP8 GEMM path and bf16, errors against float64, and times."""
    fmt = get_format("fp8_e4m3")
    weight, bias = linear.weight.detach(), linear.bias.detach()
    layer = QuantizedLayer(linear, "fp8_e4m3", weight_scales(weight, fmt), activation_format="fp8_e4m3",
                           input_scale=input_scale([x], fmt))
    # on CUDA sm89+ forward takes the FP8 GEMM path; on the CPU forward emulates, so call that path directly
    fp8_forward = layer if x.is_cuda else layer._fp8_linear
    reference = torch.addmm(bias.double(), x.double(), weight.double().t())
    xb, wb, bb = x.bfloat16(), weight.bfloat16(), bias.bfloat16()
    row = {"features": weight.shape[1], "tokens": len(x), "path": f"torch._scaled_mm ({x.device.type})",
           "fp8_relative_error": relative_difference(reference, fp8_forward(xb)),
           "bf16_relative_error": relative_difference(reference, torch.nn.functional.linear(xb, wb, bb))}
    # the GEMM alone, on inputs cast directly, and the whole layer (its activation rounding included)
    x_fp8 = (x / layer.input_scale).clamp(-fmt.max_value, fmt.max_value).to(torch.float8_e4m3fn)
    scale_a = layer.input_scale.reshape(1, 1).expand(len(x), 1).contiguous()
    scale_b = layer.weight_scale.reshape(1, -1)
    row["bf16_ms"] = median_ms(lambda: torch.nn.functional.linear(xb, wb, bb), x.device, 20)
    row["fp8_gemm_ms"] = median_ms(lambda: torch._scaled_mm(x_fp8, layer.fp8_weight, scale_a=scale_a,
                                                            scale_b=scale_b, out_dtype=torch.bfloat16), x.device, 20)
    row["w8a8_layer_ms"] = median_ms(lambda: fp8_forward(xb), x.device, 20)
    row["gemm_speedup"] = row["bf16_ms"] / row["fp8_gemm_ms"]
    row["layer_speedup"] = row["bf16_ms"] / row["w8a8_layer_ms"]
    return row


def fp8(sizes: Sizes, device: torch.device) -> dict:
    """W8A8 FP8 Linear (``torch._scaled_mm``) against bf16: error against a float64 reference, and speed."""
    if not hasattr(torch, "_scaled_mm"):
        return skipped(f"torch {torch.__version__} has no torch._scaled_mm")
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        return skipped(f"FP8 GEMMs need sm89+; this GPU is sm{''.join(map(str, torch.cuda.get_device_capability()))}")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        linear = torch.nn.Linear(sizes.fp8_features, sizes.fp8_features).to(device)
    g = torch.Generator().manual_seed(0)
    rows = [fp8_row(linear, torch.randn(tokens, sizes.fp8_features, generator=g).to(device))
            for tokens in sizes.fp8_tokens]
    timing = "CUDA events" if device.type == "cuda" else "not meaningful: CPU dry run (FP8 speed needs CUDA sm89+)"
    return {"rows": rows, "timing": timing}


def fhs(sizes: Sizes, device: torch.device) -> dict:
    """First-Hitting (one call per token) against MDLM ancestral sampling, cached and uncached."""
    model = TinyMaskedTransformer(vocab_size=sizes.vocab, max_length=sizes.length, seed=0).to(device)
    rows = []
    for name in ("fhs", "mdlm-cached", "mdlm-uncached"):
        steps = None if name == "fhs" else sizes.mdlm_steps
        times, calls = [], None
        for seed in range(-1, sizes.masked_repeats):  # seed -1: warm-up, not timed
            pipe = MaskedDiffusionPipeline(model, make_scheduler(name, steps))
            pipe.set_progress_bar_config(disable=True)
            generator = torch.Generator(device).manual_seed(max(seed, 0))
            synchronize(device)
            start = time.perf_counter()
            out = pipe(batch_size=1, sequence_length=sizes.length, use_cache=name != "mdlm-uncached",
                       mask_token_id=model.mask_id, generator=generator)
            synchronize(device)
            if seed >= 0:
                times.append(time.perf_counter() - start)
            calls = out.num_model_calls
        rows.append({"sampler": name, "vocab": sizes.vocab, "length": sizes.length, "steps": steps,
                     "model_calls": calls, "seconds_median": statistics.median(times), "repeats": len(times)})
    fhs_s = rows[0]["seconds_median"]
    return {"rows": rows, "speedup_vs_mdlm_cached": rows[1]["seconds_median"] / fhs_s,
            "speedup_vs_mdlm_uncached": rows[2]["seconds_median"] / fhs_s}


RUNNERS = {"correctness": correctness, "step_time": step_time, "cuda_graph": cuda_graph, "compile": compile_step,
           "fp8": fp8, "fhs": fhs}


# ----------------------------------------------------------------------------------- driver
def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton_interpreter": os.environ.get("TRITON_INTERPRET") == "1"}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["capability"] = list(torch.cuda.get_device_capability(device))
    return info


def write_json(path: Path, data: dict) -> None:
    """Whole or not at all: a temporary file renamed into place."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def main(args: argparse.Namespace) -> int:
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        torch.set_num_threads(1)  # tiny tensors: more threads only contend on a shared machine
    sizes = TINY if args.dry_run else FULL
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu_check_")) if args.dry_run else ROOT / "bench" / "results")
    readme = args.readme if args.readme or args.dry_run else ROOT / "README.md"
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for group in GROUPS:
        if group not in args.groups:
            continue
        print(f"[{group}]", flush=True)
        start = time.perf_counter()
        try:
            result = RUNNERS[group](sizes, device)
        except Exception:  # keep the other groups' results; the traceback goes into this group's file
            failed.append(group)
            result = {"error": traceback.format_exc()}
            print(result["error"], file=sys.stderr, flush=True)
        result = {"benchmark": "gpu_check", "group": group, "device": device.type, "dry_run": args.dry_run,
                  "machine": machine(device), "seconds": time.perf_counter() - start, **result}
        write_json(out / f"gpu_{group}_{device.type}.json", result)
        print(f"[{group}] {result['seconds']:.1f} s -> {out / f'gpu_{group}_{device.type}.json'}", flush=True)
    if readme is not None:
        report.fill_cuda_block(readme, out, device=device.type)
        print(f"filled the step-cost-cuda block of {readme}")
    if failed:
        print(f"groups with errors: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
