"""Where our algorithm coincides with diffusers', outputs agree to 1e-5 relative (GMM model)."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from diffusers_ext import DEISScheduler, DPMSolverPPScheduler, UniPCScheduler
from diffusers_ext.models import GaussianMixtureDenoiser
from tests.helpers import run_sampler

SMOOTH = GaussianMixtureDenoiser(std_range=(0.4, 0.6))
CASES = [
    (DPMSolverMultistepScheduler, DPMSolverPPScheduler, {"solver_order": 2}),
    (DPMSolverMultistepScheduler, DPMSolverPPScheduler, {"solver_order": 3}),
    (DPMSolverMultistepScheduler, DPMSolverPPScheduler, {"solver_order": 2, "solver_type": "heun"}),
    (UniPCMultistepScheduler, UniPCScheduler, {"solver_type": "bh1"}),
    (UniPCMultistepScheduler, UniPCScheduler, {"solver_type": "bh2"}),
    (UniPCMultistepScheduler, UniPCScheduler, {"solver_type": "bh2", "solver_order": 3}),
    (UniPCMultistepScheduler, UniPCScheduler, {"solver_type": "bh1", "solver_order": 3,
                                               "final_sigmas_type": "sigma_min"}),
]


SHAPE = (8, 2, 4, 4)


@pytest.mark.parametrize("theirs,ours,kw", CASES)
@pytest.mark.parametrize("n", [5, 10, 20])
def test_every_step_matches_diffusers(theirs, ours, kw, n, gmm, seeded_noise):
    """Both schedulers get the same sample and model output at every step (diffusers' trajectory)."""
    a, b = theirs(**kw), ours(**kw)
    a.set_timesteps(n)
    b.set_timesteps(n)
    assert torch.equal(a.timesteps, b.timesteps)
    x = seeded_noise(SHAPE)
    for t in a.timesteps:
        out = gmm(x, t).sample
        xa = a.step(out, t, x).prev_sample
        xb = b.step(out, t, x).prev_sample
        if torch.isfinite(xa).all():  # diffusers' bh1 divides by B(h) = -inf at sigma = 0
            assert ((xa - xb).norm() / xa.norm()).item() < 1e-5, int(t)
        assert torch.isfinite(xb).all()
        x = xa


@pytest.mark.parametrize("theirs,ours,kw", [c for c in CASES if c[2].get("solver_type") != "bh1"
                                            or c[2].get("final_sigmas_type") == "sigma_min"])
def test_whole_run_matches_diffusers(theirs, ours, kw, seeded_noise):
    x = seeded_noise(SHAPE, 1)
    a = run_sampler(theirs(**kw), SMOOTH, x, 10)
    b = run_sampler(ours(**kw), SMOOTH, x, 10)
    assert ((a - b).norm() / a.norm()).item() < 1e-5


def test_first_order_solvers_are_ddim(gmm, seeded_noise):
    """DPM-Solver++ 1, UniP-1 and DEIS tAB-1 are all DDIM (exactly, in exact arithmetic)."""
    x = seeded_noise(SHAPE, 2).double()
    ddim = run_sampler(DPMSolverPPScheduler(solver_order=1), gmm, x, 8)
    for other in (DEISScheduler(solver_order=1, timestep_spacing="linspace"),
                  UniPCScheduler(solver_order=1, use_corrector=False)):
        torch.testing.assert_close(run_sampler(other, gmm, x, 8), ddim, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_dynamic_thresholding_matches_diffusers(monkeypatch, backend, gmm, seeded_noise):
    """Imagen dynamic thresholding of the data prediction (sample_max_value > 1 so it is not plain clipping)."""
    monkeypatch.setenv("DIFFUSERS_EXT_BACKEND", backend)
    kw = {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.3}
    a, b = DPMSolverMultistepScheduler(**kw), DPMSolverPPScheduler(**kw)
    a.set_timesteps(6)
    b.set_timesteps(6)
    x = 2.0 * seeded_noise(SHAPE, 3)
    for t in a.timesteps:
        out = gmm(x, t).sample
        xa, xb = a.step(out, t, x).prev_sample, b.step(out, t, x).prev_sample
        assert ((xa - xb).norm() / xa.norm()).item() < 1e-5
        x = xa
