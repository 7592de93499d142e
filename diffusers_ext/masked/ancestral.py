"""The MDLM ancestral sampler (arXiv 2406.07524): the time-stepped baseline of the First-Hitting Sampler.

On a grid t_0 = 1 > t_1 > ... > t_N = 0, a step from t to s unmasks each masked token independently with
probability (alpha(s) - alpha(t)) / (1 - alpha(t)), drawing its token from the denoiser's categorical at its
position (a full L x V draw per step). The cached variant (time-agnostic denoisers) reuses the last logits
while no token changed, so steps that unmask nothing cost no model call.
"""

from __future__ import annotations

import torch

from .first_hitting import MASK_SCHEDULES, gumbel_categorical


def mdlm_ancestral_sample(denoiser, tokens: torch.Tensor, mask_id: int, num_steps: int, generator: torch.Generator,
                          schedule: str = "linear", sampling_dtype=torch.float64, cached: bool = False):
    """Unmask every ``mask_id`` token of ``tokens`` (B, L) in ``num_steps`` steps; ``denoiser(tokens, t)`` returns
    logits (B, L, V). Returns the completed tokens and the number of model calls."""
    if schedule not in MASK_SCHEDULES:
        raise ValueError(f"Unknown mask schedule {schedule!r}; valid choices: {sorted(MASK_SCHEDULES)}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    tokens = tokens.clone()
    if not (tokens == mask_id).any():
        raise ValueError(f"no mask token (id {mask_id}) to sample: the sequences are complete already")
    alpha = MASK_SCHEDULES[schedule][0]
    calls, logits = 0, None
    for k in range(num_steps):
        t, s = 1.0 - k / num_steps, 1.0 - (k + 1) / num_steps
        masked = tokens == mask_id
        if not masked.any():
            break
        if logits is None or not cached:
            logits = denoiser(tokens, torch.full((len(tokens),), t, dtype=torch.float64))
            if logits.shape[:2] != tokens.shape:
                raise ValueError(f"denoiser logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
            calls += 1
        a_t, a_s = alpha(t), alpha(s)
        p_unmask = 1.0 if s == 0.0 else (a_s - a_t) / (1.0 - a_t)
        u = torch.rand(tokens.shape, generator=generator, dtype=torch.float64)
        unmask = masked & (u < p_unmask)
        if unmask.any():
            draws = gumbel_categorical(logits, generator, sampling_dtype)
            tokens = torch.where(unmask, draws, tokens)
            logits = None  # the context changed
    return tokens, calls
