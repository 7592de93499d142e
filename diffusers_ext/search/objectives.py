"""Objectives for the solver-schedule search: ``schedule dict -> (value, model evaluations)``, lower is better."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..sampling import reference_solve, sample
from ..schedulers import USFScheduler


class EndpointObjective:
    """Mean squared error of a schedule's endpoint against a 200-step reference (``sampling.reference_solve``:
    DPM-Solver++ 3M with third-order Taylor, uniform in log-SNR, on the config's schedule) on calibration
    noises; ``model(x, t) -> output``. ``reference``: that reference when the caller has it already (then
    ``reference_evaluations`` is 0)."""

    def __init__(self, model, noise: torch.Tensor, scheduler_config=None, reference_steps: int = 200,
                 reference: torch.Tensor | None = None):
        self.model, self.noise = model, noise
        self.config = scheduler_config
        self.reference_evaluations = 0 if reference is not None else reference_steps * len(noise)
        if reference is None:
            reference = reference_solve(model, scheduler_config, noise, reference_steps)
        if tuple(reference.shape) != tuple(noise.shape):
            raise ValueError(f"reference must have the noise's shape {tuple(noise.shape)}, "
                             f"got {tuple(reference.shape)}")
        self.reference = reference.double()

    def __call__(self, schedule: dict) -> tuple[float, int]:
        sched = USFScheduler.from_config(self.config or {}, solver_schedule=schedule)
        x = sample(self.model, sched, self.noise, sched.schedule.nfe)
        value = self.value(x.double() - self.reference)
        return (value if math.isfinite(value) else math.inf), len(sched.timesteps) * len(self.noise)

    def value(self, error: torch.Tensor) -> float:
        return float(error.pow(2).mean())


class MedianEndpointObjective(EndpointObjective):
    """The median over samples of each sample's RMS endpoint error: ``tune``'s score, robust to the few samples
    that land in another mode at low NFE ("flips"), which dominate a mean."""

    def value(self, error: torch.Tensor) -> float:
        per_sample = error.flatten(1).pow(2).mean(1).sqrt().cpu().numpy()
        return float(np.median(np.where(np.isfinite(per_sample), per_sample, np.inf)))


class DigitsFIDObjective:
    """digits-cnn FID of a schedule on the embedded digits model: ``num_samples`` samples (labels 0-9 in
    turn) from the noises of ``seed``, against the train split. ``weights`` (a fingerprint of the shipped
    weight files) is part of its identity, so a search archive is not reused across other weights."""

    def __init__(self, num_samples: int = 300, guidance_scale: float = 1.0, seed: int = 0, cache_dir=None):
        from ..eval.sweep import DigitsMetric, model_identity

        self.weights = model_identity("digits")["model_fingerprint"]
        self.metric = DigitsMetric(num_samples, cache_dir)
        self.config = dict(self.metric.pipe.scheduler.config)
        self.num_samples, self.guidance_scale, self.seed = num_samples, float(guidance_scale), seed

    def __call__(self, schedule: dict) -> tuple[float, int]:
        from ..eval.sweep import Cell

        sched = USFScheduler.from_config(self.config, solver_schedule=schedule)
        nfe = sched.schedule.nfe
        value = self.metric(sched, Cell("usf", nfe, self.guidance_scale, self.seed))
        calls = nfe * self.num_samples * (1 if self.guidance_scale == 1.0 else 2)
        return (value if math.isfinite(value) else math.inf), calls
