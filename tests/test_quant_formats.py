"""Rounding onto low-bit FP / integer grids: exact for representable values, ties to even, saturation."""

import pytest
import torch

from diffusers_ext.quant import FORMATS, FloatFormat, get_format

FLOAT_FORMATS = sorted({f.name for f in FORMATS.values() if isinstance(f, FloatFormat)})


def _grid(fmt):
    """Every finite code and its value, in increasing order of non-negative values."""
    codes = torch.arange(2 ** (fmt.bits - 1), dtype=torch.int32)  # sign bit 0
    values = fmt.decode(codes)
    finite = torch.isfinite(values)
    return codes[finite], values[finite]


@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_every_representable_value_is_kept_and_its_code_round_trips(name):
    fmt = get_format(name)
    codes, values = _grid(fmt)
    assert (values.diff() > 0).all()  # codes are ordered like values
    assert values.max() == fmt.max_value
    for sign in (1.0, -1.0):
        assert torch.equal(fmt.round(sign * values), sign * values)
    signed = torch.cat([codes, codes | (1 << (fmt.bits - 1))])
    assert torch.equal(fmt.encode(fmt.decode(signed)), signed)


@pytest.mark.parametrize("name", [n for n in FLOAT_FORMATS if get_format(n).mantissa_bits > 0])
def test_midpoints_round_to_the_even_code(name):
    fmt = get_format(name)
    codes, values = _grid(fmt)
    mid = (values[:-1] + values[1:]) / 2  # exact in float32 for these few-bit grids
    even = torch.where(codes[:-1] % 2 == 0, values[:-1], values[1:])
    assert torch.equal(fmt.round(mid), even)
    assert torch.equal(fmt.round(-mid), -even)
    gap = values[1:] - values[:-1]
    assert torch.equal(fmt.round(mid - gap / 8), values[:-1])
    assert torch.equal(fmt.round(mid + gap / 8), values[1:])


@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_saturation_and_nan(name):
    fmt = get_format(name)
    big = torch.tensor([fmt.max_value * 1.01, fmt.max_value * 1e6, float("inf")])
    assert torch.equal(fmt.round(big), torch.full((3,), fmt.max_value))
    assert torch.equal(fmt.round(-big), torch.full((3,), -fmt.max_value))
    assert torch.isnan(fmt.round(torch.tensor([float("nan")]))).all()


@pytest.mark.parametrize("name, dtype", [("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_float8_rounding_equals_torch_casts(name, dtype):
    """torch's float8 casts (round to nearest even) are the independent reference inside the finite range."""
    fmt = get_format(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200000, generator=g) * torch.exp2(torch.randint(-20, 16, (200000,), generator=g).float())
    x = x[x.abs() <= fmt.max_value]
    assert torch.equal(fmt.round(x), x.to(dtype).float())
    assert torch.equal(fmt.decode(torch.arange(256)).nan_to_num(0.0),
                       torch.arange(256, dtype=torch.uint8).view(dtype).float().nan_to_num(0.0))


def test_known_grids():
    assert get_format("fp4_e2m1").decode(torch.arange(8)).tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert get_format("fp4_e3m0").decode(torch.arange(8)).tolist() == [0, 0.25, 0.5, 1, 2, 4, 8, 16]
    assert (get_format("fp8_e4m3").max_value, get_format("fp8_e5m2").max_value) == (448.0, 57344.0)
    assert get_format("fp4_e2m1").with_bias(3).max_value == 1.5


def test_integer_formats():
    int4 = get_format("int4")
    x = torch.tensor([0.5, 1.5, 2.5, -2.5, 6.9, 7.5, 100.0, -100.0])
    assert int4.round(x).tolist() == [0, 2, 2, -2, 7, 7, 7, -7]
    q = int4.round(torch.arange(-7, 8).float())
    assert torch.equal(int4.decode(int4.encode(q)), q) and int4.encode(q).max() < 16


def test_unknown_format():
    with pytest.raises(ValueError, match="valid choices"):
        get_format("fp5_e9m9")


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_packing_round_trips_bit_exactly(bits):
    from diffusers_ext.quant.packing import pack_codes, unpack_codes

    codes = torch.randint(0, 2**bits, (1001,), generator=torch.Generator().manual_seed(bits), dtype=torch.int32)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-1001 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, 1001), codes)
    if bits == 4:  # two codes per byte, the first in the high nibble
        assert packed[0] == (codes[0] << 4 | codes[1])
    with pytest.raises(ValueError, match="codes must lie"):
        pack_codes(torch.tensor([2**bits]), bits)


@pytest.mark.parametrize("name", ["fp4_e2m1", "fp8_e4m3", "fp4_e3m0", "int4"])
def test_directed_rounding_brackets_the_value(name):
    """round_toward_zero / round_away_from_zero give the two grid neighbours; nearest is one of them."""
    fmt = get_format(name)
    x = torch.randn(5000, generator=torch.Generator().manual_seed(1)) * fmt.max_value / 3
    low, high, nearest = fmt.round_toward_zero(x), fmt.round_away_from_zero(x), fmt.round(x)
    inside = x.abs() <= fmt.max_value
    assert (low.abs() <= x.abs()).all() and (high.abs()[inside] >= x.abs()[inside]).all()
    assert torch.equal(fmt.round(low), low) and torch.equal(fmt.round(high), high)
    assert ((nearest == low) | (nearest == high)).all()
    between = (x.abs() > low.abs()) & (x.abs() < high.abs())  # no grid value strictly between low and high
    mid = (low + high)[between] / 2
    assert torch.equal(fmt.round_toward_zero(mid), low[between])
