"""``tune`` (``from diffusers_ext import tune``): the catalogue's best scheduler for one model at one NFE,
chosen on calibration noise and checked on held-out noise.

Every candidate (family x grid x order x DualFast strength, ``catalogue``) samples the same noises at the
given NFE; its error is measured per sample against a high-NFE reference of the same noise
(``sampling.reference_solve``), as the RMS difference of the endpoints. The score is the **median** over
samples, robust to the few samples that land in another mode at low NFE ("flips"), which would dominate a
mean. The candidate with the lowest calibration median wins; the report gives every candidate's calibration
and validation medians, their 90th percentiles, and the scheduler the model came with at the same NFE.

    result = tune(model, nfe=6, scheduler_config=pipe.scheduler.config, sample_shape=(4, 64, 64))
    result = tune(pipe, nfe=6, guidance_scale=5.0, prompts=[...])
    pipe.scheduler = result.scheduler        # save_pretrained keeps every option it chose
    print(result.table())

With ``out`` (a JSONL file) each candidate's per-sample errors are appended when it finishes and reused on the
next call with the same model, noises, reference and candidate config, so an interrupted tune resumes.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .registry import CATALOGUE_GRIDS, CATALOGUE_SOLVERS, from_config, parse_spec, scheduler_class
from .results_log import append_row, canonical, exclusive, identity, model_name, read_rows, scheduler_identity
from .sampling import REFERENCE_STEPS, reference_solve, sample
from .schedulers.engine.options import COMMON_OPTIONS
from .schedulers.engine.scheduler import GRID_FLAGS_OFF

GRID_FLAGS = {"timestep_spacing": "linspace", **GRID_FLAGS_OFF}  # each candidate sets every grid option


@dataclass(frozen=True)
class Candidate:
    """One catalogue entry: a scheduler class and the options it sets on the model's scheduler config."""

    name: str
    spec: str  # a registry spec (``registry.CATALOGUE_SOLVERS``)
    options: dict  # the grid's options

    def build(self, scheduler_config):
        """The candidate on the model's schedule (betas or flow, prediction type, thresholding): every solver option
        the config may carry (an SDE variant, compensation, another grid, ...) is reset to this candidate's."""
        _, spec_options = parse_spec(self.spec)
        params = inspect.signature(scheduler_class(self.spec).__init__).parameters
        own = {k: p.default for k, p in params.items() if k != "self" and k not in COMMON_OPTIONS}
        return from_config(self.spec, scheduler_config or {},
                           **{**own, "lower_order_final": True, **GRID_FLAGS, **spec_options, **self.options})


def catalogue(solvers: Sequence[str] | None = None, grids: Sequence[str] | None = None) -> list[Candidate]:
    """Every solver variant on every grid (default: all of the registry's ``CATALOGUE_SOLVERS`` x
    ``CATALOGUE_GRIDS``)."""
    unknown = [s for s in (solvers or []) if s not in CATALOGUE_SOLVERS] + \
        [g for g in (grids or []) if g not in CATALOGUE_GRIDS]
    if unknown:
        raise ValueError(f"Unknown catalogue entries {unknown}; solvers: {list(CATALOGUE_SOLVERS)}, grids: "
                         f"{list(CATALOGUE_GRIDS)}")
    return [Candidate(f"{s} {g}", CATALOGUE_SOLVERS[s], CATALOGUE_GRIDS[g])
            for s in (solvers or CATALOGUE_SOLVERS) for g in (grids or CATALOGUE_GRIDS)]


@dataclass
class Score:
    """A candidate's per-sample endpoint errors on the calibration and the held-out validation noises."""

    name: str
    calibration: list[float]
    validation: list[float]
    options: dict = field(default_factory=dict)
    error: str | None = None  # why the candidate could not run on this model (then its errors are inf)

    @property
    def calibration_median(self) -> float:
        return float(np.median(self.calibration)) if self.calibration else math.inf

    @property
    def validation_median(self) -> float:
        return float(np.median(self.validation)) if self.validation else math.inf

    @property
    def validation_p90(self) -> float:
        return float(np.percentile(self.validation, 90)) if self.validation else math.inf


@dataclass
class TuneResult:
    scheduler: object  # the chosen scheduler, configured on the model's scheduler config
    chosen: str
    nfe: int
    report: list[Score]  # every candidate, best calibration median first
    baseline: Score | None  # the model's own scheduler at the same NFE
    model_calls: int
    seconds: float
    refinement: Score | None = None  # stage 2: the winner with calibrated DC ratios (kept only if it wins)
    refinement_kept: bool = False
    # batched model evaluations of the DC stage (not per sample: calibrate_dc's count, backward passes included)
    refinement_model_calls: int = 0
    search: Score | None = None  # stage 2b: the S^3 schedule seeded with the winner (kept only if it wins)
    search_kept: bool = False

    def table(self) -> str:
        """A markdown table: every candidate's calibration and held-out validation medians (per-sample RMS
        endpoint error against the reference), the 90th percentile, and the chosen one."""
        rows = ["| scheduler | calibration median | validation median | validation p90 | |", "|---|---|---|---|---|"]
        for s in self.entries():
            mark = "chosen" if s.name == self.chosen else ("model's own" if s is self.baseline else (s.error or ""))
            if s is self.refinement and not self.refinement_kept:
                mark = "refinement, not kept: no held-out gain beyond the spread"
            if s is self.search and not self.search_kept:
                mark = "search, not kept: no held-out gain beyond the spread, or a worse 90th percentile"
            rows.append(f"| {s.name} | {s.calibration_median:.4g} | {s.validation_median:.4g} | "
                        f"{s.validation_p90:.4g} | {mark} |")
        return "\n".join(rows)

    def entries(self) -> list[Score]:
        """The model's own scheduler, the refinements, then every candidate (best calibration median first)."""
        return [s for s in (self.baseline, self.refinement, self.search) if s is not None] + self.report

    def save(self, out_dir) -> None:
        """``out_dir/scheduler`` (the chosen scheduler's config folder: ``from_pretrained`` it, or load it into a
        pipeline), ``out_dir/tune.md`` (the table) and ``out_dir/tune.png`` (validation medians)."""
        from .optional import require

        require("matplotlib", purpose="the tune plot")  # before anything is written
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.scheduler.save_pretrained(out_dir / "scheduler")
        (out_dir / "tune.md").write_text(f"# tune at NFE {self.nfe}: {self.chosen}\n\n{self.table()}\n\n"
                                         f"{self.model_calls} model evaluations (per sample), "
                                         f"{self.refinement_model_calls} batched ones in the DC stage, "
                                         f"{self.seconds:.1f} s\n")
        plot_scores(self, out_dir / "tune.png")


def plot_scores(result: TuneResult, path, top: int = 20) -> None:
    """Horizontal bars: the validation median of the model's own scheduler and of the best ``top`` candidates."""
    from .optional import require

    matplotlib = require("matplotlib", purpose="the tune plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    refined = [s for s in (result.refinement, result.search) if s is not None]
    entries = ([result.baseline] if result.baseline is not None else []) + refined + \
        [s for s in result.report if math.isfinite(s.validation_median)][:top]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(entries) + 1.5))
    colors = ["tab:red" if s is result.baseline else "tab:green" if s.name == result.chosen else "tab:blue"
              for s in entries]
    ax.barh([s.name for s in entries][::-1], [s.validation_median for s in entries][::-1], color=colors[::-1])
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("median per-sample endpoint error on held-out noise (lower is better)")
    ax.set_title(f"tune at NFE {result.nfe}: chosen {result.chosen} (green)"
                 + ("; the model's own scheduler in red" if result.baseline is not None else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def beats_beyond_spread(new: Sequence[float], old: Sequence[float], resamples: int = 500, level: float = 0.95,
                        seed: int = 0) -> bool:
    """True when ``new``'s median per-sample error is below ``old``'s in at least ``level`` of paired bootstrap
    resamples of the samples (the same noises), i.e. the gain is beyond the spread over noise draws."""
    new, old = np.asarray(new, dtype=np.float64), np.asarray(old, dtype=np.float64)
    if len(new) != len(old) or len(new) == 0:
        raise ValueError("beats_beyond_spread compares errors on the same samples")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(new), size=(resamples, len(new)))
    wins = np.median(new[idx], axis=1) < np.median(old[idx], axis=1)
    return bool(wins.mean() >= level)


def per_sample_error(x: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """RMS over each sample's elements of ``x - reference`` (non-finite samples count as inf)."""
    err = (x.double() - reference.double()).flatten(1).pow(2).mean(1).sqrt()
    return [float(e) if math.isfinite(float(e)) else math.inf for e in err]


def tune(model, nfe: int, *, scheduler_config=None, sample_shape: Sequence[int] | None = None,
         guidance_scale: float = 1.0, prompts: Sequence | None = None, num_calibration: int = 16,
         num_validation: int = 16, seed: int = 0, candidates: Sequence[Candidate] | None = None,
         reference_steps: int = REFERENCE_STEPS, refine: bool = True, dc_draws: int = 2, dc_shrinkage: float = 0.5,
         search_schedules: int = 0, out=None, model_key=None, progress: bool = True) -> TuneResult:
    """Choose the catalogue's best scheduler for ``model`` at ``nfe`` model calls (see the module docstring).

    Args:
        model: a callable ``(x, t) -> model output`` (then ``sample_shape``, one sample's shape, and
            ``scheduler_config``, the model's training schedule, are needed) or a diffusers pipeline
            (``search.denoisers.pipeline_denoiser``: the digits pipeline, unconditional UNet pipelines, Stable
            Diffusion-like pipelines with ``prompts``); a pipeline's scheduler config is used unless given.
        guidance_scale, prompts: for pipelines; prompts are cycled over the samples (the digits pipeline takes
            class labels 0..9 in turn).
        num_calibration, num_validation: noises (from ``seed``) that choose, and that check the choice.
        candidates: default ``catalogue()``.
        refine: stage 2, DC-Solver's compensation for a winner that supports it (UniPC / DPM-Solver++ multistep
            without DualFast): ratios calibrated on ``dc_draws`` fresh noise draws (``search.calibrate_dc``),
            averaged, shrunk toward 1 by ``dc_shrinkage`` and clipped to [0.5, 1.5]. Stage 3 keeps the refinement
            only if it beats the winner on the held-out noises beyond the spread (``beats_beyond_spread``), so the
            result is never worse than the best catalogue entry there.
        search_schedules: after stage 2, the S^3 search (``search.s3_search``, arXiv 2312.07243) over USF
            schedules on the calibration noises alone, seeded with the winner on its own grid
            (``searched_schedule``), within the model calls of this many schedules (0: off; stage 0 alone takes
            17-18). Its result replaces the current choice only if it beats it on the held-out noises beyond the
            spread and its 90th percentile there is no worse. Not resumed from ``out``: it reruns each call.
        out: a JSONL file to resume from and append to (locked while tuning).
        model_key: names the model in the resume key (default: the pipeline's class and path, or the callable's
            qualified name); pass it when one name can stand for different weights.
    """
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")
    if num_calibration < 1 or num_validation < 1:
        raise ValueError(f"num_calibration and num_validation must be >= 1, got {num_calibration}, {num_validation}")
    if not isinstance(search_schedules, int) or isinstance(search_schedules, bool) or search_schedules < 0:
        raise ValueError(f"search_schedules must be an integer >= 0 (0: no search), got {search_schedules!r}")
    start = time.perf_counter()
    total = num_calibration + num_validation
    from .search.calibrate_dc import calibration_problem
    from .search.denoisers import as_denoiser

    pipeline = hasattr(model, "components")
    if isinstance(prompts, str):
        prompts = [prompts]
    conditioning = None if prompts is None else [prompts[i % len(prompts)] for i in range(total)]
    adapter = as_denoiser(model, total, sample_shape=sample_shape, guidance_scale=guidance_scale,
                          conditioning=conditioning)
    denoise, shape, device, dtype = adapter.model, adapter.sample_shape, adapter.device, adapter.dtype
    own = model.scheduler if pipeline else None
    if pipeline and scheduler_config is None:
        scheduler_config = model.scheduler.config
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((total, *shape), generator=generator).to(device, dtype)
    calls = 0

    def counting(denoiser):
        def counted(x, t):
            nonlocal calls
            calls += len(x)
            return denoiser(x, t)
        return counted

    counted = counting(denoise)

    settings = canonical({"model": model_key if model_key is not None else model_name(model), "nfe": nfe,
                          "shape": list(shape), "seed": seed, "num_calibration": num_calibration,
                          "num_validation": num_validation, "guidance_scale": float(guidance_scale),
                          "prompts": list(prompts) if prompts is not None else None,
                          "reference_steps": reference_steps, "dtype": str(dtype)})
    candidates = list(candidates) if candidates is not None else catalogue()
    reference = None
    scores: list[Score] = []
    with exclusive(out) if out is not None else contextlib.nullcontext():
        done = {row.get("key"): row for row in (read_rows(out) if out is not None else [])}
        entries = [(c.name, c.options, lambda c=c: c.build(scheduler_config)) for c in candidates]
        if own is not None:
            entries.insert(0, (f"model's own ({type(own).__name__})", {}, lambda: type(own).from_config(own.config)))
        for name, options, build in tqdm(entries, desc=f"tune (NFE {nfe})", disable=not progress):
            try:
                scheduler = build()
            except (ValueError, TypeError) as e:
                scores.append(Score(name, [], [], options, error=f"not applicable: {e}"))
                continue
            key = identity({**settings, "scheduler": scheduler_identity(scheduler)})
            if key in done:
                row = done[key]
                scores.append(Score(name, row["calibration"], row["validation"], options, row.get("error")))
                continue
            if reference is None:
                reference = reference_solve(counted, scheduler_config, noise, reference_steps)
            try:
                x = sample(counted, scheduler, noise, nfe)
                errors, error = per_sample_error(x, reference), None
            except ValueError as e:  # a grid this schedule cannot take at this NFE
                errors, error = [math.inf] * total, f"failed: {e}"
            score = Score(name, errors[:num_calibration], errors[num_calibration:], options, error)
            scores.append(score)
            if out is not None:
                append_row(out, {"key": key, "name": name, "calibration": score.calibration,
                                 "validation": score.validation, "error": error, "settings": settings})
    baseline = scores.pop(0) if own is not None else None
    ranked = sorted(scores, key=lambda s: (s.calibration_median, s.name))
    if not ranked or not math.isfinite(ranked[0].calibration_median):
        raise ValueError(f"no candidate could sample this model at NFE {nfe}: "
                         + "; ".join(f"{s.name}: {s.error}" for s in scores[:5]))
    best = ranked[0]
    chosen = next(c for c in candidates if c.name == best.name).build(scheduler_config)
    result = TuneResult(scheduler=chosen, chosen=best.name, nfe=nfe, report=ranked, baseline=baseline,
                        model_calls=calls, seconds=0.0)
    if refine and calibration_problem(chosen) is None and nfe >= 4:
        if reference is None:
            reference = reference_solve(counted, scheduler_config, noise, reference_steps)
        ratios, result.refinement_model_calls = calibrated_ratios(
            model, chosen, nfe, sample_shape=shape if own is None else None, guidance_scale=guidance_scale,
            prompts=prompts, draws=dc_draws, shrinkage=dc_shrinkage, reference_steps=reference_steps, seed=seed,
            progress=progress)
        refined = type(chosen).from_config(chosen.config, dc_ratios=ratios)
        errors = per_sample_error(sample(counted, refined, noise, nfe), reference)
        result.refinement = Score(f"{best.name} + DC ratios", errors[:num_calibration], errors[num_calibration:],
                                  {"dc_ratios": ratios})
        if beats_beyond_spread(result.refinement.validation, best.validation, seed=seed):
            result.scheduler, result.chosen, result.refinement_kept = refined, result.refinement.name, True
    if search_schedules > 0:
        if reference is None:
            reference = reference_solve(counted, scheduler_config, noise, reference_steps)
        incumbent = result.refinement if result.refinement_kept else best
        # the search samples the calibration noises alone: a pipeline's denoiser conditions on as many samples
        calibration = as_denoiser(model, num_calibration, sample_shape=sample_shape, guidance_scale=guidance_scale,
                                  conditioning=None if conditioning is None else conditioning[:num_calibration])
        searched, seeded = searched_schedule(counting(calibration.model), scheduler_config, result.scheduler,
                                             best.name, noise[:num_calibration], reference[:num_calibration], nfe,
                                             search_schedules, seed, progress)
        errors = per_sample_error(sample(counted, searched, noise, nfe), reference)
        result.search = Score(f"S^3 schedule seeded with {' / '.join(seeded)} on the {best.name} grid",
                              errors[:num_calibration], errors[num_calibration:],
                              {"solver_schedule": searched.config.solver_schedule})
        if search_is_kept(result.search, incumbent, seed=seed):
            result.scheduler, result.chosen, result.search_kept = searched, result.search.name, True
    result.model_calls, result.seconds = calls, time.perf_counter() - start
    return result


def search_is_kept(searched: Score, incumbent: Score, seed: int = 0) -> bool:
    """The searched schedule replaces the incumbent only if its held-out median wins beyond the spread
    (``beats_beyond_spread``) and its held-out 90th percentile is no worse: a search over many schedules can
    find one that wins the median with a worse tail."""
    return (beats_beyond_spread(searched.validation, incumbent.validation, seed=seed)
            and searched.validation_p90 <= incumbent.validation_p90)


def searched_schedule(model, scheduler_config, winner, winner_name: str, noise, reference, nfe: int,
                      schedules: int, seed: int = 0, progress: bool = False):
    """The S^3 search's best USF schedule (a ``USFScheduler`` on ``scheduler_config``) for ``model`` at ``nfe``,
    scored by the median per-sample endpoint error against ``reference`` on ``noise``, within the model calls of
    ``schedules`` schedules, and the names of the solvers it was seeded with. The seed population (stage 0) holds
    the winner's solver on the winner's grid (DPM-Solver++ 2M and UniPC bh2 on that grid when the winner's solver
    has no USF form: DEIS, 3M, UniPC order 3, DualFast; DC ratios are not carried over) and the search's own 16
    hand-designed schedules, so with ``schedules`` <= 18 no bred schedule is tried."""
    from .schedulers import USFScheduler, hand_designed_schedule
    from .search.objectives import MedianEndpointObjective
    from .search.s3 import SEED_SOLVERS, s3_search

    usf = USFScheduler.from_config(scheduler_config)
    grid = type(winner).from_config(winner.config)
    grid.set_timesteps(nfe)
    times = [float(t) for t in grid.grid.t]
    times[-1] = float(usf.noise_schedule.t_clean)  # a grid ending at sigma_min (final_sigmas_type) ends clean here
    solver = winner_name.split()[0]
    solvers = [solver] if solver in SEED_SOLVERS else ["dpm++2m", "unipc-bh2"]
    initial = [hand_designed_schedule(s, times) for s in solvers]
    objective = MedianEndpointObjective(model, noise, scheduler_config, reference=reference)
    found = s3_search(objective, usf.noise_schedule, nfe, schedules * len(noise) * nfe, seed=seed,
                      progress=progress, initial_schedules=initial)
    return USFScheduler.from_config(scheduler_config, solver_schedule=found.best), solvers


def calibrated_ratios(model, scheduler, nfe: int, *, sample_shape=None, guidance_scale: float = 1.0, prompts=None,
                      draws: int = 2, num_samples: int = 8, shrinkage: float = 0.5, bounds=(0.5, 1.5),
                      reference_steps: int = REFERENCE_STEPS, seed: int = 0,
                      progress: bool = False) -> tuple[list[float], int]:
    """DC ratios for ``scheduler`` at ``nfe``: the mean of ``draws`` calibrations on fresh noises, shrunk toward
    1 (``1 + shrinkage (mean - 1)``) and clipped to ``bounds``, so one unlucky draw cannot learn the negative or
    near-zero ratios that make held-out samples worse. Returns the ratios and the calibrations' batched model
    evaluations (reference solves and backward passes included, as ``calibrate_dc`` counts them)."""
    from .search.calibrate_dc import calibrate_dc

    runs, calls = [], 0
    for k in range(draws):
        conditioning = None if prompts is None else [prompts[i % len(prompts)] for i in range(num_samples)]
        kwargs = {"sample_shape": sample_shape} if sample_shape is not None else \
            {"guidance_scale": guidance_scale, "conditioning": conditioning}
        cal = calibrate_dc(model, nfe, scheduler=type(scheduler).from_config(scheduler.config, dc_ratios=None),
                           num_samples=num_samples, reference_steps=reference_steps, seed=seed + 1000 + k,
                           progress=progress, **kwargs)
        runs.append(cal.ratios)
        calls += cal.model_calls
    mean = np.mean(np.asarray(runs, dtype=np.float64), axis=0)
    return [float(r) for r in np.clip(1.0 + shrinkage * (mean - 1.0), *bounds)], calls
