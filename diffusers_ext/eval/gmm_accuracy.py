"""Endpoint error against the exact probability-flow ODE solution on the Gaussian-mixture model.

Every solver starts from the same noise at model time 999 of DDPM's linear-beta schedule; the error is
the RMSE between its sample and the exact ODE endpoint (``GaussianMixtureDenoiser.ode_endpoint``), so it
measures pure discretization error. diffusers' built-ins run in the same loop for comparison.
"""

from __future__ import annotations

import importlib
import json
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.gmm import GaussianMixtureDenoiser
from ..sampling import model_fn, sample

# name -> (class path, config overrides); "diffusers:" classes are diffusers' own schedulers
DEFAULT_SOLVERS: dict[str, tuple[str, dict]] = {
    "DPM-Solver++ 2M": ("DPMSolverPPScheduler", {}),
    "DPM-Solver++ 3M": ("DPMSolverPPScheduler", {"solver_order": 3}),
    "DPM-Solver++ 3M (taylor)": ("DPMSolverPPScheduler", {"solver_order": 3, "third_order_taylor": True}),
    "DPM-Solver++ 3S": ("DPMSolverPPScheduler", {"solver_order": 3, "singlestep": True}),
    "UniPC bh2 (2)": ("UniPCScheduler", {}),
    "UniPC bh2 (3)": ("UniPCScheduler", {"solver_order": 3}),
    "UniPC bh1 (3)": ("UniPCScheduler", {"solver_order": 3, "solver_type": "bh1"}),
    "DEIS tAB3": ("DEISScheduler", {}),
    "DEIS rhoAB3": ("DEISScheduler", {"solver_type": "rhoab"}),
    "DEIS iPNDM4": ("DEISScheduler", {"solver_type": "ipndm", "solver_order": 4}),
    "DEIS rhoRK4": ("DEISScheduler", {"solver_type": "rk4"}),
    "diffusers DDIM": ("diffusers:DDIMScheduler", {"timestep_spacing": "trailing", "clip_sample": False}),
    "diffusers DPM++ 2M": ("diffusers:DPMSolverMultistepScheduler", {}),
    "diffusers DPM++ 3M": ("diffusers:DPMSolverMultistepScheduler", {"solver_order": 3}),
    "diffusers UniPC": ("diffusers:UniPCMultistepScheduler", {}),
    "diffusers DEIS": ("diffusers:DEISMultistepScheduler", {}),
}
DEFAULT_NFES = (3, 4, 5, 6, 8, 10, 15, 20)


def make_scheduler(class_path: str, overrides: dict | None = None):
    """``"DPMSolverPPScheduler"`` (ours) or ``"diffusers:UniPCMultistepScheduler"`` with config overrides."""
    if class_path.startswith("diffusers:"):
        module, name = importlib.import_module("diffusers"), class_path.split(":", 1)[1]
    else:
        module, name = importlib.import_module("diffusers_ext"), class_path
    if not hasattr(module, name):
        raise ValueError(f"Unknown scheduler {class_path!r}")
    return getattr(module, name)(**(overrides or {}))


def sample_with(scheduler, model, noise: torch.Tensor, nfe: int) -> torch.Tensor:
    """``sampling.sample`` of a diffusers-style ``model`` (one returning ``.sample``) for ``nfe`` steps."""
    return sample(model_fn(model), scheduler, noise, nfe)


def gmm_accuracy(solvers: dict[str, tuple[str, dict]] | None = None, nfes=DEFAULT_NFES, num_samples: int = 256,
                 shape: tuple[int, ...] = (2, 4, 4), seed: int = 0, progress: bool = True) -> dict:
    """RMSE to the exact ODE endpoint for each solver and NFE. Returns a JSON-serializable dict."""
    solvers = solvers or DEFAULT_SOLVERS
    model = GaussianMixtureDenoiser()
    noise = torch.randn(num_samples, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    start = time.perf_counter()
    reference = model.ode_endpoint(noise, t_start=999.0)
    ref_seconds = time.perf_counter() - start
    rows = []
    bar = tqdm(total=len(solvers) * len(nfes), desc="GMM accuracy", disable=not progress)
    for name, (path, overrides) in solvers.items():
        for nfe in nfes:
            sched = make_scheduler(path, overrides)
            out = sample_with(sched, model, noise.float(), nfe).double()
            rmse = float((out - reference).pow(2).mean().sqrt())
            rows.append({"scheduler": name, "class": path, "config": overrides, "nfe": nfe,
                         "rmse": rmse if np.isfinite(rmse) else None})
            bar.update()
    bar.close()
    return {"benchmark": "gmm_accuracy", "num_samples": num_samples, "shape": list(shape), "seed": seed,
            "schedule": "DDPM linear betas, start t=999, end sigma=0", "reference": "DOP853 rtol 1e-10",
            "reference_seconds": ref_seconds, "nfes": list(nfes), "rows": rows}


def markdown_table(result: dict) -> str:
    """One row per solver, one column per NFE; the best entry of each column in bold."""
    nfes = result["nfes"]
    names = list(dict.fromkeys(r["scheduler"] for r in result["rows"]))
    value = {(r["scheduler"], r["nfe"]): r["rmse"] for r in result["rows"]}
    best = {n: min((v for (s, m), v in value.items() if m == n and v is not None), default=None) for n in nfes}
    lines = ["| scheduler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|" + "---|" * len(nfes)]
    for name in names:
        cells = []
        for n in nfes:
            v = value.get((name, n))
            cell = "nan" if v is None else f"{v:.3g}"
            cells.append(f"**{cell}**" if v is not None and v == best[n] else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save(result: dict, path) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
