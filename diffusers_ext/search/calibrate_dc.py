"""Compensation-ratio calibration for DC-Solver (arXiv 2409.03755, section 4.2).

Greedy, one step at a time: for step i >= 2 the ratio rho_i starts at 1 and is optimized with AdamW
(lr 0.1, 20 iterations) to minimize the MSE between the state reached from the (already calibrated)
trajectory after the predictor and the next corrector, and a reference trajectory at the same time. The
reference is a fine solve (about 200 steps, DPM-Solver++ 3M with third-order Taylor) whose grid contains
every time of the coarse grid. Gradients flow through the model (the corrector evaluates it at the
predicted sample). Without a corrector (predictor-only DPM-Solver++) the loss is on the predicted sample.

A step's coefficient table is a quadratic polynomial in its own ratio (the Lagrange weights are quadratic
in t'), so the differentiable step is rebuilt from three float64 tables at ratios 0, 1 and 2 and never
re-implements a solver. Of the iterates (ratio 1 included), the one with the lowest loss is kept, so the
calibration loss of a step never rises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..results_log import append_row, canonical, exclusive, identity, model_name, read_rows, scheduler_identity
from ..sampling import reference_scheduler, sample
from ..schedulers import DCSolverScheduler
from ..schedulers.dc_solver.compensation import DynamicCompensation
from ..schedulers.dc_solver.cpr import FIRST_COMPENSATED_STEP, CascadePolynomialRegression
from .denoisers import Denoiser, as_denoiser


@dataclass
class DCCalibration:
    """Calibrated ratios (one per step) and the per-step calibration losses at ratio 1 and after."""

    ratios: list[float]
    num_inference_steps: int
    guidance_scale: float
    loss_at_one: list[float] = field(default_factory=list)
    loss_calibrated: list[float] = field(default_factory=list)
    model_calls: int = 0  # batched model evaluations, reference solve and backward passes included

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=1)

    @classmethod
    def load(cls, path: str) -> DCCalibration:
        with open(path) as f:
            return cls(**json.load(f))


def _combine(row: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_c row[c] * inputs[c] (differentiable; float32 accumulation like the fused kernel)."""
    out = 0.0
    for c, tensor in enumerate(inputs):
        out = out + row[c] * tensor.float()
    return out


def calibration_problem(scheduler) -> str | None:
    """Why ``calibrate_dc`` cannot calibrate ``scheduler``, or None when it can (a deterministic multistep solver
    with dynamic compensation, without DualFast or thresholding)."""
    if not isinstance(scheduler, DynamicCompensation):
        return (f"calibrate_dc needs a scheduler with dynamic compensation (DCSolverScheduler, UniPCScheduler or "
                f"DPMSolverPPScheduler), got {type(scheduler).__name__}")
    cfg, layout = scheduler.config, scheduler.table_layout()
    if layout.anchor:
        return ("calibrate_dc calibrates the solver without DualFast: set dualfast_strength=0 (DualFast can be "
                "switched on afterwards)")
    if cfg.thresholding or layout.noise or layout.samples or getattr(cfg, "singlestep", False):
        return "calibrate_dc supports deterministic multistep solvers without thresholding"
    return None


def _scheduler_for(model, scheduler):
    if scheduler is None:
        config = getattr(getattr(model, "scheduler", None), "config", None)
        # the pipeline's schedule and prediction type; none of its scheduler's DC or DualFast settings
        scheduler = DCSolverScheduler.from_config(config, dc_ratios=None, dc_cpr=None, dualfast_strength=0.0) \
            if config is not None else DCSolverScheduler()
    problem = calibration_problem(scheduler)
    if problem is not None:
        raise ValueError(problem)
    return scheduler


def _tables_at(scheduler, n: int, ratio: float, device) -> tuple[np.ndarray, np.ndarray, object]:
    sched = type(scheduler).from_config(scheduler.config, dc_ratios=[float(ratio)] * n, dc_cpr=None)
    sched.set_timesteps(n)
    return sched.plan.table, sched.plan.slots, sched


def _fine_times(coarse, per: int) -> np.ndarray:
    """``per`` fine steps inside each coarse step, uniform in lambda (uniform in t where lambda is infinite,
    i.e. from a flow grid's pure-noise start). The step into sigma = 0 is refined down to the schedule's
    least noisy time, from which the fine solver's last step lands on the clean end."""
    grid, schedule = coarse.grid, coarse.noise_schedule
    times = []
    for j in range(grid.num_steps):
        t_a, t_b, lam_a, lam_b = grid.t[j], grid.t[j + 1], grid.lam[j], grid.lam[j + 1]
        last_into_clean = j == grid.num_steps - 1 and not np.isfinite(lam_b)
        if last_into_clean:
            t_b = float(schedule.t_min)
            if t_a - t_b <= 1e-9 * abs(schedule.t_max - schedule.t_min):
                # sigma-based grids (karras, exponential, logsnr, beta) already end at t_min: nothing to refine
                times.append(np.array([t_a]))
                continue
            lam_b = float(schedule.lambda_(np.array([t_b]))[0])
        if np.isfinite(lam_a) and np.isfinite(lam_b) and lam_b > lam_a:
            points = schedule.t_of_lambda(np.linspace(lam_a, lam_b, per + 1))
        else:
            points = np.linspace(t_a, t_b, per + 1)
        points[0] = t_a
        times.append(points if last_into_clean else points[:-1])
    return np.concatenate(times)


def reference_trajectory(model: Denoiser, scheduler, num_inference_steps: int, noise: torch.Tensor,
                         reference_steps: int = 200, progress: bool = True) -> list[torch.Tensor]:
    """States of a fine solve (``sampling.reference_scheduler`` on a grid uniform in lambda inside each coarse
    step) at every time of the scheduler's coarse grid (the noise first, the end last)."""
    coarse = type(scheduler).from_config(scheduler.config, dc_ratios=[1.0] * num_inference_steps, dc_cpr=None)
    coarse.set_timesteps(num_inference_steps)
    per = max(1, math.ceil(reference_steps / num_inference_steps))
    fine_times = _fine_times(coarse, per)
    fine = reference_scheduler(scheduler.config)
    fine.set_timesteps(timesteps=fine_times.tolist())
    reached = fine.grid.t[1:]  # the time after each fine step
    record = [k for k, t in enumerate(reached) if np.any(np.isclose(t, coarse.grid.t[1:], rtol=0, atol=1e-9))]
    if len(record) != num_inference_steps or not np.isclose(reached[-1], coarse.grid.t[-1]):
        raise AssertionError("the reference grid must contain every time of the coarse grid")
    _, states = sample(model, fine, noise, progress=progress, record=record)
    return [noise, *states]


def calibrate_dc(model, num_inference_steps: int, *, scheduler=None, num_samples: int = 10,
                 guidance_scale: float = 1.0, conditioning: Sequence | None = None,
                 sample_shape: Sequence[int] | None = None, reference_steps: int = 200, iterations: int = 20,
                 lr: float = 0.1, seed: int = 0, progress: bool = True) -> DCCalibration:
    """Calibrate DC-Solver's ratios for one (NFE, guidance scale).

    Args:
        model: a diffusers pipeline (see ``denoisers.pipeline_denoiser``) or a callable (x, t) -> output
            (then ``sample_shape`` is required and guidance is the callable's business).
        scheduler: DCSolverScheduler (default: from the pipeline's scheduler config) or DPMSolverPPScheduler
            (predictor-only compensation); its grid and options are calibrated as they are.
        num_samples: calibration noises (the paper uses about 10), from ``seed``.
        conditioning: class labels or prompts, one per sample (default: labels 0, 1, 2, ... for digits).
    Returns:
        ``DCCalibration``; pass ``dc_ratios=result.ratios`` to the scheduler.
    """
    n = int(num_inference_steps)
    if n < 1 or num_samples < 1 or iterations < 1:
        raise ValueError(f"num_inference_steps, num_samples and iterations must be >= 1, got {n}, {num_samples}, "
                         f"{iterations}")
    scheduler = _scheduler_for(model, scheduler)
    adapter = as_denoiser(model, num_samples, sample_shape=sample_shape, guidance_scale=guidance_scale,
                          conditioning=conditioning)
    denoise, shape, device, dtype = adapter.model, adapter.sample_shape, adapter.device, adapter.dtype
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((num_samples, *shape), generator=generator).to(device, dtype)

    calls = 0

    def counted(x, t):
        nonlocal calls
        calls += 1
        return denoise(x, t)

    reference = reference_trajectory(counted, scheduler, n, noise, reference_steps, progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (t0, slots, sched), (t1, _, _), (t2, _, _) = (_tables_at(scheduler, n, r, device) for r in (0.0, 1.0, 2.0))
    # table(rho) = t1 + b (rho - 1) + c (rho - 1)^2, exact because each entry is quadratic in rho
    lin_coef, quad_coef = (t2 - t0) / 2.0, (t2 - 2.0 * t1 + t0) / 2.0
    timesteps = sched.timesteps
    layout = sched.plan.layout
    uses_saved, K = layout.saved, layout.history

    x = noise
    saved = torch.zeros_like(x) if uses_saved else None
    history = [torch.zeros_like(x) for _ in range(K)]
    with torch.no_grad():
        out = counted(x, timesteps[0])
    ratios = [1.0] * n
    loss_one, loss_cal = [], []

    def inputs_of(x_, out_, saved_, hist_):
        return layout.gather(x=x_, out=out_, saved=saved_) + list(hist_)

    def advance(table_i, i, x_, out_, saved_, hist_):
        """One scheduler step from the table rows: x_next, saved_next, new history list."""
        inputs = inputs_of(x_, out_, saved_, hist_)
        x_next = _combine(table_i[layout.row("x_next")], inputs)
        saved_next = _combine(table_i[layout.row("saved_next")], inputs) if uses_saved else None
        new_hist = list(hist_)
        if K:
            new_hist[int(slots[i])] = _combine(table_i[layout.row("history_entry")], inputs)
        return x_next, saved_next, new_hist

    def table_at(i: int, rho):
        """Step i's coefficient rows at ratio rho (a float or a differentiable tensor)."""
        d = rho - 1.0
        return torch.as_tensor(t1[i]) + d * torch.as_tensor(lin_coef[i]) + d * d * torch.as_tensor(quad_coef[i])

    def step_loss(rho: torch.Tensor, i: int, x_, out_, saved_, hist_, target) -> torch.Tensor:
        x_next, saved_next, new_hist = advance(table_at(i, rho).float(), i, x_, out_, saved_, hist_)
        if uses_saved and i + 1 < n:  # the next corrector, through the model
            out_next = counted(x_next.to(dtype), timesteps[i + 1])
            corr_row = torch.as_tensor(t1[i + 1][layout.row("saved_next")]).float()
            state = _combine(corr_row, inputs_of(x_next, out_next, saved_next, new_hist))
        else:
            state = x_next
        return torch.mean((state - target) ** 2)

    bar = tqdm(range(n), desc=f"calibrate DC (NFE {n}, guidance {guidance_scale:g})", disable=not progress)
    for i in bar:
        if i >= FIRST_COMPENSATED_STEP:
            state = (i, x, out, saved, history, reference[i + 1].float())

            def loss_at(rho: torch.Tensor, state=state) -> torch.Tensor:
                return step_loss(rho, *state)

            rho = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
            optimizer = torch.optim.AdamW([rho], lr=lr)
            best_loss, best_rho = math.inf, 1.0
            with torch.enable_grad():
                for iteration in range(iterations):
                    loss = loss_at(rho)
                    if iteration == 0:  # rho starts at 1: the uncompensated loss
                        loss_one.append(loss.item())
                    if loss.item() < best_loss:
                        best_loss, best_rho = loss.item(), rho.item()
                    (grad,) = torch.autograd.grad(loss, [rho])
                    rho.grad = grad
                    optimizer.step()
            with torch.no_grad():
                final = loss_at(rho.detach()).item()
            if final < best_loss:
                best_loss, best_rho = final, rho.item()
            ratios[i] = best_rho
            loss_cal.append(best_loss)
            bar.set_postfix(ratio=f"{best_rho:.3f}", loss=f"{best_loss:.3g}")
        with torch.no_grad():
            x_new, saved, history = advance(table_at(i, ratios[i]).float(), i, x, out, saved, history)
            x = x_new.to(dtype)
            history = [h.to(dtype) for h in history]
            saved = saved.to(dtype) if saved is not None else None
            if i + 1 < n:
                out = counted(x, timesteps[i + 1])
    return DCCalibration(ratios=ratios, num_inference_steps=n, guidance_scale=float(guidance_scale),
                         loss_at_one=loss_one, loss_calibrated=loss_cal, model_calls=calls)


def calibration_settings(model, model_key=None, **kwargs) -> dict:
    """Everything besides (NFE, guidance) that changes a calibration: the model, the scheduler's class and full
    config, and every other ``calibrate_dc`` argument (defaults included)."""
    params = inspect.signature(calibrate_dc).parameters
    valid = [p for p in params if p not in ("model", "num_inference_steps", "guidance_scale")]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"calibrate_dc_grid got unexpected arguments {unknown}; valid: {', '.join(valid)}")
    settings = {name: kwargs.get(name, p.default) for name, p in params.items()
                if p.default is not inspect.Parameter.empty and name not in ("scheduler", "guidance_scale", "progress")}
    settings["scheduler"] = scheduler_identity(_scheduler_for(model, kwargs.get("scheduler")))
    settings["model"] = model_key if model_key is not None else model_name(model)
    return canonical(settings)


def calibrate_dc_grid(model, nfes: Sequence[int], guidance_scales: Sequence[float] = (1.0,), *, out=None,
                      progress: bool = True, model_key=None, **kwargs) -> dict[tuple[int, float], DCCalibration]:
    """``calibrate_dc`` for every (NFE, guidance scale). With ``out`` (a JSONL file, locked while the grid runs)
    each finished calibration is appended at once and configurations already there are skipped, so an
    interrupted grid resumes. A row is reused only if its ``key`` matches: a hash of ``calibration_settings``
    (model, scheduler config, samples, seed, reference steps, iterations, ...), NFE and guidance.
    ``model_key`` names the model in that key (default: a pipeline's class and ``_name_or_path``, a callable's
    qualified name); pass it when one name can stand for different weights or functions."""
    configs = [(int(n), float(g)) for g in guidance_scales for n in nfes]
    if not configs:
        raise ValueError("calibrate_dc_grid needs at least one NFE and one guidance scale")
    settings = calibration_settings(model, model_key, **kwargs)
    keys = {(n, g): identity({**settings, "nfe": n, "guidance": g}) for n, g in configs}
    fields = {f.name for f in dataclasses.fields(DCCalibration)}
    done = {}
    with exclusive(out) if out is not None else contextlib.nullcontext():
        by_key = {row.get("key"): row for row in (read_rows(out) if out is not None else [])}
        for config, key in keys.items():
            if key in by_key:
                done[config] = DCCalibration(**{k: v for k, v in by_key[key].items() if k in fields})
        for n, g in tqdm(configs, desc="DC calibration grid", disable=not progress or len(configs) == 1):
            if (n, g) in done:
                continue
            cal = calibrate_dc(model, n, guidance_scale=g, progress=progress, **kwargs)
            if out is not None:
                append_row(out, {**asdict(cal), "key": keys[(n, g)], "settings": settings})
            done[(n, g)] = cal
    return {c: done[c] for c in configs}


def fit_cpr(calibrations) -> CascadePolynomialRegression:
    """The CPR fitted to calibrations (``DCCalibration``s, or a dict of them keyed by (NFE, guidance))."""
    items = calibrations.values() if isinstance(calibrations, dict) else calibrations
    return CascadePolynomialRegression.fit({(c.num_inference_steps, c.guidance_scale): c.ratios for c in items})
