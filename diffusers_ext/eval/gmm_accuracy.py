"""Endpoint error against the exact probability-flow ODE solution on the Gaussian-mixture model.

Every solver starts from the same noise at model time 999 of DDPM's linear-beta schedule and is scored against
the exact ODE endpoint (``GaussianMixtureDenoiser.ode_endpoint``), so the error is pure discretization error:
the median per-sample RMS error (the primary number: at low NFE a few samples that land in another mixture
component dominate an RMSE), the RMSE, and the *flips*, samples whose endpoint is nearest to another component
than the exact endpoint. diffusers' built-ins run in the same loop; ``baselines`` adds diffusers' strongest
options (the registry's ``diffusers-best`` set) and, per NFE, the best of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.gmm import GaussianMixtureDenoiser
from ..registry import make_scheduler, named_set, parse_spec
from ..results_log import scheduler_identity
from ..sampling import model_fn, sample

# label -> (class, options), from the registry's "gmm" set; the labels and classes name bench/results' rows
DEFAULT_SOLVERS: dict[str, tuple[str, dict]] = {label: parse_spec(spec) for label, spec in named_set("gmm").items()}
DEFAULT_NFES = (3, 4, 5, 6, 8, 10, 15, 20)
BEST = "diffusers best of {n} (per NFE)"


def sample_with(scheduler, model, noise: torch.Tensor, nfe: int) -> torch.Tensor:
    """``sampling.sample`` of a diffusers-style ``model`` (one returning ``.sample``) for ``nfe`` steps."""
    return sample(model_fn(model), scheduler, noise, nfe)


def nearest_component(model: GaussianMixtureDenoiser, x: torch.Tensor) -> torch.Tensor:
    """Index of the mixture mean nearest to each sample of ``x`` (batch first)."""
    _, means, _ = model.mixture(int(np.prod(x.shape[1:])))
    return torch.cdist(x.double().flatten(1), means).argmin(1)


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def endpoint_scores(model: GaussianMixtureDenoiser, x: torch.Tensor, exact: torch.Tensor, num_seeds: int = 1) -> dict:
    """Scores of samples ``x`` against their exact endpoints: the median per-sample RMS error (pooled, and per seed:
    ``x`` holds ``num_seeds`` equal blocks of samples, one per seed), the RMSE and the flips."""
    x, exact = x.double(), exact.double()
    err = (x - exact).flatten(1).pow(2).mean(1).sqrt().numpy()
    diverged = ~np.isfinite(err)
    err[diverged] = np.inf  # a diverged sample is infinitely wrong, and a flip
    flipped = (nearest_component(model, x) != nearest_component(model, exact)).numpy() | diverged
    return {"median": _finite(float(np.median(err))),
            "seed_medians": [_finite(float(np.median(block))) for block in np.split(err, num_seeds)],
            "rmse": _finite(float((x - exact).pow(2).mean().sqrt())), "flips": int(flipped.sum())}


def held_out_noise(seeds, num_samples: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``num_samples`` float64 noises per seed, the seeds' blocks one after another."""
    return torch.cat([torch.randn(num_samples, *shape, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                      for s in seeds])


Solver = tuple[str, dict] | Callable[[int], object]


def gmm_accuracy(solvers: dict[str, Solver] | None = None, nfes=DEFAULT_NFES, num_samples: int = 256,
                 shape: tuple[int, ...] = (2, 4, 4), seeds=(0,), progress: bool = True,
                 baselines: dict[str, str] | None = None) -> dict:
    """Scores (``endpoint_scores``) of each solver at each NFE on ``num_samples`` noises per seed; a JSON-serializable
    dict. A solver is ``(class, options)`` or a callable ``nfe -> scheduler`` (e.g. ratios calibrated per NFE).
    ``baselines`` (label -> spec, e.g. ``named_set("diffusers-best")``) are scored into ``baseline_rows``, and
    ``diffusers_best`` names, per NFE, the one with the lowest median (picked on these noises, favouring them)."""
    solvers = solvers or DEFAULT_SOLVERS
    seeds = [int(s) for s in seeds]
    if not seeds or num_samples < 1:
        raise ValueError(f"need at least one seed and one sample per seed, got seeds={seeds}, "
                         f"num_samples={num_samples}")
    model = GaussianMixtureDenoiser()
    noise = held_out_noise(seeds, num_samples, shape)
    reference = model.ode_endpoint(noise, t_start=999.0)
    groups = {"rows": solvers, "baseline_rows": {label: parse_spec(spec) for label, spec in (baselines or {}).items()}}
    rows: dict[str, list[dict]] = {group: [] for group in groups}
    bar = tqdm(total=sum(map(len, groups.values())) * len(nfes), desc="GMM accuracy", disable=not progress)
    for group, members in groups.items():  # a baseline may share a label with a solver (diffusers' defaults)
        for name, solver in members.items():
            for nfe in nfes:
                if callable(solver):
                    sched = solver(nfe)
                    path, config = (scheduler_identity(sched)[k] for k in ("class", "config"))
                else:
                    sched, (path, config) = make_scheduler(*solver), solver
                out = sample_with(sched, model, noise.float(), nfe)
                rows[group].append({"scheduler": name, "class": path, "config": config, "nfe": nfe,
                                    **endpoint_scores(model, out, reference, len(seeds))})
                bar.update()
    bar.close()
    result = {"benchmark": "gmm_accuracy", "num_samples": num_samples, "shape": list(shape), "seeds": seeds,
              "schedule": "DDPM linear betas, start t=999, end sigma=0", "reference": "DOP853 rtol 1e-10",
              "nfes": list(nfes), "rows": rows["rows"]}  # no timings: a rerun leaves the file as it was
    if baselines:
        result["baseline_rows"] = rows["baseline_rows"]
        result["diffusers_best"] = {str(n): _lowest_median([r for r in rows["baseline_rows"] if r["nfe"] == n])
                                    for n in nfes}
    return result


def _lowest_median(rows: list[dict]) -> str:
    return min(rows, key=lambda r: np.inf if r["median"] is None else r["median"])["scheduler"]


def best_rows(result: dict) -> list[dict]:
    """Per NFE, the row of the baseline with the lowest median, relabelled ``BEST`` (none without baselines)."""
    if not result.get("diffusers_best"):
        return []
    label = BEST.format(n=len({r["scheduler"] for r in result["baseline_rows"]}))
    chosen = {(r["scheduler"], r["nfe"]): r for r in result["baseline_rows"]}
    return [{**chosen[(name, int(n))], "scheduler": label} for n, name in result["diffusers_best"].items()]


def _cell(value, digits: str = ".3g") -> str:
    return "nan" if value is None else f"{value:{digits}}"


def markdown_table(result: dict) -> str:
    """Two tables, one row per solver and one column per NFE: the median per-sample error with the flips in
    parentheses (the best median of each column in bold), then the RMSE; with baselines, the per-NFE best of
    diffusers' options as one more row, with the option it is in the row below."""
    nfes, rows, best = result["nfes"], result["rows"] + best_rows(result), result.get("diffusers_best")
    value = {(r["scheduler"], r["nfe"]): r for r in rows}
    lowest = {n: min((r["median"] for r in rows if r["nfe"] == n and r["median"] is not None), default=None)
              for n in nfes}

    def median(r):
        text = f"{_cell(r['median'])} ({r['flips']})"
        return f"**{text}**" if r["median"] is not None and r["median"] == lowest[r["nfe"]] else text

    seeds, per_seed = result.get("seeds", [result.get("seed", 0)]), result["num_samples"]
    header = ["| scheduler | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
    intro = (f"Median per-sample RMS error to the exact endpoint, and (flips): of the {len(seeds) * per_seed} samples "
             f"({len(seeds)} seed(s) x {per_seed}), those ending nearest to another mixture component than the exact "
             "endpoint. Best median per column in bold.")
    tables = {median: [intro, "", *header],
              (lambda r: _cell(r["rmse"])): ["", "RMSE over all samples (flips dominate it at low NFE):", "", *header]}
    for name in dict.fromkeys(r["scheduler"] for r in rows):
        for cell, lines in tables.items():
            lines.append(f"| {name} | " + " | ".join(cell(value[name, n]) if (name, n) in value else "" for n in nfes)
                         + " |")
    if best:
        option = "| ↳ option | " + " | ".join(best[str(n)].removeprefix("diffusers ") for n in nfes) + " |"
        for lines in tables.values():
            lines.append(option)
    return "\n".join(line for lines in tables.values() for line in lines)


def save(result: dict, path) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
