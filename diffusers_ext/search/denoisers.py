"""Differentiable denoisers from diffusers pipelines: (x, t) -> model output, guidance included.

Searches (DC ratio calibration, schedule search) evaluate the model outside the pipeline's loop and need
gradients through it. ``pipeline_denoiser`` builds that function for the pipelines we know:

- ``DigitsPipeline`` (class labels, classifier-free guidance with its null class),
- unconditional UNet2DModel pipelines (``DDPMPipeline``-like: ``pipe.unet(x, t).sample``),
- Stable Diffusion-like pipelines (``encode_prompt`` + a UNet2DConditionModel, classifier-free guidance).

Anything else: pass your own callable ``(x, t) -> output`` and a sample shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PipelineDenoiser:
    model: Denoiser
    sample_shape: tuple[int, ...]  # one sample, without the batch dimension
    device: torch.device
    dtype: torch.dtype


def _timestep_batch(t, x: torch.Tensor) -> torch.Tensor:
    t = t if isinstance(t, torch.Tensor) else torch.tensor(t)
    return t.to(x.device).expand(x.shape[0]) if t.dim() == 0 else t


def as_denoiser(model, num_samples: int, *, sample_shape: Sequence[int] | None = None, guidance_scale: float = 1.0,
                conditioning: Sequence | None = None) -> PipelineDenoiser:
    """``model`` as a denoiser: a pipeline through ``pipeline_denoiser``, or a callable (x, t) -> output with its
    ``sample_shape`` (one sample's shape, no batch dimension; run on the CPU in float32)."""
    if callable(model) and not hasattr(model, "components"):
        if sample_shape is None:
            raise ValueError("a callable model needs sample_shape (one sample's shape, no batch dimension)")
        return PipelineDenoiser(model, tuple(sample_shape), torch.device("cpu"), torch.float32)
    return pipeline_denoiser(model, num_samples, guidance_scale, conditioning)


def pipeline_denoiser(pipe, num_samples: int, guidance_scale: float = 1.0,
                      conditioning: Sequence | None = None) -> PipelineDenoiser:
    """The guided denoiser of ``pipe`` for ``num_samples`` samples with the given labels or prompts."""
    from ..models.digits.pipeline import NUM_CLASSES, DigitsPipeline

    if isinstance(pipe, DigitsPipeline):
        labels = torch.arange(num_samples) % NUM_CLASSES if conditioning is None else \
            torch.as_tensor(list(conditioning), dtype=torch.long)
        if len(labels) != num_samples:
            raise ValueError(f"{len(labels)} class labels for {num_samples} samples; give one per sample")
        model = pipe.guided_model(labels.to(pipe.device), float(guidance_scale))
        unet = pipe.unet
        return PipelineDenoiser(model, (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size),
                                pipe.device, unet.dtype)
    unet = getattr(pipe, "unet", None)
    if unet is not None and hasattr(pipe, "encode_prompt"):
        return _stable_diffusion_denoiser(pipe, num_samples, guidance_scale, conditioning)
    if unet is not None and getattr(unet.config, "cross_attention_dim", None) is None and \
            getattr(unet.config, "num_class_embeds", None) is None:
        if guidance_scale != 1.0 or conditioning is not None:
            raise ValueError(f"{type(pipe).__name__} is unconditional: no labels or prompts, guidance_scale 1")

        def model(x, t):
            return unet(x, _timestep_batch(t, x)).sample

        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return PipelineDenoiser(model, (unet.config.in_channels, *size), pipe.device, unet.dtype)
    raise ValueError(f"No denoiser adapter for {type(pipe).__name__}; supported: DigitsPipeline, unconditional "
                     f"UNet2DModel pipelines (DDPMPipeline) and Stable Diffusion-like pipelines (encode_prompt + "
                     f"UNet2DConditionModel). Pass a callable (x, t) -> model output and its sample shape instead.")


def _stable_diffusion_denoiser(pipe, num_samples, guidance_scale, prompts) -> PipelineDenoiser:
    if prompts is None:
        raise ValueError(f"{type(pipe).__name__} needs prompts: pass conditioning=[prompt, ...] (one per sample)")
    prompts = [prompts] * num_samples if isinstance(prompts, str) else list(prompts)
    if len(prompts) != num_samples:
        raise ValueError(f"{len(prompts)} prompts for {num_samples} samples; give one per sample")
    guided = guidance_scale > 1.0
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompts, pipe.device, 1, guided)[:2]
    unet = pipe.unet

    def model(x, t):
        t = _timestep_batch(t, x)
        if not guided:
            return unet(x, t, encoder_hidden_states=cond).sample
        out = unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])).sample
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    size = pipe.unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return PipelineDenoiser(model, (unet.config.in_channels, *size), pipe.device, unet.dtype)
