"""digits-cnn FID at NFE 3-20, guidance 1 and 3, three seeds: ours against diffusers' defaults and its best.

Resumable (bench/results/sweep_digits.jsonl); prints the mean ± std table and writes the plot. The 18 options of
the registry's ``diffusers-best`` set (diffusers' strongest grids per solver) run at ``--best-nfes`` x
``--best-guidances``; cells that tune_digits / presets_digits / dc_dualfast / usf_search already computed (same
key: scheduler config, NFE, guidance, seed, samples, model and extractor) are copied from their files, not redone.

The rows of our solvers and diffusers' defaults were written before resume keys existed, so a run reuses them
from the file as they are (``results_io.cell_rows``); ``--all`` recomputes them (hours on a 2-core CPU; recomputed cells
agreed with the committed ones to 1e-7 relative).

    python bench/sweep_digits.py [--samples 500] [--seeds 0,1,2] [--best-guidances 1] [--all]
"""

import argparse
from pathlib import Path

from results_io import add_diffusers_best, line_count, say_if_cached

from diffusers_ext.eval.sweep import run_sweep
from diffusers_ext.registry import named_set

RESULTS = Path(__file__).resolve().parent / "results"
NFES = "3,4,5,6,8,10,15,20"


def ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",")]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--nfes", default=NFES)
    parser.add_argument("--best-nfes", default=NFES, help="NFEs of diffusers' 18 options")
    parser.add_argument("--best-guidances", default="1", help="guidances of diffusers' 18 options")
    parser.add_argument("--all", action="store_true", help="recompute the rows of our solvers and diffusers' defaults")
    args = parser.parse_args()
    out = RESULTS / "sweep_digits.jsonl"
    before = {out: line_count(out)}
    sweep = dict(seeds=ints(args.seeds), num_samples=args.samples, out=out, cache_dir="results/stats-cache")
    if args.all:  # the demo's set plus DPM-Solver++ 3M
        ours = list(named_set("demo")) + ["diffusers:DPMSolverMultistepScheduler:solver_order=3"]
        run_sweep("digits", ours, ints(args.nfes), guidances=[1.0, 3.0], **sweep)
    print(add_diffusers_best(ints(args.best_nfes), [float(g) for g in args.best_guidances.split(",")], sweep,
                             out.with_suffix(".png")))
    say_if_cached([out], before)


if __name__ == "__main__":
    main()
