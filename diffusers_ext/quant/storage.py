"""Save and load quantized models as safetensors with packed codes.

A quantized layer is stored as ``<name>.weight_packed`` (its codes, ``bits`` per weight: two FP4 codes per
byte), ``<name>.weight_scale`` (per output channel), ``<name>.input_scale`` (if its inputs are quantized);
everything else of the model (biases, norms, embeddings) as float tensors. The metadata records each
layer's formats and weight shape. Loading needs the float model's architecture (a freshly built model,
e.g. ``make_unet()``); its weights are replaced.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .formats import get_format
from .layers import QuantizedLayer
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
        tensors[f"{name}.weight_packed"] = pack_codes(layer.weight_codes.to(torch.int64) & (2**fmt.bits - 1),
                                                      fmt.bits)
        tensors[f"{name}.weight_scale"] = layer.weight_scale.contiguous()
        if layer.input_scale is not None:
            tensors[f"{name}.input_scale"] = layer.input_scale.reshape(1)
        layers[name] = {"weights": fmt.name, "activations": getattr(layer.activation_format, "name", None),
                        "shape": list(layer.weight_shape)}
    for key, value in model.state_dict().items():
        owner = key.rpartition(".")[0]
        if owner not in quantized:
            tensors[key] = value.detach().contiguous()
        elif key.endswith(".bias"):
            tensors[key] = value.detach().contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"diffusers_ext_quantized": json.dumps(
        {"version": FORMAT_VERSION, "layers": layers})})
    return path


def load_quantized(model: nn.Module, path: str | Path) -> nn.Module:
    """Quantize ``model`` (a float model of the same architecture) in place from a ``save_quantized`` file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = (f.metadata() or {}).get("diffusers_ext_quantized")
    if meta is None:
        raise ValueError(f"{path} is not a diffusers_ext quantized model (no quantization metadata)")
    meta = json.loads(meta)
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported quantized file version {meta.get('version')!r} (expected {FORMAT_VERSION})")
    tensors = load_file(str(path))
    for name, info in meta["layers"].items():
        layer = model.get_submodule(name)
        if tuple(layer.weight.shape) != tuple(info["shape"]):
            raise ValueError(f"layer {name}: the file holds weights {info['shape']}, the model "
                             f"{list(layer.weight.shape)}: not the same architecture")
        fmt = get_format(info["weights"])
        codes = unpack_codes(tensors.pop(f"{name}.weight_packed"), fmt.bits, math.prod(info["shape"]))
        grid = fmt.decode(codes.reshape(info["shape"]))
        if layer.bias is not None:
            layer.bias.data = tensors.pop(f"{name}.bias")
        _set_submodule(model, name, QuantizedLayer(layer, fmt.name, tensors.pop(f"{name}.weight_scale"), grid,
                                                   info["activations"], tensors.pop(f"{name}.input_scale", None)))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k.rpartition(".")[0] not in meta["layers"]]
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
