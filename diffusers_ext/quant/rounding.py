"""Learned rounding onto a low-bit grid (AdaRound, arXiv 2004.10568; used for FP weights in arXiv 2408.06995).

Each scaled weight w / s lies between two grid neighbours, ``low`` (toward zero) and ``high`` (away from
zero); the quantized weight is sign * (low + h (high - low)) * s with h = clip(sigmoid(v) (zeta - gamma) +
gamma, 0, 1) (``RoundingVariables``, shared with block reconstruction in ``blocks.py``). v is learned by
Adam to reconstruct the layer's full-precision output on calibration inputs
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
from .layers import fake_quantize, scale_view

ZETA, GAMMA = 1.1, -0.1


def _layer_output(kind: str, conv_options: dict, x, weight, bias):
    return F.linear(x, weight, bias) if kind == "linear" else F.conv2d(x, weight, bias, **conv_options)


def reconstruction_error(kind, conv_options, inputs, weight_fp, weight_q, bias, activation=None,
                         quantized_inputs=None) -> float:
    """Mean squared error of the layer output with ``weight_q`` (and quantized inputs: ``activation`` =
    (format, scale), or ``quantized_inputs`` given one per input) vs full precision."""
    total, count = 0.0, 0
    with torch.no_grad():
        for k, x in enumerate(inputs):
            target = _layer_output(kind, conv_options, x, weight_fp, bias)
            xq = x if activation is None else fake_quantize(x, *activation)
            xq = xq if quantized_inputs is None else quantized_inputs[k]
            total += float((_layer_output(kind, conv_options, xq, weight_q, bias) - target).pow(2).sum())
            count += target.numel()
    return total / count


class RoundingVariables:
    """The learnable rounding of one weight tensor: v, with h(v) the rectified sigmoid above, and the two grid
    neighbours of w / s. v starts where the soft weight equals the continuous weight."""

    def __init__(self, weight: torch.Tensor, fmt: FloatFormat | IntFormat, scale: torch.Tensor):
        weight = weight.detach().float()
        self.scale = scale_view(scale.detach().float(), weight)
        scaled = weight / self.scale
        self.low = fmt.round_toward_zero(scaled).abs()
        self.span = (fmt.round_away_from_zero(scaled).abs() - self.low)
        self.sign = torch.sign(scaled)
        fraction = torch.where(self.span > 0, (scaled.abs() - self.low) / self.span.clamp_min(1e-30), 0.0)
        start = ((fraction.clamp(0.0, 1.0) - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
        self.v = torch.logit(start).requires_grad_(True)

    def h(self) -> torch.Tensor:
        return (torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def soft_weight(self) -> torch.Tensor:
        return self.sign * (self.low + self.h() * self.span) * self.scale

    def grid(self) -> torch.Tensor:
        """The hard rounding: each weight on one of its two neighbours (in units of the scale)."""
        with torch.no_grad():
            return self.sign * (self.low + (self.h() >= 0.5).float() * self.span)

    def regularizer(self, iteration: int, iterations: int) -> torch.Tensor:
        """sum(1 - |2h - 1|^beta), beta annealed 20 -> 2 after a warm-up of a fifth of the iterations (0 before)."""
        warmup = iterations // 5
        if iteration < warmup:
            return self.v.new_zeros(())
        beta = 20.0 + (2.0 - 20.0) * (iteration - warmup) / max(iterations - warmup, 1)
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()


def learn_rounding(kind: str, conv_options: dict, weight: torch.Tensor, bias: torch.Tensor | None,
                   fmt: FloatFormat | IntFormat, scale: torch.Tensor, inputs: list[torch.Tensor],
                   activation: tuple | None = None, iterations: int = 300, batch_rows: int = 32,
                   reg_weight: float = 0.01, lr: float = 1e-2, seed: int = 0, progress: bool = True,
                   description: str = "rounding", quantized_inputs: list[torch.Tensor] | None = None
                   ) -> torch.Tensor:
    """Grid values (in units of ``scale``) for ``weight`` learned as above; ``activation`` = (format, input
    scale) when the layer's inputs are quantized, or ``quantized_inputs`` given directly (one per entry of
    ``inputs``, e.g. with per-timestep-group scales). Seeded and bounded (``iterations`` Adam steps)."""
    if not inputs:
        raise ValueError("calibration with zero samples: learned rounding needs the layer's inputs")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    weight = weight.detach().float()
    rounding = RoundingVariables(weight, fmt, scale)
    data = torch.cat([x.float() for x in inputs])
    targets = _layer_output(kind, conv_options, data, weight, bias).detach()
    data_q = _quantized(inputs, activation, quantized_inputs)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([rounding.v], lr=lr)
    for it in tqdm(range(iterations), desc=description, disable=not progress, leave=False):
        rows = torch.randint(len(data_q), (min(batch_rows, len(data_q)),), generator=g)
        out = _layer_output(kind, conv_options, data_q[rows], rounding.soft_weight(), bias)
        loss = (out - targets[rows]).pow(2).reshape(len(rows), -1).sum(1).mean()
        loss = loss + reg_weight * rounding.regularizer(it, iterations)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return rounding.grid()


def _quantized(inputs, activation, quantized_inputs) -> torch.Tensor:
    """The layer's inputs as it sees them after input quantization, concatenated."""
    if quantized_inputs is not None:
        if len(quantized_inputs) != len(inputs):
            raise ValueError(f"quantized_inputs needs one tensor per input ({len(inputs)}), "
                             f"got {len(quantized_inputs)}")
        return torch.cat([x.float() for x in quantized_inputs])
    data = torch.cat([x.float() for x in inputs])
    return data if activation is None else fake_quantize(data, *activation)
