"""diffusers_ext.sampling: the one sampling loop, the reference solve, the model adapter; the library's users of
them (GMM accuracy, the S^3 endpoint objective, DC calibration's reference, the quantize command) give exactly
the numbers of a plain loop written here."""

import diffusers
import numpy as np
import pytest
import torch

from diffusers_ext import DCSolverScheduler, DPMSolverPPScheduler, UniPCScheduler, USFScheduler
from diffusers_ext.eval.gmm_accuracy import gmm_accuracy
from diffusers_ext.models import GaussianMixtureDenoiser
from diffusers_ext.sampling import model_fn, reference_solve, sample
from diffusers_ext.schedulers import hand_designed_schedule
from diffusers_ext.search import EndpointObjective, reference_trajectory

GMM = GaussianMixtureDenoiser()


def _noise(n=8, seed=0):
    return torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(seed))


def plain_loop(scheduler, noise, steps=None, model=GMM):
    """A pipeline's loop, written out: what every sampler in the library must reproduce bit for bit."""
    if steps is not None:
        scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


def _afs_usf():
    """A USF schedule with the analytical first step: init_noise_sigma != 1."""
    rest = hand_designed_schedule("dpm++2m", [700.0, 400.0, 150.0, -1.0])
    return USFScheduler(solver_schedule={**rest, "analytical_first_step": "zero_x0",
                                         "timesteps": [999.0] + rest["timesteps"],
                                         "steps": [{"prediction": "data", "order": 1}] + rest["steps"]})


@pytest.mark.parametrize("make", [DPMSolverPPScheduler, UniPCScheduler, _afs_usf,
                                  lambda: diffusers.DDIMScheduler(timestep_spacing="trailing", clip_sample=False),
                                  diffusers.DPMSolverMultistepScheduler, diffusers.EulerDiscreteScheduler])
def test_sample_is_the_plain_loop(make):
    noise = _noise()
    steps = 3 if make is _afs_usf else 6
    assert torch.equal(sample(model_fn(GMM), make(), noise, steps), plain_loop(make(), noise, steps))


def test_gmm_accuracy_numbers_are_the_plain_loops(monkeypatch):
    def endpoint(self, x, t_start):  # a stand-in for the exact (slow) ODE solve
        return 0.5 * x

    monkeypatch.setattr(GaussianMixtureDenoiser, "ode_endpoint", endpoint)
    solvers = {"ours": ("DPMSolverPPScheduler", {}), "unipc": ("UniPCScheduler", {"solver_order": 3}),
               "ddim": ("diffusers:DDIMScheduler", {"timestep_spacing": "trailing", "clip_sample": False})}
    made = {"ours": DPMSolverPPScheduler, "unipc": lambda: UniPCScheduler(solver_order=3),
            "ddim": lambda: diffusers.DDIMScheduler(timestep_spacing="trailing", clip_sample=False)}
    result = gmm_accuracy(solvers, nfes=(3, 5), num_samples=16, progress=False)
    noise = torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert len(result["rows"]) == 6
    for row in result["rows"]:
        out = plain_loop(made[row["scheduler"]](), noise.float(), row["nfe"]).double()
        assert row["rmse"] == float((out - 0.5 * noise).pow(2).mean().sqrt()), row


def test_endpoint_objective_numbers_are_the_plain_loops():
    noise = _noise()
    objective = EndpointObjective(model_fn(GMM), noise, reference_steps=40)
    reference = DPMSolverPPScheduler(solver_order=3, third_order_taylor=True, use_lu_lambdas=True)
    assert torch.equal(objective.reference, plain_loop(reference, noise, 40).double())
    schedule = hand_designed_schedule("dpm++2m", [999.0, 700.0, 400.0, 150.0, -1.0])
    end = plain_loop(USFScheduler(solver_schedule=schedule), noise, 4)
    value, calls = objective(schedule)
    assert value == float((end.double() - objective.reference).pow(2).mean()) and calls == 4 * len(noise)
    afs = _afs_usf().config.solver_schedule  # init_noise_sigma != 1: the candidate's noise is scaled
    assert objective(afs)[0] == float((plain_loop(_afs_usf(), noise, 3).double() - objective.reference).pow(2).mean())


def test_reference_trajectory_is_the_plain_fine_loop():
    noise = _noise(4)
    states = reference_trajectory(model_fn(GMM), DCSolverScheduler(), 5, noise, 30, progress=False)
    assert len(states) == 6 and states[0] is noise
    fine = DPMSolverPPScheduler(solver_order=3, third_order_taylor=True)
    coarse = DCSolverScheduler(dc_ratios=[1.0] * 5)
    coarse.set_timesteps(5)
    per = 6  # ceil(30 / 5) fine steps per coarse step, uniform in lambda; the last one ends at t_min
    lam, sched = coarse.grid.lam, coarse.noise_schedule
    times = [sched.t_of_lambda(np.linspace(lam[j], lam[j + 1], per + 1))[:-1] for j in range(4)]
    times.append(sched.t_of_lambda(np.linspace(lam[4], sched.lambda_(np.array([sched.t_min]))[0], per + 1)))
    times = np.concatenate(times)
    times[:5 * per:per] = coarse.grid.t[:5]
    fine.set_timesteps(timesteps=times.tolist())
    x, expected = noise, []
    with torch.no_grad():
        for k, t in enumerate(fine.timesteps):
            x = fine.step(GMM(x, t).sample, t, x).prev_sample
            if k in (per - 1, 2 * per - 1, 3 * per - 1, 4 * per - 1, len(fine.timesteps) - 1):
                expected.append(x)
    assert len(expected) == 5 and all(torch.equal(a, b) for a, b in zip(states[1:], expected))


def test_record_returns_the_states_after_the_given_steps():
    noise = _noise()
    end, states = sample(model_fn(GMM), DPMSolverPPScheduler(), noise, 5, record=[1, 4])
    assert torch.equal(end, states[1]) and torch.equal(end, plain_loop(DPMSolverPPScheduler(), noise, 5))
    assert torch.equal(states[0], sample(model_fn(GMM), DPMSolverPPScheduler(), noise, 5, record=[1])[1][0])
    assert not torch.equal(states[0], end)


def test_bad_input():
    with pytest.raises(ValueError, match="no timesteps yet: pass num_inference_steps"):
        sample(model_fn(GMM), DPMSolverPPScheduler(), _noise())
    with pytest.raises(ValueError, match=r"record: step indices must be integers in 0..4, got \[5\]"):
        sample(model_fn(GMM), DPMSolverPPScheduler(), _noise(), 5, record=[0, 5])


def test_model_fn_passes_keyword_arguments():
    seen = {}

    class Model(torch.nn.Module):
        def forward(self, x, t, class_labels=None):
            seen["labels"] = class_labels
            return GMM(x, t)

    labels = torch.tensor([3, 1])
    out = model_fn(Model(), class_labels=labels)(_noise(2), torch.tensor(500))
    assert torch.equal(out, GMM(_noise(2), torch.tensor(500)).sample) and seen["labels"] is labels
    # calibrate_dc_grid names an unnamed callable by module and qualified name in its resume keys
    assert model_fn(GMM).__qualname__ == "model_fn(GaussianMixtureDenoiser)"


@pytest.mark.parametrize("variant", [{"use_karras_sigmas": True}, {"algorithm_type": "sde-dpmsolver++"},
                                     {"dualfast_strength": 0.5}, {"dc_ratios": [1.5] * 40}])
def test_endpoint_reference_ignores_the_configs_solver_variants(tmp_path, variant):
    """A pipeline's scheduler config gives the schedule; its solver variants (Karras grid: crashed; SDE noise;
    DualFast; DC ratios) are not the reference's: the reference is the plain 3M solve on that schedule."""
    DPMSolverPPScheduler(**variant).save_pretrained(tmp_path)
    config = dict(DPMSolverPPScheduler.load_config(tmp_path))
    noise = _noise(4)
    with torch.no_grad():
        reference = reference_solve(model_fn(GMM), config, noise, 40)
    assert torch.equal(reference, reference_solve(model_fn(GMM), None, noise, 40))
    assert torch.equal(EndpointObjective(model_fn(GMM), noise, config, 40).reference, reference.double())


def test_quantize_pipeline_control_row_and_early_errors():
    """``quantize_pipeline`` (the CLI's quantize command and bench/quantization.py): the full-precision control
    measures the held-out trajectory of seed + 1 against itself; bad names fail before any pipeline call."""
    from diffusers_ext.models.digits import load_pipeline
    from diffusers_ext.quant import quantize_pipeline

    pipe = load_pipeline(DPMSolverPPScheduler)
    result = quantize_pipeline(pipe, None, None, num_samples=3, num_inference_steps=2, seed=4, progress=False)
    assert result["relative_mse"] == 0.0 and len(result["mse_per_step"]) == 2 and result["report"] is None
    assert result["float32_bytes"] == 4 * sum(p.numel() for p in pipe.unet.parameters())

    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline ran before the names were checked")

    pipe.__class__ = type("Refusing", (type(pipe),), {"__call__": refuse})
    for kwargs, match in (({"weights": "fp3"}, "Unknown number format 'fp3'; valid choices"),
                          ({"activations": "fp9"}, "Unknown number format 'fp9'"),
                          ({"rounding": "stochastic"}, r"Unknown rounding 'stochastic'; valid choices: \['nearest'"),
                          ({"num_samples": 0}, "num_samples and num_inference_steps must be >= 1")):
        with pytest.raises(ValueError, match=match):
            quantize_pipeline(pipe, **kwargs)
