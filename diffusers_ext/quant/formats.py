"""Low-bit number formats: floating point ExMy with an exponent bias, and integers (arXiv 2408.06995).

An ExMy value is (-1)^s 2^(e - bias) (1 + m / 2^y) for exponent field e >= 1, and subnormal
(-1)^s 2^(1 - bias) (m / 2^y) for e = 0. Which codes are special:

- ``"finite"``: every code is a number (E2M1, E3M0, E3M4: the OCP FP4/FP6 convention);
- ``"fn"``: only the all-ones code is NaN, no infinities (float8_e4m3fn, max 448);
- ``"ieee"``: the top exponent field holds inf/NaN (float8_e5m2, max 57344).

``round`` maps float32 values to the nearest grid value with ties to even, in float32 (torch's float4 type
is storage-only, so every format is emulated the same way). Values beyond the largest finite magnitude
saturate to it, infinities included; NaN stays NaN. ``encode`` / ``decode`` convert grid values to the
format's integer codes (sign | exponent | mantissa) and back, for packed storage.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


class GridRounding:
    """Rounding onto a format's grid, given its ``_to_grid(x, rounding)`` (rounding applied to the magnitude in
    units of the local grid spacing)."""

    def round(self, x: torch.Tensor) -> torch.Tensor:
        """Round to nearest, ties to even, onto this format's grid (float32 in, float32 out)."""
        return self._to_grid(x, torch.round)

    def round_toward_zero(self, x: torch.Tensor) -> torch.Tensor:
        """The grid value next to x on the side of zero (x itself if on the grid; saturating)."""
        return self._to_grid(x, torch.floor)

    def round_away_from_zero(self, x: torch.Tensor) -> torch.Tensor:
        """The grid value next to x away from zero (x itself if on the grid; saturating)."""
        return self._to_grid(x, torch.ceil)


@dataclass(frozen=True)
class FloatFormat(GridRounding):
    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    special: str = "finite"  # "finite" | "fn" | "ieee"
    torch_dtype: torch.dtype | None = None  # the native float8 type with the same grid, if any

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def max_value(self) -> float:
        top_field = 2**self.exponent_bits - 1 - (self.special == "ieee")
        top_mantissa = 2**self.mantissa_bits - 1 - (self.special == "fn")
        return (1 + top_mantissa / 2**self.mantissa_bits) * 2.0 ** (top_field - self.bias)

    @property
    def min_normal_exponent(self) -> int:
        return 1 - self.bias

    def with_bias(self, bias: int) -> FloatFormat:
        """The same bit layout with another exponent bias (= a power-of-two scale); no native dtype."""
        base, sep, old = self.name.rpartition("_b")
        base = base if sep and old.lstrip("-").isdigit() else self.name
        return replace(self, bias=int(bias), torch_dtype=None, name=f"{base}_b{bias}")

    def _to_grid(self, x: torch.Tensor, rounding) -> torch.Tensor:
        x = x.float()
        magnitude = x.abs()
        _, exponent = torch.frexp(magnitude)  # magnitude = f 2^exponent, f in [0.5, 1)
        exponent = (exponent - 1).clamp_min(self.min_normal_exponent)  # subnormals share the smallest quantum
        quantum = torch.ldexp(torch.ones_like(magnitude), exponent - self.mantissa_bits)
        rounded = (rounding(magnitude / quantum) * quantum).clamp_max(self.max_value)
        return torch.where(torch.isnan(x), x, torch.copysign(rounded, x))


    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes (int32) of values already on the grid (call ``round`` first)."""
        x = x.float()
        magnitude = x.abs()
        _, exponent = torch.frexp(magnitude)
        field = torch.where(magnitude > 0, exponent - 1 + self.bias, 0).clamp_min(0)  # 0 = subnormal or zero
        quantum_exponent = torch.where(field > 0, exponent - 1, self.min_normal_exponent) - self.mantissa_bits
        mantissa = torch.ldexp(magnitude, -quantum_exponent).round().to(torch.int32)
        mantissa = torch.where(field > 0, mantissa - 2**self.mantissa_bits, mantissa)
        sign = torch.signbit(x).to(torch.int32)
        code = (sign << (self.bits - 1)) | (field.to(torch.int32) << self.mantissa_bits) | mantissa
        if torch.isnan(x).any():
            if self.special == "finite":
                raise ValueError(f"{self.name} has no NaN code")
            nan_code = 2 ** (self.bits - 1) - 1  # all exponent and mantissa bits set
            code = torch.where(torch.isnan(x), nan_code, code)
        return code

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        code = code.to(torch.int32)
        mantissa = code & (2**self.mantissa_bits - 1)
        field = (code >> self.mantissa_bits) & (2**self.exponent_bits - 1)
        negative = (code >> (self.bits - 1)) & 1
        significand = torch.where(field > 0, mantissa + 2**self.mantissa_bits, mantissa).float()
        exponent = torch.where(field > 0, field - self.bias, self.min_normal_exponent) - self.mantissa_bits
        value = torch.ldexp(significand, exponent)
        value = torch.where(negative.bool(), -value, value)
        top = 2**self.exponent_bits - 1
        if self.special == "fn":
            value = torch.where((field == top) & (mantissa == 2**self.mantissa_bits - 1), float("nan"), value)
        elif self.special == "ieee":
            value = torch.where((field == top) & (mantissa == 0), torch.copysign(torch.tensor(float("inf")), value),
                                value)
            value = torch.where((field == top) & (mantissa != 0), float("nan"), value)
        return value


@dataclass(frozen=True)
class IntFormat(GridRounding):
    """Symmetric signed integers in [-(2^(b-1) - 1), 2^(b-1) - 1] (round half to even, saturating)."""

    name: str
    bits: int

    @property
    def max_value(self) -> float:
        return float(2 ** (self.bits - 1) - 1)

    def _to_grid(self, x: torch.Tensor, rounding) -> torch.Tensor:
        x = x.float()
        rounded = torch.copysign(rounding(x.abs()), x).clamp(-self.max_value, self.max_value)
        return torch.where(torch.isnan(x), x, rounded)


    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if torch.isnan(x).any():
            raise ValueError(f"{self.name} has no NaN code")
        return (x.round().to(torch.int32) + int(self.max_value)) & (2**self.bits - 1)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return code.to(torch.int32).float() - self.max_value


FORMATS: dict[str, FloatFormat | IntFormat] = {
    "fp8_e4m3": FloatFormat("fp8_e4m3", 4, 3, 7, "fn", torch.float8_e4m3fn),
    "fp8_e5m2": FloatFormat("fp8_e5m2", 5, 2, 15, "ieee", torch.float8_e5m2),
    "fp8_e3m4": FloatFormat("fp8_e3m4", 3, 4, 3),
    "fp6_e3m2": FloatFormat("fp6_e3m2", 3, 2, 3),
    "fp6_e2m3": FloatFormat("fp6_e2m3", 2, 3, 1),
    "fp4_e2m1": FloatFormat("fp4_e2m1", 2, 1, 1),
    "fp4_e3m0": FloatFormat("fp4_e3m0", 3, 0, 3),
    "fp4_e1m2": FloatFormat("fp4_e1m2", 1, 2, 1),
    "int8": IntFormat("int8", 8),
    "int4": IntFormat("int4", 4),
}
FORMATS["float8_e4m3fn"] = FORMATS["fp8_e4m3"]
FORMATS["float8_e5m2"] = FORMATS["fp8_e5m2"]


def get_format(name: str) -> FloatFormat | IntFormat:
    """The format called ``name``: a key of FORMATS, or a float format with another exponent bias written
    ``<name>_b<bias>`` (what ``FloatFormat.with_bias`` names it, e.g. ``fp4_e2m1_b2``)."""
    if isinstance(name, (FloatFormat, IntFormat)):
        return name
    if not isinstance(name, str):
        raise TypeError(f"a number format is a name (str), got {type(name).__name__}")
    base, _, bias = name.rpartition("_b")
    if name not in FORMATS and isinstance(FORMATS.get(base), FloatFormat) and bias.lstrip("-").isdigit():
        return FORMATS[base].with_bias(int(bias))
    if name not in FORMATS:
        raise ValueError(f"Unknown number format {name!r}; valid choices: {sorted(FORMATS)} (float formats also "
                         "as <name>_b<exponent bias>, e.g. 'fp4_e2m1_b2')")
    return FORMATS[name]
