"""Per-layer choice of the weight format (arXiv 2408.06995 searches the exponent/mantissa split and the
exponent bias per tensor): among candidate formats, the one whose round-to-nearest weights (with their
per-channel scales) reconstruct the layer's output on calibration inputs best.

The exponent bias is a power-of-two scale, which the searched per-channel scale already covers (it spans a
factor above 2): ``fp4_e2m1_b2`` and ``fp4_e2m1`` give the same quantized weights. What the choice changes is
the grid's shape: E3M0 (powers of two), E2M1, E1M2 (uniform: the INT4 grid -7..7 times 1/4).
"""

from __future__ import annotations

import torch

from .calibration import weight_scales
from .formats import FloatFormat, IntFormat
from .layers import scale_view
from .rounding import reconstruction_error

FP4_FORMATS = ("fp4_e2m1", "fp4_e3m0", "fp4_e1m2")


def choose_weight_format(kind: str, conv_options: dict, weight: torch.Tensor, bias: torch.Tensor | None,
                         candidates: list[FloatFormat | IntFormat], inputs: list[torch.Tensor],
                         quantized_inputs: list[torch.Tensor] | None = None, group_size: int | None = None
                         ) -> tuple[FloatFormat | IntFormat, torch.Tensor, dict[str, float]]:
    """(format, its scales (per channel, or per group of ``group_size``), output error of every candidate by
    name) with the lowest output MSE on ``inputs`` (the layer sees ``quantized_inputs`` when its activations
    are quantized)."""
    weight = weight.detach().float()
    errors, scales = {}, {}
    for fmt in candidates:
        scales[fmt.name] = weight_scales(weight, fmt, group_size=group_size)
        view = scale_view(scales[fmt.name], weight)
        errors[fmt.name] = reconstruction_error(kind, conv_options, inputs, weight, fmt.round(weight / view) * view,
                                                bias, quantized_inputs=quantized_inputs)
    best = min(candidates, key=lambda f: errors[f.name])
    return best, scales[best.name], errors
