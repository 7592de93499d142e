"""Calibration for quantization: layer inputs collected along the sampling trajectory, per-channel weight
scales and per-tensor input scales chosen by minimum quantization error (arXiv 2408.06995).

A scale s maps values onto a format's grid as round(x / s) s. Searching s over r * max|x| / max_value for
clip ratios r in (0, 1] generalizes the paper's exponent-bias search (bias = a power-of-two scale).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .formats import FloatFormat, IntFormat
from .layers import QUANTIZABLE, channel_view, fake_quantize

CLIP_RATIOS = torch.linspace(0.3, 1.0, 36)


def weight_scales(weight: torch.Tensor, fmt: FloatFormat | IntFormat, ratios=CLIP_RATIOS) -> torch.Tensor:
    """(out,) scales minimizing each output channel's squared quantization error."""
    weight = weight.detach().float()
    peak = weight.reshape(len(weight), -1).abs().amax(1).clamp_min(1e-12)
    best_scale, best_err = None, None
    for r in ratios:
        scale = float(r) * peak / fmt.max_value
        err = (fake_quantize(weight, fmt, channel_view(scale, weight)) - weight).pow(2).reshape(len(weight), -1).sum(1)
        if best_err is None:
            best_scale, best_err = scale, err
        else:
            better = err < best_err
            best_scale, best_err = torch.where(better, scale, best_scale), torch.minimum(err, best_err)
    return best_scale


def input_scale(inputs: list[torch.Tensor], fmt: FloatFormat | IntFormat, ratios=CLIP_RATIOS,
                max_values: int = 1_000_000, seed: int = 0) -> torch.Tensor:
    """One scale for a layer's inputs minimizing their squared quantization error (on up to ``max_values``
    values drawn from the collected inputs; the peak is taken over all of them)."""
    if not inputs:
        raise ValueError("calibration with zero samples: no inputs were collected for this layer")
    flat = torch.cat([x.reshape(-1).float() for x in inputs])
    peak = flat.abs().max().clamp_min(1e-12)
    if flat.numel() > max_values:
        flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:max_values]]
    errors = torch.stack([(fake_quantize(flat, fmt, r * peak / fmt.max_value) - flat).pow(2).sum() for r in ratios])
    return (ratios[int(errors.argmin())] * peak / fmt.max_value).reshape(())


def quantizable_layers(model: nn.Module, skip=()) -> dict[str, nn.Module]:
    """Linear and Conv2d layers by qualified name, minus those whose name starts with an entry of ``skip``."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, QUANTIZABLE) and not any(name.startswith(s) for s in skip)}


@torch.no_grad()
def collect_layer_inputs(model: nn.Module, run: Callable[[], object], layers: dict[str, nn.Module] | None = None,
                         max_rows_per_call: int = 64) -> dict[str, list[torch.Tensor]]:
    """Run ``run()`` (e.g. a pipeline call with the chosen scheduler, NFE and guidance) and keep each layer's
    inputs, at most ``max_rows_per_call`` batch rows per forward (spread over the batch), on the CPU."""
    layers = quantizable_layers(model) if layers is None else layers
    collected: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def hook(name):
        def record(module, args):
            x = args[0].detach()
            rows = torch.linspace(0, len(x) - 1, min(len(x), max_rows_per_call)).round().long().to(x.device)
            collected[name].append(x[rows].float().cpu())
        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return collected
