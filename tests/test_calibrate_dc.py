"""DC-Solver ratio calibration: lowers its own loss, does not hurt held-out noises (exact GMM), runs on
diffusers pipelines with guidance, and refuses what it cannot calibrate."""

import numpy as np
import pytest
import torch

from diffusers_ext import DCSolverScheduler, DEISScheduler, DPMSolverPPScheduler, UniPCScheduler
from diffusers_ext.eval.gmm_accuracy import sample_with
from diffusers_ext.search import DCCalibration, calibrate_dc, pipeline_denoiser, reference_trajectory

SHAPE = (2, 4, 4)


@pytest.fixture(scope="module")
def held_out(gmm, seeded_noise):
    noise = seeded_noise((256, *SHAPE), 1234, torch.float64)
    return noise, gmm.ode_endpoint(noise, 999.0)


def _rmse(out, ref):
    return float((out.double() - ref).pow(2).mean().sqrt())


def test_reference_trajectory_is_the_exact_ode_solution(gmm, gmm_eps, seeded_noise):
    noise = seeded_noise((4, *SHAPE))
    sched = DCSolverScheduler(dc_ratios=[1.0] * 5)
    states = reference_trajectory(gmm_eps, sched, 5, noise, progress=False)
    assert len(states) == 6 and states[0] is noise
    exact = gmm.ode_endpoint(noise.double(), 999.0)
    assert _rmse(states[-1], exact) < 2e-3 * float(exact.pow(2).mean().sqrt())
    sched.set_timesteps(5)  # an intermediate state against the exact solve to the same time
    t_mid = float(sched.grid.t[3])
    assert _rmse(states[3], gmm.ode_endpoint(noise.double(), 999.0, t_end=t_mid)) < 1e-3


@pytest.mark.parametrize("scheduler", [None, DPMSolverPPScheduler(dc_ratios=[1.0] * 5)],
                         ids=["dc-solver", "dpm++2m-predictor-only"])
def test_calibration_lowers_its_loss_and_not_the_held_out_accuracy(held_out, scheduler, gmm, gmm_eps,
                                                                   seeded_noise):
    cal = calibrate_dc(gmm_eps, 5, scheduler=scheduler, sample_shape=SHAPE, num_samples=10, progress=False)
    assert cal.ratios[:2] == [1.0, 1.0] and len(cal.ratios) == 5
    assert all(np.isfinite(cal.ratios)) and any(abs(r - 1.0) > 1e-3 for r in cal.ratios)
    assert len(cal.loss_at_one) == len(cal.loss_calibrated) == 3
    assert all(c <= o for c, o in zip(cal.loss_calibrated, cal.loss_at_one))
    assert sum(cal.loss_calibrated) < 0.98 * sum(cal.loss_at_one)
    noise, exact = held_out
    base = DPMSolverPPScheduler() if scheduler is not None else UniPCScheduler()
    calibrated = type(base)(dc_ratios=cal.ratios)
    before = _rmse(sample_with(base, gmm, noise.float(), 5), exact)
    after = _rmse(sample_with(calibrated, gmm, noise.float(), 5), exact)
    assert after <= before  # measured: UniPC 0.230 -> 0.197, DPM++2M 0.245 -> 0.194
    # the calibration's own differentiable step is the scheduler's step: its last loss is the endpoint error
    own_noise = seeded_noise((10, *SHAPE))
    reference_end = reference_trajectory(gmm_eps, calibrated, 5, own_noise, progress=False)[-1]
    end = sample_with(type(base)(dc_ratios=cal.ratios), gmm, own_noise, 5)
    assert float((end - reference_end).pow(2).mean()) == pytest.approx(cal.loss_calibrated[-1], rel=1e-4)


def test_calibration_saves_and_loads(tmp_path, gmm_eps):
    cal = calibrate_dc(gmm_eps, 4, sample_shape=SHAPE, num_samples=3, iterations=2, progress=False)
    cal.save(tmp_path / "cal.json")
    assert DCCalibration.load(tmp_path / "cal.json") == cal
    assert cal.model_calls > 200  # the reference solve and the corrector's model calls are counted


def test_digits_pipeline_with_guidance():
    from diffusers_ext.models.digits import load_pipeline

    pipe = load_pipeline()
    cal = calibrate_dc(pipe, 4, num_samples=4, guidance_scale=3.0, reference_steps=40, iterations=4, progress=False)
    assert all(np.isfinite(cal.ratios)) and cal.guidance_scale == 3.0
    assert sum(cal.loss_calibrated) < sum(cal.loss_at_one)  # per step <= holds by construction (best iterate)
    pipe.scheduler = DCSolverScheduler.from_config(pipe.scheduler.config, dc_ratios=cal.ratios)
    images = pipe(class_labels=[1, 2], num_inference_steps=4, guidance_scale=3.0, output_type="np").images
    assert np.isfinite(images).all()


def test_stable_diffusion_pipeline_with_guidance(tmp_path):
    from tests.helpers import tiny_stable_diffusion

    pipe = tiny_stable_diffusion(tmp_path, DCSolverScheduler(dc_ratios=[1.0] * 4))
    cal = calibrate_dc(pipe, 4, num_samples=2, guidance_scale=5.0, conditioning=["a cat", "a dog"],
                       reference_steps=20, iterations=2, progress=False)
    assert all(np.isfinite(cal.ratios))
    adapter = pipeline_denoiser(pipe, 2, 5.0, ["a cat", "a dog"])
    assert adapter.sample_shape == (4, 8, 8)


def test_bad_input(gmm_eps):
    with pytest.raises(ValueError, match="UniPCScheduler or DPMSolverPPScheduler"):
        calibrate_dc(gmm_eps, 5, scheduler=DEISScheduler(), sample_shape=SHAPE)
    with pytest.raises(ValueError, match="sample_shape"):
        calibrate_dc(gmm_eps, 5)
    with pytest.raises(ValueError, match="multistep"):
        calibrate_dc(gmm_eps, 5, scheduler=DPMSolverPPScheduler(singlestep=True), sample_shape=SHAPE)
    with pytest.raises(ValueError, match="dualfast_strength=0"):
        calibrate_dc(gmm_eps, 5, scheduler=DCSolverScheduler(dualfast_strength=0.5), sample_shape=SHAPE)
    with pytest.raises(ValueError, match=">= 1"):
        calibrate_dc(gmm_eps, 0, sample_shape=SHAPE)
    from diffusers_ext.models.digits import load_pipeline

    with pytest.raises(ValueError, match="one per sample"):
        calibrate_dc(load_pipeline(), 5, num_samples=3, conditioning=[1, 2])
    with pytest.raises(ValueError, match="No denoiser adapter"):
        pipeline_denoiser(object(), 2)


def test_cli_grid_resumes_and_fits_a_cpr(tmp_path, capsys):
    import json

    from diffusers_ext.cli import main
    from diffusers_ext.schedulers.dc_solver.cpr import CascadePolynomialRegression

    out, cpr_path = tmp_path / "cal.jsonl", tmp_path / "cpr.json"
    argv = ["calibrate-dc", "--model", "gmm", "--nfe", "4,5", "--samples", "3", "--reference-steps", "20",
            "--iterations", "2", "--out", str(out), "--cpr-out", str(cpr_path)]
    assert main(argv) == 0
    rows = out.read_text().splitlines()
    assert len(rows) == 2
    assert main(argv) == 0  # resumed: nothing recalibrated, nothing appended
    assert out.read_text().splitlines() == rows
    cpr = CascadePolynomialRegression.from_config(json.loads(cpr_path.read_text()))
    for row in map(json.loads, rows):  # the CPR reproduces the ratios it was fitted on within its fit error
        np.testing.assert_allclose(cpr.ratios(row["num_inference_steps"], 1.0), row["ratios"],
                                   atol=max(10 * cpr.fit_rmse, 1e-6))
    assert '"loss_reduction"' in capsys.readouterr().out
