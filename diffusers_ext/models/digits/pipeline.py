"""A class-conditional diffusers pipeline for the embedded digits model, with classifier-free guidance."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES  # the label-dropout class: the unconditional model


def make_unet() -> UNet2DModel:
    """The digits UNet: 8x8x1 images, epsilon prediction, class embedding (10 digits + the null class)."""
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), num_class_embeds=NUM_CLASSES + 1,
                       norm_num_groups=16, attention_head_dim=16)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 in [0, 255]: the one quantization used everywhere (round half up)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5 + 0.5).floor().to(torch.uint8)


class DigitsPipeline(DiffusionPipeline):
    """Sample 8x8 digits: ``pipe(class_labels=[3, 7], guidance_scale=2.0, num_inference_steps=10)``.

    ``guidance_scale`` 1 is the plain conditional model; above 1 classifier-free guidance
    eps = eps_null + w (eps_class - eps_null) (arXiv 2207.12598) with the model's null class.
    """

    def __init__(self, unet: UNet2DModel, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def guided_model(self, labels: torch.Tensor, guidance_scale: float):
        """The denoiser the scheduler sees: (x, t) -> eps, guidance included."""
        null = torch.full_like(labels, NULL_CLASS)

        def model(x, t):
            t = t if isinstance(t, torch.Tensor) else torch.tensor(t)
            t = t.to(x.device).expand(x.shape[0]) if t.dim() == 0 else t
            if guidance_scale == 1.0:
                return self.unet(x, t, class_labels=labels).sample
            eps = self.unet(torch.cat([x, x]), torch.cat([t, t]), class_labels=torch.cat([labels, null])).sample
            cond, uncond = eps.chunk(2)
            return uncond + guidance_scale * (cond - uncond)

        return model

    @torch.no_grad()
    def __call__(self, class_labels=None, batch_size: int | None = None, num_inference_steps: int = 20,
                 guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "pil", return_dict: bool = True):
        if class_labels is None:
            n = batch_size or 1
            class_labels = torch.arange(n) % NUM_CLASSES
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).to(self.device)
        if labels.numel() == 0 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise ValueError(f"class_labels must be digits 0-9, got {labels.tolist()}")
        if output_type not in ("pil", "np", "pt", "uint8"):
            raise ValueError(f"Unknown output_type {output_type!r}; valid choices: pil, np, pt, uint8")
        model = self.guided_model(labels, float(guidance_scale))
        shape = (labels.numel(), 1, 8, 8)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        x = latents.to(self.device, self.unet.dtype) if latents is not None else \
            randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
        x = x * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        # diffusers' UniPC and DEIS reject `generator`; pass it only where step takes it
        extra = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        for t in self.progress_bar(self.scheduler.timesteps):
            eps = model(self.scheduler.scale_model_input(x, t), t)
            x = self.scheduler.step(eps, t, x, **extra).prev_sample
        if output_type == "pt":
            images = x.clamp(-1, 1)
        elif output_type == "uint8":
            images = to_uint8(x)
        else:
            images = (to_uint8(x).permute(0, 2, 3, 1).cpu().numpy().astype(np.float32) / 255.0)
            if output_type == "pil":
                images = [Image.fromarray((im[..., 0] * 255).round().astype(np.uint8), mode="L") for im in images]
        return ImagePipelineOutput(images=images) if return_dict else (images,)
