"""The First-Hitting Sampler (arXiv 2409.02908) for masked diffusion, as a diffusers-style scheduler.

With n masked tokens at time t, each unmasks independently at a time T with P(T < s) = alpha(s) relative
to alpha(t) (mask schedule alpha: P(unmasked), alpha(0) = 1, alpha(1) = 0). The next event is the first of
n such times, drawn exactly by

    1 - alpha(tau) = (1 - alpha(t)) u^(1/n),   u ~ U(0, 1)     (linear schedule: tau = t u^(1/n)).

At tau one masked position, chosen uniformly, unmasks, and its token is drawn from the denoiser's
categorical at that position only: one model call per token, the same process as the time-stepped
ancestral sampler (MDLM, arXiv 2406.07524) in the limit of infinitely many steps. A time-agnostic
denoiser needs no times at all; a time-conditioned one is called at tau. The position is chosen before the
call, so a denoiser that can return logits at given positions only saves the L x V output head.

Parallel variant (``tokens_per_step`` = k): k positions per call, drawn independently from the same
logits, the call made at the first of the k hitting times (an approximation, like any parallel decoding).

The scheduler also speaks the protocol of diffusers' ``BlockRefinementScheduler`` (``set_timesteps(n,
block_length=...)``, ``step(logits, step_index, block, mask_token_id=..., temperature=..., ...)``,
``check_eos_finished``, ``check_block_should_continue``), so it drops into ``LLaDA2Pipeline``: there each
call unmasks ceil(masked / calls left) uniformly chosen positions of the block instead of the most
confident ones; the threshold and editing options do not apply (nothing is ever re-masked or edited).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_block_refinement import BlockRefinementScheduler

from .base import MaskedScheduler
from .categorical import gumbel_categorical, uniform


class FirstHittingScheduler(MaskedScheduler):
    """First-Hitting Sampler (arXiv 2409.02908).

    Args:
        mask_schedule: "linear", "cosine", "polynomial" (with ``schedule_exponent``) or a callable alpha(t)
            on float64 tensors (alpha(0) = 1, alpha(1) = 0, non-increasing; inverted by bisection).
        tokens_per_step: positions unmasked per model call (1 = the exact sampler).
        temperature, top_k, top_p: applied to the categorical of each unmasked position (0 = greedy).
        sampling_dtype: "float64" (default) or "float32" (reproduces the truncated-Gumbel bias).
        block_length: the block size used under ``LLaDA2Pipeline`` when it passes none.
    """

    _compatibles = ["BlockRefinementScheduler"]

    @register_to_config
    def __init__(self, mask_schedule: str | Callable = "linear", schedule_exponent: float = 2.0,
                 tokens_per_step: int = 1, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, sampling_dtype: str = "float64", block_length: int = 32):
        self._setup(mask_schedule, schedule_exponent, temperature, top_k, top_p, sampling_dtype)
        if int(tokens_per_step) != tokens_per_step or tokens_per_step < 1:
            raise ValueError(f"tokens_per_step must be a positive integer, got {tokens_per_step!r}")
        self._level = None  # 1 - alpha(t) per sequence: the current time, as mask probability
        self._step_index = 0
        self._mask_token_id = None
        self._block_done = False

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, block_length: int | None = None):
        """``None`` (default): ``tokens_per_step`` tokens per call, as many calls as needed (exactly L for
        L masked tokens at k = 1). An integer n: n calls in all, each unmasking ceil(masked / calls left)
        tokens per sequence (the ``BlockRefinementScheduler`` contract)."""
        if num_inference_steps is not None and (int(num_inference_steps) != num_inference_steps
                                                or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps must be a positive integer or None, got {num_inference_steps!r}")
        if block_length is not None and block_length < 1:
            raise ValueError(f"block_length must be > 0, got {block_length}")
        self.num_inference_steps = num_inference_steps
        steps = num_inference_steps or 0
        self.timesteps = torch.arange(steps - 1, -1, -1, device=device, dtype=torch.long)
        self._step_index = 0
        self._block_done = False

    # ------------------------------------------------------------------ MaskedDiffusionPipeline protocol
    def begin(self, sample: torch.Tensor, mask_token_id: int) -> int:
        """Start a run on ``sample``; returns the number of model calls it takes."""
        counts = self.check_sample(sample, mask_token_id).sum(1)
        if (counts == 0).any():
            raise ValueError(f"sequence {int(torch.nonzero(counts == 0)[0])} has no mask token (id {mask_token_id}): "
                             "nothing to sample")
        k = self.config.tokens_per_step
        if self.num_inference_steps is None and (counts < k).any():
            raise ValueError(f"tokens_per_step={k} is larger than the {int(counts.min())} masked tokens of a sequence")
        if self.num_inference_steps is not None and (counts < self.num_inference_steps).any():
            raise ValueError(f"num_inference_steps={self.num_inference_steps} is larger than the "
                             f"{int(counts.min())} masked tokens of a sequence (each call unmasks at least one)")
        self._mask_token_id = mask_token_id
        self._level = torch.ones(len(sample), dtype=torch.float64)
        self._step_index = 0
        return self.num_inference_steps or int(-(-int(counts.max()) // k))

    def _tokens_this_call(self, num_masked: torch.Tensor, step_index: int) -> torch.Tensor:
        if self.num_inference_steps is None:
            return num_masked.clamp(max=self.config.tokens_per_step)
        calls_left = max(self.num_inference_steps - step_index, 1)
        return -(-num_masked // calls_left)  # ceil

    @staticmethod
    def _choose_positions(masked: torch.Tensor, counts: torch.Tensor, generator) -> torch.Tensor:
        """(B, max count) uniformly chosen masked positions, -1 past each row's count."""
        k = int(counts.max())
        keys = uniform(masked.shape, generator, device=masked.device)
        keys = keys.masked_fill(~masked, -1.0)
        positions = torch.topk(keys, k, dim=1).indices if k else keys.new_zeros((len(keys), 0), dtype=torch.long)
        valid = torch.arange(k, device=masked.device)[None] < counts[:, None]
        return torch.where(valid, positions, -1)

    def plan(self, sample: torch.Tensor, generator=None, need_times: bool = False):
        """The next call's hitting times (B,) float64 (only if ``need_times``) and positions (B, k)."""
        masked = sample == self._mask_token_id
        num_masked = masked.sum(1)
        counts = self._tokens_this_call(num_masked, self._step_index)
        positions = self._choose_positions(masked, counts, generator)
        if not need_times:
            return None, positions
        level, call_level = self._level.clone(), None
        n = num_masked.cpu().to(torch.float64)
        for j in range(int(counts.max())):  # the next k first-hitting times; the call is at the first
            u = uniform(len(level), generator, device="cpu")
            hit = j < counts.cpu()
            level = torch.where(hit, level * u ** (1.0 / (n - j).clamp_min(1.0)), level)
            call_level = level.clone() if j == 0 else call_level
        self._level = level
        return self.mask_schedule.inverse(1.0 - call_level), positions

    # ---------------------------------------------------------------------------------------- step
    def step(self, model_output: torch.Tensor, timestep, sample: torch.LongTensor, *, mask_token_id=None,
             positions: torch.Tensor | None = None, generator: torch.Generator | None = None,
             temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
             sampling_method: str = "auto", return_dict: bool = True, **block_refinement_options):
        """Unmask ``positions`` (B, k; -1 = none) with tokens drawn from ``model_output`` (B, k, V) at those
        positions; without ``positions`` (``LLaDA2Pipeline``), ``model_output`` is (B, L, V) and the
        positions are chosen here. ``block_refinement_options`` (threshold, editing_threshold, minimal_topk,
        prompt_mask) are accepted for the ``BlockRefinementScheduler`` protocol and have no effect."""
        mask_token_id = self._mask_token_id if mask_token_id is None else mask_token_id
        masked = self.check_sample(sample, mask_token_id)
        if sampling_method not in ("auto", "greedy", "multinomial"):
            raise ValueError(f"sampling_method must be 'auto', 'greedy' or 'multinomial', got {sampling_method!r}")
        if positions is None:
            self.check_logits(model_output, sample, mask_token_id)
            step_index = int(timestep) if self.num_inference_steps is not None else self._step_index
            positions = self._choose_positions(masked, self._tokens_this_call(masked.sum(1), step_index), generator)
            index = positions.clamp_min(0)[..., None].expand(-1, -1, model_output.shape[-1])
            model_output = model_output.gather(1, index)
        else:
            self.check_logits(model_output, sample, mask_token_id, positions)
        valid = positions >= 0
        rows, cols = torch.nonzero(valid, as_tuple=True)
        targets = positions[rows, cols]
        if not masked[rows, targets].all():
            raise ValueError("positions to unmask must hold the mask token")
        self.check_finite_logits(model_output[valid], mask_token_id)
        if sampling_method == "greedy":
            temperature = 0.0
        log_probs = self.log_probs(model_output, mask_token_id, temperature, top_k, top_p)
        tokens = gumbel_categorical(log_probs, generator, self.sampling_dtype)
        probs = log_probs.gather(-1, tokens[..., None])[..., 0].exp()

        new_sample = sample.clone()
        new_sample[rows, targets] = tokens[rows, cols].to(sample.dtype)
        transfer = torch.zeros_like(masked)
        transfer[rows, targets] = True
        sampled_probs = torch.zeros(sample.shape, dtype=torch.float32, device=sample.device)
        sampled_probs[rows, targets] = probs[rows, cols].float()
        self._step_index += 1
        self._block_done = not (new_sample == mask_token_id).any()
        return self.output(sample, new_sample, transfer, new_sample, sampled_probs, model_output, return_dict)

    # ----------------------------------------------------------------- BlockRefinementScheduler protocol
    check_eos_finished = staticmethod(BlockRefinementScheduler.check_eos_finished)

    def check_block_should_continue(self, step_idx, masks_remaining, editing_enabled, editing_transfer_index,
                                    post_steps, max_post_steps, finished) -> bool:
        """``BlockRefinementScheduler``'s rule without editing (this sampler never edits, so ``editing_*`` and
        ``post_steps`` do not matter): stop when every sequence is finished, when the block had no masks
        before the step, or at ``num_inference_steps`` steps; also stop as soon as the last step filled the
        block (``masks_remaining`` is read before the step, so the rule alone would cost one more call)."""
        if finished.all() or not masks_remaining or self._block_done:
            return False
        return self.num_inference_steps is None or step_idx < self.num_inference_steps
