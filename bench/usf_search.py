"""USF schedules found by the S^3 search (arXiv 2312.07243) on the digits model and the exact GMM.

1. Search (resumable archives in bench/results/): digits, objective digits-cnn FID of 300 samples from the
   noises of seed 0, guidance 1, NFE 4, 5, 6, 8, 10, a budget of SEARCH_EVALS schedules each; GMM,
   objective endpoint MSE on 32 calibration noises (seed 0). ``--ship`` writes the digits schedules into
   the package (``solver_schedule="digits-nfe5"`` etc.).
2. Ablation at equal budget (NFE 5, digits): predictor-guided against plain evolution, best objective.
3. Held-out evaluation (seeds 1, 2, 3; digits 500 samples, GMM 256 noises): the searched schedule against
   our hand-designed solvers (DEIS tAB3, UniPC, DPM-Solver++ 2M/3M, DC-Solver with the shipped CPR) and
   diffusers' built-ins.

    python bench/usf_search.py [--ship] [--evals 200]
"""

import argparse
from pathlib import Path

import torch
from results_io import line_count, say_if_cached, write_json

from diffusers_ext import DCSolverScheduler, USFScheduler
from diffusers_ext.eval.sweep import plot, run_sweep, summarize, summary_table
from diffusers_ext.models import GaussianMixtureDenoiser
from diffusers_ext.sampling import model_fn
from diffusers_ext.schedulers.usf import SHIPPED_SCHEDULES
from diffusers_ext.search import DigitsFIDObjective, EndpointObjective, s3_search

RESULTS = Path(__file__).resolve().parent / "results"
NFES = (4, 5, 6, 8, 10)
BASELINES = ["deis", "unipc", "dpm++2m", "dpm++3m", "diffusers:UniPCMultistepScheduler",
             "diffusers:DPMSolverMultistepScheduler", "diffusers:DDIMScheduler:clip_sample=false"]


def search_all(objective, name: str, evals_per_nfe, samples: int, predictor: bool = True, nfes=NFES) -> dict:
    noise_schedule = USFScheduler().noise_schedule
    found = {}
    for nfe in nfes:
        archive = RESULTS / f"s3_{name}{'' if predictor else '_plain'}_archive.jsonl"
        result = s3_search(objective, noise_schedule, nfe, budget=evals_per_nfe * samples * nfe, archive=archive,
                           predictor=predictor)
        found[nfe] = result
        print(f"{name} NFE {nfe}: best of the hand-designed seeds {result.seed_best_value:.4g} -> searched "
              f"{result.best_value:.4g} ({result.evaluations} model evaluations, predictor={predictor})")
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--evals", type=int, default=200, help="schedules evaluated per NFE")
    parser.add_argument("--ship", action="store_true")
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    logs = sorted(RESULTS.glob("s3_*_archive.jsonl")) + [RESULTS / "usf_gmm.jsonl", RESULTS / "usf_digits.jsonl"]
    before = {p: line_count(p) for p in logs}
    summary = {}

    noise = torch.randn(32, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    gmm_found = search_all(EndpointObjective(model_fn(GaussianMixtureDenoiser()), noise), "gmm", args.evals, 32)
    digits_objective = DigitsFIDObjective(300, cache_dir="results/stats-cache")
    digits_found = search_all(digits_objective, "digits", args.evals, 300)
    plain = search_all(digits_objective, "digits", args.evals, 300, predictor=False, nfes=(5,))
    summary["search"] = {
        f"{name} nfe {nfe}": {"seed_best": r.seed_best_value, "searched": r.best_value, "evaluations": r.evaluations}
        for name, found in (("gmm", gmm_found), ("digits", digits_found)) for nfe, r in found.items()}
    summary["ablation nfe 5 (digits FID-300, seed 0)"] = {"predictor": digits_found[5].best_value,
                                                          "plain evolution": plain[5].best_value,
                                                          "evaluations": plain[5].evaluations}
    write_json(RESULTS / "usf_search.json", summary)
    if args.ship:  # exact values: the package loads them
        write_json(SHIPPED_SCHEDULES["digits"], {str(n): r.best for n, r in digits_found.items()}, digits=None)
    if args.skip_eval:
        say_if_cached(logs, before)
        return

    def searched(found):
        return {"usf (searched)": lambda c: USFScheduler(solver_schedule=found[c.nfe].best)}

    dc = {"dc-solver (CPR)": lambda c: DCSolverScheduler(dc_cpr="digits", dc_guidance_scale=c.guidance)}
    rows = run_sweep("gmm", BASELINES, list(NFES), [1.0], [1, 2, 3], 256, RESULTS / "usf_gmm.jsonl",
                     factories=searched(gmm_found))
    print("GMM endpoint RMSE (held-out seeds)\n" + summary_table(summarize(rows)))
    rows = run_sweep("digits", BASELINES, list(NFES), [1.0], [1, 2, 3], 500, RESULTS / "usf_digits.jsonl",
                     cache_dir="results/stats-cache", factories={**searched(digits_found), **dc})
    table = summarize(rows)
    plot(table, RESULTS / "usf_digits.png", "digits-cnn FID")
    print("digits-cnn FID (held-out seeds)\n" + summary_table(table))
    say_if_cached(logs, before)


if __name__ == "__main__":
    main()
