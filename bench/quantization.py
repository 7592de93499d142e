"""Low-bit quantization of the digits UNet: error against fp32 along the trajectory, FID, file sizes.

    python bench/quantization.py          # resumable: bench/results/quantization_digits.jsonl

Fixed sampler: DPM-Solver++ 2M, 10 steps, guidance 1. Calibration: 64 samples (seed 0) along that trajectory.
Error: relative output MSE of the quantized UNet on a held-out fp32 trajectory's inputs (64 samples, seed 1).
FID: digits-cnn FID of 500 samples against the train split, seeds 1-3 (mean and std).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from report import quantization_table
from results_io import line_count, say_if_cached

from diffusers_ext import DPMSolverPPScheduler
from diffusers_ext.eval.sweep import Cell, DigitsMetric
from diffusers_ext.models.digits import NUM_CLASSES, load_pipeline
from diffusers_ext.quant import collect_layer_inputs, quantize, save_quantized
from diffusers_ext.quant.trajectory import record_trajectory, trajectory_error
from diffusers_ext.results_log import append_row, read_rows

RESULTS = Path(__file__).resolve().parent / "results"
NFE, GUIDANCE = 10, 1.0
CONFIGS = {  # name: (weights, activations, rounding)
    "fp32": None,
    "W8A8 FP8 (e4m3)": ("fp8_e4m3", "fp8_e4m3", "nearest"),
    "W8A8 INT8": ("int8", "int8", "nearest"),
    "W4A8 FP4 (e2m1), nearest": ("fp4_e2m1", "fp8_e4m3", "nearest"),
    "W4A8 FP4 (e2m1), learned": ("fp4_e2m1", "fp8_e4m3", "learned"),
    "W4A8 INT4, nearest": ("int4", "int8", "nearest"),
    "W4A8 INT4, learned": ("int4", "int8", "learned"),
}


def trajectory_run(pipe, seed, samples=64):
    labels = torch.arange(samples) % NUM_CLASSES
    return lambda: pipe(class_labels=labels, num_inference_steps=NFE, guidance_scale=GUIDANCE,
                        generator=torch.Generator().manual_seed(seed), output_type="pt")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=500, help="FID samples per seed")
    parser.add_argument("--iterations", type=int, default=300, help="learned rounding: Adam steps per layer")
    parser.add_argument("--out", default=str(RESULTS / "quantization_digits.jsonl"))
    args = parser.parse_args()
    done = {r["config"] for r in read_rows(args.out)}
    before = {args.out: line_count(args.out)}
    metric = None
    for name, spec in CONFIGS.items():
        if name in done:
            continue
        metric = metric or DigitsMetric(args.samples, cache_dir=RESULTS.parent.parent / "results" / "stats-cache")
        pipe = load_pipeline(DPMSolverPPScheduler)
        held_out = record_trajectory(pipe.unet, trajectory_run(pipe, seed=1))
        float_bytes = sum(p.numel() * 4 for p in pipe.unet.parameters())
        row = {"config": name, "nfe": NFE, "guidance": GUIDANCE, "float32_bytes": float_bytes}
        if spec is not None:
            weights, activations, rounding = spec
            calibration = collect_layer_inputs(pipe.unet, trajectory_run(pipe, seed=0))
            quantize(pipe.unet, weights, activations, calibration, rounding=rounding,
                     rounding_iterations=args.iterations, seed=0)
            row["report"] = pipe.unet.quantization_report
            with tempfile.TemporaryDirectory() as tmp:
                row["file_bytes"] = save_quantized(pipe.unet, Path(tmp) / "q.safetensors").stat().st_size
        else:
            row["file_bytes"] = float_bytes
        error = trajectory_error(pipe.unet, held_out)
        row["relative_mse"], row["mse_per_step"] = error["relative_mse"], error["mse_per_step"]
        metric.pipe = pipe
        fids = [metric(pipe.scheduler, Cell("dpm++2m", NFE, GUIDANCE, seed)) for seed in (1, 2, 3)]
        row.update(fid_mean=statistics.mean(fids), fid_std=statistics.stdev(fids), fids=fids)
        append_row(args.out, row)
        print(f"{name:28s} rel. MSE {row['relative_mse']:.2e}  FID {row['fid_mean']:.2f} ± {row['fid_std']:.2f}  "
              f"{row['file_bytes'] / 1024:.0f} KiB", flush=True)
    print(quantization_table(read_rows(args.out)))
    say_if_cached([args.out], before)


if __name__ == "__main__":
    main()
