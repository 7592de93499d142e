"""Quantize the denoiser of a diffusers pipeline, calibrated along the pipeline's own sampling trajectory (its
scheduler, step count and guidance), and save / reload the quantized pipeline as one folder.

The denoiser is ``pipe.unet`` (UNet2DModel, UNet2DConditionModel) or ``pipe.transformer`` (SD3, Flux, DiT).
arXiv 2408.06995 calibrates on the sampling trajectory and scores the quantized model against the
full-precision one on the same inputs; the CLI's ``quantize`` command and bench/quantization.py run this.

Folder layout (``save_quantized_pipeline``): diffusers' own ``save_pretrained`` for every other component and
``model_index.json``; the denoiser as ``<name>/config.json`` plus ``<name>/diffusers_ext_quantized.safetensors``
(``save_quantized``'s packed file); ``diffusers_ext_quantization.json`` names the denoiser and pipeline class.
"""

from __future__ import annotations

import importlib
import inspect
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .calibration import collect_layer_inputs, quantizable_layers
from .formats import get_format
from .layers import QuantizedLayer
from .memory import resident_weight_bytes
from .quantize import ROUNDING, check_group_size, quantize, weight_candidates
from .storage import load_quantized, save_quantized
from .trajectory import record_trajectory, trajectory_error

DENOISERS = ("unet", "transformer")
QUANTIZED_FILE = "diffusers_ext_quantized.safetensors"
INDEX_FILE = "diffusers_ext_quantization.json"
TRUSTED_LIBRARIES = ("diffusers", "diffusers_ext")  # classes a folder may name (imported on load)


def denoiser_name(pipe) -> str:
    """The pipeline attribute holding its denoiser: the first of ``DENOISERS`` that is a torch module."""
    for name in DENOISERS:
        if isinstance(getattr(pipe, name, None), nn.Module):
            return name
    raise ValueError(f"{type(pipe).__name__} has no denoiser to quantize: expected a torch module as one of "
                     f"{list(DENOISERS)}")


def trajectory_run(pipe, num_samples: int | None, num_inference_steps: int, guidance_scale: float | None,
                   seed: int, prompts: list[str] | None = None,
                   call_kwargs: dict | None = None) -> Callable[[], object]:
    """One call of ``pipe`` (noise from ``seed``), to run later: ``num_samples`` prompts cycled from
    ``prompts`` (default: each once) for text-to-image pipelines, class labels 0-9 cycled (default 64) for
    class-conditional ones; ``guidance_scale`` None keeps the pipeline's default."""
    parameters = inspect.signature(pipe.__call__).parameters
    kwargs = {"num_inference_steps": num_inference_steps}
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    if "prompt" in parameters:
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{type(pipe).__name__} takes prompts: pass prompts=[...] (a non-empty list of "
                             f"strings) to calibrate along its trajectory, got {prompts!r}")
        count = num_samples or len(prompts)
        kwargs.update(prompt=[prompts[i % len(prompts)] for i in range(count)], output_type="latent")
    elif "class_labels" in parameters:
        if prompts is not None:
            raise ValueError(f"{type(pipe).__name__} is class-conditional: it takes no prompts")
        kwargs.update(class_labels=(torch.arange(num_samples or 64) % 10).tolist(), output_type="pt")
    else:
        raise ValueError(f"{type(pipe).__name__}.__call__ takes neither 'prompt' nor 'class_labels': pass a "
                         "calibration run to collect_layer_inputs and quantize the denoiser with quantize()")
    kwargs.update(call_kwargs or {})
    return lambda: pipe(**kwargs, generator=torch.Generator().manual_seed(seed))


def quantize_pipeline(pipe, weights: str | tuple[str, ...] | None = "fp8_e4m3", activations: str | None = "fp8_e4m3",
                      rounding: str = "nearest", *, prompts: list[str] | None = None, iterations: int = 300,
                      num_inference_steps: int = 10, guidance_scale: float | None = None,
                      num_samples: int | None = None, seed: int = 0, skip: tuple[str, ...] = (),
                      call_kwargs: dict | None = None, progress: bool = True, keep_8bit: tuple[str, ...] = (),
                      timestep_groups: int = 1, weight_group_size: int | None = None) -> dict:
    """Quantize ``pipe``'s denoiser (``pipe.unet`` or ``pipe.transformer``) in place, in eval mode, with layer
    inputs collected along the pipeline's trajectory (its scheduler, ``num_inference_steps``,
    ``guidance_scale``, ``prompts`` or class labels, noises of ``seed``; ``call_kwargs`` go to each pipeline
    call, e.g. height/width), and measure it on a held-out full-precision trajectory (noises of ``seed + 1``).
    ``weights=None`` keeps full precision (the control row: error 0); several names choose per layer.
    ``keep_8bit``, ``timestep_groups`` and ``weight_group_size`` go to ``quantize``.

    Returns ``trajectory_error``'s dict plus ``denoiser`` (its attribute name), ``float32_bytes`` (4 bytes per
    parameter before quantization), ``float32_resident_bytes`` / ``resident_bytes`` (``resident_weight_bytes``
    before / after: buffers included) and ``report`` (``quantization_report``, None for full precision)."""
    if (num_samples is not None and num_samples < 1) or num_inference_steps < 1:
        raise ValueError(f"num_samples and num_inference_steps must be >= 1, got {num_samples}, "
                         f"{num_inference_steps}")
    if weights is not None:  # bad names fail before the calibration runs
        weight_candidates(weights)  # one name, or several to choose from per layer
        check_group_size(weight_group_size)
        if activations is not None:
            get_format(activations)
        if rounding not in ROUNDING:
            raise ValueError(f"Unknown rounding {rounding!r}; valid choices: {list(ROUNDING)}")
    name = denoiser_name(pipe)
    denoiser = getattr(pipe, name).eval()
    float_bytes = sum(p.numel() * 4 for p in denoiser.parameters())
    float_resident = resident_weight_bytes(denoiser)
    run = {s: trajectory_run(pipe, num_samples, num_inference_steps, guidance_scale, s, prompts, call_kwargs)
           for s in (seed, seed + 1)}
    calibration = None
    if weights is not None:
        calibration = collect_layer_inputs(denoiser, run[seed], quantizable_layers(denoiser, skip))
    held_out = record_trajectory(denoiser, run[seed + 1])
    if weights is not None:
        quantize(denoiser, weights=weights, activations=activations, calibration=calibration, rounding=rounding,
                 skip=skip, rounding_iterations=iterations, seed=seed, progress=progress, keep_8bit=keep_8bit,
                 timestep_groups=timestep_groups, weight_group_size=weight_group_size)
    return {**trajectory_error(denoiser, held_out), "denoiser": name, "float32_bytes": float_bytes,
            "float32_resident_bytes": float_resident, "resident_bytes": resident_weight_bytes(denoiser),
            "report": getattr(denoiser, "quantization_report", None) if weights is not None else None}


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _trusted_class(qualified: str, what: str) -> type:
    """The class ``module:name`` of a saved folder, imported only from ``TRUSTED_LIBRARIES``."""
    module, _, attribute = str(qualified).partition(":")
    if module.split(".")[0] not in TRUSTED_LIBRARIES or not attribute:
        raise ValueError(f"{what} {qualified!r} is not a class of {list(TRUSTED_LIBRARIES)}: pass it explicitly")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{what} {qualified!r} cannot be imported: {error}") from error


def save_quantized_pipeline(pipe, folder: str | Path) -> Path:
    """Write ``pipe`` with its quantized denoiser to the new or empty ``folder`` (layout in the module
    docstring); ``load_quantized_pipeline(folder)`` reloads it. Written to a temporary folder first: on any
    error nothing is left at ``folder``."""
    name = denoiser_name(pipe)
    denoiser = getattr(pipe, name)
    if not any(isinstance(m, QuantizedLayer) for m in denoiser.modules()):
        raise ValueError(f"pipe.{name} has no quantized layers: call diffusers_ext.quant.quantize_pipeline first")
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder} exists and is not an empty folder: choose a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    entry = list(pipe.config[name])
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        pipe.register_modules(**{name: None})  # diffusers saves every other component
        try:
            pipe.save_pretrained(tmp)
        finally:
            pipe.register_modules(**{name: denoiser})
        index = json.loads((tmp / "model_index.json").read_text())
        index[name] = entry
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        denoiser.save_config(tmp / name)
        save_quantized(denoiser, tmp / name / QUANTIZED_FILE)
        (tmp / INDEX_FILE).write_text(json.dumps({"version": 1, "denoiser": name,
                                                  "denoiser_class": _qualified_name(type(denoiser)),
                                                  "pipeline_class": _qualified_name(type(pipe))}, indent=2))
        if folder.exists():
            folder.rmdir()
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_quantized_pipeline(folder: str | Path, pipeline_class: type | None = None, **kwargs):
    """The pipeline ``save_quantized_pipeline`` wrote to ``folder``, its denoiser quantized (eval mode).
    ``pipeline_class``: default the saved one (a class of diffusers or diffusers_ext); ``kwargs`` go to its
    ``from_pretrained`` (e.g. ``scheduler=`` to swap in another sampler)."""
    folder = Path(folder)
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        raise ValueError(f"{folder} is not a quantized pipeline folder ({INDEX_FILE} missing): write one with "
                         "save_quantized_pipeline")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{index_path} is not JSON: {error}") from error
    if not isinstance(index, dict) or index.get("version") != 1 or index.get("denoiser") not in DENOISERS:
        raise ValueError(f"{index_path}: expected version 1 and a denoiser among {list(DENOISERS)}, got {index!r}")
    name = index["denoiser"]
    denoiser_class = _trusted_class(index.get("denoiser_class", ""), "denoiser class")
    pipeline_class = pipeline_class or _trusted_class(index.get("pipeline_class", ""), "pipeline class")
    denoiser = denoiser_class.from_config(denoiser_class.load_config(folder / name))
    load_quantized(denoiser, folder / name / QUANTIZED_FILE)
    # components saved as None (e.g. SD3 without T5) load as None, as diffusers' own loader will not
    saved = json.loads((folder / "model_index.json").read_text())
    absent = {k: None for k, v in saved.items() if isinstance(v, list) and v and v[0] is None and k not in kwargs}
    return pipeline_class.from_pretrained(folder, **{**absent, **kwargs, name: denoiser})
