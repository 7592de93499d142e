"""Save and load quantized models as safetensors with packed codes.

A quantized layer is stored as ``<name>.weight_packed`` (its codes, ``bits`` per weight: two FP4 codes per
byte), ``<name>.weight_scale`` (per output channel, or (out, G) per group), ``<name>.input_scale`` (if its
inputs are quantized); everything else of the model (biases, norms, embeddings) as float tensors. The
metadata records each layer's formats, bit width and weight shape. Loading needs the float model's
architecture (a freshly built model, e.g. ``make_unet()``); its weights are replaced, after the whole file
has been checked against it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .activations import TimestepGroups, export_groups, import_groups
from .formats import get_format
from .layers import QUANTIZABLE, QuantizedLayer
from .packing import pack_codes, unpack_codes
from .quantize import _set_submodule

FORMAT_VERSION = 1


def save_quantized(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (quantized with ``quantize``) to ``path`` (a .safetensors file)."""
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    if not quantized:
        raise ValueError("the model has no quantized layers: call diffusers_ext.quant.quantize first")
    tensors, layers = {}, {}
    for name, layer in quantized.items():
        fmt = layer.weight_format
        # 4- and 8-bit layers hold the file's byte layout in memory already
        tensors[f"{name}.weight_packed"] = (layer.weight_packed.cpu().contiguous() if fmt.bits in (4, 8) else
                                            pack_codes(layer.weight_codes.to(torch.int64) & (2**fmt.bits - 1),
                                                       fmt.bits))
        tensors[f"{name}.weight_scale"] = layer.weight_scale.contiguous()
        if layer.input_scale is not None:
            tensors[f"{name}.input_scale"] = layer.input_scale.reshape(1)
        layers[name] = {"weights": fmt.name, "bits": fmt.bits, "shape": list(layer.weight_shape),
                        "activations": getattr(layer.activation_format, "name", None)}
    for key, value in model.state_dict().items():
        owner = key.rpartition(".")[0]
        if owner not in quantized:
            tensors[key] = value.detach().contiguous()
        elif key.endswith(".bias"):
            tensors[key] = value.detach().contiguous()
    group_tensors, bounds = export_groups(model, quantized)  # per-timestep-group input scales, if any
    tensors.update(group_tensors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"diffusers_ext_quantized": json.dumps(
        {"version": FORMAT_VERSION, "layers": layers, "timestep_bounds": bounds})})
    return path


def _read(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The quantization metadata (version checked) and the tensors of a ``save_quantized`` file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get("diffusers_ext_quantized")
        tensors = load_file(str(path))
    except Exception as error:  # safetensors' own error type for unreadable files
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    if meta is None:
        raise ValueError(f"{path} is not a diffusers_ext quantized model (no quantization metadata)")
    try:
        meta = json.loads(meta)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: the quantization metadata is not JSON ({error})") from error
    if not isinstance(meta, dict) or meta.get("version") != FORMAT_VERSION:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise ValueError(f"unsupported quantized file version {version!r} (expected {FORMAT_VERSION})")
    if not isinstance(meta.get("layers"), dict):
        raise ValueError(f"{path}: the quantization metadata has no 'layers' mapping")
    return meta, tensors


def _positive_finite(value: torch.Tensor | None, what: str, count: int) -> torch.Tensor:
    """``value`` as float32 (count,), checked: present, floating, ``count`` entries, finite and > 0."""
    if value is None or not value.is_floating_point() or value.numel() != count:
        got = "nothing" if value is None else f"{value.dtype} {tuple(value.shape)}"
        raise ValueError(f"{what} must hold {count} floating-point value(s), got {got}")
    value = value.float().reshape(count)
    if not (torch.isfinite(value) & (value > 0)).all():
        raise ValueError(f"{what} must be finite and positive, got {value[~(torch.isfinite(value) & (value > 0))][:3]}")
    return value


def _checked_layer(model: nn.Module, name: str, info, tensors: dict[str, torch.Tensor]) -> QuantizedLayer:
    """Layer ``name``'s QuantizedLayer built from the file after checking its metadata (format, bit width,
    activations, shape) against the model and its tensors (codes on the grid, scales, bias); the model is not
    changed. Consumes the layer's tensors from ``tensors``."""
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"the file quantizes layer {name!r}, which the model does not have") from None
    if not isinstance(layer, QUANTIZABLE):
        raise ValueError(f"layer {name!r} is a {type(layer).__name__}; quantized layers load into "
                         f"{[c.__name__ for c in QUANTIZABLE]}")
    if not isinstance(info, dict) or not isinstance(info.get("weights"), str) or not isinstance(info.get("shape"),
                                                                                                list):
        raise ValueError(f"layer {name!r}: metadata needs 'weights' (a format name) and 'shape', got {info!r}")
    shape = tuple(info["shape"])
    if shape != tuple(layer.weight.shape):
        raise ValueError(f"layer {name}: the file holds weights of shape {list(shape)}, the model "
                         f"{list(layer.weight.shape)}: not the same architecture")
    fmt = get_format(info["weights"])
    if info.get("bits", fmt.bits) != fmt.bits:
        raise ValueError(f"layer {name}: metadata says {info['bits']} bits, but {fmt.name} has {fmt.bits} bits")
    activations = info.get("activations")
    if activations is not None and not isinstance(activations, str):
        raise ValueError(f"layer {name}: activations must be a format name or null, got {activations!r}")
    if activations is not None:
        get_format(activations)

    count = math.prod(shape)
    packed = tensors.pop(f"{name}.weight_packed", None)
    expected = math.ceil(count * fmt.bits / 8)
    if packed is None or packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != expected:
        got = "nothing" if packed is None else f"{packed.dtype} {tuple(packed.shape)}"
        raise ValueError(f"{name}.weight_packed must be {expected} uint8 bytes ({count} {fmt.bits}-bit codes), "
                         f"got {got}")
    grid = fmt.decode(unpack_codes(packed, fmt.bits, count).reshape(shape))
    if not torch.isfinite(grid).all():
        raise ValueError(f"{name}.weight_packed: {int((~torch.isfinite(grid)).sum())} codes are not finite "
                         f"{fmt.name} values (NaN/inf)")
    if not torch.equal(fmt.round(grid), grid):
        raise ValueError(f"{name}.weight_packed: codes beyond the {fmt.name} grid (|value| <= {fmt.max_value})")
    scale = tensors.pop(f"{name}.weight_scale", None)
    grouped = scale is not None and scale.dim() == 2 and scale.shape[0] == shape[0] and scale.shape[1] > 0
    what = f"{name}.weight_scale (({shape[0]},) per channel or ({shape[0]}, G) per group)"
    scale = _positive_finite(scale, what, scale.numel() if grouped else shape[0])
    scale = scale.reshape(shape[0], -1) if grouped else scale
    input_scale = tensors.pop(f"{name}.input_scale", None)
    if activations is None and input_scale is not None:
        raise ValueError(f"{name}.input_scale is stored but the layer's activations are not quantized")
    if activations is not None:
        input_scale = _positive_finite(input_scale, f"{name}.input_scale (activations {activations})", 1)
    bias = tensors.pop(f"{name}.bias", None)
    if (bias is None) != (layer.bias is None) or (bias is not None and bias.shape != layer.bias.shape):
        raise ValueError(f"{name}.bias: the model has {None if layer.bias is None else tuple(layer.bias.shape)}, "
                         f"the file {None if bias is None else tuple(bias.shape)}")
    try:
        quantized = QuantizedLayer(layer, fmt.name, scale, grid, activations, input_scale)
    except ValueError as error:  # e.g. a scale group count that fits no group size of this shape
        raise ValueError(f"{name}: {error}") from error
    if bias is not None:
        quantized.bias = nn.Parameter(bias.detach().float(), requires_grad=False)
    return quantized


def load_quantized(model: nn.Module, path: str | Path) -> nn.Module:
    """Quantize ``model`` (a float model of the same architecture) in place from a ``save_quantized`` file and
    return it in eval mode (a quantized model is for inference; diffusers' blocks run other kernels in training
    mode, so the outputs would not be the saved model's bit for bit).

    Everything is checked first (metadata against the model and the tensors, codes, scales, the float tensors'
    names and shapes); on any mismatch a ValueError leaves ``model`` untouched."""
    meta, tensors = _read(path)
    layers = {name: _checked_layer(model, name, info, tensors) for name, info in meta["layers"].items()}
    import_groups(layers, tensors, meta.get("timestep_bounds"))
    expected = {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] not in layers}
    missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the model {tuple(expected[key].shape)}")
    model.load_state_dict(tensors, strict=False)
    for name, layer in layers.items():
        _set_submodule(model, name, layer)
    if meta.get("timestep_bounds") is not None:
        TimestepGroups.attach(model, meta["timestep_bounds"])
    return model.eval()
