"""Valid configs that used to crash or diverge (issue 12, item 6), each loaded the way users get it (a saved
config read back) and checked against diffusers where the algorithm coincides, else against the exact
Gaussian-mixture endpoint."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from scipy.integrate import solve_ivp

from diffusers_ext import DCSolverScheduler, DPMSolverPPScheduler, UniPCScheduler, USFScheduler
from diffusers_ext.models import GaussianMixtureDenoiser
from diffusers_ext.schedulers import hand_designed_schedule
from tests.helpers import DC, run_sampler


@pytest.fixture(scope="module")
def start_noise(seeded_noise):
    """``start_noise(n=16, seed=0)``: n float64 samples of dimension 4."""
    return lambda n=16, seed=0: seeded_noise((n, 4), seed, torch.float64)


def _rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


@pytest.fixture(scope="module")
def exact_endpoint(gmm, start_noise):
    """The exact probability-flow endpoint of ``start_noise()`` under ``gmm`` (from t = 999 to sigma = 0)."""
    return gmm.ode_endpoint(start_noise(), 999.0, rtol=1e-8, atol=1e-10)


def _flow_config(tmp_path):
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(tmp_path)
    return tmp_path


# ------------------------------------------------------------------ UniPC / DC order 3, lower_order_final=False
@pytest.mark.parametrize("solver_type", ["bh1", "bh2"])
def test_unipc_order3_without_lower_order_final(solver_type, gmm, reload_scheduler, start_noise, exact_endpoint):
    """diffusers runs it only to sigma_min (into sigma = 0 its own solve fails on the singular system):
    equal there, equal step by step up to the step into sigma = 0, which lowers its order instead of
    raising LinAlgError, and ends close to the exact endpoint."""
    x, n = start_noise(), 10
    for final in ("sigma_min", "zero"):
        theirs = UniPCMultistepScheduler(solver_order=3, lower_order_final=False, solver_type=solver_type,
                                         final_sigmas_type=final)
        ours = reload_scheduler(theirs, final, cls=UniPCScheduler)
        assert ours.config.solver_order == 3 and not ours.config.lower_order_final
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        a, b = x.clone(), x.clone()
        for i, t in enumerate(ours.timesteps):
            a = ours.step(gmm(a, t).sample, t, a).prev_sample
            if final == "zero" and i == n - 1:
                break
            b = theirs.step(gmm(b, t).sample, t, b).prev_sample
            assert float((a - b).norm() / b.norm()) < 1e-5, (final, i)
    default = run_sampler(UniPCScheduler(solver_order=3, solver_type=solver_type), gmm, x, n)
    ddim = run_sampler(DPMSolverPPScheduler(solver_order=1), gmm, x, n)
    assert torch.isfinite(a).all()
    err = _rms(a, exact_endpoint)
    assert err < 1.05 * _rms(default, exact_endpoint) and err < 0.9 * _rms(ddim, exact_endpoint)


def test_dc_solver_order3_without_lower_order_final(gmm, reload_scheduler, start_noise, exact_endpoint):
    x, n = start_noise(), 10
    dc = reload_scheduler(DCSolverScheduler(solver_order=3, lower_order_final=False, **DC))
    out = run_sampler(dc, gmm, x, n)
    unipc = run_sampler(UniPCScheduler(solver_order=3), gmm, x, n)
    assert torch.isfinite(out).all() and _rms(out, exact_endpoint) < 1.2 * _rms(unipc, exact_endpoint)


# ------------------------------------------------------------------ singlestep DPM-Solver++ on flow grids
@pytest.mark.parametrize("order", [2, 3])
def test_singlestep_dpm_solver_on_flow_grid(tmp_path, order, start_noise):
    """A FlowMatchEulerDiscreteScheduler config starts at sigma = 1 (alpha = 0): the first step is a lone
    first-order step, the blocks follow it."""
    path = _flow_config(tmp_path)
    ours = DPMSolverPPScheduler.from_pretrained(path, singlestep=True, solver_order=order)
    assert ours.config.use_flow_sigmas and ours.config.prediction_type == "flow_prediction"
    model = GaussianMixtureDenoiser(schedule=ours, prediction_type="flow_prediction")
    x, n = start_noise(64), 20
    out = run_sampler(ours, model, x, n)
    assert float(ours.timesteps[0]) == 1000.0
    exact = model.ode_endpoint(x, 1000.0)
    ddim = run_sampler(DPMSolverPPScheduler.from_pretrained(path, solver_order=1), model, x, n)
    multistep = run_sampler(DPMSolverPPScheduler.from_pretrained(path, solver_order=order), model, x, n)
    assert torch.isfinite(out).all()
    assert _rms(out, exact) < 0.7 * _rms(ddim, exact) and _rms(out, exact) < 1.3 * _rms(multistep, exact)


# ------------------------------------------------------------------ USF
USF_REFERENCES = {
    ("ddim", "noise"): (UniPCScheduler, {"solver_order": 1, "predict_x0": False, "use_corrector": False}),
    ("dpm++2m", "data"): (DPMSolverPPScheduler, {}),
    ("unipc-bh1", "data"): (UniPCScheduler, {"solver_type": "bh1"}),
    ("unipc-bh2", "data"): (UniPCScheduler, {}),
    ("unipc-bh1", "noise"): (UniPCScheduler, {"solver_type": "bh1", "predict_x0": False}),
    ("unipc-bh2", "noise"): (UniPCScheduler, {"predict_x0": False}),
}


@pytest.mark.parametrize("solver,prediction", list(USF_REFERENCES))
def test_usf_hand_designed_on_flow_grid_from_sigma_one(tmp_path, solver, prediction, start_noise):
    """At alpha = 0 a noise step is the data step and an undefined corrector is skipped, as in UniPCScheduler;
    the bh2 corrector from alpha = 0 takes its finite limit."""
    path = _flow_config(tmp_path)
    cls, kw = USF_REFERENCES[solver, prediction]
    reference = cls.from_pretrained(path, **kw)
    n = 8
    reference.set_timesteps(n)
    times = [float(t) for t in reference.grid.t]
    assert times[0] == 1000.0
    usf = USFScheduler.from_pretrained(path, solver_schedule=hand_designed_schedule(solver, times,
                                                                                    prediction=prediction))
    model = GaussianMixtureDenoiser(schedule=usf, prediction_type="flow_prediction")
    x = start_noise(8)
    a, b = run_sampler(usf, model, x, n), run_sampler(reference, model, x, n)
    assert torch.isfinite(a).all() and float((a - b).norm() / b.norm()) < 1e-5


@pytest.mark.parametrize("n", [15, 16, 25])
@pytest.mark.parametrize("solver", ["dpm++2m", "unipc-bh2"])
def test_usf_hand_designed_from_15_steps(n, solver, gmm, reload_scheduler, start_noise):
    """The step into sigma = 0 is first order at any step count (diffusers' DPM-Solver++ and UniPC)."""
    cls, kw = USF_REFERENCES[solver, "data"]
    reference = reload_scheduler(cls(**kw))
    reference.set_timesteps(n)
    times = [float(t) for t in reference.grid.t]
    usf = reload_scheduler(USFScheduler(solver_schedule=hand_designed_schedule(solver, times)), "usf")
    x = start_noise(8)
    a, b = run_sampler(usf, gmm, x, n), run_sampler(reference, gmm, x, n)
    assert float((a - b).norm() / b.norm()) < 1e-5


# ------------------------------------------------------------------ SDE-DPM-Solver++ 3M, third_order_taylor
SDE_KW = dict(final_sigmas_type="sigma_min", noise_schedule="linear", lower_order_final=False,
              algorithm_type="sde-dpmsolver++")
SDE_SCHEDULE = DPMSolverPPScheduler(**SDE_KW).noise_schedule
SDE_GMM = GaussianMixtureDenoiser(schedule=SDE_SCHEDULE, std_range=(0.4, 0.7))
SDE_LAM = SDE_SCHEDULE.lambda_(np.array([SDE_SCHEDULE.t_max, SDE_SCHEDULE.t_min]))


def _sde_run(scheduler, x, noises):
    """The SDE sampler on a lambda-uniform grid with the given per-step standard normal noises."""
    n = len(noises)
    scheduler.set_timesteps(timesteps=SDE_SCHEDULE.t_of_lambda(np.linspace(*SDE_LAM, n + 1)[:-1]))
    for t, z in zip(scheduler.timesteps, noises):
        x = scheduler.step(SDE_GMM(x, t).sample, t, x, variance_noise=z).prev_sample
    return x


def _drift_endpoint(x):
    """The SDE's drift alone, exactly (DOP853): with y = x alpha / sigma^2, dy/dlambda = 2 (alpha/sigma)^2 E[x0],
    the equation whose exponential integrator is the noise-free SDE-DPM-Solver++ update (exp(-2h) kernel)."""
    B = x.shape[0]

    def rhs(lam, y):
        a, s = (float(v[0]) for v in SDE_SCHEDULE.alpha_sigma_of_lambda(np.array([lam])))
        full = lambda v: torch.full((B, 1), v, dtype=torch.float64)  # noqa: E731
        x0, _ = SDE_GMM.posterior(torch.from_numpy(y).reshape(B, -1) * s**2 / a, full(a), full(s))
        return (2 * (a / s) ** 2 * x0).reshape(-1).numpy()

    (a0, s0), (a1, s1) = (tuple(float(v[0]) for v in SDE_SCHEDULE.alpha_sigma_of_lambda(SDE_LAM[k:k + 1]))
                          for k in (0, 1))
    sol = solve_ivp(rhs, tuple(SDE_LAM), (x * a0 / s0**2).reshape(-1).numpy(), method="DOP853", rtol=1e-11,
                    atol=1e-12)
    return torch.from_numpy(sol.y[:, -1]).reshape(x.shape) * s1**2 / a1


def test_sde_3m_third_order_taylor_is_third_order_in_the_drift(reload_scheduler, start_noise):
    """With zero noise the update integrates the drift; the exp(-2h) Taylor weights give order 3 (they
    diverged before: diffusers' +0.5 constant with the doubled D2)."""
    x = start_noise()
    exact = _drift_endpoint(x)
    taylor = reload_scheduler(DPMSolverPPScheduler(solver_order=3, third_order_taylor=True, **SDE_KW))
    errors = [_rms(_sde_run(taylor, x, [torch.zeros_like(x)] * n), exact) for n in (32, 64, 128)]
    slopes = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    second = _rms(_sde_run(DPMSolverPPScheduler(**SDE_KW), x, [torch.zeros_like(x)] * 64), exact)
    assert np.all(slopes > 2.6) and errors[1] < second / 5, (errors, slopes, second)


def test_sde_3m_third_order_taylor_converges_with_noise(start_noise):
    """Strong error against a fine SDE-DPM-Solver++ 2M solve driven by the same Brownian path (coarse noises
    assembled from the fine ones): no divergence, on par with 2M (the noise limits both to first order)."""
    x, fine_n = start_noise(), 256
    g = torch.Generator().manual_seed(5)
    fine_noise = [torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in range(fine_n)]
    lam = np.linspace(*SDE_LAM, fine_n + 1)

    def coarse_noise(n):
        m, out = fine_n // n, []
        for c in range(n):
            end = lam[(c + 1) * m]
            acc = sum(np.exp(lam[k + 1] - end) * np.sqrt(-np.expm1(-2 * (lam[k + 1] - lam[k]))) * fine_noise[k]
                      for k in range(c * m, (c + 1) * m))
            out.append(acc / np.sqrt(-np.expm1(-2 * (end - lam[c * m]))))
        return out

    reference = _sde_run(DPMSolverPPScheduler(**SDE_KW), x, fine_noise)
    for n in (32, 64):
        noises = coarse_noise(n)
        taylor = _rms(_sde_run(DPMSolverPPScheduler(solver_order=3, third_order_taylor=True, **SDE_KW), x, noises),
                      reference)
        second = _rms(_sde_run(DPMSolverPPScheduler(**SDE_KW), x, noises), reference)
        assert taylor < 1.3 * second, (n, taylor, second)
