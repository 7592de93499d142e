"""Calibration for quantization: layer inputs collected along the sampling trajectory, weight scales (per
channel or per group) and per-tensor input scales chosen by minimum quantization error (arXiv 2408.06995).

A scale s maps values onto a format's grid as round(x / s) s. Searching s over r * max|x| / max_value for
clip ratios r in (0, 1] generalizes the paper's exponent-bias search (bias = a power-of-two scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .formats import FloatFormat, IntFormat
from .layers import QUANTIZABLE, fake_quantize, group_count

CLIP_RATIOS = torch.linspace(0.3, 1.0, 36)


def weight_scales(weight: torch.Tensor, fmt: FloatFormat | IntFormat, ratios=CLIP_RATIOS,
                  group_size: int | None = None) -> torch.Tensor:
    """Scales minimizing the squared quantization error of each output channel (out,), or with ``group_size``
    of each group of that many consecutive input weights (out, G) (``layers.group_count``)."""
    weight = weight.detach().float()
    rows = weight.reshape(len(weight), -1)
    if group_size is not None:  # each group a row of its own; zero padding quantizes to zero, adding no error
        groups = group_count(weight.shape, group_size)
        size = math.ceil(rows.shape[1] / groups)
        rows = F.pad(rows, (0, groups * size - rows.shape[1])).reshape(len(weight) * groups, size)
    peak = rows.abs().amax(1).clamp_min(1e-12)
    best_scale, best_err = None, None
    for r in ratios:
        scale = float(r) * peak / fmt.max_value
        err = (fake_quantize(rows, fmt, scale[:, None]) - rows).pow(2).sum(1)
        if best_err is None:
            best_scale, best_err = scale, err
        else:
            better = err < best_err
            best_scale, best_err = torch.where(better, scale, best_scale), torch.minimum(err, best_err)
    return best_scale if group_size is None else best_scale.reshape(len(weight), -1)


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


class Calibration(dict):
    """Layer name -> the layer's collected inputs (a plain dict of lists), plus ``timesteps`` (layer name -> the
    denoiser timestep of each input, None where the model takes no timestep) and ``calls`` (the model's own calls
    as (args, kwargs) on the CPU, replayed by block reconstruction)."""

    def __init__(self, inputs=(), timesteps=None, calls=None):
        super().__init__(inputs)
        self.timesteps = timesteps or {}
        self.calls = calls or []


@torch.no_grad()
def collect_layer_inputs(model: nn.Module, run: Callable[[], object], layers: dict[str, nn.Module] | None = None,
                         max_rows_per_call: int = 64) -> Calibration:
    """Run ``run()`` (e.g. a pipeline call with the chosen scheduler, NFE and guidance) and keep each layer's
    inputs, at most ``max_rows_per_call`` batch rows per forward (spread over the batch), on the CPU; also each
    input's denoiser timestep and the model's calls (``Calibration``)."""
    from .activations import timestep_of

    layers = quantizable_layers(model) if layers is None else layers
    collected = Calibration({name: [] for name in layers}, {name: [] for name in layers})
    current = {"t": None}

    def on_call(module, args, kwargs):
        current["t"] = timestep_of(args, kwargs)
        collected.calls.append((_to(args, "cpu"), _to(kwargs, "cpu")))

    def hook(name):
        def record(module, args):
            x = args[0].detach()
            collected[name].append(x[sample_rows(len(x), max_rows_per_call, x.device)].float().cpu())
            collected.timesteps[name].append(current["t"])
        return record

    handles = [model.register_forward_pre_hook(on_call, with_kwargs=True)]
    handles += [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return collected


def sample_rows(batch: int, max_rows: int, device=None) -> torch.Tensor:
    """At most ``max_rows`` row indices spread evenly over a batch of ``batch`` rows."""
    return torch.linspace(0, batch - 1, min(batch, max_rows)).round().long().to(device)


def _to(value, device):
    """``value`` (tensors, possibly nested in tuples, lists and dicts) detached and moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value
