"""4-bit quality options of ``quantize``: per-layer format choice, block reconstruction, per-timestep-group input
scales, 8-bit layers kept by name, and their save/load round trip (tiny random models, a few iterations)."""

import copy

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UNet2DModel
from torch import nn

from diffusers_ext import DPMSolverPPScheduler
from diffusers_ext.models.digits import WEIGHTS_DIR, DigitsPipeline
from diffusers_ext.quant import (
    QuantizedLayer,
    collect_layer_inputs,
    get_format,
    load_quantized,
    quantize,
    resident_weight_bytes,
    save_quantized,
    weight_scales,
)
from diffusers_ext.quant.activations import group_bounds
from diffusers_ext.quant.format_choice import FP4_FORMATS, choose_weight_format
from diffusers_ext.quant.layers import group_count
from diffusers_ext.quant.rounding import reconstruction_error
from diffusers_ext.quant.trajectory import record_trajectory, trajectory_error


def _tiny_unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), num_class_embeds=11, norm_num_groups=4,
                       attention_head_dim=8).eval()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second thread only adds synchronization (and on a loaded machine, much of it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pipe(scheduler=DPMSolverPPScheduler):
    config = scheduler.load_config(WEIGHTS_DIR, subfolder="scheduler")  # the digits model's noise schedule
    pipe = DigitsPipeline(_tiny_unet(), scheduler.from_config(config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, seed, steps=4, n=8):
    return lambda: pipe(class_labels=torch.arange(n) % 10, num_inference_steps=steps,
                        generator=torch.Generator().manual_seed(seed), output_type="pt")


@pytest.fixture(scope="module")
def calibrated():
    """A tiny random digits pipeline, its calibration (seed 0) and a held-out trajectory (seed 1)."""
    pipe = _pipe()
    return pipe, collect_layer_inputs(pipe.unet, _run(pipe, 0)), record_trajectory(pipe.unet, _run(pipe, 1))


@pytest.fixture(scope="module")
def nearest_mse(calibrated):
    """The held-out trajectory error of W4A8 FP4 E2M1 with round-to-nearest: the baseline each option must beat."""
    model, held_out = _quantized(calibrated)
    return trajectory_error(model, held_out)["mse"]


def _quantized(calibrated, **options):
    pipe, calibration, held_out = calibrated
    unet = copy.deepcopy(pipe.unet)
    kwargs = {"weights": "fp4_e2m1", "activations": "fp8_e4m3", "rounding_iterations": 60, "progress": False}
    return quantize(unet, calibration=calibration, **{**kwargs, **options}), held_out


def test_format_choice_picks_the_grid_with_the_lowest_layer_output_error():
    """Weights on a uniform grid fit E1M2 (uniform, like INT4), powers of two over 7 octaves fit E3M0."""
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(64, 32, generator=g)]
    uniform = torch.randint(-7, 8, (16, 32), generator=g) / 7.0
    log_uniform = torch.sign(torch.randn(16, 32, generator=g)) * 2.0 ** -torch.randint(0, 7, (16, 32), generator=g)
    candidates = [get_format(f) for f in FP4_FORMATS]
    for weight, expected in ((uniform, "fp4_e1m2"), (log_uniform, "fp4_e3m0")):
        fmt, scale, errors = choose_weight_format("linear", {}, weight, None, candidates, x)
        assert fmt.name == expected, errors
        q = fmt.round(weight / scale[:, None]) * scale[:, None]
        assert reconstruction_error("linear", {}, x, weight, q, None) == pytest.approx(min(errors.values()))
        assert min(errors.values()) < 0.1 * errors["fp4_e2m1"]
    # through quantize: each layer gets its own format
    model = nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 16))
    with torch.no_grad():
        model[0].weight.copy_(uniform)
        model[1].weight.copy_(log_uniform[:, :16])
    calibration = collect_layer_inputs(model, lambda: model(x[0]))
    quantize(model, weights=FP4_FORMATS, activations=None, calibration=calibration, progress=False)
    assert [model[0].weight_format.name, model[1].weight_format.name] == ["fp4_e1m2", "fp4_e3m0"]


def test_format_choice_lowers_the_trajectory_error(calibrated, nearest_mse):
    chosen, held_out = _quantized(calibrated, weights=FP4_FORMATS)
    assert trajectory_error(chosen, held_out)["mse"] < 0.9 * nearest_mse


def test_biased_format_names_round_trip_through_get_format():
    fmt = get_format("fp4_e2m1_b3")
    assert (fmt.bias, fmt.max_value) == (3, 1.5) and fmt.with_bias(0).name == "fp4_e2m1_b0"
    assert get_format(fmt.name) == fmt
    with pytest.raises(ValueError, match="valid choices"):
        get_format("fp4_e2m1_bx")


def test_block_reconstruction_lowers_each_block_output_error_and_runs_in_execution_order(calibrated, nearest_mse):
    model, held_out = _quantized(calibrated, rounding="block", rounding_iterations=40)
    blocks = model.quantization_report["blocks"]
    order = list(blocks)
    assert order.index("down_blocks.1") < order.index("mid_block") < order.index("up_blocks.0")  # not registration
    for unit in ("down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"):
        assert blocks[unit]["kept"] == "hard" and blocks[unit]["hard"] < 0.97 * blocks[unit]["nearest"], blocks[unit]
    assert trajectory_error(model, held_out)["mse"] < 0.95 * nearest_mse


def test_block_inputs_come_from_the_quantized_preceding_blocks(calibrated):
    """The up blocks' recorded inputs differ from full precision once the blocks before them are quantized."""
    from diffusers_ext.quant.blocks import _replay

    pipe, calibration, _ = calibrated
    unet = copy.deepcopy(pipe.unet)
    full = _replay(unet, calibration.calls, {"up_blocks.0": unet.up_blocks[0]}, 64, inputs=True, outputs=False)
    quantize(unet, weights="fp4_e2m1", activations=None, progress=False, skip=("up_blocks", "conv_out"))
    partly = _replay(unet, calibration.calls, {"up_blocks.0": unet.up_blocks[0]}, 64, inputs=True, outputs=False)
    (args_full, _), (args_q, _) = full["up_blocks.0"][0], partly["up_blocks.0"][0]
    assert not torch.equal(args_full[0], args_q[0])


def _scale_probe(model):
    """Records the input scale conv_in uses at each denoiser call."""
    seen = []
    model.conv_in.register_forward_pre_hook(lambda m, args: seen.append(float(m.input_scale)))
    return seen


@pytest.mark.parametrize("scheduler", [DPMSolverPPScheduler, DPMSolverMultistepScheduler])
def test_timestep_groups_select_the_scale_of_the_current_timestep(calibrated, scheduler):
    model, _ = _quantized(calibrated, timestep_groups=2)
    bounds = model.quantization_report["timestep_bounds"]
    times = sorted(set(calibrated[1].timesteps["conv_in"]))
    assert len(bounds) == 1 and times[1] < bounds[0] < times[2]
    scales = model.conv_in.input_scales
    assert scales.shape == (2,) and not torch.equal(scales[0], scales[1])
    pipe = _pipe(scheduler)  # another scheduler and step count than the calibration's
    pipe.unet = model
    seen = _scale_probe(model)
    pipe.scheduler.set_timesteps(7)
    expected = [float(scales[int(t > bounds[0])]) for t in pipe.scheduler.timesteps]
    _run(pipe, 3, steps=7)()
    assert seen == expected and len(set(seen)) == 2


def test_timestep_groups_fit_each_groups_range():
    """A toy denoiser whose inputs are 100x larger at high t: one scale per group quantizes the small inputs far
    better than one shared scale."""

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(16, 16)

        def forward(self, x, timestep):
            return self.layer(x * (100.0 if timestep > 500 else 1.0))

    torch.manual_seed(0)
    toy, x = Toy(), torch.randn(32, 16)
    calibration = collect_layer_inputs(toy, lambda: [toy(x, t) for t in (900, 700, 300, 100)])
    assert group_bounds(calibration.timesteps["layer"], 2) == [500.0]
    errors = {}
    for groups in (1, 2):
        model = quantize(copy.deepcopy(toy), weights="fp8_e4m3", activations="int8", calibration=calibration,
                         timestep_groups=groups, progress=False)
        with torch.no_grad():
            errors[groups] = float((model(x, 100) - toy(x, 100)).pow(2).mean())
    assert errors[2] < 0.01 * errors[1]
    assert model.layer.input_scales[1] / model.layer.input_scales[0] == pytest.approx(100, rel=0.05)


def test_keep_8bit_keeps_the_named_layers_at_8_bits(calibrated, nearest_mse):
    model, held_out = _quantized(calibrated, keep_8bit=("first", "last", "mid_block.attentions.0.to_q"))
    bits = {name: m.weight_format.bits for name, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    kept = {"conv_in", "conv_out", "mid_block.attentions.0.to_q"}
    assert {n for n, b in bits.items() if b == 8} == kept and all(bits[n] == 4 for n in bits.keys() - kept)
    assert model.conv_in.weight_format.name == "fp8_e4m3"
    assert model.quantization_report["kept_8bit"] == sorted(kept)
    assert trajectory_error(model, held_out)["mse"] < nearest_mse
    int_model, _ = _quantized(calibrated, weights="int4", activations="int8", keep_8bit=("first",))
    assert int_model.conv_in.weight_format.name == "int8"


def test_save_load_round_trips_formats_and_timestep_scales(calibrated, tmp_path):
    model, _ = _quantized(calibrated, weights=FP4_FORMATS, rounding="block", timestep_groups=2,
                          keep_8bit=("last",), rounding_iterations=10)
    path = save_quantized(model, tmp_path / "q.safetensors")
    again = load_quantized(_tiny_unet(seed=3), path)
    x, labels = torch.randn(4, 1, 8, 8), torch.arange(4)
    for t in (900, 50):  # one timestep in each group
        assert torch.equal(again(x, t, class_labels=labels).sample, model(x, t, class_labels=labels).sample)
        assert float(again.conv_in.input_scale) == float(model.conv_in.input_scale)
    assert torch.equal(again.conv_in.input_scales, model.conv_in.input_scales)
    formats = {n: m.weight_format.name for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    assert formats == {n: m.weight_format.name for n, m in again.named_modules() if isinstance(m, QuantizedLayer)}


@pytest.mark.parametrize("options, key, bad, message", [
    ({"timestep_groups": 2}, "conv_in.input_scales", lambda t: torch.tensor([1.0, 2.0, 3.0]),
     "input_scales must hold 2"),
    ({"weight_group_size": 8}, "conv_out.weight_scale", lambda t: torch.ones(t.shape[0], t.shape[1] + 1),
     "conv_out: weight_scale must hold"),  # 10 groups of 72 weights: no group size makes 10
    ({"weight_group_size": 8}, "conv_out.weight_scale", lambda t: torch.ones(t.shape[0], 0),
     r"conv_out.weight_scale \(\(1,\) per channel or \(1, G\) per group\) must hold 1")])
def test_a_file_with_bad_scales_is_refused_and_the_model_untouched(calibrated, tmp_path, options, key, bad,
                                                                   message):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model, _ = _quantized(calibrated, **options)
    path = save_quantized(model, tmp_path / "q.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    tensors[key] = bad(tensors[key])
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    fresh = _tiny_unet(seed=3)
    before = copy.deepcopy(fresh.state_dict())
    with pytest.raises(ValueError, match=message):
        load_quantized(fresh, tmp_path / "bad.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())
    assert not hasattr(fresh, "timestep_groups")


def test_bad_options_name_the_problem(calibrated):
    pipe, calibration, _ = calibrated
    unet = copy.deepcopy(pipe.unet)
    cases = [({"weights": ()}, "non-empty sequence"),
             ({"keep_8bit": ("conv_nope",)}, "valid choices: 'first', 'last'"),
             ({"timestep_groups": 0}, "timestep_groups must be an integer >= 1"),
             ({"timestep_groups": 9}, "exceeds the 4 distinct"),
             ({"timestep_groups": 2, "activations": None}, "needs quantized activations"),
             ({"rounding": "blocks"}, "valid choices"),
             ({"rounding": "block", "calibration": dict(calibration)}, "replays the model's calibration calls")]
    for options, message in cases:
        kwargs = {"weights": "fp4_e2m1", "activations": "fp8_e4m3", "calibration": calibration, "progress": False}
        with pytest.raises(ValueError, match=message):
            quantize(unet, **{**kwargs, **options})
    with pytest.raises(TypeError, match="sequence of names"):
        quantize(unet, weights="fp4_e2m1", activations=None, keep_8bit="first", progress=False)
    assert not any(isinstance(m, QuantizedLayer) for m in unet.modules())  # nothing half-quantized


def test_quantize_pipeline_passes_the_quality_options(tmp_path):
    from diffusers_ext.quant import quantize_pipeline

    pipe = _pipe()
    result = quantize_pipeline(pipe, FP4_FORMATS, "fp8_e4m3", num_samples=4, num_inference_steps=3,
                               keep_8bit=("first",), timestep_groups=2, progress=False)
    report = result["report"]
    assert report["kept_8bit"] == ["conv_in"] and len(report["timestep_bounds"]) == 1
    assert sum(report["formats"].values()) == report["layers"] and report["formats"]["fp8_e4m3"] == 1
    with pytest.raises(ValueError, match="Unknown number format"):
        quantize_pipeline(_pipe(), ("fp4_e2m1", "fp4_e9m9"), num_samples=4, progress=False)


# ---------------------------------------------------------------- weight scales per group (weight_group_size)
def test_group_scales_are_each_groups_own_per_channel_search():
    """A conv with K = 5 * 3 * 3 = 45 inputs per channel and groups of 16: G = 3 groups of 15 weights each
    (evened out), each scale the one the per-channel search picks for that group's 15 weights alone."""
    torch.manual_seed(0)
    conv, fmt = nn.Conv2d(5, 7, 3), get_format("fp4_e2m1")
    assert group_count(conv.weight.shape, 16) == 3 and group_count(conv.weight.shape, 45) == 1
    assert group_count(conv.weight.shape, 7) == 7 and group_count((4, 10), 3) == 4  # 10 = 3 + 3 + 3 + 1
    scales = weight_scales(conv.weight, fmt, group_size=16)
    rows = conv.weight.detach().reshape(7, 45)
    assert scales.shape == (7, 3)
    for g in range(3):
        assert torch.equal(scales[:, g], weight_scales(rows[:, 15 * g:15 * (g + 1)], fmt))
    q = QuantizedLayer(conv, "fp4_e2m1", scales)
    expected = torch.cat([fmt.round(rows[:, 15 * g:15 * (g + 1)] / scales[:, g:g + 1]) * scales[:, g:g + 1]
                          for g in range(3)], dim=1).reshape(conv.weight.shape)
    assert torch.equal(q.dequantized_weight, expected)
    x = torch.randn(2, 5, 6, 6)
    assert torch.allclose(q(x), nn.functional.conv2d(x, expected, conv.bias), atol=1e-6)
    per_channel = QuantizedLayer(conv, "fp4_e2m1", weight_scales(conv.weight, fmt))
    errors = [(layer.dequantized_weight - conv.weight).pow(2).sum() for layer in (q, per_channel)]
    assert errors[0] < errors[1]
    linear = nn.Linear(10, 4)  # K = 10, groups of 3: 3 + 3 + 3 + 1, the last group padded for its search
    scales = weight_scales(linear.weight, fmt, group_size=3)
    assert scales.shape == (4, 4) and torch.equal(scales[:, 3], weight_scales(linear.weight[:, 9:], fmt))
    assert torch.equal(scales[:, 1], weight_scales(linear.weight[:, 3:6], fmt))
    bad = [(conv, torch.ones(7, 10)),  # 10 groups fit no group size of 45 (9 make 5)
           (linear, weight_scales(linear.weight, fmt, group_size=5).t()),  # (2, 4): transposed
           (conv, torch.ones(7, 0)), (linear, torch.ones(4, 11))]  # no groups; more groups than weights
    for layer, scale in bad:
        with pytest.raises(ValueError, match=r"per group \(\d, G\)"):
            QuantizedLayer(layer, "fp4_e2m1", scale)


def test_weight_group_size_lowers_the_trajectory_error_and_round_trips(calibrated, tmp_path):
    model, held_out = _quantized(calibrated, weight_group_size=8, keep_8bit=("last",))
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    assert all(m.weight_scale.shape == (m.weight_shape[0], group_count(m.weight_shape, 8))
               for name, m in layers.items() if name != "conv_out")
    assert layers["conv_out"].weight_scale.shape == (1,)  # a keep_8bit layer keeps one scale per channel
    assert model.quantization_report["weight_group_size"] == 8
    path = save_quantized(model, tmp_path / "q.safetensors")
    again = load_quantized(_tiny_unet(seed=3), path)
    x, labels = torch.randn(4, 1, 8, 8), torch.arange(4)
    assert torch.equal(again(x, 500, class_labels=labels).sample, model(x, 500, class_labels=labels).sample)
    assert resident_weight_bytes(again) == resident_weight_bytes(model)
    per_channel, _ = _quantized(calibrated, keep_8bit=("last",))  # the same codes' bytes, one scale per channel
    extra = sum(4 * (m.weight_scale.numel() - m.weight_shape[0]) for m in layers.values())
    assert resident_weight_bytes(model) == resident_weight_bytes(per_channel) + extra > resident_weight_bytes(
        per_channel)
    assert trajectory_error(model, held_out)["mse"] < trajectory_error(per_channel, held_out)["mse"]


@pytest.mark.parametrize("size", [0, -4, 2.5, True])
def test_a_bad_weight_group_size_is_refused_before_any_work(calibrated, size):
    from diffusers_ext.quant import quantize_pipeline

    unet = copy.deepcopy(calibrated[0].unet)
    with pytest.raises(ValueError, match="weight_group_size must be a positive int"):
        quantize(unet, "fp4_e2m1", None, progress=False, weight_group_size=size)
    assert not any(isinstance(m, QuantizedLayer) for m in unet.modules())
    pipe = _pipe()
    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match="weight_group_size must be a positive int"):
        quantize_pipeline(pipe, "fp4_e2m1", num_samples=2, progress=False, weight_group_size=size)
    assert not calls  # no calibration run was spent
