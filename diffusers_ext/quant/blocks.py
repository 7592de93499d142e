"""Block-wise reconstruction of learned rounding (BRECQ, arXiv 2102.05426): the rounding of all layers of a
block (a UNet's down/mid/up block, a transformer block) is learned jointly to reproduce the full-precision
block output, on block inputs produced by the already-quantized preceding blocks.

The denoiser calls recorded during calibration are replayed through the model as it is being quantized, so
each block sees the inputs it will see at inference (quantized preceding blocks, quantized activations) for
the same denoiser inputs as the full-precision targets. Inside a block, each layer is a ``SoftLayer``: weights
sign (low + h span) s with learnable h (``RoundingVariables``), inputs fake-quantized with a straight-through
gradient. Layers outside any block are reconstructed the same way, each as its own unit.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .activations import TimestepGroups, group_of, timestep_of
from .calibration import _to, sample_rows
from .layers import fake_quantize
from .rounding import RoundingVariables

BLOCK_PATTERN = r"(down_blocks|up_blocks|transformer_blocks|single_transformer_blocks)\.\d+|mid_block"


class SoftLayer(nn.Module):
    """A Linear / Conv2d under reconstruction. ``mode``: "soft" (h learned), "hard" (h rounded), "nearest"."""

    def __init__(self, quantized: nn.Module, weight: torch.Tensor, rounding: RoundingVariables,
                 activation_format=None, input_scales: torch.Tensor | None = None):
        super().__init__()
        self.kind, self.conv_options, self.bias = quantized.kind, quantized.conv_options, quantized.bias
        self.weight_format, self.rounding, self.weight = quantized.weight_format, rounding, weight.detach().float()
        self.activation_format, self.input_scales = activation_format, input_scales
        self.mode, self.group = "soft", 0

    def current_weight(self) -> torch.Tensor:
        r = self.rounding
        if self.mode == "soft":
            return r.soft_weight()
        grid = r.grid() if self.mode == "hard" else self.weight_format.round(self.weight / r.scale)
        return grid * r.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation_format is not None:
            x = x + (fake_quantize(x, self.activation_format, self.input_scales[self.group]) - x).detach()
        weight = self.current_weight()
        if self.kind == "linear":
            return F.linear(x, weight, self.bias)
        return F.conv2d(x.contiguous(), weight, self.bias, **self.conv_options)


def reconstruction_units(model: nn.Module, layers: dict[str, nn.Module], pattern: str = BLOCK_PATTERN
                         ) -> list[tuple[str, list[str]]]:
    """(unit name, its layer names) in the model's registration order: each module whose name ends in
    ``pattern`` (outermost first) with the layers inside it, every other layer alone."""
    regex = re.compile(rf"(^|\.)({pattern})$")
    units, seen = [], set()
    for name, _ in model.named_modules():
        if name in seen or any(name.startswith(u + ".") for u, _ in units):
            continue
        if regex.search(name):
            inside = [n for n in layers if n.startswith(name + ".")]
            if inside:
                units.append((name, inside))
                seen.update(inside)
        elif name in layers:
            units.append((name, [name]))
            seen.add(name)
    return units


def _flat(value) -> list[torch.Tensor]:
    """The tensors in a (nested) module output, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flat(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flat(v)]
    return [t for t in _flat(getattr(value, "sample", None))] if hasattr(value, "sample") else []


def _rows(value, rows: torch.Tensor, batch: int):
    """``value`` with every tensor whose first dimension is the batch reduced to ``rows``."""
    if isinstance(value, torch.Tensor):
        return value[rows.to(value.device)] if value.dim() and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(v, rows, batch) for v in value)
    if isinstance(value, dict):
        return {k: _rows(v, rows, batch) for k, v in value.items()}
    return value


class _UnitRecorder:
    """Records a unit's (args, kwargs) and/or outputs during replayed denoiser calls, ``max_rows`` rows each, and
    when it first ran."""

    clock = itertools.count()

    def __init__(self, unit: nn.Module, max_rows: int, inputs: bool, outputs: bool):
        self.calls, self.max_rows, self.first_call = [], max_rows, float("inf")
        self.handles = [unit.register_forward_pre_hook(self._start, with_kwargs=True)]
        if inputs:
            self.handles.append(unit.register_forward_pre_hook(self._input, with_kwargs=True))
        if outputs:
            self.handles.append(unit.register_forward_hook(self._output, with_kwargs=True))

    def _batch_rows(self, args, kwargs):
        batch = _flat((args, kwargs))[0].shape[0]
        return batch, sample_rows(batch, self.max_rows)

    def _start(self, module, args, kwargs):
        self.first_call = min(self.first_call, next(_UnitRecorder.clock))

    def _input(self, module, args, kwargs):
        batch, rows = self._batch_rows(args, kwargs)
        self.calls.append(_to(_rows((args, kwargs), rows, batch), "cpu"))

    def _output(self, module, args, kwargs, output):
        batch, rows = self._batch_rows(args, kwargs)
        self.calls.append([t.detach().float().cpu() for t in _flat(_rows(output, rows, batch))])

    def remove(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def _replay(model: nn.Module, calls: list, units: dict[str, nn.Module], max_rows: int, inputs: bool,
            outputs: bool) -> dict[str, list]:
    """Replay the denoiser ``calls`` through ``model`` recording each unit's inputs or outputs."""
    device = next(iter(model.buffers()), next(iter(model.parameters()), torch.empty(0))).device
    recorders = {name: _UnitRecorder(unit, max_rows, inputs, outputs) for name, unit in units.items()}
    try:
        for args, kwargs in calls:
            model(*_to(args, device), **_to(kwargs, device))
    finally:
        for r in recorders.values():
            r.remove()
    started = sorted(recorders, key=lambda name: recorders[name].first_call)
    return {name: recorders[name].calls for name in started}


def _unit_error(unit: nn.Module, soft: list[SoftLayer], mode: str, data: list, groups: list[int]) -> float:
    """Mean squared error of the unit's outputs against the targets, every soft layer in ``mode``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ((args, kwargs), targets), g in zip(data, groups, strict=True):
            for s in soft:
                s.mode, s.group = mode, g
            out = _flat(unit(*args, **kwargs))
            total += sum(float((o.float() - t).pow(2).sum()) for o, t in zip(out, targets, strict=True))
            count += sum(t.numel() for t in targets)
    return total / max(count, 1)


def reconstruct_unit(unit: nn.Module, soft: list[SoftLayer], data: list, groups: list[int], iterations: int,
                     batch_rows: int = 32, reg_weight: float = 0.01, lr: float = 1e-2, seed: int = 0,
                     progress: bool = False, description: str = "block") -> dict[str, float]:
    """Learn the rounding of the ``soft`` layers (already swapped into ``unit``) jointly on ``data`` = [((args,
    kwargs), targets)] per recorded call (``groups``: each call's timestep group). Leaves every soft layer in
    the better of "hard" and "nearest" by the unit's output error; returns both errors."""
    g = torch.Generator().manual_seed(seed)
    variables = [s.rounding.v for s in soft]
    optimizer = torch.optim.Adam(variables, lr=lr)
    frozen = [p for p in unit.parameters() if p.requires_grad]  # norms etc.: no gradients wanted
    for p in frozen:
        p.requires_grad_(False)
    for it in tqdm(range(iterations), desc=description, disable=not progress, leave=False):
        k = int(torch.randint(len(data), (1,), generator=g))
        (args, kwargs), targets = data[k]
        batch = targets[0].shape[0]
        rows = torch.randperm(batch, generator=g)[:batch_rows]
        for s in soft:
            s.mode, s.group = "soft", groups[k]
        out = _flat(unit(*_rows(args, rows, batch), **_rows(kwargs, rows, batch)))
        loss = sum((o.float() - t[rows]).pow(2).reshape(len(rows), -1).sum(1).mean()
                   for o, t in zip(out, targets, strict=True))
        loss = loss + reg_weight * sum(s.rounding.regularizer(it, iterations) for s in soft)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for p in frozen:
        p.requires_grad_(True)
    errors = {mode: _unit_error(unit, soft, mode, data, groups) for mode in ("hard", "nearest")}
    best = "hard" if errors["hard"] < errors["nearest"] else "nearest"
    for s in soft:
        s.mode = best
    return {**errors, "kept": best}


def reconstruct_blocks(model: nn.Module, layers: dict[str, nn.Module], calls: list,
                       make_soft: Callable[[str], SoftLayer], install: Callable[[str, torch.Tensor], None],
                       bounds: list[float] | None, iterations: int = 300, max_rows: int = 64, seed: int = 0,
                       progress: bool = False) -> dict[str, dict]:
    """Quantize ``layers`` of ``model`` unit by unit (``reconstruction_units``) with jointly learned rounding.

    ``calls``: the denoiser's recorded (args, kwargs); ``make_soft(name)``: the layer's SoftLayer (format,
    scales, activation quantization); ``install(name, grid)``: puts the layer's final QuantizedLayer in the
    model (before the next unit's inputs are recorded). Returns per unit its output errors ("hard" learned,
    "nearest") and which was kept."""
    units = reconstruction_units(model, layers)
    modules = {name: model.get_submodule(name) for name, _ in units}
    targets = _replay(model, calls, modules, max_rows, inputs=False, outputs=True)  # full precision
    units.sort(key=lambda unit: list(targets).index(unit[0]))  # execution order (UNet2DModel registers up before mid)
    groups = [0 if bounds is None else group_of(timestep_of(args, kwargs), bounds) for args, kwargs in calls]
    report = {}
    for index, (unit_name, names) in enumerate(units):
        inputs = _replay(model, calls, {unit_name: modules[unit_name]}, max_rows, inputs=True, outputs=False)
        # a unit run more than once per denoiser call (shared weights) learns with the first group's scales
        unit_groups = groups if len(inputs[unit_name]) == len(calls) else [0] * len(inputs[unit_name])
        data = list(zip(inputs[unit_name], targets[unit_name], strict=True))
        soft = {name: make_soft(name) for name in names}
        original = {}
        for name, s in soft.items():
            original[name] = _swap(model, name, s)
        unit = model.get_submodule(unit_name)
        report[unit_name] = reconstruct_unit(unit, list(soft.values()), data, unit_groups, iterations,
                                             seed=seed + index, progress=progress, description=unit_name)
        for name, s in soft.items():
            _swap(model, name, original[name])
            install(name, s.rounding.grid() if s.mode == "hard" else None)
    if bounds is not None:
        TimestepGroups.set_group(model, 0)
    return report


def _swap(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    previous = getattr(owner, child)
    setattr(owner, child, module)
    return previous
