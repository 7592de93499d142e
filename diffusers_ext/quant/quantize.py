"""``quantize(model, weights=..., activations=...)``: swap a model's Linear / Conv2d layers for quantized ones
in place (arXiv 2408.06995: W8A8 FP8, W4A8 with FP4 weights and learned rounding).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import input_scale, quantizable_layers, weight_scales
from .formats import get_format
from .layers import QuantizedLayer, channel_view
from .rounding import learn_rounding, reconstruction_error

ROUNDING = ("nearest", "learned")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantize(model: nn.Module, weights: str = "fp8_e4m3", activations: str | None = "fp8_e4m3",
             calibration: dict[str, list[torch.Tensor]] | None = None, rounding: str = "nearest",
             skip: tuple[str, ...] = (), rounding_iterations: int = 300, seed: int = 0,
             progress: bool = True) -> nn.Module:
    """Quantize every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` (except names starting with an entry of
    ``skip``) in place and return it.

    weights / activations: format names (``diffusers_ext.quant.FORMATS``); ``activations=None`` keeps
    inputs in full precision. ``calibration``: each layer's inputs collected along the sampling trajectory
    (``collect_layer_inputs``), required for activation scales and for ``rounding="learned"``. Learned
    rounding is kept for a layer only if it reconstructs that layer's calibration outputs better than
    round-to-nearest (``model.quantization_report`` counts the layers where it was kept).
    """
    weight_format = get_format(weights)
    activation_format = get_format(activations) if activations is not None else None
    if rounding not in ROUNDING:
        raise ValueError(f"Unknown rounding {rounding!r}; valid choices: {list(ROUNDING)}")
    layers = quantizable_layers(model, skip)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantizable layers (nn.Linear / nn.Conv2d) outside "
                         f"skip={list(skip)}")
    needs_data = activation_format is not None or rounding == "learned"
    if needs_data:
        missing = [name for name in layers if not (calibration or {}).get(name)]
        if missing:
            raise ValueError(f"calibration with zero samples for {len(missing)} layer(s) (e.g. {missing[0]!r}): "
                             "collect inputs with collect_layer_inputs along the sampling trajectory")
    learned_layers = 0
    for index, (name, layer) in enumerate(tqdm(layers.items(), desc="quantizing", disable=not progress)):
        bias = None if layer.bias is None else layer.bias.detach()
        scale = weight_scales(layer.weight, weight_format)
        act_scale = input_scale(calibration[name], activation_format, seed=seed) if activation_format else None
        grid = None
        if rounding == "learned":
            quantized = QuantizedLayer(layer, weight_format, scale)  # conv options, kind
            activation = (activation_format, act_scale) if activation_format is not None else None
            learned = learn_rounding(quantized.kind, quantized.conv_options, layer.weight, layer.bias, weight_format,
                                     scale, calibration[name], activation, iterations=rounding_iterations,
                                     seed=seed + index, progress=progress, description=name)
            # keep the learned rounding only where it reconstructs the calibration outputs better than nearest
            view = channel_view(scale, layer.weight)
            errors = [reconstruction_error(quantized.kind, quantized.conv_options, calibration[name],
                                           layer.weight.detach(), w * view, bias, activation)
                      for w in (weight_format.round(layer.weight.detach() / view), learned)]
            grid = learned if errors[1] < errors[0] else None
            learned_layers += grid is not None
        _set_submodule(model, name, QuantizedLayer(layer, weight_format, scale, grid,
                                                   activations if activation_format else None, act_scale))
    model.quantization_report = {"layers": len(layers), "learned_rounding_kept": learned_layers}
    return model
