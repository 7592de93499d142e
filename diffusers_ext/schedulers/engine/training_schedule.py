"""The model's training noise schedule, from a diffusers scheduler config.

diffusers' rules, bit for bit where diffusers defines them: ``beta_schedule`` (linear, scaled_linear,
squaredcos_cap_v2, sigmoid) or ``trained_betas``, ``rescale_betas_zero_snr`` (arXiv 2305.08891),
CogVideoX's ``snr_shift_scale``; or a continuous VP schedule (``noise_schedule`` linear / cosine), flow
matching (``use_flow_sigmas``) or EDM (``sigma_data``, arXiv 2206.00364).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar, rescale_zero_terminal_snr

from .noise_schedules import EDM, FlowMatching, NoiseSchedule, VPContinuous, VPDiscrete
from .predictions import EDM_PREDICTION_TYPES

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
NOISE_SCHEDULES = ("discrete", "linear", "cosine")


@dataclass
class TrainingSchedule:
    """The noise schedule, and for VP schedules diffusers' ``betas``, ``alphas``, ``alphas_cumprod`` (t = 0..T-1,
    float32), which pipelines and training scripts read from the scheduler."""

    noise_schedule: NoiseSchedule
    betas: torch.Tensor | None = None
    alphas: torch.Tensor | None = None
    alphas_cumprod: torch.Tensor | None = None


def training_schedule(cfg) -> TrainingSchedule:
    """The schedule a config describes; ValueError for unknown or conflicting options."""
    if cfg.noise_schedule not in NOISE_SCHEDULES:
        raise ValueError(f"Unknown noise_schedule {cfg.noise_schedule!r}; valid choices: {NOISE_SCHEDULES}")
    if cfg.sigma_data is not None:
        if cfg.use_flow_sigmas or cfg.noise_schedule != "discrete" or cfg.trained_betas is not None:
            raise ValueError("sigma_data selects the EDM schedule; it cannot be combined with use_flow_sigmas, "
                             "a continuous noise_schedule or trained_betas")
        if cfg.prediction_type not in EDM_PREDICTION_TYPES:
            raise ValueError(f"EDM preconditioning (sigma_data) supports prediction_type "
                             f"{EDM_PREDICTION_TYPES}, got {cfg.prediction_type!r}")
        return TrainingSchedule(EDM(cfg.sigma_min if cfg.sigma_min is not None else 0.002,
                                    cfg.sigma_max if cfg.sigma_max is not None else 80.0, cfg.sigma_data))
    if cfg.use_flow_sigmas:
        if cfg.noise_schedule != "discrete":
            raise ValueError("use_flow_sigmas=True is a schedule of its own; leave noise_schedule='discrete'")
        return TrainingSchedule(FlowMatching(cfg.num_train_timesteps))
    if cfg.noise_schedule != "discrete":
        if cfg.snr_shift_scale != 1.0 or cfg.rescale_betas_zero_snr:
            raise ValueError("snr_shift_scale and rescale_betas_zero_snr apply to discrete schedules "
                             "(noise_schedule='discrete') only")
        schedule = VPContinuous(cfg.noise_schedule, cfg.num_train_timesteps)
        alpha, _ = schedule.alpha_sigma(np.arange(cfg.num_train_timesteps, dtype=np.float64))
        alphas_cumprod = torch.from_numpy(alpha**2).float()
        alphas = alphas_cumprod / torch.cat([torch.ones(1), alphas_cumprod[:-1]])
        return TrainingSchedule(schedule, 1.0 - alphas, alphas, alphas_cumprod)
    T = cfg.num_train_timesteps
    if cfg.trained_betas is not None:
        betas = torch.tensor(np.asarray(cfg.trained_betas), dtype=torch.float32)
    elif cfg.beta_schedule == "linear":
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, T, dtype=torch.float32)
    elif cfg.beta_schedule == "scaled_linear":
        betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, T, dtype=torch.float32) ** 2
    elif cfg.beta_schedule == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(T)
    elif cfg.beta_schedule == "sigmoid":  # GeoDiff, as diffusers' DDPMScheduler
        betas = torch.sigmoid(torch.linspace(-6, 6, T)) * (cfg.beta_end - cfg.beta_start) + cfg.beta_start
    else:
        raise ValueError(f"Unknown beta_schedule {cfg.beta_schedule!r}; valid choices: {BETA_SCHEDULES}")
    if cfg.rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # float32, as the model's training schedule
    if cfg.snr_shift_scale != 1.0:  # CogVideoX: SNR divided by snr_shift_scale
        alphas_cumprod = alphas_cumprod / (cfg.snr_shift_scale + (1 - cfg.snr_shift_scale) * alphas_cumprod)
    alphas_cumprod = alphas_cumprod.double()
    if cfg.rescale_betas_zero_snr:
        # as diffusers: close to zero so the first sigma stays finite; below the previous value where the
        # rescaled schedule already reaches 2^-24 (diffusers' table is then not monotone at T - 1)
        alphas_cumprod[-1] = min(2.0**-24, 0.5 * float(alphas_cumprod[-2]))
    # diffusers' training-schedule attributes, read by pipelines and training scripts (t = 0..T-1)
    return TrainingSchedule(VPDiscrete(alphas_cumprod.numpy()), betas, 1.0 - betas, alphas_cumprod.float())
