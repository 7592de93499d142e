"""Triton kernel for ``lincomb``: up to 4 tensors + K history entries in, up to 2 outputs + 2 history rows out.

One program handles ``BLOCK`` elements: it loads each input once (as float32), forms every output row
with the coefficients it loads from device memory, and stores each output once. Runs on CUDA, and on
the CPU under ``TRITON_INTERPRET=1`` (how the tests run it).
"""

from __future__ import annotations

import torch

MAX_ROWS = 4
MAX_INPUTS = 10


try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - triton is optional (it ships with CUDA builds of torch)
    triton = None


def triton_available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _fma4(a0, a1, a2, a3, v, c_ptr, col, n_cols, n_rows: tl.constexpr):
        a0 += tl.load(c_ptr + col) * v
        if n_rows > 1:
            a1 += tl.load(c_ptr + n_cols + col) * v
        if n_rows > 2:
            a2 += tl.load(c_ptr + 2 * n_cols + col) * v
        if n_rows > 3:
            a3 += tl.load(c_ptr + 3 * n_cols + col) * v
        return a0, a1, a2, a3

    @triton.jit
    def _row(a0, a1, a2, a3, r: tl.constexpr):
        if r == 0:
            return a0
        if r == 1:
            return a1
        if r == 2:
            return a2
        return a3

    @triton.jit
    def lincomb_kernel(c_ptr, slot_ptr, in0, in1, in2, in3, hist_ptr, out0, out1, numel,
                       N_IN: tl.constexpr, K: tl.constexpr, N_OUT: tl.constexpr, WRITE_HISTORY: tl.constexpr,
                       BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        n_rows: tl.constexpr = N_OUT + WRITE_HISTORY
        n_cols: tl.constexpr = N_IN + K
        a0 = tl.zeros([BLOCK], dtype=tl.float32)
        a1 = tl.zeros([BLOCK], dtype=tl.float32)
        a2 = tl.zeros([BLOCK], dtype=tl.float32)
        a3 = tl.zeros([BLOCK], dtype=tl.float32)
        v = tl.load(in0 + offs, mask=mask, other=0.0).to(tl.float32)
        a0, a1, a2, a3 = _fma4(a0, a1, a2, a3, v, c_ptr, 0, n_cols, n_rows)
        if N_IN > 1:
            v = tl.load(in1 + offs, mask=mask, other=0.0).to(tl.float32)
            a0, a1, a2, a3 = _fma4(a0, a1, a2, a3, v, c_ptr, 1, n_cols, n_rows)
        if N_IN > 2:
            v = tl.load(in2 + offs, mask=mask, other=0.0).to(tl.float32)
            a0, a1, a2, a3 = _fma4(a0, a1, a2, a3, v, c_ptr, 2, n_cols, n_rows)
        if N_IN > 3:
            v = tl.load(in3 + offs, mask=mask, other=0.0).to(tl.float32)
            a0, a1, a2, a3 = _fma4(a0, a1, a2, a3, v, c_ptr, 3, n_cols, n_rows)
        for k in tl.static_range(K):
            v = tl.load(hist_ptr + k * numel + offs, mask=mask, other=0.0).to(tl.float32)
            a0, a1, a2, a3 = _fma4(a0, a1, a2, a3, v, c_ptr, N_IN + k, n_cols, n_rows)
        # all reads done; the history row may now overwrite an entry that was just read
        if N_OUT > 0:
            tl.store(out0 + offs, a0.to(out0.dtype.element_ty), mask=mask)
        if N_OUT > 1:
            tl.store(out1 + offs, a1.to(out1.dtype.element_ty), mask=mask)
        for h in tl.static_range(WRITE_HISTORY):
            slot = tl.load(slot_ptr + h)
            row = _row(a0, a1, a2, a3, N_OUT + h)
            tl.store(hist_ptr + slot * numel + offs, row.to(hist_ptr.dtype.element_ty), mask=mask)


def triton_lincomb(outs, coeffs, tensors, history, write_slot, block: int = 1024) -> None:
    """Launch the kernel; ``outs`` are preallocated. All tensors must be on one device."""
    device = tensors[0].device
    numel = tensors[0].numel()
    tensors = [t.contiguous() for t in tensors]
    for o in outs:
        if not o.is_contiguous():
            raise ValueError("lincomb outputs must be contiguous")
    coeffs = coeffs.to(device=device, dtype=torch.float32).contiguous()
    dummy = tensors[0]
    ins = tensors + [dummy] * (4 - len(tensors))
    out_ptrs = list(outs) + [dummy] * (2 - len(outs))
    hist = history if history is not None else dummy
    slot = write_slot.reshape(-1).to(device=device, dtype=torch.int64) if write_slot is not None else coeffs
    grid = (max(1, -(-numel // block)),)
    lincomb_kernel[grid](coeffs, slot, *ins, hist, *out_ptrs, numel,
                    N_IN=len(tensors), K=0 if history is None else history.shape[0], N_OUT=len(outs),
                    WRITE_HISTORY=0 if write_slot is None else write_slot.numel(), BLOCK=block)
