"""digits-cnn FID at NFE 3-20, guidance 1 and 3, three seeds: ours against diffusers' built-ins.

Resumable (bench/results/sweep_digits.jsonl); prints the mean ± std table and writes the plot.

    python bench/sweep_digits.py [--samples 500] [--seeds 0,1,2]
"""

import argparse
from pathlib import Path

from results_io import line_count, say_if_cached

from diffusers_ext.eval.sweep import plot, run_sweep, summarize, summary_table
from diffusers_ext.registry import named_set

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    # the demo's set plus diffusers' DPM-Solver++ 3M
    out = Path(__file__).resolve().parent / "results" / "sweep_digits.jsonl"
    before = {out: line_count(out)}
    schedulers = list(named_set("demo")) + ["diffusers:DPMSolverMultistepScheduler:solver_order=3"]
    rows = run_sweep("digits", schedulers, [3, 4, 5, 6, 8, 10, 15, 20], guidances=[1.0, 3.0],
                     seeds=[int(s) for s in args.seeds.split(",")], num_samples=args.samples,
                     out=out, cache_dir="results/stats-cache")
    summary = summarize(rows)
    plot(summary, out.with_suffix(".png"), "digits-cnn FID")
    print(summary_table(summary))
    say_if_cached([out], before)
