"""``MaskedDiffusionPipeline``: sample masked (absorbing-state) diffusion language models in diffusers style.

The denoiser is any callable (an ``nn.Module``, the exact ``HiddenMarkovModel``, a function) mapping token
ids (B, L), with the mask id at positions to fill, to logits (B, L, V) - or an object with ``.logits``.
Attributes it may declare (or pass as pipeline arguments):

- ``time_conditioned`` (default False): called as ``denoiser(tokens, times)`` with times (B,) float32,
  else ``denoiser(tokens)``;
- ``accepts_positions`` (default False): also accepts ``positions=`` (B, k) and returns logits (B, k, V)
  there only (the First-Hitting Sampler picks positions before the call);
- ``mask_id`` / ``mask_token_id``: the mask id, if not given to the pipeline or by the tokenizer.

With a time-agnostic denoiser and ``use_cache=True`` (default), the logits of a sequence are reused while
it has not changed since its last call (the cached MDLM sampler; the First-Hitting Sampler changes every
sequence at every call, so it never hits the cache).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

OUTPUT_TYPES = ("pt", "np", "text")


def _integer(value) -> int | None:
    """``value`` as a Python int if it is an integer (int, numpy or 0-d torch integer; not bool), else None."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.is_floating_point()):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


@dataclass
class MaskedDiffusionPipelineOutput(BaseOutput):
    """``sequences`` (B, L) token ids (tensor or array); ``texts`` when ``output_type="text"``;
    ``num_model_calls``: how many times the denoiser was called (one call = one batch forward)."""

    sequences: torch.Tensor | np.ndarray
    texts: list[str] | None
    num_model_calls: int


class MaskedDiffusionPipeline(DiffusionPipeline):
    """Masked diffusion sampling with a ``FirstHittingScheduler`` or ``MDLMAncestralScheduler``."""

    def __init__(self, denoiser, scheduler, tokenizer=None):
        super().__init__()
        self.register_modules(denoiser=denoiser, scheduler=scheduler, tokenizer=tokenizer)

    def _mask_token_id(self, mask_token_id):
        """The one mask id that the argument, the tokenizer and the denoiser declare (those that do)."""
        sources = {"mask_token_id argument": mask_token_id,
                   "tokenizer.mask_token_id": getattr(self.tokenizer, "mask_token_id", None),
                   "denoiser.mask_token_id": getattr(self.denoiser, "mask_token_id", None),
                   "denoiser.mask_id": getattr(self.denoiser, "mask_id", None)}
        declared = {name: value for name, value in sources.items() if value is not None}
        if not declared:
            raise ValueError("no mask token id: pass mask_token_id=, or use a tokenizer or denoiser that defines one")
        ids = {name: _integer(value) for name, value in declared.items()}
        if any(i is None or i < 0 for i in ids.values()):
            raise ValueError(f"the mask token id must be a non-negative integer, got {declared}")
        if len(set(ids.values())) > 1:
            raise ValueError(f"conflicting mask token ids: {ids}; the denoiser only fills positions that hold "
                             "its own mask id: pass that one (or none)")
        return next(iter(ids.values()))

    def _vocab_size(self) -> int | None:
        size = getattr(self.denoiser, "vocab_size", None)
        size = getattr(getattr(self.denoiser, "config", None), "vocab_size", None) if size is None else size
        return _integer(size)

    def _token_ids(self, ids, name: str, mask_token_id: int, device) -> torch.Tensor:
        """``ids`` as a (rows, length) long tensor of valid ids: in the denoiser's vocabulary or the mask id."""
        ids = torch.as_tensor(ids)
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer token ids, got {ids.dtype}")
        ids = ids[None] if ids.ndim == 1 else ids
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"{name} must be token ids (length,) or (batch, length), got shape {tuple(ids.shape)}")
        vocab = self._vocab_size()
        bad = (ids < 0) if vocab is None else (ids < 0) | ((ids >= vocab) & (ids != mask_token_id))
        if bad.any():
            valid = "ids >= 0" if vocab is None else f"ids 0..{vocab - 1}"
            raise ValueError(f"{name} holds token id {int(ids[bad][0])} outside the vocabulary: valid are {valid} "
                             f"or the mask id {mask_token_id}")
        return ids.to(device=device, dtype=torch.long)

    def _template(self, tokens, batch_size, sequence_length, prompt_ids, mask_token_id, device):
        if batch_size is not None and (_integer(batch_size) or 0) < 1:
            raise ValueError(f"batch_size must be a positive integer (or None), got {batch_size!r}")
        if tokens is not None:
            if sequence_length is not None or prompt_ids is not None:
                raise ValueError("pass either tokens= (a template with mask ids) or sequence_length= / prompt_ids=")
            tokens = self._token_ids(tokens, "tokens", mask_token_id, device)
            if batch_size is not None and len(tokens) != batch_size:
                if len(tokens) != 1:
                    raise ValueError(f"tokens has {len(tokens)} rows but batch_size={batch_size}: pass one row "
                                     f"(repeated batch_size times) or {batch_size} rows, or leave batch_size unset")
                tokens = tokens.expand(batch_size, -1)
            return tokens.clone()
        batch_size = 1 if batch_size is None else _integer(batch_size)
        if (_integer(sequence_length) or 0) < 1:
            raise ValueError(f"sequence_length must be a positive integer (or pass tokens=), got {sequence_length!r}")
        x = torch.full((batch_size, sequence_length), mask_token_id, dtype=torch.long, device=device)
        if prompt_ids is not None:
            prompt = self._token_ids(prompt_ids, "prompt_ids", mask_token_id, device)
            if prompt.shape[1] >= sequence_length or len(prompt) not in (1, batch_size):
                raise ValueError(f"prompt_ids {tuple(prompt.shape)} must be shorter than sequence_length "
                                 f"{sequence_length} with batch 1 or {batch_size}")
            x[:, : prompt.shape[1]] = prompt
        return x

    def _call_denoiser(self, tokens, times, positions, time_conditioned):
        args = (tokens, times.to(device=tokens.device, dtype=torch.float32)) if time_conditioned else (tokens,)
        kwargs = {"positions": positions} if positions is not None else {}
        out = self.denoiser(*args, **kwargs)
        return getattr(out, "logits", out)

    @torch.no_grad()
    def __call__(self, tokens=None, batch_size: int | None = None, sequence_length: int | None = None, prompt_ids=None,
                 num_inference_steps: int | None = None, mask_token_id: int | None = None,
                 time_conditioned: bool | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None, output_type: str = "pt", return_dict: bool = True):
        """Fill every mask of ``tokens`` (B, L; one row is repeated ``batch_size`` times), or of ``batch_size``
        (default 1) sequences of ``sequence_length`` that start with ``prompt_ids``. The mask id given here, by
        the tokenizer and by the denoiser must agree; ids outside the denoiser's ``vocab_size`` (if it declares
        one) are refused before any call. ``num_inference_steps``: the scheduler's step count (MDLM: N steps;
        First-Hitting: None = one call per ``tokens_per_step`` tokens)."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")
        if output_type == "text" and self.tokenizer is None:
            raise ValueError("output_type='text' needs a tokenizer")
        if time_conditioned is None:
            time_conditioned = bool(getattr(self.denoiser, "time_conditioned", False))
        if use_cache and time_conditioned:
            raise ValueError("use_cache=True is only valid for a time-agnostic denoiser (the logits of a "
                             "time-conditioned one change with t): pass use_cache=False")
        accepts_positions = bool(getattr(self.denoiser, "accepts_positions", False))
        device = getattr(self, "_execution_device", None) or torch.device("cpu")
        mask_token_id = self._mask_token_id(mask_token_id)
        x = self._template(tokens, batch_size, sequence_length, prompt_ids, mask_token_id, device)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        num_steps = self.scheduler.begin(x, mask_token_id)
        cached_logits, cached_input, calls = None, None, 0
        for _ in self.progress_bar(range(num_steps)):
            times, positions = self.scheduler.plan(x, generator, need_times=time_conditioned)
            active = (positions >= 0).any(1) if positions is not None else (x == mask_token_id).any(1)
            if not active.any():
                break
            rows = torch.nonzero(active).flatten()
            if positions is not None:  # logits needed at the chosen positions only
                pos = positions[rows]
                logits = self._call_denoiser(x[rows], times[rows] if time_conditioned else None,
                                             pos.clamp_min(0) if accepts_positions else None, time_conditioned)
                if not accepts_positions:
                    self.scheduler.check_logits(logits, x[rows], mask_token_id)
                    logits = logits.gather(1, pos.clamp_min(0)[..., None].expand(-1, -1, logits.shape[-1]))
                calls += 1
            else:
                stale = torch.ones(len(rows), dtype=torch.bool, device=x.device)
                if use_cache and cached_logits is not None:
                    stale = (x[rows] != cached_input[rows]).any(1)
                if stale.any():
                    need = rows[stale]
                    fresh = self._call_denoiser(x[need], times[need] if time_conditioned else None, None,
                                                time_conditioned)
                    self.scheduler.check_logits(fresh, x[need], mask_token_id)
                    calls += 1
                    if cached_logits is None:
                        cached_logits = fresh.new_zeros((*x.shape, fresh.shape[-1]))
                        cached_input = torch.full_like(x, -1)
                    cached_logits[need], cached_input[need] = fresh, x[need]
                logits, pos = cached_logits[rows], None
            out = self.scheduler.step(logits, times[rows] if times is not None else None, x[rows],
                                      mask_token_id=mask_token_id, positions=pos, generator=generator)
            x[rows] = out.prev_sample
            if not use_cache:
                cached_logits = None

        texts = self.tokenizer.batch_decode(x.tolist()) if output_type == "text" else None
        sequences = x.cpu().numpy() if output_type == "np" else x
        if not return_dict:
            return sequences, texts, calls
        return MaskedDiffusionPipelineOutput(sequences=sequences, texts=texts, num_model_calls=calls)
