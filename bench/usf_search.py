"""USF schedules found by the S^3 search (arXiv 2312.07243) on the digits model and the exact GMM.

1. Search (resumable archives in bench/results/): digits, objective digits-cnn FID of 300 samples from the
   noises of seed 0, guidance 1, NFE 4, 5, 6, 8, 10, a budget of SEARCH_EVALS schedules each; GMM,
   objective endpoint MSE on 32 calibration noises (seed 0). ``--ship`` writes the digits schedules into
   the package (``solver_schedule="digits-nfe5"`` etc.).
2. Ablation at equal budget (NFE 5, digits): predictor-guided against plain evolution, best objective.
3. Held-out evaluation (digits: seeds 1, 2, 3 x 500 samples, FID; GMM: seeds 1-5 x 256 noises, median per-sample
   error, flips and RMSE): the searched schedule against our hand-designed solvers (DEIS tAB3, UniPC, DPM-Solver++
   2M/3M, DC-Solver with the shipped CPR), diffusers' built-ins on their default grids, and diffusers at its best
   (the 18 options of the registry's ``diffusers-best`` set and the best of them per NFE).

The committed archives and digits FID rows were written before resume keys existed, which the search would not
recognize: a run takes each NFE's best schedule from the committed archives (the lowest objective, as the search
returns it) and adds only what is new; ``--search`` reruns the searches and ``--all`` recomputes every digits cell
(hours on a 2-core CPU).

    python bench/usf_search.py [--ship] [--evals 200] [--search] [--all]
"""

import argparse
from pathlib import Path

import torch
from results_io import GMM_SEEDS, add_diffusers_best, gmm_solvers, line_count, plot_gmm, say_if_cached, write_json

from diffusers_ext import DCSolverScheduler, USFScheduler
from diffusers_ext.eval.gmm_accuracy import gmm_accuracy, markdown_table
from diffusers_ext.eval.sweep import run_sweep
from diffusers_ext.models import GaussianMixtureDenoiser
from diffusers_ext.registry import named_set
from diffusers_ext.results_log import read_rows
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


def committed_best(name: str, nfes=NFES) -> dict:
    """Each NFE's lowest-objective schedule in the committed archive ``s3_<name>_archive.jsonl``."""
    rows = [r for r in read_rows(RESULTS / f"s3_{name}_archive.jsonl") if r["value"] is not None]
    return {n: min((r for r in rows if r["nfe"] == n), key=lambda r: r["value"])["schedule"] for n in nfes}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--evals", type=int, default=200, help="schedules evaluated per NFE")
    parser.add_argument("--ship", action="store_true")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--search", action="store_true", help="rerun the searches (else: the committed archives)")
    parser.add_argument("--all", action="store_true", help="recompute every digits FID cell")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    logs = sorted(RESULTS.glob("s3_*_archive.jsonl")) + [RESULTS / "usf_digits.jsonl"]
    before = {p: line_count(p) for p in logs}
    summary = {}

    if args.search:
        noise = torch.randn(32, 2, 4, 4, generator=torch.Generator().manual_seed(0))
        gmm_found = search_all(EndpointObjective(model_fn(GaussianMixtureDenoiser()), noise), "gmm", args.evals, 32)
        digits_objective = DigitsFIDObjective(300, cache_dir="results/stats-cache")
        digits_found = search_all(digits_objective, "digits", args.evals, 300)
        plain = search_all(digits_objective, "digits", args.evals, 300, predictor=False, nfes=(5,))
        found = {"gmm": gmm_found, "digits": digits_found}
        summary["search"] = {f"{name} nfe {nfe}": {"seed_best": r.seed_best_value, "searched": r.best_value,
                                                   "evaluations": r.evaluations}
                             for name, results in found.items() for nfe, r in results.items()}
        summary["ablation nfe 5 (digits FID-300, seed 0)"] = {"predictor": digits_found[5].best_value,
                                                              "plain evolution": plain[5].best_value,
                                                              "evaluations": plain[5].evaluations}
        write_json(RESULTS / "usf_search.json", summary)
        gmm_best, digits_best = ({n: r.best for n, r in results.items()} for results in found.values())
    else:
        gmm_best, digits_best = committed_best("gmm"), committed_best("digits")
    if args.ship:  # exact values: the package loads them
        write_json(SHIPPED_SCHEDULES["digits"], {str(n): s for n, s in digits_best.items()}, digits=None)
    if args.skip_eval:
        say_if_cached(logs, before)
        return

    def searched(best):
        return {"usf (searched)": lambda c: USFScheduler(solver_schedule=best[c.nfe])}

    result = gmm_accuracy(gmm_solvers(BASELINES, searched(gmm_best)), NFES, 256, seeds=GMM_SEEDS,
                          baselines=named_set("diffusers-best"), progress=False)
    write_json(RESULTS / "usf_gmm.json", result)
    plot_gmm(result, RESULTS / "usf_gmm.png")
    print("GMM (held-out seeds)\n" + markdown_table(result))
    sweep = dict(seeds=[1, 2, 3], num_samples=500, out=RESULTS / "usf_digits.jsonl", cache_dir="results/stats-cache")
    if args.all:
        dc = {"dc-solver (CPR)": lambda c: DCSolverScheduler(dc_cpr="digits", dc_guidance_scale=c.guidance)}
        run_sweep("digits", BASELINES, list(NFES), [1.0], factories={**searched(digits_best), **dc}, **sweep)
    print("digits-cnn FID (held-out seeds)\n" + add_diffusers_best(list(NFES), [1.0], sweep,
                                                                    RESULTS / "usf_digits.png"))
    say_if_cached(logs, before)


if __name__ == "__main__":
    main()
