"""Input scales that follow the sampling trajectory: one per timestep group (Q-Diffusion arXiv 2302.04304,
PTQ4DM arXiv 2211.15736 observe that activation ranges change with the timestep).

The calibration timesteps (the denoiser's ``timestep`` argument: diffusers' discrete t, or sigma * 1000 for
flow models) are split into ``groups`` runs of consecutive values of about equal size; ``bounds`` are the
midpoints between runs, so any scheduler, step count or timestep spacing maps a timestep to a group.
Each grouped ``QuantizedLayer`` holds ``input_scales`` (groups,); a forward pre-hook on the denoiser
(``TimestepGroups``) reads the call's timestep and sets every grouped layer's ``input_scale`` to its group's.
"""

from __future__ import annotations

import bisect

import torch
from torch import nn

from .calibration import input_scale
from .formats import FloatFormat, IntFormat
from .layers import fake_quantize


def timestep_of(args: tuple, kwargs: dict) -> float | None:
    """The timestep of a denoiser call: the ``timestep`` keyword, else the second positional argument (diffusers'
    UNets: ``unet(sample, timestep, ...)``); its first entry if it is a batch. None when there is none."""
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if not isinstance(t, (torch.Tensor, int, float)) or isinstance(t, bool):
        return None
    t = torch.as_tensor(t)
    return float(t.reshape(-1)[0]) if t.numel() and not t.is_complex() else None


def group_bounds(timesteps: list[float | None], groups: int) -> list[float]:
    """``groups - 1`` ascending bounds splitting the distinct ``timesteps`` into ``groups`` runs of about equal
    size; group k holds bounds[k-1] < t <= bounds[k]."""
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"timestep_groups must be an integer >= 1, got {groups!r}")
    if any(t is None for t in timesteps):
        raise ValueError("timestep groups need the denoiser's timestep: the calibration model was called without "
                         "a `timestep` argument (keyword or second positional)")
    values = sorted(set(timesteps))
    if groups > len(values):
        raise ValueError(f"timestep_groups={groups} exceeds the {len(values)} distinct calibration timesteps")
    cuts = [round(k * len(values) / groups) for k in range(1, groups)]
    return [(values[i - 1] + values[i]) / 2 for i in cuts]


def group_of(t: float, bounds: list[float]) -> int:
    return bisect.bisect_left(bounds, t)


def grouped_input_scales(inputs: list[torch.Tensor], timesteps: list[float], bounds: list[float],
                         fmt: FloatFormat | IntFormat, seed: int = 0) -> torch.Tensor:
    """(groups,) input scales, each minimizing the quantization error of its group's inputs (``input_scale``)."""
    groups = [[] for _ in range(len(bounds) + 1)]
    for x, t in zip(inputs, timesteps, strict=True):
        groups[group_of(t, bounds)].append(x)
    return torch.stack([input_scale(g, fmt, seed=seed) for g in groups])


def quantize_grouped(inputs: list[torch.Tensor], timesteps: list[float], bounds: list[float],
                     fmt: FloatFormat | IntFormat, scales: torch.Tensor) -> list[torch.Tensor]:
    """Each input fake-quantized with its timestep group's scale."""
    return [fake_quantize(x, fmt, scales[group_of(t, bounds)]) for x, t in zip(inputs, timesteps, strict=True)]


class TimestepGroups:
    """The forward pre-hook on a denoiser that selects each grouped layer's input scale by the call's timestep.
    Installed with ``TimestepGroups.attach(model, bounds)``; kept as ``model.timestep_groups``."""

    def __init__(self, bounds: list[float]):
        self.bounds = [float(b) for b in bounds]
        if self.bounds != sorted(self.bounds):
            raise ValueError(f"timestep group bounds must be ascending, got {self.bounds}")
        self.handle = None

    @classmethod
    def attach(cls, model: nn.Module, bounds: list[float]) -> TimestepGroups:
        previous = getattr(model, "timestep_groups", None)
        if previous is not None and previous.handle is not None:
            previous.handle.remove()
        groups = cls(bounds)
        groups.handle = model.register_forward_pre_hook(groups.select, with_kwargs=True)
        model.timestep_groups = groups
        return groups

    def select(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        t = timestep_of(args, kwargs)
        if t is None:
            raise ValueError("this model's input scales are chosen per timestep group: call it with its timestep "
                             "(keyword `timestep` or the second positional argument)")
        self.set_group(model, group_of(t, self.bounds))

    @staticmethod
    def set_group(model: nn.Module, group: int) -> None:
        for layer in model.modules():
            scales = getattr(layer, "input_scales", None)
            if scales is not None:
                layer.input_scale = scales[group].clone()  # its own storage (safetensors refuses shared)


def export_groups(model: nn.Module, layers: dict[str, nn.Module]) -> tuple[dict[str, torch.Tensor], list | None]:
    """For storage: each grouped layer's ``<name>.input_scales`` and the bounds (None without groups)."""
    groups = getattr(model, "timestep_groups", None)
    tensors = {f"{name}.input_scales": layer.input_scales.contiguous() for name, layer in layers.items()
               if getattr(layer, "input_scales", None) is not None}
    return tensors, (groups.bounds if groups is not None and tensors else None)


def import_groups(layers: dict[str, nn.Module], tensors: dict[str, torch.Tensor], bounds: list | None) -> None:
    """For loading: moves ``<name>.input_scales`` out of ``tensors`` onto the (not yet installed) layers, checked
    against ``bounds``; the caller installs the hook (``TimestepGroups.attach``) once everything is checked."""
    grouped = {name: tensors.pop(f"{name}.input_scales") for name in layers if f"{name}.input_scales" in tensors}
    if not grouped and bounds is None:
        return
    if not isinstance(bounds, list) or not all(isinstance(b, (int, float)) for b in bounds):
        raise ValueError(f"per-timestep input scales need the timestep group bounds in the metadata, got {bounds!r}")
    for name, scales in grouped.items():
        if scales.shape != (len(bounds) + 1,) or not (torch.isfinite(scales) & (scales > 0)).all():
            raise ValueError(f"{name}.input_scales must hold {len(bounds) + 1} finite positive scales, "
                             f"got {tuple(scales.shape)}")
        if layers[name].input_scale is None:
            raise ValueError(f"{name}.input_scales is stored but the layer's activations are not quantized")
    for name, scales in grouped.items():
        layers[name].register_buffer("input_scales", scales.float())
