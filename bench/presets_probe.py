"""Which solver settings could serve as a no-tuning preset above NFE 10? DPM-Solver++ and UniPC, orders 2-3, on
five grids, scored like ``bench/tune_gmm.py`` (the same held-out noises of both mixtures, exact ODE endpoints),
as the ratio of the held-out median per-sample error to diffusers' best of 18 options at that NFE (read from
``tune_gmm.json``, so run that first). The README's Presets section quotes it.

    python bench/presets_probe.py        # writes bench/results/presets_probe.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_json  # noqa: E402
from tune_gmm import MODELS, RESULTS, held_out, score  # noqa: E402

from diffusers_ext.models.gmm import GaussianMixtureDenoiser  # noqa: E402
from diffusers_ext.schedulers import DPMSolverPPScheduler, UniPCScheduler  # noqa: E402
from diffusers_ext.schedulers.engine.scheduler import GRID_FLAGS_OFF  # noqa: E402

GRIDS = {"quadratic": {"timestep_spacing": "quadratic"}, "logsnr": {"timestep_spacing": "logsnr"},
         "exponential": {"use_exponential_sigmas": True}, "karras": {"use_karras_sigmas": True},
         "lu_lambdas": {"use_lu_lambdas": True}}
VARIANTS = {"DPM-Solver++ 2M": (DPMSolverPPScheduler, {"solver_order": 2}),
            "DPM-Solver++ 3M (Taylor)": (DPMSolverPPScheduler, {"solver_order": 3, "third_order_taylor": True}),
            "UniPC bh2 order 2": (UniPCScheduler, {"solver_order": 2}),
            "UniPC bh2 order 3": (UniPCScheduler, {"solver_order": 3}),
            "UniPC bh1 order 3": (UniPCScheduler, {"solver_order": 3, "solver_type": "bh1"})}
NFES = (10, 15, 20)


def main():
    tuned = json.loads((RESULTS / "tune_gmm.json").read_text())
    seeds = tuned["settings"]["held_out_seeds"]
    results = {"settings": {"held_out_seeds": seeds, "per_seed": tuned["settings"]["per_seed"], "nfes": list(NFES)},
               "models": {}}
    for name, (kwargs, shape) in MODELS.items():
        model = GaussianMixtureDenoiser(**kwargs)
        config = DPMSolverPPScheduler().config
        noise, exact = held_out(model, shape, seeds, tuned["settings"]["per_seed"])
        rows = results["models"][name] = {}
        for nfe in NFES:
            best = tuned["models"][name][str(nfe)]["diffusers best"]
            cell = rows[str(nfe)] = {"diffusers best": best["scheduler"], "ratios": {}}
            for variant, (cls, options) in VARIANTS.items():
                for grid, grid_options in GRIDS.items():
                    scheduler = cls.from_config(config, **{**GRID_FLAGS_OFF, **options, **grid_options,
                                                           "lower_order_final": True})
                    r = score(model, scheduler, noise, exact, nfe, seeds)
                    cell["ratios"][f"{variant}, {grid}"] = r["median"] / best["median"]
            top = sorted(cell["ratios"].items(), key=lambda kv: kv[1])[:3]
            print(f"{name} NFE {nfe}: " + ", ".join(f"{k} {v:.2f}x" for k, v in top), flush=True)
    write_json(RESULTS / "presets_probe.json", results)


if __name__ == "__main__":
    main()
