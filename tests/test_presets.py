"""``from_config(config, preset=...)``: a named solver + grid setting for users who cannot tune."""

from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from diffusers_ext import DCSolverScheduler, DEISScheduler, DPMSolverPPScheduler, UniPCScheduler


@pytest.mark.parametrize("cls", [DPMSolverPPScheduler, UniPCScheduler, DCSolverScheduler])
def test_few_step_preset_from_a_saved_karras_config(cls, tmp_path):
    DPMSolverMultistepScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", use_karras_sigmas=True,
                                solver_order=3, algorithm_type="sde-dpmsolver++").save_pretrained(tmp_path)
    config = DPMSolverMultistepScheduler.load_config(tmp_path)
    sched = cls.from_config(config, preset="few-step")
    cfg = sched.config
    # the model's schedule and prediction type are kept; the solver and grid are the preset's
    assert cfg.beta_schedule == "scaled_linear" and cfg.prediction_type == "v_prediction"
    assert not cfg.use_karras_sigmas and cfg.timestep_spacing == "quadratic" and cfg.solver_order == 2
    if cls is DPMSolverPPScheduler:
        assert cfg.algorithm_type == "dpmsolver++"
    sched.set_timesteps(5)
    ref = cls.from_config(config, solver_order=2, timestep_spacing="quadratic", use_karras_sigmas=False,
                          **({"algorithm_type": "dpmsolver++"} if cls is DPMSolverPPScheduler else {}))
    ref.set_timesteps(5)
    assert torch.equal(sched.timesteps, ref.timesteps)
    # explicit options still win over the preset, and the preset survives save / load (it is plain config)
    assert cls.from_config(config, preset="few-step", solver_order=3).config.solver_order == 3
    sched.save_pretrained(tmp_path / "preset")
    assert cls.from_pretrained(tmp_path / "preset").config.timestep_spacing == "quadratic"


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown preset 'fast' for UniPCScheduler; valid choices: \['few-step'\]"):
        UniPCScheduler.from_config(UniPCScheduler().config, preset="fast")
    with pytest.raises(ValueError, match=r"valid choices: \['few-step'\] \(schedulers with presets: DCSolverScheduler, "
                                         r"DEISScheduler, DPMSolverPPScheduler, UniPCScheduler"):
        DEISScheduler.from_config(DEISScheduler().config, preset="fewstep")


def test_deis_few_step_preset_is_ipndm3_on_the_quadratic_grid(tmp_path):
    DPMSolverMultistepScheduler(use_lu_lambdas=True).save_pretrained(tmp_path)
    sched = DEISScheduler.from_config(DEISScheduler.load_config(tmp_path), preset="few-step")
    cfg = sched.config
    assert (cfg.solver_type, cfg.solver_order, cfg.timestep_spacing, cfg.use_lu_lambdas) == ("ipndm", 3, "quadratic",
                                                                                              False)
