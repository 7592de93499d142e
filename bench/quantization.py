"""Low-bit quantization of the digits UNet: error against fp32 along the trajectory, FID, file sizes.

    python bench/quantization.py          # resumable: bench/results/quantization_digits.jsonl

Fixed sampler: DPM-Solver++ 2M, 10 steps, guidance 1. Calibration: 64 samples (seed 0) along that trajectory.
Error: relative output MSE of the quantized UNet on a held-out fp32 trajectory's inputs (64 samples, seed 1).
Each row is ``diffusers_ext.quant.quantize_pipeline``, what ``diffusers-ext quantize`` runs.
FID: digits-cnn FID of 500 samples against the train split, seeds 1-3 (mean and std).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from report import quantization_table
from results_io import line_count, say_if_cached

from diffusers_ext import DPMSolverPPScheduler
from diffusers_ext.eval.sweep import Cell, DigitsMetric
from diffusers_ext.models.digits import load_pipeline
from diffusers_ext.quant import quantize_pipeline, save_quantized
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
        weights, activations, rounding = spec or (None, None, "nearest")
        result = quantize_pipeline(pipe, weights, activations, rounding, iterations=args.iterations,
                                   num_inference_steps=NFE, guidance_scale=GUIDANCE, num_samples=64, seed=0)
        row = {"config": name, "nfe": NFE, "guidance": GUIDANCE, "float32_bytes": result["float32_bytes"]}
        if spec is not None:
            row["report"] = result["report"]
            with tempfile.TemporaryDirectory() as tmp:
                row["file_bytes"] = save_quantized(pipe.unet, Path(tmp) / "q.safetensors").stat().st_size
        else:
            row["file_bytes"] = result["float32_bytes"]
        row["relative_mse"], row["mse_per_step"] = result["relative_mse"], result["mse_per_step"]
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
