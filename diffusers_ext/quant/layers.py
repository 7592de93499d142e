"""Quantized Linear / Conv2d layers: weights on a low-bit grid with scales per output channel or per group of
consecutive input weights (``weight_group_size``, block scaling like MXFP4's / NVFP4's), inputs
fake-quantized with one per-tensor scale (arXiv 2408.06995's W8A8 / W4A8 setting).

Weights stay packed in memory (``weight_packed``, uint8): codes of up to 4 bits two per byte (the first in the
high nibble, the file layout of ``packing.pack_codes``), 5-8 bit codes one per byte, plus ``weight_scale``
(out,) or (out, G). Every forward decodes them (a 16/256-entry table lookup, or a float8 view for the native
FP8 formats) into a temporary float weight: no float copy is kept. On CPU every format is emulated in
float32; with CUDA on sm89+, float8_e4m3 weights and inputs and per-channel scales, ``forward`` uses a real
FP8 matmul (``torch._scaled_mm``) for Linear layers, straight on the packed bytes viewed as float8.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .formats import FloatFormat, IntFormat, get_format
from .packing import pack_nibbles, unpack_nibbles

QUANTIZABLE = (nn.Linear, nn.Conv2d)


def group_count(weight_shape: tuple[int, ...], group_size: int) -> int:
    """Scale groups per output channel for at most ``group_size`` weights each along the flattened input
    dimension K = prod(weight_shape[1:]): G = ceil(K / group_size), evened out to ceil(K / G) weights per group
    (the last one may be shorter; it is never empty), so that the layout follows from G alone."""
    if group_size < 1:
        raise ValueError(f"weight_group_size must be >= 1 (weights per scale), got {group_size}")
    return math.ceil(math.prod(weight_shape[1:]) / group_size)


def apply_scale(grid: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``grid`` (out, ...) times its scales: per output channel (out,), or per group (out, G) of ceil(K / G)
    consecutive weights of the flattened input dimension K (``group_count``), multiplied in the
    (out, G, group) layout without a weight-sized copy of the scales (only a shorter last group pads)."""
    if scale.ndim < 2:
        return grid * scale.reshape(-1, *([1] * (grid.ndim - 1)))
    out, groups, inner = grid.shape[0], scale.shape[1], math.prod(grid.shape[1:])
    size = math.ceil(inner / groups)
    flat = grid.reshape(out, inner)
    if groups * size > inner:
        flat = F.pad(flat, (0, groups * size - inner))
    return (flat.reshape(out, groups, size) * scale[:, :, None]).reshape(out, -1)[:, :inner].reshape(grid.shape)


def scale_view(scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The scales shaped to broadcast against ``weight`` (out, ...) (``apply_scale``'s layout): a view for
    per-channel scales, a weight-sized tensor for per-group ones (for calibration, not per forward)."""
    if scale.ndim < 2:
        return scale.reshape(-1, *([1] * (weight.ndim - 1)))
    return apply_scale(weight.new_ones(weight.shape), scale)


@functools.cache
def _code_values(fmt: FloatFormat | IntFormat, device: torch.device) -> torch.Tensor:
    """The float32 value of each of the 2^bits codes of ``fmt`` (shared by all layers of that format)."""
    return fmt.decode(torch.arange(2**fmt.bits, device=device)).float()


def pack_weight_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """A layer's in-memory weight bytes: codes of <= 4 bits two per byte, wider codes one per byte (uint8)."""
    codes = codes.reshape(-1).to(torch.int32) & (2**bits - 1)
    return pack_nibbles(codes) if bits <= 4 else codes.to(torch.uint8)


def fake_quantize(x: torch.Tensor, fmt: FloatFormat | IntFormat, scale: torch.Tensor) -> torch.Tensor:
    """fmt.round(x / scale) * scale (scale broadcastable to x)."""
    return fmt.round(x / scale) * scale


class QuantizedLayer(nn.Module):
    """A quantized ``nn.Linear`` or ``nn.Conv2d`` (same call signature, bias kept in float32)."""

    def __init__(self, layer: nn.Module, weight_format: str, weight_scale: torch.Tensor,
                 weight_grid: torch.Tensor | None = None, activation_format: str | None = None,
                 input_scale: torch.Tensor | float | None = None):
        super().__init__()
        if not isinstance(layer, QUANTIZABLE):
            raise TypeError(f"only {[c.__name__ for c in QUANTIZABLE]} can be quantized, got {type(layer).__name__}")
        self.kind = "linear" if isinstance(layer, nn.Linear) else "conv2d"
        self.conv_options = {} if self.kind == "linear" else {
            "stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation, "groups": layer.groups}
        if self.kind == "conv2d" and layer.padding_mode != "zeros":
            raise ValueError(f"conv padding_mode {layer.padding_mode!r} is not supported (only 'zeros')")
        self.weight_format = get_format(weight_format)
        self.activation_format = get_format(activation_format) if activation_format is not None else None
        if self.activation_format is not None and input_scale is None:
            raise ValueError("an activation format needs an input scale (calibrate first)")
        weight = layer.weight.detach().float()
        scale, out, inner = weight_scale.detach().float(), weight.shape[0], math.prod(weight.shape[1:])
        if scale.ndim == 2:  # per group: (out, G) with G one of the counts group_count makes for this shape
            valid = (scale.shape[0] == out and 1 <= scale.shape[1] <= inner
                     and group_count(weight.shape, math.ceil(inner / scale.shape[1])) == scale.shape[1])
        else:
            scale = scale.reshape(-1)
            valid = len(scale) == out
        if not valid or not (scale > 0).all():
            raise ValueError(f"weight_scale must hold positive scales per output channel ({out},) or per group "
                             f"({out}, G) with G = group_count({tuple(weight.shape)}, group size), got "
                             f"{tuple(weight_scale.shape)}")
        grid = self.weight_format.round(weight / scale_view(scale, weight)) if weight_grid is None else weight_grid
        self.register_buffer("weight_packed", pack_weight_codes(self.weight_format.encode(grid),
                                                                self.weight_format.bits))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("input_scale", None if input_scale is None else
                             torch.as_tensor(input_scale, dtype=torch.float32).reshape(()))
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().float(), requires_grad=False)
        self.weight_shape = tuple(weight.shape)

    @property
    def weight_codes(self) -> torch.Tensor:
        """The integer codes (int32, ``weight_shape``), unpacked afresh from ``weight_packed``."""
        count = math.prod(self.weight_shape)
        if self.weight_format.bits <= 4:
            codes = unpack_nibbles(self.weight_packed, count)
        else:
            codes = self.weight_packed.to(torch.int32)
        return codes.reshape(self.weight_shape)

    def decoded_grid(self) -> torch.Tensor:
        """The weights in units of their scale (float32 grid values), decoded afresh."""
        native = getattr(self.weight_format, "torch_dtype", None)
        if native is not None and self.weight_format.bits == 8:  # the bytes are that float8 type's bit patterns
            return self.weight_packed.view(native).float().reshape(self.weight_shape)
        codes = self.weight_codes.reshape(-1)
        return _code_values(self.weight_format, codes.device).index_select(0, codes).reshape(self.weight_shape)

    @property
    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight grid * scale, decoded afresh at every access (nothing cached)."""
        return apply_scale(self.decoded_grid(), self.weight_scale.float())

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """fake_quantize(x, activation format, input scale); for the native float8 formats by a saturating cast
        (the same round to nearest even, one float temporary at a time instead of the emulation's ten)."""
        fmt = self.activation_format
        if fmt is None:
            return x
        native = getattr(fmt, "torch_dtype", None)
        if native is None:
            return fake_quantize(x.float(), fmt, self.input_scale).to(x.dtype)
        # one chain: the scaled float copy is freed once cast to float8, before the float result is allocated
        codes = (x.float() / self.input_scale).clamp_(-fmt.max_value, fmt.max_value).to(native)
        return codes.float().mul_(self.input_scale).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._real_fp8_available(x):
            return self._fp8_linear(x)
        weight = self.dequantized_weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        x = self.quantize_input(x)
        if self.kind == "linear":
            return F.linear(x, weight, bias)
        # one memory layout, hence one kernel: a channels-last input (diffusers' resnet shortcut in eval mode)
        # would otherwise round differently in the last bit, which quantized inputs downstream amplify
        return F.conv2d(x.contiguous(), weight, bias, **self.conv_options)

    # ------------------------------------------------------------------ real FP8 (CUDA, sm89+)
    def _real_fp8_available(self, x: torch.Tensor) -> bool:
        fp8 = getattr(self.weight_format, "torch_dtype", None)
        if self.kind != "linear" or not x.is_cuda:
            return False
        out_features, in_features = self.weight_shape
        return (fp8 == torch.float8_e4m3fn and self.weight_scale.ndim == 1  # row-wise scaling: one per channel
                and getattr(self.activation_format, "torch_dtype", None) == torch.float8_e4m3fn
                and in_features % 16 == 0 and out_features % 16 == 0  # FP8 GEMM tile constraints
                and torch.cuda.get_device_capability(x.device) >= (8, 9) and hasattr(torch, "_scaled_mm"))

    @property
    def fp8_weight(self) -> torch.Tensor:
        """The float8_e4m3fn weight grid (in, out), column-major as ``torch._scaled_mm`` takes it: a view of the
        packed bytes, no copy (float8_e4m3 weights only)."""
        if getattr(self.weight_format, "torch_dtype", None) != torch.float8_e4m3fn:
            raise ValueError(f"fp8_weight needs fp8_e4m3 weights, this layer holds {self.weight_format.name}")
        return self.weight_packed.view(torch.float8_e4m3fn).reshape(self.weight_shape).t()

    def _fp8_linear(self, x: torch.Tensor) -> torch.Tensor:
        """y = (x_q s_x) (W_q s_w)^T with x_q, W_q in float8_e4m3fn: one scaled FP8 GEMM."""
        weight_fp8 = self.fp8_weight
        lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
        rows = x2.shape[0]
        x2 = F.pad(x2, (0, 0, 0, (-rows) % 16))  # rows padded to a multiple of 16
        x_fp8 = self.activation_format.round(x2.float() / self.input_scale).to(torch.float8_e4m3fn)
        # row-wise scaling: one input scale per row (all equal), one weight scale per output channel
        scale_a = self.input_scale.reshape(1, 1).expand(x2.shape[0], 1).contiguous().float()
        out = torch._scaled_mm(x_fp8, weight_fp8, scale_a=scale_a,
                               scale_b=self.weight_scale.reshape(1, -1).float(), out_dtype=torch.bfloat16)[:rows]
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.to(x.dtype).reshape(*lead, -1)

    def extra_repr(self) -> str:
        act = self.activation_format.name if self.activation_format is not None else "none"
        return f"{self.kind} {self.weight_shape}, weights {self.weight_format.name}, inputs {act}"
