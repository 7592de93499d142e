"""The MDLM ancestral sampler (arXiv 2406.07524): the time-stepped baseline of the First-Hitting Sampler.

On the grid t_i = 1 - i/N, a step from t to s draws, at every masked position, one categorical over the
V tokens and the mask: token v with probability p(v) (alpha(s) - alpha(t)) / (1 - alpha(t)), staying masked
with probability (1 - alpha(s)) / (1 - alpha(t)) - MDLM's reverse transition, drawn as one (V + 1)-way
Gumbel-argmax. With many steps each token's probability per step is tiny, which is where float32 uniforms
fail (see ``categorical.py``). The cached variant (``MaskedDiffusionPipeline(..., use_cache=True)`` with a
time-agnostic denoiser) reuses the logits while the sequence is unchanged: steps that unmask nothing
cost no model call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.configuration_utils import register_to_config

from .base import MaskedScheduler
from .categorical import gumbel_categorical


class MDLMAncestralScheduler(MaskedScheduler):
    """MDLM ancestral sampling with ``num_inference_steps`` uniform steps in t (arXiv 2406.07524).

    Options as ``FirstHittingScheduler`` (mask schedule, temperature / top-k / top-p, sampling dtype)."""

    @register_to_config
    def __init__(self, mask_schedule: str | Callable = "linear", schedule_exponent: float = 2.0,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 sampling_dtype: str = "float64", num_inference_steps: int = 128):
        self._setup(mask_schedule, schedule_exponent, temperature, top_k, top_p, sampling_dtype)
        self._step_index = 0
        self._mask_token_id = None
        self.set_timesteps(num_inference_steps)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None):
        """N uniform steps from t = 1 to t = 0 (``None``: the configured ``num_inference_steps``)."""
        n = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        if int(n) != n or n < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {n!r}")
        self.num_inference_steps = int(n)
        grid = torch.linspace(1.0, 0.0, self.num_inference_steps + 1, dtype=torch.float64)
        alpha = self.mask_schedule.alpha(grid)
        # per-step log-probabilities of "unmask now" and "stay masked" (a schedule still at alpha = 1 unmasks all)
        masked_before = 1.0 - alpha[:-1]
        stay = torch.where(masked_before > 0, (1.0 - alpha[1:]) / masked_before.clamp_min(1e-300), 0.0)
        self._log_unmask, self._log_stay = torch.log1p(-stay), torch.log(stay)
        self.timesteps = grid[:-1].to(device) if device is not None else grid[:-1]
        self._step_index = 0

    def begin(self, sample: torch.Tensor, mask_token_id: int) -> int:
        counts = self.check_sample(sample, mask_token_id).sum(1)
        if (counts == 0).any():
            raise ValueError(f"sequence {int(torch.nonzero(counts == 0)[0])} has no mask token (id {mask_token_id}): "
                             "nothing to sample")
        self._mask_token_id = mask_token_id
        self._step_index = 0
        return self.num_inference_steps

    def plan(self, sample: torch.Tensor, generator=None, need_times: bool = False):
        t = self.timesteps[min(self._step_index, self.num_inference_steps - 1)]
        return torch.full((len(sample),), float(t), dtype=torch.float64), None

    def step(self, model_output: torch.Tensor, timestep, sample: torch.LongTensor, *, mask_token_id=None,
             generator: torch.Generator | None = None, temperature: float | None = None, top_k: int | None = None,
             top_p: float | None = None, return_dict: bool = True, **unused):
        """One step t_i -> t_{i+1} (the scheduler counts i) from logits (B, L, V)."""
        if self._step_index >= self.num_inference_steps:
            raise ValueError(f"all {self.num_inference_steps} steps are done: call set_timesteps / begin again")
        mask_token_id = self._mask_token_id if mask_token_id is None else mask_token_id
        masked = self.check_sample(sample, mask_token_id)
        self.check_logits(model_output, sample, mask_token_id)
        i = self._step_index
        logits = model_output[masked]  # (n, V)
        self.check_finite_logits(logits, mask_token_id)
        log_probs = self.log_probs(logits, mask_token_id, temperature, top_k, top_p)
        vocab = log_probs.shape[-1]
        stay = float(self._log_stay[i])
        joint = torch.cat([log_probs + float(self._log_unmask[i]), log_probs.new_full((len(log_probs), 1), stay)], -1)
        draws = gumbel_categorical(joint, generator, self.sampling_dtype)
        unmask = draws < vocab

        new_sample, transfer = sample.clone(), torch.zeros_like(masked)
        rows, cols = torch.nonzero(masked, as_tuple=True)
        rows, cols, tokens = rows[unmask], cols[unmask], draws[unmask]
        new_sample[rows, cols] = tokens.to(sample.dtype)
        transfer[rows, cols] = True
        sampled_probs = torch.zeros(sample.shape, dtype=torch.float32, device=sample.device)
        sampled_probs[rows, cols] = log_probs[unmask].gather(-1, tokens[:, None])[:, 0].exp().float()
        self._step_index += 1
        return self.output(sample, new_sample, transfer, new_sample, sampled_probs, model_output, return_dict)
