"""Endpoint error against the exact probability-flow ODE solution on the Gaussian-mixture model.

Every solver starts from the same noise at model time 999 of DDPM's linear-beta schedule; the error is
the RMSE between its sample and the exact ODE endpoint (``GaussianMixtureDenoiser.ode_endpoint``), so it
measures pure discretization error. diffusers' built-ins run in the same loop for comparison.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.gmm import GaussianMixtureDenoiser
from ..registry import make_scheduler, named_set, parse_spec
from ..sampling import model_fn, sample

# label -> (class, options), from the registry's "gmm" set; the labels and classes name bench/results' rows
DEFAULT_SOLVERS: dict[str, tuple[str, dict]] = {label: parse_spec(spec) for label, spec in named_set("gmm").items()}
DEFAULT_NFES = (3, 4, 5, 6, 8, 10, 15, 20)


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
