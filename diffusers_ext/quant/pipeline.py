"""Quantize the digits pipeline's UNet, calibrated along the pipeline's own sampling trajectory: what the CLI's
``quantize`` command and bench/quantization.py run (arXiv 2408.06995 scores the quantized model against the
full-precision one on the same inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .calibration import collect_layer_inputs
from .formats import get_format
from .quantize import ROUNDING, quantize
from .trajectory import record_trajectory, trajectory_error


def trajectory_run(pipe, num_samples: int, num_inference_steps: int, guidance_scale: float,
                   seed: int) -> Callable[[], object]:
    """One call of the digits pipeline ``pipe`` (labels 0-9 in turn, noise from ``seed``), to run later."""
    from ..models.digits import NUM_CLASSES

    labels = torch.arange(num_samples) % NUM_CLASSES
    return lambda: pipe(class_labels=labels, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                        generator=torch.Generator().manual_seed(seed), output_type="pt")


def quantize_pipeline(pipe, weights: str | None = "fp8_e4m3", activations: str | None = "fp8_e4m3",
                      rounding: str = "nearest", *, iterations: int = 300, num_inference_steps: int = 10,
                      guidance_scale: float = 1.0, num_samples: int = 64, seed: int = 0,
                      progress: bool = True) -> dict:
    """Quantize ``pipe.unet`` in place with layer inputs collected along the pipeline's trajectory (its
    scheduler, ``num_inference_steps``, ``guidance_scale``; ``num_samples`` noises of ``seed``) and measure it on
    a held-out full-precision trajectory (noises of ``seed + 1``). ``weights=None`` keeps full precision (the
    control row: error 0). Returns ``trajectory_error``'s dict plus ``float32_bytes`` and ``report``
    (``quantization_report``, None for full precision)."""
    if num_samples < 1 or num_inference_steps < 1:
        raise ValueError(f"num_samples and num_inference_steps must be >= 1, got {num_samples}, "
                         f"{num_inference_steps}")
    if weights is not None:  # bad names fail before the calibration runs
        get_format(weights)
        if activations is not None:
            get_format(activations)
        if rounding not in ROUNDING:
            raise ValueError(f"Unknown rounding {rounding!r}; valid choices: {list(ROUNDING)}")
    unet = pipe.unet
    float_bytes = sum(p.numel() * 4 for p in unet.parameters())
    run = {s: trajectory_run(pipe, num_samples, num_inference_steps, guidance_scale, s) for s in (seed, seed + 1)}
    calibration = collect_layer_inputs(unet, run[seed]) if weights is not None else None
    held_out = record_trajectory(unet, run[seed + 1])
    if weights is not None:
        quantize(unet, weights=weights, activations=activations, calibration=calibration, rounding=rounding,
                 rounding_iterations=iterations, seed=seed, progress=progress)
    return {**trajectory_error(unet, held_out), "float32_bytes": float_bytes,
            "report": getattr(unet, "quantization_report", None) if weights is not None else None}
