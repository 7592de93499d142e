"""What the masked-diffusion schedulers share: config (mask schedule, sampling options), input checks, the
per-call protocol the ``MaskedDiffusionPipeline`` drives, and the step output (the fields of diffusers'
``BlockRefinementSchedulerOutput``, so ``LLaDA2Pipeline`` can read it).

Per-call protocol: ``begin(sample, mask_token_id)`` -> number of model calls to make;
``plan(sample, generator, need_times)`` -> (times (B,) or None, positions (B, k) or None): the times to
give a time-conditioned denoiser and, for samplers that decide where to unmask before the call, the
positions whose logits are needed (-1 = none); then ``step(logits, timestep, sample, ...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from ..pipeline_loading import PipelineLoadable
from .categorical import check_sampling_options, filter_logits, resolve_sampling_dtype
from .mask_schedules import get_mask_schedule


@dataclass
class MaskedSchedulerOutput(BaseOutput):
    """``prev_sample`` (B, L) after the step; ``transfer_index`` (B, L) the positions unmasked now;
    ``sampled_tokens`` / ``sampled_probs`` (B, L) the drawn tokens and their probabilities there (the
    sample and 0 elsewhere); ``editing_transfer_index`` is always empty (these samplers never change an
    unmasked token); ``pred_logits`` the model output."""

    prev_sample: torch.LongTensor
    transfer_index: torch.BoolTensor
    editing_transfer_index: torch.BoolTensor
    sampled_tokens: torch.LongTensor
    sampled_probs: torch.Tensor
    pred_logits: torch.Tensor


class MaskedScheduler(PipelineLoadable, SchedulerMixin, ConfigMixin):
    """Base of the absorbing-state samplers. Subclasses call ``_setup`` from their ``__init__``.

    ``compatibles`` lists the masked schedulers of this package and the diffusers classes named in
    ``_compatibles``: ``from_config`` between them carries the shared settings and keeps the others hidden in
    the config (so they survive a round trip)."""

    order = 1

    @classmethod
    def _get_compatibles(cls):
        return list(dict.fromkeys([cls, *MaskedScheduler.__subclasses__(), *super()._get_compatibles()]))

    def _setup(self, mask_schedule: str | Callable, schedule_exponent: float, temperature: float,
               top_k: int | None, top_p: float | None, sampling_dtype: str):
        self.mask_schedule = get_mask_schedule(mask_schedule, schedule_exponent)
        if callable(mask_schedule):  # a function is not JSON: the saved config says "custom"
            self.register_to_config(mask_schedule="custom")
        check_sampling_options(temperature, top_k, top_p)
        self.sampling_dtype = resolve_sampling_dtype(sampling_dtype)
        self.num_inference_steps = None
        self.timesteps = torch.zeros(0)

    @classmethod
    def from_config(cls, config=None, **kwargs):
        if config is not None and dict(config).get("mask_schedule") == "custom" and "mask_schedule" not in kwargs:
            raise ValueError("this config used a custom mask schedule (a Python callable, not saved): pass it "
                             "again as from_config(config, mask_schedule=alpha)")
        return super().from_config(config, **kwargs)

    # ---------------------------------------------------------------------------------------- checks
    @staticmethod
    def check_sample(sample: torch.Tensor, mask_token_id: int | None) -> torch.BoolTensor:
        """The masked positions of a (B, L) integer sample; clear errors for anything else."""
        if mask_token_id is None:
            raise ValueError("mask_token_id is required (the id that marks positions to sample)")
        if not isinstance(sample, torch.Tensor) or sample.ndim != 2 or sample.dtype not in (torch.long, torch.int):
            raise ValueError(f"sample must be an integer tensor (batch, length), got "
                             f"{getattr(sample, 'dtype', type(sample))} {tuple(getattr(sample, 'shape', ()))}")
        if sample.numel() == 0:
            raise ValueError(f"sample is empty (shape {tuple(sample.shape)}): need at least one sequence and position")
        return sample == mask_token_id

    @staticmethod
    def check_logits(logits: torch.Tensor, sample: torch.Tensor, mask_token_id: int, positions=None) -> None:
        want = tuple(sample.shape) if positions is None else tuple(positions.shape)
        if logits.ndim != 3 or tuple(logits.shape[:2]) != want:
            raise ValueError(f"model output must be logits of shape {want} + (vocab_size,), got {tuple(logits.shape)}")
        vocab = logits.shape[-1]
        tokens = sample[sample != mask_token_id]
        if tokens.numel() and (int(tokens.max()) >= vocab or int(tokens.min()) < 0):
            raise ValueError(f"vocabulary mismatch: the sample holds token id {int(tokens.max())} (or a negative "
                             f"id) but the model output has {vocab} logits per position (ids 0..{vocab - 1}); "
                             f"mask id {mask_token_id}")
        if mask_token_id < vocab and vocab == 1:
            raise ValueError("the model output's only class is the mask token: nothing to sample")

    @staticmethod
    def check_finite_logits(logits: torch.Tensor, mask_token_id: int) -> None:
        """``logits`` (n, V) at the positions about to be sampled: no NaN or +inf, and at each position some
        token other than the mask with a finite logit (-inf elsewhere is fine: it excludes a token)."""
        bad = (torch.isnan(logits) | torch.isposinf(logits)).any(-1)
        if bad.any():
            raise ValueError(f"the model output has NaN or +inf logits at {int(bad.sum())} of the {len(logits)} "
                             "positions to sample (fp16 overflow? check the denoiser)")
        usable = torch.isfinite(logits)
        if mask_token_id < logits.shape[-1]:
            usable[:, mask_token_id] = False
        dead = ~usable.any(-1)
        if dead.any():
            raise ValueError(f"at {int(dead.sum())} of the {len(logits)} positions to sample every logit is -inf "
                             f"(the mask token {mask_token_id} never counts): no token can be drawn there")

    # ------------------------------------------------------------------------------------ sampling
    def log_probs(self, logits: torch.Tensor, mask_token_id: int, temperature=None, top_k=None, top_p=None):
        """Filtered log-probabilities in the sampling dtype; the mask token (if inside the vocabulary) is never
        drawn."""
        cfg = self.config
        temperature = cfg.temperature if temperature is None else temperature
        top_k = cfg.top_k if top_k is None else top_k
        top_p = cfg.top_p if top_p is None else top_p
        logits = logits.to(self.sampling_dtype)
        if mask_token_id < logits.shape[-1]:
            logits = logits.clone()
            logits[..., mask_token_id] = float("-inf")
        return filter_logits(logits, temperature, top_k, top_p)

    @staticmethod
    def output(sample, new_sample, transfer, tokens, probs, logits, return_dict):
        editing = torch.zeros_like(transfer)
        if not return_dict:
            return new_sample, transfer, editing, tokens, probs, logits
        return MaskedSchedulerOutput(new_sample, transfer, editing, tokens, probs, logits)
