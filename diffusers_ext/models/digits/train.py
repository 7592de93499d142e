"""Reproducible training of the digits UNet: DDPM epsilon loss, linear betas, 1000 steps, label dropout."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from .data import load_digits
from .pipeline import NULL_CLASS, DigitsPipeline, make_unet

DEFAULT_STEPS = 8000
CLASSIFIER_EPOCHS = 60  # at DEFAULT_STEPS


def classifier_epochs_for(steps: int) -> int:
    """Classifier epochs in proportion to the UNet's training steps (60 at 8000 steps, at least 1)."""
    return max(1, round(CLASSIFIER_EPOCHS * steps / DEFAULT_STEPS))


def train_digits_unet(out_dir: str | Path | None = None, steps: int = DEFAULT_STEPS, batch_size: int = 128,
                      lr: float = 1e-3, label_dropout: float = 0.1, ema_decay: float = 0.999, seed: int = 0,
                      progress: bool = True) -> DigitsPipeline:
    """Train on the train split; returns (and, with ``out_dir``, saves) a DigitsPipeline with the EMA weights."""
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    images, labels = load_digits("train")
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    unet = make_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-4)
    warmup = min(200, steps // 10)

    def lr_at(i):
        if i < warmup:
            return (i + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    bar = tqdm(range(steps), desc="train digits UNet", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        x0, y = images[idx], labels[idx].clone()
        y[torch.rand(batch_size, generator=g) < label_dropout] = NULL_CLASS
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (batch_size,), generator=g)
        loss = torch.nn.functional.mse_loss(unet(noise_scheduler.add_noise(x0, noise, t), t, class_labels=y).sample,
                                            noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1.0 - ema_decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    pipe = DigitsPipeline(unet=ema, scheduler=noise_scheduler)
    if out_dir is not None:
        pipe.save_pretrained(out_dir, safe_serialization=True)
    return pipe
