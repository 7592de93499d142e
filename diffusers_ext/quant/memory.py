"""Memory at run time: the bytes a model's weights hold resident, and the peak memory of a call.

``resident_weight_bytes(module)`` (for bench/quantization.py's "resident weight bytes at run time" column)
counts every parameter, buffer and tensor attribute of every submodule by its whole underlying storage, each
storage once: a view counts the storage it keeps alive, tied weights count once, a float copy cached in a
plain attribute is counted too, and tensor subclasses (torchao, optimum-quanto) count by their inner tensors.

``call_peak_bytes(run)`` measures the allocations made during ``run()`` with torch's profiler
(``profile_memory=True`` records every allocation and free of torch's allocator; checked on CPU only): the
peak of their running sum, i.e. the peak memory above what was held when the call started.
``pipeline_peak_memory`` adds the resident bytes of the pipeline's components: peak = resident + call peak.
Memory outside torch's allocator (Python objects, numpy arrays, tokenizers) is not seen; unlike the process
RSS, the numbers are exact and repeatable, and independent of other processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass


def _data_tensors(tensor: torch.Tensor) -> Iterable[torch.Tensor]:
    """The plain tensors holding ``tensor``'s data: a wrapper tensor subclass (torchao, optimum-quanto) has no
    storage of its own, its inner tensors (``__tensor_flatten__``) do."""
    if is_traceable_wrapper_subclass(tensor):
        for name in tensor.__tensor_flatten__()[0]:
            yield from _data_tensors(getattr(tensor, name))
    else:
        yield tensor


def _module_tensors(module: nn.Module) -> Iterable[torch.Tensor]:
    for sub in module.modules():
        tensors = [*sub._parameters.values(), *sub._buffers.values(),
                   *(v for v in vars(sub).values() if isinstance(v, torch.Tensor))]
        for tensor in tensors:
            if tensor is not None:
                yield from _data_tensors(tensor)


def resident_weight_bytes(*modules: nn.Module) -> int:
    """Bytes of the storages behind all parameters, buffers and tensor attributes of ``modules`` (and their
    submodules), each storage counted once in full; meta tensors count 0."""
    if not modules or not all(isinstance(m, nn.Module) for m in modules):
        raise TypeError(f"resident_weight_bytes takes torch modules, got {[type(m).__name__ for m in modules]}")
    seen, total = set(), 0
    for module in modules:
        for tensor in _module_tensors(module):
            if tensor.is_meta:
                continue
            storage = tensor.untyped_storage()
            key = (tensor.device, storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total


def call_peak_bytes(run: Callable[[], object]) -> int:
    """Peak bytes allocated by torch during ``run()`` above the memory held when it started (torch profiler's
    memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def pipeline_peak_memory(pipe, run: Callable[[], object]) -> dict:
    """Peak memory of ``run()`` (e.g. one call of ``pipe``): ``resident_bytes`` of all of ``pipe``'s torch
    components, ``call_peak_bytes`` allocated above them during the call, and their sum ``peak_bytes``."""
    modules = [c for c in pipe.components.values() if isinstance(c, nn.Module)]
    resident = resident_weight_bytes(*modules)
    call = call_peak_bytes(run)
    return {"resident_bytes": resident, "call_peak_bytes": call, "peak_bytes": resident + call}
