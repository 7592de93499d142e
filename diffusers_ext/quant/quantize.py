"""``quantize(model, weights=..., activations=...)``: swap a model's Linear / Conv2d layers for quantized ones
in place (arXiv 2408.06995: W8A8 FP8, W4A8 with FP4 weights and learned rounding), with the 4-bit quality
options: per-layer format choice (``format_choice.py``), rounding learned per layer or per block
(``rounding.py``, ``blocks.py``), per-timestep-group input scales (``activations.py``) and 8-bit layers kept
by name (``keep_8bit``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .activations import TimestepGroups, group_bounds, grouped_input_scales, quantize_grouped
from .calibration import input_scale, quantizable_layers, weight_scales
from .format_choice import choose_weight_format
from .formats import FloatFormat, IntFormat, get_format
from .layers import QuantizedLayer, fake_quantize, scale_view
from .rounding import RoundingVariables, learn_rounding, reconstruction_error

ROUNDING = ("nearest", "learned", "block")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def weight_candidates(weights: str | Sequence[str]) -> list[FloatFormat | IntFormat]:
    """The weight format(s): one name, or a sequence of names to choose from per layer."""
    names = [weights] if isinstance(weights, (str, FloatFormat, IntFormat)) else list(weights)
    if not names:
        raise ValueError("weights: give a format name or a non-empty sequence of names to choose from per layer")
    return [get_format(n) for n in names]


def check_group_size(weight_group_size: int | None) -> None:
    """Raise ValueError unless ``weight_group_size`` is None (scales per channel) or a positive int."""
    if weight_group_size is not None and (type(weight_group_size) is not int or weight_group_size < 1):
        raise ValueError(f"weight_group_size must be a positive int (weights per scale) or None (per channel), "
                         f"got {weight_group_size!r}")


def kept_layers(layers: dict[str, nn.Module], keep_8bit: Sequence[str]) -> set[str]:
    """Layer names that ``keep_8bit`` names: "first" / "last" (in registration order) or exact layer names."""
    if isinstance(keep_8bit, str):
        raise TypeError(f"keep_8bit must be a sequence of names, e.g. ('first', 'last'), got {keep_8bit!r}")
    names = list(layers)
    alias = {"first": names[0], "last": names[-1]}
    unknown = [k for k in keep_8bit if k not in alias and k not in layers]
    if unknown:
        raise ValueError(f"keep_8bit names unknown layers {unknown}; valid choices: 'first', 'last' or layer names "
                         f"such as {names[:3]} ... {names[-2:]}")
    return {alias.get(k, k) for k in keep_8bit}


@dataclass
class _Plan:
    """One layer's quantization before rounding: weight format and scales, input scales (one per group)."""

    weight_format: FloatFormat | IntFormat
    weight_scale: torch.Tensor
    input_scales: torch.Tensor | None


def _quantized_inputs(name, calibration, activation_format, scales, bounds) -> list[torch.Tensor] | None:
    """The layer's calibration inputs as it sees them (fake-quantized with its group's scale), None if not
    quantized."""
    if activation_format is None:
        return None
    if bounds is None:
        return [fake_quantize(x, activation_format, scales[0]) for x in calibration[name]]
    return quantize_grouped(calibration[name], calibration.timesteps[name], bounds, activation_format, scales)


def _plan(name, layer, candidates, activation_format, calibration, bounds, seed, group_size) -> _Plan:
    scales = None
    if activation_format is not None and bounds is None:
        scales = input_scale(calibration[name], activation_format, seed=seed).reshape(1)
    elif activation_format is not None:
        scales = grouped_input_scales(calibration[name], calibration.timesteps[name], bounds, activation_format,
                                      seed=seed)
    if len(candidates) == 1:
        return _Plan(candidates[0], weight_scales(layer.weight, candidates[0], group_size=group_size), scales)
    probe = QuantizedLayer(layer, candidates[0], weight_scales(layer.weight, candidates[0]))  # kind, conv options
    fmt, scale, _ = choose_weight_format(probe.kind, probe.conv_options, layer.weight, probe.bias, candidates,
                                         calibration[name],
                                         _quantized_inputs(name, calibration, activation_format, scales, bounds),
                                         group_size=group_size)
    return _Plan(fmt, scale, scales)


def quantize(model: nn.Module, weights: str | Sequence[str] = "fp8_e4m3", activations: str | None = "fp8_e4m3",
             calibration: dict[str, list[torch.Tensor]] | None = None, rounding: str = "nearest",
             skip: tuple[str, ...] = (), rounding_iterations: int = 300, seed: int = 0,
             progress: bool = True, *, keep_8bit: Sequence[str] = (), timestep_groups: int = 1,
             weight_group_size: int | None = None) -> nn.Module:
    """Quantize every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` (except names starting with an entry of
    ``skip``) in place and return it.

    weights: a format name (``diffusers_ext.quant.FORMATS``), or several (e.g. ``FP4_FORMATS``) to choose per
    layer the one with the lowest layer-output error on the calibration inputs. activations: a format name, or
    None to keep inputs in full precision. ``calibration``: ``collect_layer_inputs``'s result along the
    sampling trajectory, required for activation scales, format choice and learned rounding.

    rounding: "nearest"; "learned" (per layer, on full-precision inputs); "block" (learned jointly per block on
    the inputs the quantized preceding blocks produce, ``blocks.py``). Learned rounding is kept for a layer or
    block only where it reconstructs the calibration outputs better than round-to-nearest.
    keep_8bit: layers kept at 8-bit weights ("first", "last" or names): fp8_e4m3 for float formats, int8 for int.
    timestep_groups: input scales per group of calibration timesteps (``activations.py``); 1 = one scale.
    weight_group_size: one weight scale per group of at most this many consecutive input weights of an output
    channel (groups evened out: ``layers.group_count``) instead of one per channel, on every layer but the
    ``keep_8bit`` ones: block scaling like MXFP4's / NVFP4's (blocks of 32 / 16), with float32 scales found by
    the same clip search (about 32 / group size extra bits per weight).
    ``model.quantization_report`` counts the learned roundings kept and the formats chosen.
    """
    candidates = weight_candidates(weights)
    check_group_size(weight_group_size)
    activation_format = get_format(activations) if activations is not None else None
    if rounding not in ROUNDING:
        raise ValueError(f"Unknown rounding {rounding!r}; valid choices: {list(ROUNDING)}")
    layers = quantizable_layers(model, skip)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantizable layers (nn.Linear / nn.Conv2d) outside "
                         f"skip={list(skip)}")
    kept = kept_layers(layers, keep_8bit)
    needs_data = activation_format is not None or rounding != "nearest" or len(candidates) > 1
    if needs_data:
        missing = [name for name in layers if not (calibration or {}).get(name)]
        if missing:
            raise ValueError(f"calibration with zero samples for {len(missing)} layer(s) (e.g. {missing[0]!r}): "
                             "collect inputs with collect_layer_inputs along the sampling trajectory")
    bounds = None
    if timestep_groups != 1:
        if activation_format is None:
            raise ValueError("timestep_groups > 1 needs quantized activations (activations=<format>)")
        timesteps = [t for name in layers for t in getattr(calibration, "timesteps", {}).get(name, [None])]
        bounds = group_bounds(timesteps, timestep_groups)
    if rounding == "block" and not getattr(calibration, "calls", None):
        raise ValueError("rounding='block' replays the model's calibration calls: pass collect_layer_inputs's result")
    eight_bit = get_format("int8" if isinstance(candidates[0], IntFormat) else "fp8_e4m3")
    plans = {name: _plan(name, layer, [eight_bit] if name in kept else candidates, activation_format, calibration,
                         bounds, seed, None if name in kept else weight_group_size)
             for name, layer in tqdm(layers.items(), desc="calibrating", disable=not progress)}

    def install(name: str, grid: torch.Tensor | None) -> None:
        plan = plans[name]
        scales = plan.input_scales
        layer = QuantizedLayer(layers[name], plan.weight_format.name, plan.weight_scale, grid, activations,
                               None if scales is None else scales[0].clone())
        if bounds is not None:
            layer.register_buffer("input_scales", scales)
        _set_submodule(model, name, layer)

    if bounds is not None:
        TimestepGroups.attach(model, bounds)
    learned_layers, block_report = 0, None
    if rounding == "block":
        from .blocks import SoftLayer, reconstruct_blocks

        def make_soft(name: str) -> SoftLayer:
            plan, layer = plans[name], layers[name]
            probe = QuantizedLayer(layer, plan.weight_format.name, plan.weight_scale)
            rounding_vars = RoundingVariables(layer.weight, plan.weight_format, plan.weight_scale)
            return SoftLayer(probe, layer.weight, rounding_vars, activation_format, plan.input_scales)

        def install_learned(name: str, grid: torch.Tensor | None) -> None:
            nonlocal learned_layers
            learned_layers += grid is not None
            install(name, grid)

        block_report = reconstruct_blocks(model, layers, calibration.calls, make_soft, install_learned, bounds,
                                          iterations=rounding_iterations, seed=seed, progress=progress)
    else:
        for index, (name, layer) in enumerate(tqdm(layers.items(), desc="quantizing", disable=not progress)):
            grid = None
            if rounding == "learned":
                plan = plans[name]
                grid = _learned_grid(name, layer, plan, calibration[name], rounding_iterations, seed + index,
                                     progress, _quantized_inputs(name, calibration, activation_format,
                                                                 plan.input_scales, bounds))
                learned_layers += grid is not None
            install(name, grid)
    model.quantization_report = {
        "layers": len(layers), "learned_rounding_kept": learned_layers, "kept_8bit": sorted(kept),
        "formats": {f: sum(p.weight_format.name == f for p in plans.values())
                    for f in sorted({p.weight_format.name for p in plans.values()})},
        "timestep_bounds": bounds, "weight_group_size": weight_group_size}
    if block_report is not None:
        model.quantization_report["blocks"] = block_report
    return model


def _learned_grid(name, layer, plan: _Plan, inputs, iterations, seed, progress, quantized_inputs
                  ) -> torch.Tensor | None:
    """Per-layer learned rounding, or None where round-to-nearest reconstructs the calibration outputs better."""
    probe = QuantizedLayer(layer, plan.weight_format.name, plan.weight_scale)  # conv options, kind
    bias = None if layer.bias is None else layer.bias.detach()
    learned = learn_rounding(probe.kind, probe.conv_options, layer.weight, bias, plan.weight_format,
                             plan.weight_scale, inputs, iterations=iterations, seed=seed, progress=progress,
                             description=name, quantized_inputs=quantized_inputs)
    view = scale_view(plan.weight_scale, layer.weight)
    errors = [reconstruction_error(probe.kind, probe.conv_options, inputs, layer.weight.detach(), w * view, bias,
                                   quantized_inputs=quantized_inputs)
              for w in (plan.weight_format.round(layer.weight.detach() / view), learned)]
    return learned if errors[1] < errors[0] else None
