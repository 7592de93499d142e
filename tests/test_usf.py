"""USFScheduler: hand-designed solvers as schedules reproduce them; a general schedule matches a direct
float64 implementation of the USF update; clear errors; pipelines and save_pretrained."""

import math

import numpy as np
import pytest
import torch

from diffusers_ext import DPMSolverPPScheduler, UniPCScheduler, USFScheduler
from diffusers_ext.schedulers import hand_designed_schedule
from diffusers_ext.schedulers.usf_schedule import ScheduleError
from tests.helpers import run_sampler

SHAPE = (8, 2, 4, 4)


def _times(n, **kw):
    ref = UniPCScheduler(**kw)
    ref.set_timesteps(n)
    return [float(t) for t in ref.grid.t]


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("n", [5, 8])
@pytest.mark.parametrize("name,reference", [
    ("ddim", lambda: DPMSolverPPScheduler(solver_order=1)),
    ("dpm++2m", lambda: DPMSolverPPScheduler()),
    ("unipc-bh2", lambda: UniPCScheduler()),
    ("unipc-bh1", lambda: UniPCScheduler(solver_type="bh1")),
])
def test_hand_designed_schedules_reproduce_their_solvers(n, name, reference, gmm, seeded_noise):
    x = seeded_noise(SHAPE, dtype=torch.float64)
    usf = USFScheduler(solver_schedule=hand_designed_schedule(name, _times(n)))
    assert _rel(run_sampler(usf, gmm, x, n), run_sampler(reference(), gmm, x, n)) < 1e-5


@pytest.mark.parametrize("n", [5, 8])
def test_noise_prediction_unipc_schedule(n, gmm, seeded_noise):
    x = seeded_noise(SHAPE, 1, torch.float64)
    usf = USFScheduler(solver_schedule=hand_designed_schedule("unipc-bh2", _times(n), prediction="noise"))
    assert _rel(run_sampler(usf, gmm, x, n), run_sampler(UniPCScheduler(predict_x0=False), gmm, x, n)) < 1e-5


def _direct_usf(schedule, x, model):
    """The USF update written out in float64 (independent of the coefficient table): Taylor terms from
    explicit phi functions, derivatives from a Vandermonde solve on stored (lambda, x0, eps) points."""
    sched = USFScheduler(solver_schedule=schedule)
    sched.set_timesteps(len(schedule["steps"]))
    g = sched.grid
    lam, alpha, sigma = g.lam, g.alpha, g.sigma

    def phi(k, z):
        return math.expm1(z) / z if k == 1 else (phi(k - 1, z) - 1 / math.factorial(k - 1)) / z

    def taylor(x_s, s, t, kind, order, point_sets, relax, F):
        h = lam[t] - lam[s]
        total = 0
        for k in range(order):
            if k == 0:
                d = F[s][kind]
            else:
                pts = point_sets[k - 1]
                V = np.array([[(lam[p] - lam[s]) ** j / math.factorial(j) for j in range(1, len(pts) + 1)]
                              for p in pts])
                w = np.linalg.solve(V, np.eye(len(pts)))[k - 1]
                d = sum(wi * (F[p][kind] - F[s][kind]) for wi, p in zip(w, pts))
                if k == 1:
                    d = d * (1 + relax * h)
            z = -h if kind == "data" else h
            total = total + h ** (k + 1) * phi(k + 1, z) * d if math.isfinite(h) else d  # h = inf: order 1
        if kind == "data":
            return (sigma[t] / sigma[s]) * x_s + alpha[t] * total
        return (alpha[t] / alpha[s]) * x_s - sigma[t] * total

    F, steps = {}, schedule["steps"]
    x_eval = x_prev_c = x.double()
    for i, step in enumerate(steps):
        eps = model(x_eval.float(), sched.timesteps[i]).sample.double()
        F[i] = {"noise": eps, "data": (x_eval - sigma[i] * eps) / alpha[i]}
        if i >= 1 and steps[i - 1]["corrector"] == "pseudo":
            prev = steps[i - 1]
            sets = [[i - 1 - j for j in pts] + [i] for pts in prev["derivative_points"]]
            sets.append(sets[-1] if sets else [i])
            x_c = taylor(x_prev_c, i - 1, i, prev["prediction"], prev["order"] + 1, sets, 0.0, F)
        else:
            x_c = x_eval
        x_prev_c = x_c
        sets = [[i - j for j in pts] for pts in step["derivative_points"]]
        x_eval = taylor(x_c, i, i + 1, step["prediction"], step["order"], sets, step["relaxation"], F)
    return x_eval


def test_general_schedule_matches_direct_float64_update(gmm, seeded_noise):
    """Mixed prediction types, orders 1-4, skipped points, relaxation and pseudo-correctors."""
    times = _times(7)
    steps = [
        {"prediction": "noise", "order": 1, "corrector": "pseudo"},
        {"prediction": "data", "order": 2, "derivative_points": [[1]], "relaxation": 0.3, "corrector": "pseudo"},
        {"prediction": "noise", "order": 3, "derivative_points": [[2], [1, 2]], "relaxation": -0.2},
        {"prediction": "data", "order": 4, "derivative_points": [[1, 2, 3]] * 3, "corrector": "pseudo"},
        {"prediction": "noise", "order": 2, "derivative_points": [[3]], "relaxation": 0.1},
        {"prediction": "data", "order": 3, "derivative_points": [[1, 4], [1, 4]], "corrector": "pseudo"},
        {"prediction": "data", "order": 1},
    ]
    for s in steps:
        s.setdefault("derivative_points", [])
        s.setdefault("relaxation", 0.0)
        s.setdefault("corrector", "none")
    schedule = {"version": 1, "timesteps": times, "steps": steps}
    x = seeded_noise(SHAPE, 2, torch.float64)
    ours = run_sampler(USFScheduler(solver_schedule=schedule), gmm, x.float(), 7)
    # measured 1.1e-5: the kernel accumulates in fp32 and order-4 weights cancel; changing one step's
    # relaxation from 0.1 to 0.11 moves the result by 9e-4, so the bound still tells schedules apart
    assert _rel(ours.double(), _direct_usf(schedule, x, gmm)) < 5e-5


def test_order_three_multistep_is_third_order_dpm_solver_pp(gmm, seeded_noise):
    n = 8
    times = _times(n)
    orders = [1, 2] + [3] * (n - 4) + [2, 1]
    steps = [{"prediction": "data", "order": p, "derivative_points": [list(range(1, p))] * (p - 1),
              "relaxation": "dpm-solver-2" if p == 2 else 0.0} for p in orders]  # warm-up / final: the 2M update
    usf = USFScheduler(solver_schedule={"version": 1, "timesteps": times, "steps": steps})
    ref = DPMSolverPPScheduler(solver_order=3, third_order_taylor=True)
    x = seeded_noise(SHAPE, 3, torch.float64)
    assert _rel(run_sampler(usf, gmm, x, n), run_sampler(ref, gmm, x, n)) < 1e-5


def test_save_pretrained_keeps_the_schedule(gmm, seeded_noise, reload_scheduler):
    sched = USFScheduler(solver_schedule=hand_designed_schedule("unipc-bh2", _times(6)))
    loaded = reload_scheduler(sched)
    x = seeded_noise(SHAPE, 4, torch.float64)
    assert torch.equal(run_sampler(loaded, gmm, x, 6), run_sampler(sched, gmm, x, 6))


def test_digits_pipeline_runs_a_schedule():
    from diffusers_ext.models.digits import load_pipeline

    pipe = load_pipeline()
    times = _times(5)
    pipe.scheduler = USFScheduler.from_config(pipe.scheduler.config,
                                              solver_schedule=hand_designed_schedule("dpm++2m", times))
    images = pipe(class_labels=[3, 4], num_inference_steps=5, guidance_scale=2.0, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()


def test_bad_input():
    times = _times(5)
    sched = USFScheduler(solver_schedule=hand_designed_schedule("dpm++2m", times))
    with pytest.raises(ScheduleError, match="makes 5 model calls .* num_inference_steps is 6"):
        sched.set_timesteps(6)
    with pytest.raises(ValueError, match="from solver_schedule"):
        sched.set_timesteps(5, timesteps=[999, 500])
    with pytest.raises(ValueError, match="needs a solver_schedule"):
        USFScheduler().set_timesteps(5)
    early_end = hand_designed_schedule("dpm++2m", times[:-1] + [10.0])
    with pytest.raises(ScheduleError, match="clean end"):
        USFScheduler(solver_schedule=early_end).set_timesteps(5)
    final_order_two = hand_designed_schedule("dpm++2m", times, lower_order_final=False)
    with pytest.raises(ScheduleError, match="only an order-1 data-prediction"):
        USFScheduler(solver_schedule=final_order_two).set_timesteps(5)
    with pytest.raises(ScheduleError, match="strictly decrease"):
        USFScheduler(solver_schedule={**hand_designed_schedule("ddim", times), "timesteps": times[::-1]})
    sched.set_timesteps(5)
    with pytest.raises(ValueError, match="runs from its first step"):
        sched.set_begin_index(2)
        sched.step(torch.zeros(1, 1, 2, 2), sched.timesteps[2], torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="Unknown hand-designed solver"):
        hand_designed_schedule("heun", times)


def test_shipped_digits_schedules_load_by_name(gmm, seeded_noise):
    from diffusers_ext.schedulers.usf import shipped_schedule_names

    assert {f"digits-nfe{n}" for n in (4, 5, 6, 8, 10)} <= set(shipped_schedule_names())
    for n in (4, 5, 6, 8, 10):
        sched = USFScheduler(solver_schedule=f"digits-nfe{n}")
        sched.set_timesteps(n)
        x = run_sampler(sched, gmm, seeded_noise(SHAPE, 5, torch.float64).float(), n)
        assert torch.isfinite(x).all()
    with pytest.raises(ValueError, match="valid names: .*digits-nfe5"):
        USFScheduler(solver_schedule="digits-nfe7")


def test_analytical_first_step_saves_a_model_call(gmm, seeded_noise):
    """zero_x0: step 0 is x_1 = (sigma_1 / sigma_0) x_0 without a model call; the rest is the schedule."""
    from diffusers_ext.eval.gmm_accuracy import sample_with

    reduced = hand_designed_schedule("dpm++2m", _times(6)[1:])  # 5 model calls from t_1 = 832
    afs = {**reduced, "analytical_first_step": "zero_x0", "timesteps": [999.0] + reduced["timesteps"],
           "steps": [{"prediction": "data", "order": 1}] + reduced["steps"]}
    sched = USFScheduler(solver_schedule=afs)
    assert sched.schedule.nfe == 5 and sched.schedule.num_steps == 6
    alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    t1 = int(reduced["timesteps"][0])
    expected_scale = float(((1 - alphas_cumprod[t1]) / (1 - alphas_cumprod[999])).sqrt())
    assert sched.init_noise_sigma == pytest.approx(expected_scale, rel=1e-9)
    noise = seeded_noise(SHAPE, 6, torch.float64).float()
    calls = []

    def counting(x, t):
        calls.append(t)
        return gmm(x, t)

    out = sample_with(sched, counting, noise, 5)
    assert len(calls) == 5 and float(sched.timesteps[0]) == t1
    torch.testing.assert_close(out, run_sampler(USFScheduler(solver_schedule=reduced), gmm, noise * expected_scale,
                                                5), rtol=0, atol=0)
    bad = {**afs, "steps": [{"prediction": "data", "order": 1}, {"prediction": "data", "order": 2}] +
           afs["steps"][2:]}
    with pytest.raises(ScheduleError, match="point 0 has no model output"):
        USFScheduler(solver_schedule=bad)
    with pytest.raises(ScheduleError, match="order-1 data step without corrector"):
        USFScheduler(solver_schedule={**afs, "steps": [{"prediction": "noise", "order": 1}] + afs["steps"][1:]})
