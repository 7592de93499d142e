"""Low-bit quantization of the digits UNet, ours and the anchors (optimum-quanto, torchao) side by side: error
against fp32 along the trajectory, FID, file size, resident weight bytes and CPU time per denoiser call.

    python bench/quantization.py          # resumable: bench/results/quantization_digits.jsonl
    pip install -e '.[bench-quant]'       # the anchors' libraries (rows skipped without them)

Fixed sampler: DPM-Solver++ 2M, 10 steps, guidance 1. Calibration: 64 samples (seed 0) along that trajectory.
Error: relative output MSE of the quantized UNet on a held-out fp32 trajectory's inputs (64 samples, seed 1).
Rows named "calibration seed 10" calibrate on the noises of seed 10 (error on seed 11) instead.
Our rows are ``diffusers_ext.quant.quantize_pipeline``, what ``diffusers-ext quantize`` runs; the anchors are
bench/quant_anchors.py (the libraries' own calls on the same fp32 weights; quanto's activation scales are
calibrated over the same seed-0 run). FID: digits-cnn FID of 500 samples against the train split, seeds 1-3.
Run time (``--remeasure`` redoes it for every row in one run): resident weight bytes of the quantized UNet and
the median CPU time of 20 UNet calls on batch 64 (the held-out inputs), one torch thread, interleaved call by
call with an fp32 copy. Rows whose FID is cached get these columns from a rebuilt model; ours are rebuilt with
nearest rounding and 8 calibration samples (the same layers, formats and storage: only the values differ).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import statistics
import tempfile
from pathlib import Path

from quant_anchors import ANCHORS, cpu_ms_per_call, resident_bytes
from report import quantization_table
from results_io import line_count, say_if_cached

from diffusers_ext import DPMSolverPPScheduler
from diffusers_ext.eval.sweep import Cell, DigitsMetric
from diffusers_ext.models.digits import load_pipeline
from diffusers_ext.quant import quantize_pipeline, save_quantized
from diffusers_ext.quant.format_choice import FP4_FORMATS
from diffusers_ext.quant.pipeline import trajectory_run
from diffusers_ext.quant.quantize import weight_candidates
from diffusers_ext.quant.trajectory import record_trajectory, trajectory_error
from diffusers_ext.results_log import append_row, read_rows

RESULTS = Path(__file__).resolve().parent / "results"
NFE, GUIDANCE, SAMPLES, THREADS, REPEATS = 10, 1.0, 64, 1, 20
CONFIGS = {  # name: (weights, activations, rounding[, quantize_pipeline keyword arguments, iterations or seed])
    "fp32": None,
    "W8A8 FP8 (e4m3)": ("fp8_e4m3", "fp8_e4m3", "nearest"),
    "W8A8 INT8": ("int8", "int8", "nearest"),
    "W4A8 FP4 (e2m1), nearest": ("fp4_e2m1", "fp8_e4m3", "nearest"),
    "W4A8 FP4 (e2m1), learned": ("fp4_e2m1", "fp8_e4m3", "learned"),
    "W4A8 INT4, nearest": ("int4", "int8", "nearest"),
    "W4A8 INT4, learned": ("int4", "int8", "learned"),
    # issue 15 item 1 ablations (quantize's 4-bit quality options)
    "W4A8 FP4 (e2m1), learned, int8 inputs": ("fp4_e2m1", "int8", "learned"),
    "W4A8 FP4 per-layer format, block": (FP4_FORMATS, "fp8_e4m3", "block"),
    "W4A8 FP4 (e2m1), block": ("fp4_e2m1", "fp8_e4m3", "block"),
    "W4A8 FP4 (e2m1), block, first/last 8-bit": ("fp4_e2m1", "fp8_e4m3", "block", {"keep_8bit": ("first", "last")}),
    "W4A8 FP4 (e2m1), block, first/last 8-bit, int8 inputs": (
        "fp4_e2m1", "int8", "block", {"keep_8bit": ("first", "last")}),
    "W4A8 INT4, block, first/last 8-bit": ("int4", "int8", "block", {"keep_8bit": ("first", "last")}),
    "W4A8 FP4 (e2m1), block, first/last 8-bit, 1500 iterations": (
        "fp4_e2m1", "fp8_e4m3", "block", {"keep_8bit": ("first", "last"), "iterations": 1500}),
    "W4A8 FP4 (e2m1), block, first/last 8-bit, a scale per 32 weights": (
        "fp4_e2m1", "fp8_e4m3", "block", {"keep_8bit": ("first", "last"), "weight_group_size": 32}),
    "W4A8 FP4 (e2m1), block, first/last 8-bit, a scale per 64 weights": (
        "fp4_e2m1", "fp8_e4m3", "block", {"keep_8bit": ("first", "last"), "weight_group_size": 64}),
    "W4A8 INT4, block, first/last 8-bit, a scale per 32 weights": (
        "int4", "int8", "block", {"keep_8bit": ("first", "last"), "weight_group_size": 32}),
    # the same two methods calibrated on another draw of noises (seed 10; FID seeds 1-3 unchanged)
    "W4A8 FP4 (e2m1), block, first/last 8-bit, calibration seed 10": (
        "fp4_e2m1", "fp8_e4m3", "block", {"keep_8bit": ("first", "last"), "seed": 10}),
    "W4A8 FP4 (e2m1), block, first/last 8-bit, a scale per 32 weights, calibration seed 10": (
        "fp4_e2m1", "fp8_e4m3", "block", {"keep_8bit": ("first", "last"), "weight_group_size": 32, "seed": 10}),
    "W4A8 FP4 per-layer format, block, 4 t-groups, int8 inputs": (FP4_FORMATS, "int8", "block", {"timestep_groups": 4}),
    "W4A8 FP4 per-layer format, block, 4 t-groups, int8 inputs, first/last 8-bit": (
        FP4_FORMATS, "int8", "block", {"timestep_groups": 4, "keep_8bit": ("first", "last")}),
}
LIBRARIES = {"optimum-quanto": "optimum.quanto", "torchao": "torchao"}  # distribution: module


def quantize_ours(name: str, iterations: int, rebuild: bool = False) -> tuple[object, dict]:
    """A digits pipeline with its UNet quantized by ``CONFIGS[name]`` and the row's fields; ``rebuild`` (for the
    run-time columns only): nearest rounding and 8 calibration samples, the same layers, formats and storage."""
    spec = CONFIGS[name]
    pipe = load_pipeline(DPMSolverPPScheduler)
    weights, activations, rounding, *extra = spec or (None, None, "nearest")
    options = dict(extra[0]) if extra else {}
    iterations = options.pop("iterations", iterations)  # a row's own learning budget
    seed = options.pop("seed", 0)  # another calibration draw (noises of seed; held-out error on seed + 1)
    result = quantize_pipeline(pipe, weights, activations, "nearest" if rebuild else rounding, iterations=iterations,
                               num_inference_steps=NFE, guidance_scale=GUIDANCE, num_samples=8 if rebuild else SAMPLES,
                               seed=seed, progress=False, **options)
    row = {"library": "diffusers_ext", "weight_bits": 32 if spec is None else weight_candidates(weights)[0].bits,
           "float32_bytes": result["float32_bytes"], "relative_mse": result["relative_mse"],
           "mse_per_step": result["mse_per_step"]}
    if spec is not None:
        row["report"] = result["report"]
        with tempfile.TemporaryDirectory() as tmp:
            row["file_bytes"] = save_quantized(pipe.unet, Path(tmp) / "q.safetensors").stat().st_size
        row["file_format"] = "save_quantized (packed codes, safetensors)"
    else:
        row["file_bytes"], row["file_format"] = result["float32_bytes"], "float32"
    return pipe, row


def quantize_anchor(name: str, held_out: list) -> tuple[object, dict]:
    """A digits pipeline with its UNet quantized by ``ANCHORS[name]`` and the row's fields (``error`` instead
    when the library fails on this model or CPU)."""
    anchor = ANCHORS[name]
    pipe = load_pipeline(DPMSolverPPScheduler)
    row = {"library": f"{anchor.library} {importlib.metadata.version(anchor.library)}",
           "weight_bits": anchor.weight_bits, "float32_bytes": sum(p.numel() * 4 for p in pipe.unet.parameters())}
    try:
        anchor.quantize(pipe.unet, trajectory_run(pipe, SAMPLES, NFE, GUIDANCE, 0))
    except Exception as error:  # recorded: the table says what the library does not run here
        return pipe, {**row, "error": f"{type(error).__name__}: {error}".splitlines()[0]}
    error = trajectory_error(pipe.unet, held_out)
    row.update(relative_mse=error["relative_mse"], mse_per_step=error["mse_per_step"])
    with tempfile.TemporaryDirectory() as tmp:
        row["file_bytes"] = sum(path.stat().st_size for path in anchor.save(pipe.unet, Path(tmp)))
    row["file_format"] = anchor.file_format
    return pipe, row


def run_time(unet, reference, held_out: list) -> dict:
    """Resident weight bytes of ``unet`` and its CPU ms per call next to the fp32 ``reference``'s, same run."""
    ms = cpu_ms_per_call({"row": unet, "fp32": reference}, held_out, repeats=REPEATS, threads=THREADS)
    return {"resident_bytes": resident_bytes(unet), "cpu_ms": ms["row"], "fp32_cpu_ms": ms["fp32"],
            "threads": THREADS, "batch": SAMPLES}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=500, help="FID samples per seed")
    parser.add_argument("--iterations", type=int, default=300, help="learned rounding: Adam steps per layer")
    parser.add_argument("--rows", choices=("all", "ours", "anchors"), default="all", help="which rows to run")
    parser.add_argument("--remeasure", action="store_true", help="measure every row's run-time columns again")
    parser.add_argument("--configs", nargs="+", metavar="NAME", help="only these rows (names as in the table)")
    parser.add_argument("--out", default=str(RESULTS / "quantization_digits.jsonl"))
    args = parser.parse_args()
    names = [*(CONFIGS if args.rows != "anchors" else ()), *(ANCHORS if args.rows != "ours" else ())]
    unknown = sorted(set(args.configs or ()) - set(names))
    if unknown:
        parser.error(f"--configs: unknown {unknown}; valid choices with --rows {args.rows}: {names}")
    names = [n for n in names if args.configs is None or n in args.configs]
    before = {args.out: line_count(args.out)}
    metric = reference = held_out = None
    for name in names:
        rows = {}  # read before each row: runs on other configs may share the file
        for r in read_rows(args.out):  # later rows (run-time fill-ins) add to the first row of their config
            rows.setdefault(r["config"], {}).update(r)
        anchor = ANCHORS.get(name)
        if anchor is not None and importlib.util.find_spec(LIBRARIES[anchor.library].split(".")[0]) is None:
            print(f"{name}: skipped, {anchor.library} is not installed (pip install -e '.[bench-quant]')")
            continue
        cached = rows.get(name, {})
        if "error" in cached or ("fid_mean" in cached and "cpu_ms" in cached and not args.remeasure):
            continue
        if reference is None:  # one fp32 UNet and held-out trajectory per run: the anchors' error, every timing
            reference = load_pipeline(DPMSolverPPScheduler)
            held_out = record_trajectory(reference.unet, trajectory_run(reference, SAMPLES, NFE, GUIDANCE, 1))
        fresh = "fid_mean" not in cached
        if anchor is None:
            pipe, row = quantize_ours(name, args.iterations, rebuild=not fresh)
        else:
            pipe, row = quantize_anchor(name, held_out)
        if "error" in row:
            append_row(args.out, {"config": name, **row})
            print(f"{name}: {row['error']}", flush=True)
            continue
        timing = run_time(pipe.unet, reference.unet, held_out)
        if not fresh:  # FID cached: add the run-time columns only
            append_row(args.out, {"config": name, **timing, "run_time_rebuilt": True})
            print(f"{name:48s} {timing['cpu_ms']:.1f} ms/call (fp32 {timing['fp32_cpu_ms']:.1f})", flush=True)
            continue
        metric = metric or DigitsMetric(args.samples, cache_dir=RESULTS.parent.parent / "results" / "stats-cache")
        metric.pipe = pipe
        fids = [metric(pipe.scheduler, Cell("dpm++2m", NFE, GUIDANCE, seed)) for seed in (1, 2, 3)]
        row = {"config": name, "nfe": NFE, "guidance": GUIDANCE, **row, **timing,
               "fid_mean": statistics.mean(fids), "fid_std": statistics.stdev(fids), "fids": fids}
        append_row(args.out, row)
        print(f"{name:48s} rel. MSE {row['relative_mse']:.2e}  FID {row['fid_mean']:.2f} ± {row['fid_std']:.2f}  "
              f"{row['file_bytes'] / 1024:.0f} KiB  {timing['cpu_ms']:.1f} ms/call", flush=True)
    print(quantization_table(read_rows(args.out)))
    say_if_cached([args.out], before)


if __name__ == "__main__":
    main()
