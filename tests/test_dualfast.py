"""DualFast (arXiv 2506.13058): off is the base solver bit for bit, on matches float64 references, bad input."""

import json
import math

import numpy as np
import pytest
import torch

from diffusers_ext import DCSolverScheduler, DPMSolverPPScheduler, UniPCScheduler
from diffusers_ext.schedulers.dualfast import mixing_coefficient
from tests.helpers import dpm_solver_pp_2m_f64, lagrange_f64, make, run_sampler

SHAPE = (4, 2, 4, 4)


BASES = [
    (DPMSolverPPScheduler, {"solver_order": 1}),
    (DPMSolverPPScheduler, {"solver_order": 2}),
    (DPMSolverPPScheduler, {"solver_order": 3}),
    (DPMSolverPPScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    (UniPCScheduler, {}),
    (UniPCScheduler, {"solver_order": 3, "solver_type": "bh1"}),
    (UniPCScheduler, {"predict_x0": False}),
    (UniPCScheduler, {"predict_x0": False, "use_corrector": False, "solver_order": 1}),
    (DCSolverScheduler, {"dc_ratios": [1.0, 1.0, 1.2, 0.9, 1.1, 0.8, 1.05, 0.95, 1.1, 0.9]}),
]


@pytest.mark.parametrize("cls,kw", BASES)
@pytest.mark.parametrize("n", [4, 7, 10])
def test_strength_zero_is_the_base_solver_exactly(cls, kw, n, gmm, seeded_noise):
    kw = dict(kw)
    if "dc_ratios" in kw:
        kw["dc_ratios"] = kw["dc_ratios"][:n]
    x = seeded_noise(SHAPE)
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731  (the SDE variant draws noise)
    base_sched, off_sched = cls(**kw), cls(dualfast_strength=0.0, dualfast_schedule="constant", **kw)
    base = run_sampler(base_sched, gmm, x, n, generator=gen())
    off = run_sampler(off_sched, gmm, x, n, generator=gen())
    assert torch.equal(base, off)
    assert np.array_equal(base_sched.plan.table, off_sched.plan.table) and off_sched.plan.anchor_coeffs is None
    on = run_sampler(cls(dualfast_strength=0.3, **kw), gmm, x, n, generator=gen())
    assert torch.isfinite(on).all() and not torch.equal(base, on)


def test_mixing_coefficient_schedules():
    assert [mixing_coefficient(0.6, "linear", n, 4) for n in range(4)] == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert [mixing_coefficient(0.6, "constant", n, 4) for n in range(4)] == [0.0, 0.6, 0.6, 0.6]
    assert mixing_coefficient(0.6, "linear", 0, 1) == 0.0  # a one-step run has nothing earlier to mix with


def _scripted(sched, n, noise, seed, outputs_seed):
    """``sched`` set to ``n`` steps: its grid, a float64 start sample and ``n`` scripted model outputs."""
    sched.set_timesteps(n)
    x = noise(SHAPE, seed, torch.float64)
    return sched.grid, x, [noise(SHAPE, outputs_seed + i, torch.float64) for i in range(n)]


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_ddim_matches_direct_float64_mixing(schedule, seeded_noise):
    """DPM-Solver++ 1 (DDIM) with scripted data predictions (prediction_type 'sample') against a direct float64
    loop: eps_i = (x_i - alpha_i out_i) / sigma_i, eps' = (1 + c_i) eps_i - c_i eps_0, x0' = (x_i - sigma_i eps') /
    alpha_i, x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} expm1(-h) x0'."""
    n, strength = 6, 0.4
    sched = DPMSolverPPScheduler(solver_order=1, prediction_type="sample", dualfast_strength=strength,
                                 dualfast_schedule=schedule)
    g, x0, outs = _scripted(sched, n, seeded_noise, 3, outputs_seed=100)
    x = x0.clone()
    for i, ts in enumerate(sched.timesteps):
        x = sched.step(outs[i], ts, x).prev_sample
    ref, anchor = x0.clone(), None
    for i in range(n):
        eps = (ref - g.alpha[i] * outs[i]) / g.sigma[i]
        anchor = eps if anchor is None else anchor
        c = strength * (i / (n - 1) if schedule == "linear" else float(i > 0))
        mixed = (1 + c) * eps - c * anchor
        x0_mixed = (ref - g.sigma[i] * mixed) / g.alpha[i]
        h = g.lam[i + 1] - g.lam[i]
        ref = (g.sigma[i + 1] / g.sigma[i]) * ref - g.alpha[i + 1] * np.expm1(-h) * x0_mixed
    assert g.sigma[n] == 0.0
    assert ((x - ref).norm() / ref.norm()).item() < 1e-6  # the kernel accumulates in fp32


def test_dpm_solver_pp_2m_matches_direct_float64_mixing(gmm, seeded_noise):
    """2M whole run with a real model: the mixed data prediction is what D1 differences and the history use."""
    n, strength = 7, 0.5
    sched = DPMSolverPPScheduler(dualfast_strength=strength, lower_order_final=False,
                                 final_sigmas_type="sigma_min")
    x0 = seeded_noise(SHAPE, 4, torch.float64)
    ours = run_sampler(sched, gmm, x0, n)
    g = sched.grid
    anchors = []

    def mixed(i, x, eps, ms):
        if not anchors:
            anchors.append(eps)
        c = strength * i / (n - 1)
        return (x - g.sigma[i] * ((1 + c) * eps - c * anchors[0])) / g.alpha[i]

    x = dpm_solver_pp_2m_f64(sched, gmm, x0, mixed)
    assert ((ours - x).norm() / x.norm()).item() < 1e-6


@pytest.mark.parametrize("predict_x0", [True, False])
def test_unipc_history_records_the_mixed_output(predict_x0, seeded_noise):
    """UniPC with scripted outputs (prediction_type 'epsilon'): the history entry of step i is eps' (noise
    prediction) or (x_i - sigma_i eps') / alpha_i (data prediction), x_i the sample the model saw."""
    n, strength = 6, 0.3
    sched = UniPCScheduler(prediction_type="epsilon", predict_x0=predict_x0, dualfast_strength=strength,
                           dualfast_schedule="constant")
    g, x, outs = _scripted(sched, n, seeded_noise, 5, outputs_seed=200)
    anchor = outs[0]
    for i, ts in enumerate(sched.timesteps):
        c = strength if i > 0 else 0.0
        mixed = (1 + c) * outs[i] - c * anchor
        expected = mixed if not predict_x0 else (x - g.sigma[i] * mixed) / g.alpha[i]
        x = sched.step(outs[i], ts, x).prev_sample
        got = sched.history[int(sched.plan.slots[i])].double()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [{"dualfast_strength": 0.5},
                                {"dualfast_strength": 0.3, "prediction_type": "v_prediction"}])
def test_mixing_is_in_noise_space_for_data_and_noise_solvers(kw, gmm, seeded_noise):
    """DDIM in data form (DPM-Solver++ 1) and in noise form (UniP-1 on noise predictions) are the same update;
    with DualFast they stay the same because both mix the noise prediction."""
    x = seeded_noise(SHAPE, 6, torch.float64)
    data = run_sampler(DPMSolverPPScheduler(solver_order=1, **kw), gmm, x, 8)
    noise = run_sampler(UniPCScheduler(solver_order=1, use_corrector=False, predict_x0=False, **kw), gmm, x, 8)
    torch.testing.assert_close(noise, data, rtol=1e-5, atol=1e-5)


def test_with_dynamic_compensation_mixes_then_compensates(seeded_noise):
    """DPM-Solver++ 2M with DC ratios and DualFast, scripted data predictions: the recorded entry of step i is
    Lagrange(entry_{i-2}, entry_{i-1}, mix(out_i)) at t', mix(m) = (1 + c) m - (c / alpha_i) x_i
    + (c sigma_i / alpha_i) eps_0 (the history entries are mixed once, never twice)."""
    n, strength = 7, 0.4
    ratios = [1.0, 1.0, 1.2, 0.8, 1.1, 0.9, 1.05]
    sched = DPMSolverPPScheduler(prediction_type="sample", dc_ratios=ratios, dualfast_strength=strength)
    g, x, outs = _scripted(sched, n, seeded_noise, 7, outputs_seed=300)
    anchor = ((x - g.alpha[0] * outs[0]) / g.sigma[0]).numpy()
    recorded = []
    for i, ts in enumerate(sched.timesteps):
        c = strength * i / (n - 1)
        mixed = (1 + c) * outs[i].numpy() - (c / g.alpha[i]) * x.numpy() + (c * g.sigma[i] / g.alpha[i]) * anchor
        expected = mixed
        if i >= 2:
            at = g.t[i - 1] + ratios[i] * (g.t[i] - g.t[i - 1])
            expected = lagrange_f64(g.t[i - 2:i + 1], [recorded[i - 2], recorded[i - 1], mixed], at)
        recorded.append(expected)
        x = sched.step(outs[i], ts, x).prev_sample
        got = sched.history[int(sched.plan.slots[i])].double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_img2img_start_mixes_with_the_first_output_of_the_run(gmm, seeded_noise):
    """Starting at step b equals a fresh run on the remaining grid: the anchor and c restart there."""
    kw = {"dualfast_strength": 0.4}
    sched = DPMSolverPPScheduler(solver_order=3, **kw)
    sched.set_timesteps(10)
    grid = sched.timesteps.double().numpy()
    b = 4
    sched.set_begin_index(b)
    x = seeded_noise(SHAPE, 8)
    for t in sched.timesteps[b:]:
        x = sched.step(gmm(x, t).sample, t, x).prev_sample
    fresh = DPMSolverPPScheduler(solver_order=3, **kw)
    fresh.set_timesteps(timesteps=grid[b:].tolist())
    torch.testing.assert_close(x, run_sampler(fresh, gmm, seeded_noise(SHAPE, 8)), rtol=1e-6, atol=1e-6)


def test_torch_compile_fullgraph(gmm, seeded_noise):
    torch._dynamo.reset()
    compiles = []

    def backend(gm, example_inputs):
        compiles.append(1)
        return gm.forward

    sched, eager = make("dpm++2m-dualfast"), make("dpm++2m-dualfast")
    sched.set_timesteps(8)
    eager.set_timesteps(8)
    step = torch.compile(sched.step, fullgraph=True, backend=backend)
    x = seeded_noise(SHAPE, 10)
    y = x.clone()
    for t in sched.timesteps:
        x = step(gmm(x, t).sample, t, x, return_dict=False)[0]
        y = eager.step(gmm(y, t).sample, t, y).prev_sample
    assert len(compiles) <= 2
    torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [DPMSolverPPScheduler, UniPCScheduler, DCSolverScheduler])
@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, "0.2", True, None])
def test_bad_strength_raises(cls, bad):
    with pytest.raises(ValueError, match="dualfast_strength must be a finite number >= 0"):
        cls(dualfast_strength=bad)


@pytest.mark.parametrize("cls", [DPMSolverPPScheduler, UniPCScheduler])
def test_unknown_schedule_lists_valid_choices(cls):
    with pytest.raises(ValueError, match=r"Unknown dualfast_schedule 'cosine'; valid choices: .*linear.*constant"):
        cls(dualfast_strength=0.1, dualfast_schedule="cosine")


def test_singlestep_rejects_dualfast():
    with pytest.raises(ValueError, match="DualFast .* needs multistep"):
        DPMSolverPPScheduler(singlestep=True, dualfast_strength=0.2)
    DPMSolverPPScheduler(singlestep=True, dualfast_strength=0.0)  # off: fine
    DPMSolverPPScheduler(singlestep=True, solver_order=1, dualfast_strength=0.2)  # order 1 is multistep DDIM


@pytest.mark.parametrize("cls,kw", [(DPMSolverPPScheduler, {"solver_order": 3}),
                                    (UniPCScheduler, {"predict_x0": False})])
def test_save_pretrained_and_from_config_keep_the_options(tmp_path, cls, kw, gmm, seeded_noise, reload_scheduler):
    x = seeded_noise(SHAPE, 11)
    sched = cls(dualfast_strength=0.25, dualfast_schedule="constant", **kw)
    a = run_sampler(sched, gmm, x, 6)
    reloaded = reload_scheduler(sched)
    config = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert config["dualfast_strength"] == 0.25 and config["dualfast_schedule"] == "constant"
    for again in (reloaded, cls.from_config(sched.config)):
        assert again.config.dualfast_strength == 0.25 and again.config.dualfast_schedule == "constant"
        assert torch.equal(a, run_sampler(again, gmm, x, 6))
    # swapping into a pipeline's scheduler config, with the option given at from_config
    import diffusers

    swapped = cls.from_config(diffusers.DDIMScheduler().config, dualfast_strength=0.25, **kw)
    assert swapped.config.dualfast_strength == 0.25 and swapped.table_layout().anchor
