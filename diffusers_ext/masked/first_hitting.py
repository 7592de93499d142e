"""The First-Hitting Sampler (arXiv 2409.02908) for masked diffusion.

With n masked tokens at time t and mask schedule alpha (the probability that a token is unmasked; alpha(1) =
0, alpha(0) = 1), the next time any masked token unmasks is the minimum of n independent first-hitting
times, so it is drawn exactly by solving

    alpha(tau) = 1 - (1 - alpha(t)) u^(1/n),   u ~ U(0, 1)     (linear schedule: tau = t u^(1/n)).

At tau one masked position, chosen uniformly, unmasks, and its token is drawn from the denoiser's
categorical at that position only: exactly one model call per token, the same process as the
time-stepped ancestral sampler (MDLM, arXiv 2406.07524) with infinitely many steps. Categoricals are
drawn by Gumbel-argmax in float64 by default: float32 uniforms truncate the Gumbel tail (its largest value
is about 16.6), which lowers the effective temperature as the number of draws grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

MASK_SCHEDULES: dict[str, tuple[Callable[[float], float], Callable[[float], float]]] = {
    # name: (alpha(t), its inverse)
    "linear": (lambda t: 1.0 - t, lambda a: 1.0 - a),
    "cosine": (lambda t: math.cos(0.5 * math.pi * t), lambda a: 2.0 / math.pi * math.acos(min(max(a, -1.0), 1.0))),
}


def first_hitting_times(num_masked: int, generator: np.random.Generator, schedule: str = "linear",
                        t_start: float = 1.0) -> np.ndarray:
    """The times at which the masked tokens unmask one by one, from ``t_start`` (decreasing, length n)."""
    if schedule not in MASK_SCHEDULES:
        raise ValueError(f"Unknown mask schedule {schedule!r}; valid choices: {sorted(MASK_SCHEDULES)}")
    alpha, inverse = MASK_SCHEDULES[schedule]
    times, t = [], t_start
    for n in range(num_masked, 0, -1):
        u = generator.random()
        t = inverse(1.0 - (1.0 - alpha(t)) * u ** (1.0 / n))
        times.append(t)
    return np.array(times)


def gumbel_categorical(logits: torch.Tensor, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """Indices drawn from softmax(logits) over the last axis by Gumbel-argmax with uniforms in ``dtype``."""
    u = torch.rand(logits.shape, generator=generator, dtype=dtype, device=logits.device)
    tiny = torch.finfo(dtype).tiny
    exponential = -torch.log(u.clamp_min(tiny))
    gumbel = -torch.log(exponential.clamp_min(tiny))
    return torch.argmax(logits.to(dtype) + gumbel, dim=-1)


def first_hitting_sample(denoiser, tokens: torch.Tensor, mask_id: int, generator: torch.Generator,
                         schedule: str = "linear", sampling_dtype=torch.float64, time_conditioned: bool = False):
    """Unmask every ``mask_id`` token of ``tokens`` (B, L), one per model call (per sequence).

    ``denoiser(tokens, t)`` returns logits (B, L, V); ``t`` (B,) are the first-hitting times (ignored by a
    time-agnostic denoiser; then they are not even drawn). Returns the completed tokens and the number of
    model calls."""
    tokens = tokens.clone()
    masked = tokens == mask_id
    if not masked.any():
        raise ValueError(f"no mask token (id {mask_id}) to sample: the sequences are complete already")
    np_rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    counts = masked.sum(1)
    times = [first_hitting_times(int(c), np_rng, schedule) if time_conditioned else None for c in counts]
    calls = 0
    for step in range(int(counts.max())):
        active = counts > step  # sequences with masked tokens left
        t = torch.tensor([times[b][step] if time_conditioned and active[b] else 0.0 for b in range(len(tokens))],
                         dtype=torch.float64)
        logits = denoiser(tokens, t)
        if logits.shape[:2] != tokens.shape:
            raise ValueError(f"denoiser logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
        calls += 1
        for b in torch.nonzero(active).flatten().tolist():
            positions = torch.nonzero(tokens[b] == mask_id).flatten()
            pick = positions[int(torch.randint(len(positions), (1,), generator=generator))]
            tokens[b, pick] = gumbel_categorical(logits[b, pick], generator, sampling_dtype)
    return tokens, calls
