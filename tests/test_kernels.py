"""lincomb: the Triton kernel (run by Triton's interpreter on the CPU) against the torch path and float64."""

import pytest
import torch

from diffusers_ext.kernels import lincomb
from tests.helpers import make, run_sampler

TOL = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _case(dtype, n_tensors=3, K=2, rows=3, shape=(3, 5, 67), seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shape, generator=g).to(dtype) for _ in range(n_tensors)]
    history = torch.randn((K, *shape), generator=g).to(dtype)
    coeffs = torch.randn(rows, n_tensors + K, generator=g)
    return tensors, history, coeffs


def _reference(tensors, history, coeffs):
    inputs = [t.double() for t in tensors] + [h.double() for h in history]
    return [sum(coeffs[r, c].double() * inputs[c] for c in range(len(inputs))) for r in range(coeffs.shape[0])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_lincomb_matches_float64(monkeypatch, dtype, backend):
    monkeypatch.setenv("DIFFUSERS_EXT_BACKEND", backend)
    tensors, history, coeffs = _case(dtype)
    before = history.clone()
    ref = _reference(tensors, before, coeffs)
    out = lincomb([None, None], coeffs, tensors, history=history, write_slot=torch.tensor([1]))
    scale = max(r.abs().max().item() for r in ref)
    for got, want in zip(out, ref[:2]):
        assert got.dtype == dtype and got.shape == want.shape
        assert (got.double() - want).abs().max().item() <= TOL[dtype] * scale
    # the history row went to slot 1 only, computed from the values read before the write
    assert (history[1].double() - ref[2]).abs().max().item() <= TOL[dtype] * scale
    assert torch.equal(history[0], before[0])


@pytest.mark.parametrize("backend", ["triton", "torch", "host"])
def test_two_history_rows(monkeypatch, backend):
    """Two outputs + two history rows (a model output and its sample), each row read before any write."""
    monkeypatch.setenv("DIFFUSERS_EXT_BACKEND", "torch" if backend == "host" else backend)
    tensors, history, coeffs = _case(torch.float32, n_tensors=3, K=4, rows=4, seed=2)
    before = history.clone()
    ref = _reference(tensors, before, coeffs)
    if backend == "host":
        out = lincomb([None, None], coeffs.double().numpy(), tensors, history=history, write_slot=[3, 0])
    else:
        out = lincomb([None, None], coeffs, tensors, history=history, write_slot=torch.tensor([3, 0]))
    scale = max(r.abs().max().item() for r in ref)
    for got, want in zip(list(out) + [history[3], history[0]], ref):
        assert (got.double() - want).abs().max().item() <= 1e-6 * scale
    assert torch.equal(history[1], before[1]) and torch.equal(history[2], before[2])


def test_triton_equals_torch_in_place(monkeypatch):
    """An output that is also an input (a scheduler's saved sample) is read before it is written."""
    results = {}
    for backend in ("triton", "torch"):
        monkeypatch.setenv("DIFFUSERS_EXT_BACKEND", backend)
        tensors, history, coeffs = _case(torch.float32, n_tensors=3, K=1, rows=3, seed=1)
        saved = tensors[2]
        out = lincomb([None, saved], coeffs, tensors, history=history, write_slot=torch.tensor([0]))
        results[backend] = [out[0], saved.clone(), history.clone()]
    for a, b in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_lincomb_single_output_and_shape_errors():
    a, b = torch.ones(4), torch.full((4,), 2.0)
    out = lincomb(torch.empty(4), torch.tensor([3.0, -1.0]), [a, b])
    assert torch.equal(out, torch.full((4,), 1.0))
    with pytest.raises(ValueError, match="coeffs must have shape"):
        lincomb(torch.empty(4), torch.tensor([1.0, 2.0, 3.0]), [a, b])
    with pytest.raises(ValueError, match="same shape"):
        lincomb(torch.empty(4), torch.tensor([1.0, 2.0]), [a, torch.ones(5)])


THROUGH_KERNEL = {"dpm++3m": 0, "unipc-bh2": 0, "deis-heun": 0, "dpm++2m-dualfast": 9, "dc-solver-dualfast": 9}


@pytest.mark.parametrize("name", list(THROUGH_KERNEL))
def test_scheduler_through_triton_kernel(monkeypatch, name, gmm, seeded_noise):
    """A whole sampling run through the Triton kernel equals the torch path (noise seed per variant)."""
    x = seeded_noise((2, 3, 8, 8), THROUGH_KERNEL[name])
    outs = {}
    for backend in ("triton", "torch"):
        monkeypatch.setenv("DIFFUSERS_EXT_BACKEND", backend)
        outs[backend] = run_sampler(make(name), gmm, x, 6)
    torch.testing.assert_close(outs["triton"], outs["torch"], rtol=1e-5, atol=1e-5)


def test_triton_backend_is_really_used(monkeypatch, gmm):
    """Guard against a silent fallback: with the triton backend the kernel launches during a step."""
    import importlib

    mod = importlib.import_module("diffusers_ext.kernels.lincomb")

    calls = []
    real = mod.triton_lincomb
    monkeypatch.setattr(mod, "triton_lincomb", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("DIFFUSERS_EXT_BACKEND", "triton")
    run_sampler(make("unipc-bh2"), gmm, torch.randn(1, 2, 4, 4), 3)
    assert len(calls) == 3
