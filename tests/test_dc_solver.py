"""DC-Solver and predictor-only compensation: no-op at ratio 1, exact interpolation, CPR, bad input."""

import json
import warnings

import numpy as np
import pytest
import torch

from diffusers_ext import DCSolverScheduler, DPMSolverPPScheduler, UniPCScheduler
from diffusers_ext.schedulers.dc_solver.cpr import CascadePolynomialRegression
from tests.helpers import dpm_solver_pp_2m_f64, lagrange_f64, run_sampler, simple_cpr

SHAPE = (6, 2, 4, 4)


@pytest.mark.parametrize("kw", [{}, {"solver_order": 3}, {"solver_order": 1}, {"solver_type": "bh1"},
                                {"prediction_type": "v_prediction"}])
@pytest.mark.parametrize("n", [5, 8])
def test_ratios_of_one_are_unipc_exactly(kw, n, gmm, seeded_noise):
    x = seeded_noise(SHAPE)
    unipc = run_sampler(UniPCScheduler(**kw), gmm, x, n)
    dc = run_sampler(DCSolverScheduler(dc_ratios=[1.0] * n, **kw), gmm, x, n)
    assert torch.equal(unipc, dc)


def test_uncalibrated_warns_and_is_unipc(gmm, seeded_noise):
    x = seeded_noise(SHAPE, 1)
    with pytest.warns(UserWarning, match="uncalibrated"):
        dc = run_sampler(DCSolverScheduler(), gmm, x, 6)
    assert torch.equal(dc, run_sampler(UniPCScheduler(), gmm, x, 6))


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_pp_ratios_of_one_are_unchanged(order, gmm, seeded_noise):
    x = seeded_noise(SHAPE, 2)
    base = run_sampler(DPMSolverPPScheduler(solver_order=order), gmm, x, 7)
    dc = run_sampler(DPMSolverPPScheduler(solver_order=order, dc_ratios=[1.0] * 7), gmm, x, 7)
    assert torch.equal(base, dc)


@pytest.mark.parametrize("cls,kw", [(DCSolverScheduler, {}), (DCSolverScheduler, {"solver_order": 3}),
                                    (DPMSolverPPScheduler, {"solver_order": 2})])
def test_compensated_history_matches_float64_interpolation(cls, kw, seeded_noise):
    """Random model outputs (prediction_type 'sample', so the history holds them as given): after step i the
    recorded entry is the Lagrange interpolation of the three newest entries at t_{i-1} + rho_i (t_i - t_{i-1})."""
    n = 8
    rng = np.random.default_rng(0)
    ratios = [1.0, 1.0] + list(rng.uniform(0.6, 1.4, n - 2))
    sched = cls(prediction_type="sample", dc_ratios=ratios, **kw)
    sched.set_timesteps(n)
    t = sched.grid.t
    x = seeded_noise(SHAPE, 3, torch.float64)
    recorded = []  # what the history should hold, computed independently
    for i, ts in enumerate(sched.timesteps):
        out = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + i), dtype=torch.float64)
        x = sched.step(out, ts, x).prev_sample
        raw = out.numpy()
        if i >= 2:
            at = t[i - 1] + ratios[i] * (t[i] - t[i - 1])
            expected = lagrange_f64([t[i - 2], t[i - 1], t[i]], [recorded[i - 2], recorded[i - 1], raw], at)
        else:
            expected = raw
        recorded.append(expected)
        slot = int(sched.plan.slots[i])
        got = sched.history[slot].numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)  # fp32 accumulation
        assert not np.allclose(expected, raw) or i < 2


def test_dpm_solver_pp_2m_with_compensation_matches_direct_formula(gmm, seeded_noise):
    """Whole run of DPM-Solver++ 2M with compensation against a direct float64 loop (arXiv 2211.01095 eq. 2M,
    with m_i replaced by its compensated value)."""
    n = 6
    ratios = [1.0, 1.0, 1.2, 0.8, 1.1, 0.95]
    sched = DPMSolverPPScheduler(dc_ratios=ratios, lower_order_final=False, final_sigmas_type="sigma_min")
    x0 = seeded_noise(SHAPE, 4, torch.float64)
    ours = run_sampler(sched, gmm, x0, n)
    g = sched.grid

    def compensated(i, x, eps, ms):
        m = (x - g.sigma[i] * eps) / g.alpha[i]
        if i < 2:
            return m
        at = g.t[i - 1] + ratios[i] * (g.t[i] - g.t[i - 1])
        return torch.from_numpy(lagrange_f64(g.t[i - 2:i + 1], [ms[-2].numpy(), ms[-1].numpy(), m.numpy()], at))

    x = dpm_solver_pp_2m_f64(sched, gmm, x0, compensated)
    assert ((ours - x).norm() / x.norm()).item() < 1e-6  # the kernel accumulates in fp32


def test_ratios_change_the_result_and_save_pretrained_keeps_them(tmp_path, gmm, seeded_noise, reload_scheduler):
    x = seeded_noise(SHAPE, 5)
    ratios = [1.0, 1.0, 1.3, 0.7, 1.2]
    sched = DCSolverScheduler(dc_ratios=ratios)
    a = run_sampler(sched, gmm, x, 5)
    assert not torch.allclose(a, run_sampler(UniPCScheduler(), gmm, x, 5))
    again = reload_scheduler(sched)
    config = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert config["dc_ratios"] == ratios
    assert torch.equal(a, run_sampler(again, gmm, x, 5))


def test_cpr_config_drives_the_ratios(gmm, seeded_noise):
    cpr = simple_cpr(1.0, 0.2)
    sched = DCSolverScheduler(dc_cpr=cpr, dc_guidance_scale=3.0)
    sched.set_timesteps(10)
    np.testing.assert_allclose(sched.compensation_ratios, [1, 1] + [1.0 + 0.2 * s / 10 for s in range(3, 11)])
    # a dict from the config runs the same as explicit ratios
    x = seeded_noise(SHAPE, 6)
    a = run_sampler(DCSolverScheduler(dc_cpr=cpr, dc_guidance_scale=3.0), gmm, x, 10)
    b = run_sampler(DCSolverScheduler(dc_ratios=list(sched.compensation_ratios)), gmm, x, 10)
    assert torch.equal(a, b)


def test_cpr_fit_reproduces_its_ratios_and_is_finite_everywhere():
    rng = np.random.default_rng(0)
    truth = rng.normal(0, 0.3, (4, 3, 3))
    true_cpr = CascadePolynomialRegression(truth, (4, 12), (1, 7))
    calibrated = {}
    for nfe in (4, 5, 6, 8, 10, 12):
        for g in (1.0, 3.0, 5.0, 7.0):
            noise = rng.normal(0, 0.01, nfe)
            noise[:2] = 0
            calibrated[(nfe, g)] = list(true_cpr.ratios(nfe, g) + noise)
    fit = CascadePolynomialRegression.fit(calibrated)
    assert fit.fit_rmse < 0.012
    for (nfe, g), ratios in calibrated.items():
        assert np.max(np.abs(fit.ratios(nfe, g) - np.asarray(ratios))) < 5 * 0.012
    assert fit.nfe_range == (4, 12) and fit.guidance_range == (1, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for nfe in range(3, 51):
            for g in np.linspace(1, 15, 8):
                assert np.all(np.isfinite(fit.ratios(nfe, float(g))))
    assert CascadePolynomialRegression.from_config(json.loads(json.dumps(fit.to_config()))).ratios(5, 2.0) == \
        pytest.approx(fit.ratios(5, 2.0))


def test_cpr_outside_fitted_range_warns_and_clamps():
    cpr = CascadePolynomialRegression(np.random.default_rng(1).normal(size=36), (4, 10), (1, 7))
    with pytest.warns(UserWarning, match="clamped"):
        high = cpr.ratios(8, 12.0)
    np.testing.assert_allclose(high, cpr.ratios(8, 7.0))
    with pytest.warns(UserWarning, match="outside"):
        cpr.ratios(20, 3.0)


@pytest.mark.parametrize("kw,match", [
    ({"dc_ratios": [1.0, 1.0, 1.1]}, "3 entries but the run has 5 steps"),
    ({"dc_ratios": "fast"}, "list of finite numbers"),
    ({"dc_ratios": [1.0, float("nan"), 1.0, 1.0, 1.0]}, "finite"),
    ({"dc_cpr": {"coefficients": [0.0] * 35, "nfe_range": [3, 10], "guidance_range": [1, 5]},
      "dc_guidance_scale": 1.0}, "36 finite coefficients, got 35"),
    ({"dc_cpr": {"coefficients": [0.0] * 36}, "dc_guidance_scale": 1.0}, "misses"),
    ({"dc_cpr": simple_cpr()}, "dc_guidance_scale"),
    ({"dc_cpr": "imagenet", "dc_guidance_scale": 1.0}, "Unknown shipped CPR"),
])
def test_bad_compensation_input(kw, match):
    with pytest.raises(ValueError, match=match):
        sched = DCSolverScheduler(**kw)
        sched.set_timesteps(5)


def test_singlestep_refuses_compensation():
    with pytest.raises(ValueError, match="multistep"):
        DPMSolverPPScheduler(singlestep=True, dc_ratios=[1.0] * 4)


def test_shipped_digits_cpr_is_finite_everywhere_and_runs(gmm, seeded_noise):
    from diffusers_ext.schedulers.dc_solver.compensation import load_cpr

    cpr = load_cpr("digits")
    assert cpr.nfe_range == (3.0, 10.0) and cpr.guidance_range == (1.0, 7.0) and cpr.fit_rmse < 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # outside the fitted range: clamped, with a warning
        for nfe in range(3, 51):
            for g in (1.0, 3.0, 7.5, 15.0):
                ratios = cpr.ratios(nfe, g)
                assert ratios.shape == (nfe,) and np.all(np.isfinite(ratios)) and np.all(np.abs(ratios - 1) < 0.5)
    x = seeded_noise(SHAPE, 3)
    out = run_sampler(DCSolverScheduler(dc_cpr="digits", dc_guidance_scale=3.0), gmm, x, 6)
    assert torch.isfinite(out).all() and not torch.equal(out, run_sampler(UniPCScheduler(), gmm, x, 6))
