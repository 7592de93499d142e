"""Bad input: each a ValueError that names the problem and the valid choices."""

import pytest
import torch

from diffusers_ext import DEISScheduler, DPMSolverPPScheduler, UniPCScheduler


@pytest.mark.parametrize("cls", [DPMSolverPPScheduler, UniPCScheduler, DEISScheduler])
def test_unknown_prediction_type(cls):
    with pytest.raises(ValueError, match="prediction_type.*epsilon, v_prediction, sample, flow_prediction"):
        cls(prediction_type="score")


@pytest.mark.parametrize("cls", [DPMSolverPPScheduler, UniPCScheduler, DEISScheduler])
def test_unknown_grid(cls):
    with pytest.raises(ValueError, match="timestep_spacing.*linspace.*karras"):
        cls(timestep_spacing="cosine")


@pytest.mark.parametrize("cls,bad", [(DPMSolverPPScheduler, 4), (UniPCScheduler, 0), (DEISScheduler, 5),
                                     (DPMSolverPPScheduler, 2.0)])
def test_order_out_of_range(cls, bad):
    with pytest.raises(ValueError, match=r"solver_order must be an integer in \[1, \d\]"):
        cls(solver_order=bad)


def test_deis_tab_order_4_names_ipndm():
    with pytest.raises(ValueError, match="ipndm allows 4"):
        DEISScheduler(solver_order=4, solver_type="tab")


@pytest.mark.parametrize("kw,match", [
    ({"solver_type": "euler"}, "solver_type.*midpoint"),
    ({"algorithm_type": "dpmsolver"}, "algorithm_type.*sde-dpmsolver"),
    ({"final_sigmas_type": "one"}, "final_sigmas_type.*zero, sigma_min"),
    ({"beta_schedule": "cosine"}, "beta_schedule.*squaredcos_cap_v2"),
    ({"noise_schedule": "ve"}, "noise_schedule.*discrete"),
])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        DPMSolverPPScheduler(**kw)


@pytest.mark.parametrize("n", [0, -3, 1001])
def test_nfe_out_of_range(n):
    s = UniPCScheduler()
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(n)


@pytest.mark.parametrize("timesteps", [[999, 500, 500, 10], [10, 500, 999], [999, float("nan"), 3]])
def test_non_decreasing_custom_timesteps(timesteps):
    with pytest.raises(ValueError, match="strictly decreasing"):
        DPMSolverPPScheduler().set_timesteps(timesteps=timesteps)


def test_custom_timesteps_outside_range():
    with pytest.raises(ValueError, match="outside the schedule's model-time range"):
        DPMSolverPPScheduler().set_timesteps(timesteps=[1500, 10])


def test_sigmas_of_the_wrong_length():
    s = DPMSolverPPScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="sigmas= has 3 entries but num_inference_steps=4"):
        s.set_timesteps(4, sigmas=[1.0, 0.6, 0.3])
    with pytest.raises(ValueError, match="either timesteps= or sigmas="):
        s.set_timesteps(timesteps=[900, 100], sigmas=[1.0, 0.5])


def test_step_before_set_timesteps():
    s = DEISScheduler()
    x = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match="before set_timesteps"):
        s.step(x, 999, x)


def test_model_output_shape_mismatch():
    s = UniPCScheduler()
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="does not match sample shape"):
        s.step(torch.zeros(1, 3, 2, 2), s.timesteps[0], torch.zeros(1, 2, 2, 2))


def test_dynamic_shift_needs_mu():
    s = UniPCScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="needs `mu`"):
        s.set_timesteps(4)
    s.set_timesteps(4, mu=0.8)


def test_epsilon_model_on_a_flow_grid_starting_at_sigma_one():
    """An epsilon output at alpha = 0 carries no information about the data: a clear error, not NaN."""
    s = DPMSolverPPScheduler(use_flow_sigmas=True, prediction_type="epsilon")
    with pytest.raises(ValueError, match="carries no data information"):
        s.set_timesteps(4)


def test_leading_spacing_with_too_many_steps():
    with pytest.raises(ValueError, match="repeated timesteps"):
        DPMSolverPPScheduler(timestep_spacing="leading").set_timesteps(1000)
