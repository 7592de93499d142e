"""The fused solver update: outputs are linear combinations of input tensors.

``lincomb(out, coeffs, tensors, history=..., write_slot=...)`` computes, elementwise,

    out[r] = sum_c coeffs[r, c] * inputs[c],   inputs = tensors + [history[0], ..., history[K-1]]

accumulating in float32 whatever the storage dtype (fp32 / fp16 / bf16). With ``write_slot`` (an int64
tensor of H = 1 or 2 elements on the device) the last H rows are written into ``history[write_slot[h]]``,
after every input has been read, so a solver can overwrite the oldest history entries in the same pass.
The coefficients and the slot stay on the device: nothing here synchronizes with the host.

On CUDA (or under ``TRITON_INTERPRET=1``) this is one Triton kernel: each input read once, each
output written once. Elsewhere it is a short chain of in-place torch ops.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .triton_lincomb import MAX_INPUTS, MAX_ROWS, triton_available, triton_lincomb

__all__ = ["lincomb", "use_triton"]


BACKENDS = ("auto", "triton", "torch")


def use_triton(device: torch.device) -> bool:
    """Which path ``lincomb`` takes, from ``DIFFUSERS_EXT_BACKEND`` (auto / triton / torch).

    auto: Triton on CUDA, torch elsewhere. triton: also on the CPU, which needs Triton's interpreter
    (``TRITON_INTERPRET=1`` set before triton is imported; slow, for tests). Inside ``torch.compile`` the
    torch path is always used, so inductor fuses it.
    """
    backend = os.environ.get("DIFFUSERS_EXT_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"DIFFUSERS_EXT_BACKEND={backend!r}; valid choices: {', '.join(BACKENDS)}")
    if backend == "torch" or not triton_available() or torch.compiler.is_compiling():
        return False
    return device.type == "cuda" or backend == "triton"


def _slots(write_slot) -> list:
    """The history entries written, as a list (ints, or one-element tensors on the device)."""
    if write_slot is None:
        return []
    if isinstance(write_slot, torch.Tensor):
        return list(write_slot.reshape(-1).unbind(0))
    return [int(s) for s in np.atleast_1d(write_slot)]


def _check(out, coeffs, tensors, history, write_slot):
    n_rows = len(out) + len(_slots(write_slot))
    n_cols = len(tensors) + (0 if history is None else history.shape[0])
    if coeffs.ndim != 2 or tuple(coeffs.shape) != (n_rows, n_cols):
        raise ValueError(f"coeffs must have shape ({n_rows}, {n_cols}) for {len(out)} outputs, "
                         f"{len(tensors)} tensors and history {None if history is None else tuple(history.shape)}; "
                         f"got {tuple(coeffs.shape)}")
    if write_slot is not None and history is None:
        raise ValueError("write_slot needs a history buffer")
    shape = tensors[0].shape
    for t in list(tensors) + [o for o in out if o is not None]:
        if t.shape != shape:
            raise ValueError(f"all tensors must have the same shape, got {tuple(t.shape)} and {tuple(shape)}")
    if history is not None and history.shape[1:] != shape:
        raise ValueError(f"history entries must have shape {tuple(shape)}, got {tuple(history.shape[1:])}")


def lincomb(out, coeffs, tensors: Sequence[torch.Tensor], *, history: torch.Tensor | None = None,
            write_slot=None, columns: Sequence[Sequence[int]] | None = None):
    """Fused linear combination; see the module docstring.

    Args:
        out: one output tensor, or a list with one entry per output row; ``None`` entries are allocated
            (dtype of ``tensors[0]``). With ``write_slot`` the history row comes after these.
        coeffs: float32 tensor of shape (rows, len(tensors) + K) (or 1-D for a single output), on the
            tensors' device; or, for CPU tensors, a float64 numpy array (host coefficients: zero columns are
            skipped and outputs are written in place).
        tensors: input tensors of one shape.
        history: optional buffer of shape (K, *shape) whose entries follow ``tensors`` as inputs.
        write_slot: optional int64 tensor of H = 1 or 2 elements (ints with numpy coeffs): the history
            entries the last H rows are written to.
        columns: optional, per row, the columns that can be nonzero (lets the torch path skip the rest).
    Returns:
        The list of output tensors (a single tensor if ``out`` was a tensor).
    """
    single = isinstance(out, torch.Tensor) or out is None
    outs = [out] if single else list(out)
    if coeffs.ndim == 1:
        coeffs = coeffs[None]
    tensors = list(tensors)
    _check(outs, coeffs, tensors, history, write_slot)
    if isinstance(coeffs, np.ndarray):
        if tensors[0].device.type != "cpu":
            raise ValueError("numpy (host) coefficients are for CPU tensors; pass a device tensor otherwise")
        outs = _host_lincomb(outs, coeffs, tensors, history, write_slot)
        return outs[0] if single else outs
    fits = len(tensors) <= 4 and coeffs.shape[0] <= MAX_ROWS and coeffs.shape[1] <= MAX_INPUTS and len(outs) <= 2 \
        and len(_slots(write_slot)) <= 2
    if fits and use_triton(tensors[0].device):
        outs = [torch.empty_like(tensors[0]) if o is None else o for o in outs]
        triton_lincomb(outs, coeffs, tensors, history, write_slot)
    else:
        outs = _torch_lincomb(outs, coeffs, tensors, history, write_slot, columns)
    return outs[0] if single else outs


def _torch_lincomb(outs, coeffs, tensors, history, write_slot, columns):
    inputs = tensors + ([] if history is None else list(history.unbind(0)))
    coeffs = coeffs.to(device=inputs[0].device, dtype=torch.float32)
    n_rows = coeffs.shape[0]
    if columns is None:
        columns = [range(coeffs.shape[1])] * n_rows
    results = []
    for r in range(n_rows):
        cols = list(columns[r]) or [0]
        acc = inputs[cols[0]].to(torch.float32) * coeffs[r, cols[0]]
        for c in cols[1:]:
            acc.addcmul_(inputs[c], coeffs[r, c])
        results.append(acc)
    # every read is done: now write (the history row may overwrite an input)
    final = []
    for o, acc in zip(outs, results):
        if o is None:  # a fresh output in the inputs' dtype
            final.append(acc if acc.dtype == tensors[0].dtype else acc.to(tensors[0].dtype))
        else:
            final.append(o.copy_(acc))
    if write_slot is not None:
        slots = write_slot.reshape(-1).to(history.device)
        written = torch.stack(results[len(results) - len(slots):]).to(history.dtype)
        history.index_copy_(0, slots, written)
    return final


def _host_lincomb(outs, coeffs: np.ndarray, tensors, history, write_slot: int | None):
    """CPU path with host float64 coefficients: zero columns skipped, float32 targets written in place.

    A row whose target is also an input is accumulated in place, starting from that input, unless a later
    row still reads the target (then it goes through a temporary), so every read sees the old values.
    """
    inputs = tensors + ([] if history is None else list(history.unbind(0)))
    targets = list(outs) + [history[slot] for slot in _slots(write_slot)]
    pending, results = [], []
    for r, target in enumerate(targets):
        cols = [int(c) for c in np.flatnonzero(coeffs[r])] or [0]
        aliased = [c for c in cols if target is not None and inputs[c].data_ptr() == target.data_ptr()]
        read_later = target is not None and any(
            coeffs[q, c] != 0 for q in range(r + 1, len(targets)) for c in range(len(inputs))
            if inputs[c].data_ptr() == target.data_ptr())
        cols = aliased + [c for c in cols if c not in aliased]
        if target is not None and target.dtype == torch.float32 and not read_later:
            acc = torch.mul(inputs[cols[0]], float(coeffs[r, cols[0]]), out=target)
        else:
            acc = inputs[cols[0]].to(torch.float32) * float(coeffs[r, cols[0]])
        for c in cols[1:]:
            acc.add_(inputs[c], alpha=float(coeffs[r, c]))
        if target is None:
            results.append(acc if acc.dtype == tensors[0].dtype else acc.to(tensors[0].dtype))
        elif acc is target:
            results.append(target)
        else:
            pending.append((target, acc))
            results.append(target)
    for target, acc in pending:  # all rows are computed: now the deferred writes
        target.copy_(acc)
    return results[: len(outs)]
