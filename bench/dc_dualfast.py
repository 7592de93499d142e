"""DC-Solver (arXiv 2409.03755) and DualFast (arXiv 2506.13058) on the exact GMM and the digits model.

Held-out evaluation only: ratios are calibrated on 10 noises drawn from seed 0 (labels 0-9 on digits);
every metric uses seeds 1, 2, 3 (GMM: 256 noises each, endpoint RMSE; digits: 500 samples each, digits-cnn
FID against the train split).

1. Calibrate DC-Solver ratios for the CPR fit grid (NFE 3, 4, 6, 8, 10 x guidance 1, 2, 4, 7) and for every
   benchmark configuration (NFE 3, 4, 5, 6, 8, 10 x guidance 1, 5); resumable JSONL.
2. Fit the CPR on the grid only, so its ratios at NFE 5 or guidance 5 are predictions for configurations
   it never saw; ``--ship`` writes it as the digits model's shipped CPR (``dc_cpr="digits"``).
3. Sweep (resumable JSONL): DC-Solver calibrated per configuration and CPR-predicted, UniPC, DPM-Solver++
   2M / 3M, diffusers' UniPC, DDIM; DualFast (strength 0.5, linear schedule, not tuned) on DDIM, DPM-Solver++
   2M, UniPC and DC-Solver (CPR).

    python bench/dc_dualfast.py [--ship] [--seeds 1,2,3] [--samples 500] [--skip-digits]
"""

import argparse
import json
from pathlib import Path

from results_io import line_count, say_if_cached, write_json

from diffusers_ext import DCSolverScheduler, DPMSolverPPScheduler, UniPCScheduler
from diffusers_ext.eval.sweep import model_identity, plot, run_sweep, summarize, summary_table
from diffusers_ext.models import GaussianMixtureDenoiser
from diffusers_ext.sampling import model_fn
from diffusers_ext.schedulers.dc_solver.compensation import SHIPPED_CPR
from diffusers_ext.search import calibrate_dc_grid, fit_cpr

RESULTS = Path(__file__).resolve().parent / "results"
BENCH_NFES = (3, 4, 5, 6, 8, 10)
FIT_NFES = (3, 4, 6, 8, 10)
FIT_GUIDANCE = (1.0, 2.0, 4.0, 7.0)
BENCH_GUIDANCE = (1.0, 5.0)
DUALFAST = {"dualfast_strength": 0.5, "dualfast_schedule": "linear"}

SPECS = ["unipc", "dpm++2m", "dpm++3m", "diffusers:UniPCMultistepScheduler"]


def factories(calibrated: dict, cpr: dict) -> dict:
    """DDIM, DualFast variants and DC-Solver (its own calibration per cell, or the CPR at the cell's guidance)."""
    return {
        "ddim": lambda c: DPMSolverPPScheduler(solver_order=1),
        "ddim + dualfast": lambda c: DPMSolverPPScheduler(solver_order=1, **DUALFAST),
        "dpm++2m + dualfast": lambda c: DPMSolverPPScheduler(**DUALFAST),
        "unipc + dualfast": lambda c: UniPCScheduler(**DUALFAST),
        "dc-solver (calibrated)": lambda c: DCSolverScheduler(dc_ratios=calibrated[(c.nfe, c.guidance)].ratios),
        "dc-solver (CPR)": lambda c: DCSolverScheduler(dc_cpr=cpr, dc_guidance_scale=c.guidance),
        "dc-solver (CPR) + dualfast": lambda c: DCSolverScheduler(dc_cpr=cpr, dc_guidance_scale=c.guidance,
                                                                  **DUALFAST),
    }


def cpr_report(cpr, calibrated: dict) -> dict:
    """CPR fit error on the grid and prediction error on the benchmark configurations it did not see."""
    import numpy as np

    from diffusers_ext.schedulers.dc_solver.cpr import CascadePolynomialRegression

    model = CascadePolynomialRegression.from_config(cpr)
    unseen = {}
    for (n, g), cal in calibrated.items():
        if n in FIT_NFES and g in FIT_GUIDANCE:
            continue
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predicted = model.ratios(n, g)
        unseen[f"nfe {n}, guidance {g:g}"] = {
            "calibrated": [round(r, 4) for r in cal.ratios], "cpr": [round(float(r), 4) for r in predicted],
            "rmse": float(np.sqrt(np.mean((np.asarray(cal.ratios) - predicted)[2:] ** 2))) if n > 2 else 0.0}
    return {"fit_rmse": model.fit_rmse, "unseen": unseen}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--ship", action="store_true", help="write the digits CPR into the package")
    parser.add_argument("--skip-digits", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    RESULTS.mkdir(exist_ok=True)
    logs = [RESULTS / f"{kind}_{model}.jsonl" for model in ("gmm", "digits")
            for kind in ("dc_calibration", "dc_dualfast")]
    before = {p: line_count(p) for p in logs}

    # --- GMM: calibrate per NFE (guidance 1 only: the mixture is unconditional)
    gmm_cal = calibrate_dc_grid(model_fn(GaussianMixtureDenoiser()), sorted(set(BENCH_NFES) | set(FIT_NFES)), (1.0,),
                                sample_shape=(2, 4, 4), out=RESULTS / "dc_calibration_gmm.jsonl", progress=False,
                                model_key=model_identity("gmm"))
    gmm_cpr = fit_cpr({k: v for k, v in gmm_cal.items() if k[0] in FIT_NFES}).to_config()
    rows = run_sweep("gmm", SPECS, list(BENCH_NFES), [1.0], seeds, 256, RESULTS / "dc_dualfast_gmm.jsonl",
                     factories=factories(gmm_cal, gmm_cpr))
    summary = summarize(rows)
    plot(summary, RESULTS / "dc_dualfast_gmm.png", "endpoint RMSE")
    print("GMM endpoint RMSE (held-out seeds)\n" + summary_table(summary))

    if args.skip_digits:
        say_if_cached(logs, before)
        return
    from diffusers_ext.models.digits import load_pipeline

    pipe = load_pipeline()
    out = RESULTS / "dc_calibration_digits.jsonl"
    grid = calibrate_dc_grid(pipe, FIT_NFES, FIT_GUIDANCE, out=out)
    bench = calibrate_dc_grid(pipe, BENCH_NFES, BENCH_GUIDANCE, out=out)
    cpr = fit_cpr(grid).to_config()
    report = cpr_report(cpr, {**grid, **bench})
    write_json(RESULTS / "dc_cpr_digits.json", {"cpr": cpr, **report})
    print(json.dumps(report, indent=1))
    if args.ship:  # exact values: the package loads them
        write_json(SHIPPED_CPR["digits"], cpr, digits=None)
    rows = run_sweep("digits", SPECS, list(BENCH_NFES), list(BENCH_GUIDANCE), seeds, args.samples,
                     RESULTS / "dc_dualfast_digits.jsonl", cache_dir="results/stats-cache",
                     factories=factories(bench, cpr))
    summary = summarize(rows)
    plot(summary, RESULTS / "dc_dualfast_digits.png", "digits-cnn FID")
    print("digits-cnn FID (held-out seeds)\n" + summary_table(summary))
    say_if_cached(logs, before)


if __name__ == "__main__":
    main()
