"""Shared test helpers."""


import numpy as np

from diffusers_ext import DCSolverScheduler, DEISScheduler, DPMSolverPPScheduler, UniPCScheduler


def simple_cpr(c0=1.0, c1=-0.1, nfe_range=(3, 50), guidance_range=(1, 15)) -> dict:
    """A CPR config with rho(x) = c0 + c1 x for every (NFE, guidance): ratios for any number of steps."""
    w = np.zeros((4, 3, 3))
    w[0, 2, 2], w[1, 2, 2] = c0, c1
    return {"coefficients": w.reshape(-1).tolist(), "nfe_range": list(nfe_range),
            "guidance_range": list(guidance_range)}


DC = {"dc_cpr": simple_cpr(), "dc_guidance_scale": 1.0}

# one main variant per family, plus the variants with their own code paths
SCHEDULER_VARIANTS = {
    "dpm++2m": (DPMSolverPPScheduler, {}),
    "dpm++3m": (DPMSolverPPScheduler, {"solver_order": 3}),
    "dpm++2s": (DPMSolverPPScheduler, {"singlestep": True}),
    "dpm++3s": (DPMSolverPPScheduler, {"singlestep": True, "solver_order": 3}),
    "sde-dpm++2m": (DPMSolverPPScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    "unipc-bh2": (UniPCScheduler, {}),
    "unipc-bh1-3": (UniPCScheduler, {"solver_type": "bh1", "solver_order": 3}),
    "unip-noise": (UniPCScheduler, {"use_corrector": False, "predict_x0": False}),
    "dc-solver": (DCSolverScheduler, DC),
    "dpm++2m-dc": (DPMSolverPPScheduler, DC),
    "deis-tab3": (DEISScheduler, {}),
    "deis-rhoab3": (DEISScheduler, {"solver_type": "rhoab"}),
    "deis-ipndm4": (DEISScheduler, {"solver_type": "ipndm", "solver_order": 4}),
    "deis-heun": (DEISScheduler, {"solver_type": "heun"}),
    "deis-rk4": (DEISScheduler, {"solver_type": "rk4"}),
}


def make(name, **overrides):
    cls, kw = SCHEDULER_VARIANTS[name]
    return cls(**{**kw, **overrides})


def run_sampler(scheduler, model, x, num_steps=None, generator=None, **set_kw):
    if num_steps is not None or set_kw:
        scheduler.set_timesteps(num_steps, **set_kw)
    extra = {} if generator is None else {"generator": generator}  # diffusers' UniPC/DEIS reject generator
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t).sample, t, x, **extra).prev_sample
    return x
