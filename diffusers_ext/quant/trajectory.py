"""Quantization error along the sampling trajectory (arXiv 2408.06995 compares quantized models against the
full-precision one, not only against real data).

``record_trajectory`` runs a pipeline and keeps every denoiser call's inputs and output; ``trajectory_error``
feeds the same inputs to another (quantized) denoiser and reports the output MSE per step, so the numbers
measure the model error alone, not errors compounded along diverging trajectories.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def model_output(output) -> torch.Tensor:
    """The denoiser's prediction in any diffusers return form: ``.sample``, a ``return_dict=False`` tuple, or a
    tensor."""
    if hasattr(output, "sample"):
        return output.sample
    return output[0] if isinstance(output, (tuple, list)) else output


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):  # e.g. SDXL's added_cond_kwargs
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


@torch.no_grad()
def record_trajectory(model: nn.Module, run: Callable[[], object]) -> list[tuple[tuple, dict, torch.Tensor]]:
    """Every call of ``model`` during ``run()``: (args, kwargs, output) on the CPU."""
    calls = []

    def hook(module, args, kwargs, output):
        calls.append((tuple(_to_cpu(a) for a in args), {k: _to_cpu(v) for k, v in kwargs.items()},
                      model_output(output).detach().float().cpu()))

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return calls


@torch.no_grad()
def trajectory_error(model: nn.Module, calls: list[tuple[tuple, dict, torch.Tensor]]) -> dict:
    """Output MSE of ``model`` against the recorded outputs, per call, on the recorded inputs; also relative
    to the recorded outputs' mean square."""
    per_step, reference_power = [], []
    for args, kwargs, target in calls:
        out = model_output(model(*args, **kwargs)).float()
        per_step.append(float((out - target).pow(2).mean()))
        reference_power.append(float(target.pow(2).mean()))
    mse = sum(per_step) / len(per_step)
    return {"mse": mse, "relative_mse": mse / (sum(reference_power) / len(reference_power)), "mse_per_step": per_step}
