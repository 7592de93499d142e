"""Quantizing the denoiser of real diffusers pipelines (tiny random Stable Diffusion and SD3 built from configs):
calibration along the pipeline's own guided trajectory, our schedulers, folder round trips, resident memory.
Structure and round trips, not quality."""

import json

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from torch import nn

from diffusers_ext import DPMSolverPPScheduler, UniPCScheduler
from diffusers_ext.quant import (
    QuantizedLayer,
    load_quantized_pipeline,
    pipeline_peak_memory,
    quantize_pipeline,
    resident_weight_bytes,
    save_quantized_pipeline,
)
from tests.helpers import tiny_sd3_components, tiny_stable_diffusion

PROMPTS = ["a cat", "a red car"]
SIZE = {"height": 8, "width": 8}


def _sd(folder):
    source = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    return tiny_stable_diffusion(folder, DPMSolverPPScheduler.from_config(source.config))


def _sd3(folder):
    scheduler = DPMSolverPPScheduler.from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    pipe = StableDiffusion3Pipeline(scheduler=scheduler, **tiny_sd3_components(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe, guidance_scale, seed=7):
    return pipe(PROMPTS, num_inference_steps=4, guidance_scale=guidance_scale, output_type="latent",
                generator=torch.Generator().manual_seed(seed), **SIZE).images


def _quantized_layer_ratio(denoiser, float_bytes_by_layer):
    layers = {name: m for name, m in denoiser.named_modules() if isinstance(m, QuantizedLayer)}
    assert layers.keys() == float_bytes_by_layer.keys()
    return resident_weight_bytes(*layers.values()) / sum(float_bytes_by_layer.values())


def _float_layer_bytes(denoiser):
    return {name: resident_weight_bytes(m) for name, m in denoiser.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))}


@pytest.fixture(scope="module")
def sd_w8a8(tmp_path_factory):
    """A tiny SD pipeline with our DPM-Solver++ quantized at W8A8 FP8 along its guided trajectory (guidance 5),
    the fp32 latents before, and the batch sizes the UNet saw during quantize_pipeline."""
    pipe = _sd(tmp_path_factory.mktemp("sd"))
    reference = _latents(pipe, 5.0)
    batches = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(len(args[0])))
    result = quantize_pipeline(pipe, "fp8_e4m3", "fp8_e4m3", prompts=PROMPTS, num_inference_steps=4,
                               guidance_scale=5.0, call_kwargs=SIZE, progress=False)
    hook.remove()
    return pipe, reference, result, batches


def test_sd_w8a8_calibrates_along_the_guided_trajectory_and_stays_close_to_fp32(sd_w8a8):
    pipe, reference, result, batches = sd_w8a8
    # calibration run + held-out run (4 steps each) + the held-out replay; classifier-free guidance doubles the
    # batch of 2 prompts
    assert batches == [4] * 12
    assert result["denoiser"] == "unet" and len(result["mse_per_step"]) == 4
    assert 0 < result["relative_mse"] < 0.05
    assert result["report"]["layers"] == sum(isinstance(m, QuantizedLayer) for m in pipe.unet.modules()) > 50
    out = _latents(pipe, 5.0)
    assert 0 < ((out - reference).norm() / reference.norm()).item() < 0.15


def test_sd_folder_reloads_with_one_call_identically_and_takes_our_other_schedulers(sd_w8a8, tmp_path):
    pipe = sd_w8a8[0]
    folder = save_quantized_pipeline(pipe, tmp_path / "sd-w8a8")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["scheduler"][1] == "DPMSolverPPScheduler"
    assert pipe.config["unet"] == ("diffusers", "UNet2DConditionModel")  # the pipeline is left as it was
    again = load_quantized_pipeline(folder)
    again.set_progress_bar_config(disable=True)
    assert type(again).__name__ == "StableDiffusionPipeline" and isinstance(again.scheduler, DPMSolverPPScheduler)
    assert sum(isinstance(m, QuantizedLayer) for m in again.unet.modules()) == pipe.unet.quantization_report["layers"]
    assert torch.equal(_latents(again, 5.0), _latents(pipe, 5.0))
    unipc = UniPCScheduler.from_config(pipe.scheduler.config)
    swapped = load_quantized_pipeline(folder, scheduler=unipc)
    swapped.set_progress_bar_config(disable=True)
    pipe.scheduler = UniPCScheduler.from_config(pipe.scheduler.config)
    assert isinstance(swapped.scheduler, UniPCScheduler)
    assert torch.equal(_latents(swapped, 5.0), _latents(pipe, 5.0))


def test_sd3_transformer_w4a8_packed_memory_and_folder_round_trip(tmp_path):
    pipe = _sd3(tmp_path)
    float_bytes = _float_layer_bytes(pipe.transformer)
    result = quantize_pipeline(pipe, "fp4_e2m1", "fp8_e4m3", prompts=PROMPTS[:1], num_inference_steps=3,
                               guidance_scale=3.0, call_kwargs=SIZE, progress=False)
    assert result["denoiser"] == "transformer" and 0 < result["relative_mse"] < 0.5
    ratio = _quantized_layer_ratio(pipe.transformer, float_bytes)
    assert ratio <= 0.2, ratio
    out = _latents(pipe, 3.0)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    again = load_quantized_pipeline(save_quantized_pipeline(pipe, tmp_path / "sd3-w4a8"))
    again.set_progress_bar_config(disable=True)
    assert type(again).__name__ == "StableDiffusion3Pipeline" and again.text_encoder_3 is None
    assert torch.equal(_latents(again, 3.0), out)


def test_w4_pipeline_call_peak_memory_is_below_fp32(tmp_path):
    """Peak memory of one pipeline call = resident bytes of all components + torch's peak allocations during
    the call (decoded weights and activations): lower with the W4 UNet than with the fp32 one."""
    peaks = {}
    for weights in ("fp32", "fp4_e2m1"):
        pipe = _sd(tmp_path)
        if weights != "fp32":
            quantize_pipeline(pipe, weights, None, prompts=PROMPTS, num_inference_steps=2, call_kwargs=SIZE,
                              progress=False)
        _latents(pipe, 5.0)  # warm-up: lazily created state is not the call's
        peaks[weights] = pipeline_peak_memory(pipe, lambda pipe=pipe: _latents(pipe, 5.0))
        peaks[weights]["unet"] = resident_weight_bytes(pipe.unet)
    assert peaks["fp4_e2m1"]["unet"] <= 0.2 * peaks["fp32"]["unet"], peaks
    assert peaks["fp4_e2m1"]["call_peak_bytes"] > 0 and peaks["fp32"]["call_peak_bytes"] > 0
    assert peaks["fp4_e2m1"]["peak_bytes"] < peaks["fp32"]["peak_bytes"], peaks


def test_digits_pipeline_folder_round_trip_and_w4_model_memory(tmp_path):
    """The goal's number on the digits model: resident weight bytes of the whole W4 UNet <= 0.2x fp32."""
    from diffusers_ext.models.digits import DigitsPipeline, load_pipeline

    pipe = load_pipeline(DPMSolverPPScheduler)
    result = quantize_pipeline(pipe, "fp4_e2m1", None, num_samples=4, num_inference_steps=2, progress=False)
    assert result["resident_bytes"] <= 0.2 * result["float32_resident_bytes"], result
    assert result["float32_resident_bytes"] == result["float32_bytes"]  # the digits UNet has no buffers
    again = load_quantized_pipeline(save_quantized_pipeline(pipe, tmp_path / "digits-w4"))
    assert isinstance(again, DigitsPipeline) and isinstance(again.scheduler, DPMSolverPPScheduler)

    def images(p):
        return p(class_labels=[1, 2], num_inference_steps=3, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images

    assert torch.equal(images(again), images(pipe))


def test_bad_input_fails_clearly_and_writes_nothing(sd_w8a8, tmp_path, monkeypatch):
    from diffusers_ext.quant import pipeline as quant_pipeline

    pipe = sd_w8a8[0]
    plain = _sd(tmp_path)
    with pytest.raises(ValueError, match=r"takes prompts: pass prompts=\[...\]"):
        quantize_pipeline(plain, prompts=None)
    with pytest.raises(ValueError, match=r"no denoiser to quantize: expected a torch module as one of \['unet'"):
        quantize_pipeline(object())
    with pytest.raises(ValueError, match="no quantized layers"):
        save_quantized_pipeline(plain, tmp_path / "never")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        save_quantized_pipeline(pipe, occupied)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(quant_pipeline, "save_quantized", fail)
    with pytest.raises(OSError, match="disk full"):
        save_quantized_pipeline(pipe, tmp_path / "half")
    assert not (tmp_path / "half").exists() and not list(tmp_path.glob(".half*"))  # no half-written folder
    assert pipe.config["unet"] == ("diffusers", "UNet2DConditionModel") and pipe.unet is not None
    monkeypatch.undo()

    with pytest.raises(ValueError, match="not a quantized pipeline folder"):
        load_quantized_pipeline(occupied)
    folder = save_quantized_pipeline(pipe, tmp_path / "good")
    index = json.loads((folder / "diffusers_ext_quantization.json").read_text())
    (folder / "diffusers_ext_quantization.json").write_text(json.dumps({**index, "pipeline_class": "os:system"}))
    with pytest.raises(ValueError, match=r"'os:system' is not a class of \['diffusers', 'diffusers_ext'\]"):
        load_quantized_pipeline(folder)
