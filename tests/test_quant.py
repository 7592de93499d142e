"""Quantized layers, calibration, learned rounding and packed storage on small models."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusers_ext.quant import (
    QuantizedLayer,
    collect_layer_inputs,
    get_format,
    learn_rounding,
    load_quantized,
    quantize,
    reconstruction_error,
    save_quantized,
    weight_scales,
)
from tests.helpers import small_cnn


def _model(seed=0):
    return small_cnn(16, seed)


def _inputs(n, seed):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _calibrate(model, seed=1):
    return collect_layer_inputs(model, lambda: [model(_inputs(32, seed + k)) for k in range(4)])


def test_quantized_layer_computes_the_documented_formula():
    layer = nn.Linear(24, 8)
    fmt, act = get_format("fp4_e2m1"), get_format("fp8_e4m3")
    scale = weight_scales(layer.weight, fmt)
    q = QuantizedLayer(layer, "fp4_e2m1", scale, activation_format="fp8_e4m3", input_scale=0.01)
    x = torch.randn(5, 24)
    w = fmt.round(layer.weight / scale[:, None]) * scale[:, None]
    expected = F.linear(act.round(x / 0.01) * 0.01, w, layer.bias)
    assert torch.equal(q(x), expected)
    grid = torch.unique(q.dequantized_weight / scale[:, None])
    assert torch.equal(fmt.round(grid), grid)  # every weight on the FP4 grid


def test_w8a8_fp8_stays_close_and_save_load_is_identical(tmp_path):
    model = _model()
    x = _inputs(16, 99)
    reference = model(x).detach()
    calibration = _calibrate(model)
    quantize(model, weights="fp8_e4m3", activations="fp8_e4m3", calibration=calibration, progress=False)
    assert sum(isinstance(m, QuantizedLayer) for m in model.modules()) == 4
    out = model(x).detach()
    rel = ((out - reference).norm() / reference.norm()).item()
    assert 0 < rel < 0.05, rel
    path = save_quantized(model, tmp_path / "w8a8.safetensors")
    again = load_quantized(_model(seed=5), path)  # other float weights: all replaced from the file
    assert torch.equal(again(x), out)


def test_fp4_file_is_packed_two_codes_per_byte(tmp_path):
    from safetensors.torch import load_file

    model = _model()
    quantize(model, weights="fp4_e2m1", activations=None, progress=False)
    path = save_quantized(model, tmp_path / "w4.safetensors")
    tensors = load_file(str(path))
    conv = model[2]
    assert tensors["2.weight_packed"].numel() == conv.weight_codes.numel() // 2
    quantized_weights = sum(m.weight_codes.numel() for m in model.modules() if isinstance(m, QuantizedLayer))
    packed = sum(v.numel() for k, v in tensors.items() if k.endswith("weight_packed"))
    assert packed * 8 == quantized_weights * 4  # 4 bits per weight: 8x smaller than float32
    x = _inputs(4, 3)
    assert torch.equal(load_quantized(_model(seed=2), path)(x), model(x))


def test_learned_rounding_beats_round_to_nearest():
    """On a fixed seed, learned FP4 rounding lowers the layer's reconstruction error on held-out inputs."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    mixing = torch.randn(64, 64) / 8  # correlated inputs: where rounding choices interact
    train = [torch.randn(256, 64) @ mixing for _ in range(4)]
    held_out = [torch.randn(512, 64, generator=torch.Generator().manual_seed(7)) @ mixing]
    fmt = get_format("fp4_e2m1")
    scale = weight_scales(layer.weight, fmt)
    s = scale[:, None]
    nearest = fmt.round(layer.weight / s) * s
    learned = learn_rounding("linear", {}, layer.weight, layer.bias, fmt, scale, train, iterations=400,
                             seed=0, progress=False) * s
    assert torch.equal(fmt.round(learned / s), learned / s)  # on the grid
    err = {name: reconstruction_error("linear", {}, held_out, layer.weight.detach(), w.detach(), layer.bias.detach())
           for name, w in (("nearest", nearest), ("learned", learned))}
    assert err["learned"] < 0.9 * err["nearest"], err


def test_bad_input():
    with pytest.raises(ValueError, match="valid choices"):
        quantize(_model(), weights="fp3_e9m9", activations=None)
    with pytest.raises(ValueError, match="no quantizable layers"):
        quantize(nn.Sequential(nn.ReLU()), activations=None)
    with pytest.raises(ValueError, match="zero samples"):
        quantize(_model(), weights="fp8_e4m3", activations="fp8_e4m3", calibration=None)
    with pytest.raises(ValueError, match="zero samples"):
        quantize(_model(), activations=None, rounding="learned", calibration={"0": []})
    with pytest.raises(ValueError, match="valid choices"):
        quantize(_model(), activations=None, rounding="stochastic")
    with pytest.raises(ValueError, match="no quantized layers"):
        save_quantized(_model(), "/tmp/never.safetensors")


def test_trajectory_error_is_zero_for_the_same_model_and_grows_with_fewer_bits():
    from diffusers_ext.quant.trajectory import record_trajectory, trajectory_error

    model = _model()
    calls = record_trajectory(model, lambda: [model(_inputs(8, k)) for k in range(3)])
    assert len(calls) == 3 and trajectory_error(model, calls)["mse"] == 0.0
    errors = {}
    for weights in ("fp8_e4m3", "fp4_e2m1"):
        quantized = quantize(_model(), weights=weights, activations=None, progress=False)
        errors[weights] = trajectory_error(quantized, calls)["relative_mse"]
    assert 0 < errors["fp8_e4m3"] < errors["fp4_e2m1"], errors


def test_cli_quantizes_the_digits_unet_into_a_small_file_that_plugs_into_the_pipeline(tmp_path, capsys):
    import json

    from diffusers_ext.cli import main
    from diffusers_ext.models.digits import load_pipeline, make_unet

    out = tmp_path / "w4a8.safetensors"
    assert main(["quantize", "--weights", "fp4_e2m1", "--activations", "fp8_e4m3", "--rounding", "learned",
                 "--iterations", "3", "--samples", "8", "--nfe", "3", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["file_bytes"] < report["float32_bytes"] / 4 and 0 < report["held_out_relative_mse"] < 1
    pipe = load_pipeline()
    pipe.unet = load_quantized(make_unet(), out)
    images = pipe(class_labels=[1, 2], num_inference_steps=3, output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()


def test_cli_quantize_passes_the_4bit_quality_options(tmp_path, capsys):
    import json

    from diffusers_ext.cli import main
    from diffusers_ext.models.digits import make_unet
    from diffusers_ext.quant.layers import group_count

    out = tmp_path / "w4a8.safetensors"
    assert main(["quantize", "--weights", "fp4_e2m1,fp4_e1m2", "--activations", "fp8_e4m3", "--rounding", "block",
                 "--iterations", "2", "--keep-8bit", "first", "last", "--timestep-groups", "2", "--group-size", "32",
                 "--samples", "4", "--nfe", "3", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["keep_8bit"] == ["first", "last"] and report["group_size"] == 32
    unet = load_quantized(make_unet(), out)
    layers = [m for m in unet.modules() if isinstance(m, QuantizedLayer)]
    eight = [m for m in layers if m.weight_format.bits == 8]
    assert [m.weight_format.name for m in eight] == ["fp8_e4m3"] * 2 and unet.conv_in in eight
    assert {m.weight_format.name for m in layers if m not in eight} <= {"fp4_e2m1", "fp4_e1m2"}
    assert all(m.weight_scale.shape == (m.weight_shape[0], group_count(m.weight_shape, 32))
               for m in layers if m not in eight)
    assert unet.conv_in.input_scales.shape == (2,)
    with pytest.raises(SystemExit):
        main(["quantize", "--rounding", "blocks"])
    assert "invalid choice: 'blocks'" in capsys.readouterr().err


def test_fp8_scaled_mm_path_matches_the_emulated_layer():
    """The real FP8 path (used on CUDA sm89+) run through torch._scaled_mm on the CPU: same result as the
    float32 emulation up to its bfloat16 output (relative 2^-8)."""
    torch.manual_seed(0)
    layer = nn.Linear(32, 48)
    fmt = get_format("fp8_e4m3")
    q = QuantizedLayer(layer, "fp8_e4m3", weight_scales(layer.weight, fmt), activation_format="fp8_e4m3",
                       input_scale=0.02)
    x = torch.randn(5, 3, 32)
    emulated, real = q(x), q._fp8_linear(x)
    assert real.shape == emulated.shape == (5, 3, 48)
    assert ((real - emulated).norm() / emulated.norm()).item() < 4e-3


@pytest.mark.parametrize("weights, bytes_per_weight", [("fp4_e2m1", 0.5), ("int4", 0.5), ("fp8_e4m3", 1),
                                                       ("fp6_e3m2", 1)])
def test_quantized_weights_stay_packed_in_memory_and_nothing_float_is_cached(weights, bytes_per_weight):
    """Resident weight bytes at run time: the packed codes (FP4 two per byte), the per-channel scales and the
    biases, before and after forwards (the float weight is decoded per forward, never kept)."""
    from diffusers_ext.quant import resident_weight_bytes

    model = small_cnn(32)
    float_bytes = resident_weight_bytes(model)
    x = _inputs(4, 0)
    reference = model(x)
    quantize(model, weights=weights, activations=None, progress=False)
    layers = [m for m in model.modules() if isinstance(m, QuantizedLayer)]
    count = sum(m.weight_packed.numel() for m in layers)
    weights_n = sum(m.weight_codes.numel() for m in layers)
    assert all(m.weight_packed.dtype == torch.uint8 for m in layers) and count == weights_n * bytes_per_weight
    expected = count + sum(4 * (m.weight_scale.numel() + m.bias.numel()) for m in layers)
    assert resident_weight_bytes(model) == expected
    out = model(x)
    model(x)
    assert resident_weight_bytes(model) == expected  # nothing cached by the forwards
    assert ((out - reference).norm() / reference.norm()).item() < (0.3 if bytes_per_weight < 1 else 0.05)
    if bytes_per_weight == 0.5:
        assert resident_weight_bytes(model) <= 0.2 * float_bytes, (resident_weight_bytes(model), float_bytes)


def test_packed_layer_decodes_to_the_round_to_nearest_weight_for_every_format():
    """The packed bytes decode to exactly fmt.round(W / s) * s (odd weight counts included: the last byte's low
    nibble is padding)."""
    torch.manual_seed(0)
    layer = nn.Linear(7, 3)  # 21 weights: odd
    for name in ("fp4_e2m1", "fp4_e3m0", "fp4_e1m2", "int4", "fp6_e2m3", "fp8_e4m3", "fp8_e5m2", "int8"):
        fmt = get_format(name)
        scale = weight_scales(layer.weight, fmt)
        q = QuantizedLayer(layer, name, scale)
        expected = fmt.round(layer.weight.detach() / scale[:, None]) * scale[:, None]
        assert torch.equal(q.dequantized_weight, expected), name
        assert q.weight_packed.numel() == (11 if fmt.bits == 4 else 21), name


def test_resident_weight_bytes_counts_whole_storages_once():
    from diffusers_ext.quant import resident_weight_bytes

    big = torch.zeros(1000)
    holder = nn.Module()
    holder.register_buffer("view", big[:10])  # a view keeps its whole storage alive
    holder.linear = nn.Linear(10, 10, bias=False)
    holder.tied = nn.Linear(10, 10, bias=False)
    holder.tied.weight = holder.linear.weight
    holder.cache = torch.ones(25)  # a plain tensor attribute (e.g. a cached decoded weight) counts too
    assert resident_weight_bytes(holder) == 4000 + 400 + 100
    assert resident_weight_bytes(holder, holder.linear) == 4500  # shared storages across modules count once
    with pytest.raises(TypeError, match="torch modules"):
        resident_weight_bytes(big)


def test_call_peak_bytes_sees_the_peak_of_torch_allocations():
    from diffusers_ext.quant import call_peak_bytes

    def run():
        a = torch.ones(250_000)  # 1 MB
        b = a * 2  # 2 MB held
        del a
        c = torch.ones(500_000)  # 1 + 2 MB = 3 MB held: the peak
        return float(b.sum() + c.sum())

    assert 3_000_000 <= call_peak_bytes(run) < 3_000_000 + 4096


def test_cli_quantize_writes_a_pipeline_folder_that_reloads_with_one_call(tmp_path, capsys):
    import json

    from diffusers_ext import DPMSolverPPScheduler
    from diffusers_ext.cli import main
    from diffusers_ext.models.digits import load_pipeline, make_unet
    from diffusers_ext.quant import load_quantized_pipeline

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    args = ["quantize", "--weights", "fp4_e2m1", "--activations", "none", "--samples", "2", "--nfe", "2",
            "--out", str(tmp_path / "w4.safetensors")]
    assert main([*args, "--pipeline-out", str(occupied)]) == 2  # refused before any work
    assert "not an empty folder" in capsys.readouterr().err and not (tmp_path / "w4.safetensors").exists()
    assert main([*args, "--pipeline-out", str(tmp_path / "w4-pipe")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["resident_bytes"] <= 0.2 * report["float32_bytes"]
    again = load_quantized_pipeline(tmp_path / "w4-pipe")
    assert isinstance(again.scheduler, DPMSolverPPScheduler)  # the calibration trajectory's scheduler is kept
    pipe = load_pipeline(DPMSolverPPScheduler)
    pipe.unet = load_quantized(make_unet(), tmp_path / "w4.safetensors")
    images = [p(class_labels=[3, 4], num_inference_steps=2, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images for p in (again, pipe)]
    assert torch.equal(*images)


def test_fp8_gemm_reads_the_packed_bytes_without_a_copy():
    """The float8 weight _scaled_mm takes is a view of the layer's packed bytes: resident memory unchanged."""
    from diffusers_ext.quant import resident_weight_bytes

    torch.manual_seed(0)
    layer = nn.Linear(32, 16)
    q = QuantizedLayer(layer, "fp8_e4m3", weight_scales(layer.weight, get_format("fp8_e4m3")),
                       activation_format="fp8_e4m3", input_scale=0.02)
    before = resident_weight_bytes(q)
    view = q.fp8_weight
    assert view.dtype == torch.float8_e4m3fn and view.shape == (32, 16)
    assert view.untyped_storage().data_ptr() == q.weight_packed.untyped_storage().data_ptr()
    assert torch.equal(view.t().float() * q.weight_scale[:, None], q.dequantized_weight)
    q._fp8_linear(torch.randn(4, 32))
    assert resident_weight_bytes(q) == before == 16 * 32 + 4 * (16 + 16 + 1)
    with pytest.raises(ValueError, match="fp8_weight needs fp8_e4m3 weights, this layer holds fp4_e2m1"):
        _ = QuantizedLayer(layer, "fp4_e2m1", weight_scales(layer.weight, get_format("fp4_e2m1"))).fp8_weight


class _WrappedCodes(torch.Tensor):
    """A minimal wrapper tensor subclass (as torchao / optimum-quanto weights are): no storage of its own, its
    data in an inner uint8 tensor."""

    @staticmethod
    def __new__(cls, codes, shape):
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=torch.float32)

    def __init__(self, codes, shape):
        self.codes = codes

    def __tensor_flatten__(self):
        return ["codes"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return _WrappedCodes(inner["codes"], outer_size)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise NotImplementedError(func)


def test_resident_weight_bytes_counts_tensor_subclasses_by_their_inner_tensors():
    from diffusers_ext.quant import resident_weight_bytes

    holder = nn.Module()
    holder.register_buffer("weight", _WrappedCodes(torch.zeros(100, dtype=torch.uint8), (10, 20)))
    holder.register_buffer("scale", torch.ones(10))
    assert resident_weight_bytes(holder) == 100 + 40


@pytest.mark.parametrize("activations", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_input_quantization_is_the_emulation_bit_for_bit_with_a_small_peak(activations):
    """Inputs quantized to a native float8 format by a saturating cast: equal to fake_quantize (NaN, infinities,
    signed zeros, subnormals included), and a forward's peak allocation 1.3x the input instead of 8.3x."""
    from diffusers_ext.quant import call_peak_bytes
    from diffusers_ext.quant.layers import fake_quantize

    torch.manual_seed(0)
    layer = nn.Linear(256, 16)
    q = QuantizedLayer(layer, "fp4_e2m1", weight_scales(layer.weight, get_format("fp4_e2m1")),
                       activation_format=activations, input_scale=0.01)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, generator=g) * 10 ** torch.empty(20_000).uniform_(-8, 8, generator=g)
    x = torch.cat([x, torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0])])
    ours, emulated = q.quantize_input(x), fake_quantize(x, get_format(activations), q.input_scale)
    assert torch.equal(ours.nan_to_num(7.0), emulated.nan_to_num(7.0)) and ours.isnan().sum() == 1
    assert torch.equal(torch.signbit(ours), torch.signbit(emulated))
    inputs = torch.randn(1024, 256)
    q(inputs)
    assert call_peak_bytes(lambda: q(inputs)) <= 1.5 * inputs.numel() * 4


def test_group_scales_add_no_weight_sized_copy_to_a_forward():
    """Per-group scales are applied in the (out, G, group) layout: a forward's peak allocation is the
    per-channel layer's, not one weight-sized float tensor more."""
    from diffusers_ext.quant import call_peak_bytes

    torch.manual_seed(0)
    layer, fmt, x = nn.Linear(512, 512), get_format("fp4_e2m1"), torch.randn(1, 512)
    peaks = []
    for group_size in (None, 32):
        q = QuantizedLayer(layer, "fp4_e2m1", weight_scales(layer.weight, fmt, group_size=group_size))
        q(x)
        peaks.append(call_peak_bytes(lambda q=q: q(x)))
    assert peaks[1] <= peaks[0] + 4096 < peaks[0] + layer.weight.numel() * 4, peaks
