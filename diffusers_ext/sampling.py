"""The sampling loop: one scheduler run over one model, written once (k-diffusion style).

    x = noise * init_noise_sigma
    for t in timesteps:  x = step(model(scale_model_input(x, t), t), t, x)

``model`` is a plain callable ``(x, t) -> model output``; ``model_fn`` adapts a diffusers-style model that
returns ``.sample`` (the Gaussian-mixture denoiser, a UNet with class labels, ...). ``reference_solve`` is the
high-accuracy endpoint the schedule search scores against.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from tqdm.auto import tqdm

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# DPM-Solver++ 3M with the third-order Taylor weight (order 3, tests/test_accuracy.py), plain: none of a
# pipeline config's solver variants (SDE noise, singlestep, DC compensation, DualFast, another grid)
REFERENCE_SOLVER = {"solver_order": 3, "third_order_taylor": True, "lower_order_final": True,
                    "algorithm_type": "dpmsolver++", "singlestep": False, "dc_ratios": None, "dc_cpr": None,
                    "dualfast_strength": 0.0, "use_karras_sigmas": False, "use_exponential_sigmas": False,
                    "use_beta_sigmas": False, "use_lu_lambdas": False}
REFERENCE_STEPS = 200


def model_fn(denoiser, **kwargs) -> Model:
    """``(x, t) -> denoiser(x, t, **kwargs).sample``: a diffusers-style model (``kwargs`` e.g. ``class_labels``)
    as the plain callable ``sample`` takes. Its name names the denoiser's class (resume keys read it)."""
    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return denoiser(x, t, **kwargs).sample

    model.__module__, model.__qualname__ = type(denoiser).__module__, f"model_fn({type(denoiser).__qualname__})"
    return model


@torch.no_grad()
def sample(model: Model, scheduler, noise: torch.Tensor, num_inference_steps: int | None = None, *,
           progress: bool = False, extra_step_kwargs: dict | None = None,
           record: Collection[int] | None = None) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``scheduler`` over ``model`` from ``noise`` (scaled by ``init_noise_sigma``) and return the end.

    Args:
        num_inference_steps: passed to ``set_timesteps`` (on the noise's device); None: the timesteps the
            caller set already (e.g. ``set_timesteps(timesteps=...)``).
        extra_step_kwargs: passed to every ``scheduler.step`` (e.g. ``generator`` for SDE solvers).
        record: step indices (0 = after the first step); then returns ``(x, states)`` with the state after each
            of those steps, in order.
    """
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps, device=noise.device)
    elif getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError(f"{type(scheduler).__name__} has no timesteps yet: pass num_inference_steps or call "
                         "scheduler.set_timesteps(...) first")
    timesteps = scheduler.timesteps
    wanted = set(record) if record is not None else set()
    outside = sorted(k for k in wanted if not (isinstance(k, int) and 0 <= k < len(timesteps)))
    if outside:
        raise ValueError(f"record: step indices must be integers in 0..{len(timesteps) - 1}, got {outside}")
    x, states = noise * scheduler.init_noise_sigma, []
    for k, t in enumerate(tqdm(timesteps, desc="sampling", disable=not progress, leave=False)):
        out = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, **(extra_step_kwargs or {})).prev_sample
        if k in wanted:
            states.append(x)
    return (x, states) if record is not None else x


def reference_scheduler(scheduler_config=None, **grid):
    """The reference solver (``REFERENCE_SOLVER``) on the schedule of ``scheduler_config`` (betas, prediction
    type, timestep settings); ``grid``: grid options, e.g. ``use_lu_lambdas=True``."""
    from .schedulers import DPMSolverPPScheduler

    return DPMSolverPPScheduler.from_config(scheduler_config or {}, **{**REFERENCE_SOLVER, **grid})


def reference_solve(model: Model, scheduler_config, noise: torch.Tensor, steps: int = REFERENCE_STEPS,
                    progress: bool = False) -> torch.Tensor:
    """The high-accuracy endpoint of ``noise``: ``steps`` steps of the reference solver, uniform in log-SNR."""
    return sample(model, reference_scheduler(scheduler_config, use_lu_lambdas=True), noise, steps, progress=progress)
