"""The anchors of bench/quantization.py: what users would pick instead of ours, optimum-quanto and torchao
(optional: ``pip install -e '.[bench-quant]'``), applied to the same digits UNet; and the run-time measurements
every row shares (resident weight bytes, CPU time per denoiser call).

``ANCHORS[name].quantize(unet, calibrate)`` quantizes ``unet`` in place with the library's own calls
(``calibrate()`` runs the pipeline along the calibration trajectory: quanto records its activation scales
over it); ``.save(unet, folder)`` writes the library's own serialization and returns the files written.
Neither library is imported before an anchor runs.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from diffusers_ext.quant import resident_weight_bytes

Calibrate = Callable[[], object]


@dataclass(frozen=True)
class Anchor:
    library: str  # the distribution, as pip names it
    weight_bits: int
    quantize: Callable[[nn.Module, Calibrate], None]
    save: Callable[[nn.Module, Path], list[Path]]
    file_format: str


def _quanto(weights: str, activations: str | None = None) -> Callable[[nn.Module, Calibrate], None]:
    """optimum-quanto's ``quantize`` (every Linear and Conv2d), ``Calibration`` over the calibration run when
    activations are quantized, then ``freeze`` (weights stored quantized)."""
    def run(unet: nn.Module, calibrate: Calibrate) -> None:
        from optimum import quanto

        quanto.quantize(unet, weights=getattr(quanto, weights),
                        activations=getattr(quanto, activations) if activations else None)
        if activations:
            with quanto.Calibration():
                calibrate()
        quanto.freeze(unet)
    return run


def _save_quanto(unet: nn.Module, folder: Path) -> list[Path]:
    """quanto's serialization: the quantized state dict as safetensors plus its quantization map (JSON)."""
    from optimum.quanto import quantization_map
    from safetensors.torch import save_file

    weights, qmap = folder / "model.safetensors", folder / "quantization_map.json"
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, weights)
    qmap.write_text(json.dumps(quantization_map(unet)))
    return [weights, qmap]


def _linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


def _linear_or_conv(module: nn.Module) -> bool:
    """Linear and Conv2d layers, except a conv on one input channel (conv_in): torchao 0.18's intx weight-only
    fails on it ("shape '[32, 1, 3, 3]' is invalid for input of size 1"), so it stays float32 (288 weights)."""
    return isinstance(module, nn.Linear) or isinstance(module, nn.Conv2d) and module.in_channels > 1


def _torchao(config: Callable[[object], object], layers: Callable[[nn.Module], bool] = _linear):
    """torchao's ``quantize_`` with ``config(torchao.quantization)`` on the modules ``layers`` accepts (torchao's
    default: Linear only; its int8 and float8 weight-only tensors fail on convolutions on the CPU)."""
    def run(unet: nn.Module, calibrate: Calibrate) -> None:
        import torchao.quantization as ao

        ao.quantize_(unet, config(ao), filter_fn=lambda module, fqn: layers(module))
    return run


def _save_torchao(unet: nn.Module, folder: Path) -> list[Path]:
    """torchao's serialization: ``torch.save`` of the state dict (its tensor subclasses pickle their data)."""
    path = folder / "model.pt"
    torch.save(unet.state_dict(), path)
    return [path]


def _quanto_anchor(bits: int, weights: str, activations: str | None = None) -> Anchor:
    return Anchor("optimum-quanto", bits, _quanto(weights, activations), _save_quanto,
                  "safetensors of the quantized state dict + quantization map JSON")


def _torchao_anchor(bits: int, config: Callable[[object], object], layers=_linear) -> Anchor:
    return Anchor("torchao", bits, _torchao(config, layers), _save_torchao, "torch.save of the state dict")


ANCHORS = {
    "quanto W8 qint8": _quanto_anchor(8, "qint8"),
    "quanto W8 qfloat8": _quanto_anchor(8, "qfloat8"),
    "quanto W8A8 qfloat8": _quanto_anchor(8, "qfloat8", "qfloat8"),
    "quanto W4 qint4": _quanto_anchor(4, "qint4"),
    "quanto W4A8 qint4 + qfloat8": _quanto_anchor(4, "qint4", "qfloat8"),
    "torchao W8 int8 weight-only (Linear only)": _torchao_anchor(8, lambda ao: ao.Int8WeightOnlyConfig()),
    "torchao W8 int8 weight-only (intx, Linear + Conv2d)":
        _torchao_anchor(8, lambda ao: ao.IntxWeightOnlyConfig(weight_dtype=torch.int8), _linear_or_conv),
    "torchao W8 float8 weight-only (Linear only)": _torchao_anchor(8, lambda ao: ao.Float8WeightOnlyConfig()),
    "torchao W8A8 float8 dynamic": _torchao_anchor(8, lambda ao: ao.Float8DynamicActivationFloat8WeightConfig()),
    "torchao W4 int4 weight-only (Int4WeightOnlyConfig)": _torchao_anchor(4, lambda ao: ao.Int4WeightOnlyConfig()),
    "torchao W4 int4 weight-only (intx, Linear + Conv2d)":
        _torchao_anchor(4, lambda ao: ao.IntxWeightOnlyConfig(weight_dtype=torch.int4), _linear_or_conv),
}


# resident bytes of a module's weights, one measurement for every row (each storage once and in full; the tensor
# subclasses of quanto and torchao counted by their inner tensors)
resident_bytes = resident_weight_bytes


@torch.no_grad()
def cpu_ms_per_call(models: dict[str, nn.Module], calls: list[tuple[tuple, dict, object]], repeats: int = 20,
                    threads: int = 1, warmup: int = 2) -> dict[str, float]:
    """Median CPU time in ms (of the calling thread, which does all the work with one torch thread) per call of
    each model on the recorded ``calls``' inputs (cycled), the models interleaved call by call so that load on the
    machine hits them alike; ``threads`` torch threads."""
    if repeats < 1 or threads < 1 or not calls:
        raise ValueError(f"repeats and threads must be >= 1 and calls non-empty, got {repeats}, {threads}, "
                         f"{len(calls)} calls")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = {name: [] for name in models}
    try:
        for i in range(warmup + repeats):
            args, kwargs, _ = calls[i % len(calls)]
            for name, model in models.items():
                start = time.thread_time()
                model(*args, **kwargs)
                if i >= warmup:
                    times[name].append(time.thread_time() - start)
    finally:
        torch.set_num_threads(previous)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}
