"""Categorical sampling for masked diffusion: temperature / top-k / top-p filtering and Gumbel-argmax.

Gumbel-argmax draws argmax(logits + G), G = -log(-log U). With float32 uniforms (24-bit, U in
[2^-24, 1 - 2^-24]) G is confined to about [-2.8, 16.6]: a class whose probability is below roughly
e^-17 of the leading class is never drawn and classes near that limit are under-drawn, which lowers the
effective temperature (arXiv 2409.02908, section on the numerical issue). float64 uniforms push the
limit to G of about 37, so sampling defaults to float64.
"""

from __future__ import annotations

import torch

SAMPLING_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_sampling_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in SAMPLING_DTYPES.values():
        return dtype
    if dtype in SAMPLING_DTYPES:
        return SAMPLING_DTYPES[dtype]
    raise ValueError(f"Unknown sampling dtype {dtype!r}; valid choices: {list(SAMPLING_DTYPES)}")


def check_sampling_options(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not (temperature >= 0.0):
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must lie in (0, 1] or be None, got {top_p!r}")


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Log-probabilities (same dtype) after temperature scaling, top-k and nucleus (top-p) truncation;
    removed classes get -inf. temperature 0 keeps only the most likely class (greedy)."""
    check_sampling_options(temperature, top_k, top_p)
    if temperature == 0.0:
        keep = logits == logits.amax(-1, keepdim=True)
        first = keep & (keep.cumsum(-1) == 1)  # one class on ties
        return torch.where(first, 0.0, float("-inf")).to(logits.dtype)
    out = torch.log_softmax(logits / temperature, dim=-1)
    if top_k is not None and top_k < out.shape[-1]:
        kth = torch.topk(out, int(top_k), dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_lp, order = torch.sort(out, dim=-1, descending=True)
        mass_before = torch.cumsum(sorted_lp.exp(), dim=-1) - sorted_lp.exp()  # mass of the strictly better
        drop_sorted = mass_before >= top_p  # keep the smallest prefix reaching top_p (the first class always)
        out = out.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    if top_k is not None or (top_p is not None and top_p < 1.0):
        out = torch.log_softmax(out, dim=-1)
    return out


def uniform(shape, generator: torch.Generator | None, dtype=torch.float64, device=None) -> torch.Tensor:
    """U(0, 1) draws made on the generator's device (reproducible for a given generator), moved to ``device``."""
    source = generator.device if generator is not None else device
    draws = torch.rand(shape, generator=generator, dtype=dtype, device=source)
    return draws if device is None else draws.to(device)


def gumbel_categorical(logits: torch.Tensor, generator: torch.Generator | None = None,
                       dtype=torch.float64) -> torch.Tensor:
    """Indices drawn from softmax(logits) over the last axis by Gumbel-argmax with uniforms in ``dtype``."""
    dtype = resolve_sampling_dtype(dtype)
    tiny = torch.finfo(dtype).tiny
    noise = uniform(logits.shape, generator, dtype, logits.device)
    noise.clamp_(min=tiny).log_().neg_().clamp_(min=tiny).log_()  # log(-log u) = -Gumbel, in place
    return torch.argmax(logits.to(dtype) - noise, dim=-1)
