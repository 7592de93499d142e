"""Learned rounding onto a low-bit grid (AdaRound, arXiv 2004.10568; used for FP weights in arXiv 2408.06995).

Each scaled weight w / s lies between two grid neighbours, ``low`` (toward zero) and ``high`` (away from
zero); the quantized weight is sign * (low + h (high - low)) * s with h = clip(sigmoid(v) (zeta - gamma) +
gamma, 0, 1). v is learned by Adam to reconstruct the layer's full-precision output on calibration inputs
(inputs fake-quantized if the layer's activations are), with the regularizer sum(1 - |2h - 1|^beta),
beta annealed from 20 to 2, which pushes every h to 0 or 1. At the end h is rounded: each weight lands on one
of its two neighbours, a grid value. Works for any grid (non-uniform FP grids included), since only the
two neighbours matter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .formats import FloatFormat, IntFormat
from .layers import channel_view, fake_quantize

ZETA, GAMMA = 1.1, -0.1


def _layer_output(kind: str, conv_options: dict, x, weight, bias):
    return F.linear(x, weight, bias) if kind == "linear" else F.conv2d(x, weight, bias, **conv_options)


def reconstruction_error(kind, conv_options, inputs, weight_fp, weight_q, bias, activation=None) -> float:
    """Mean squared error of the layer output with ``weight_q`` (and quantized inputs) vs full precision."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x in inputs:
            target = _layer_output(kind, conv_options, x, weight_fp, bias)
            xq = x if activation is None else fake_quantize(x, *activation)
            total += float((_layer_output(kind, conv_options, xq, weight_q, bias) - target).pow(2).sum())
            count += target.numel()
    return total / count


def learn_rounding(kind: str, conv_options: dict, weight: torch.Tensor, bias: torch.Tensor | None,
                   fmt: FloatFormat | IntFormat, scale: torch.Tensor, inputs: list[torch.Tensor],
                   activation: tuple | None = None, iterations: int = 300, batch_rows: int = 32,
                   reg_weight: float = 0.01, lr: float = 1e-2, seed: int = 0, progress: bool = True,
                   description: str = "rounding") -> torch.Tensor:
    """Grid values (in units of ``scale``) for ``weight`` learned as above; ``activation`` = (format, input
    scale) when the layer's inputs are quantized. Seeded and bounded (``iterations`` Adam steps)."""
    if not inputs:
        raise ValueError("calibration with zero samples: learned rounding needs the layer's inputs")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    weight = weight.detach().float()
    s = channel_view(scale.float(), weight)
    scaled = weight / s
    low, high = fmt.round_toward_zero(scaled), fmt.round_away_from_zero(scaled)
    span = (high - low).abs()
    fraction = torch.where(span > 0, (scaled.abs() - low.abs()) / span.clamp_min(1e-30), 0.0).clamp(0.0, 1.0)
    # v such that the rectified sigmoid starts at the continuous weight
    v = torch.logit(((fraction - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)).requires_grad_(True)
    sign = torch.sign(scaled)

    def soft_weight(h):
        return sign * (low.abs() + h * span) * s

    data = torch.cat([x.float() for x in inputs])
    targets = _layer_output(kind, conv_options, data, weight, bias).detach()
    data_q = data if activation is None else fake_quantize(data, *activation)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([v], lr=lr)
    warmup = iterations // 5
    for it in tqdm(range(iterations), desc=description, disable=not progress, leave=False):
        rows = torch.randint(len(data_q), (min(batch_rows, len(data_q)),), generator=g)
        h = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
        out = _layer_output(kind, conv_options, data_q[rows], soft_weight(h), bias)
        loss = (out - targets[rows]).pow(2).reshape(len(rows), -1).sum(1).mean()
        if it >= warmup:
            beta = 20.0 + (2.0 - 20.0) * (it - warmup) / max(iterations - warmup, 1)
            loss = loss + reg_weight * (1 - (2 * h - 1).abs().pow(beta)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        h = ((torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA) >= 0.5).float()
        return sign * (low.abs() + h * span)
