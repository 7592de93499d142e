"""The diffusers scheduler contract, modelled on diffusers' SchedulerCommonTest."""

import json

import diffusers
import numpy as np
import pytest
import torch

from diffusers_ext import DPMSolverPPScheduler, UniPCScheduler, USFScheduler
from diffusers_ext.models import GaussianMixtureDenoiser
from diffusers_ext.registry import OURS
from tests.helpers import SCHEDULE_DRIVEN, SCHEDULER_VARIANTS, make, run_sampler

NAMES = list(SCHEDULER_VARIANTS)
MODEL = GaussianMixtureDenoiser()
# USF's timesteps are its solver_schedule's (built here per step count), and it runs from the schedule's first step
NO_BEGIN_INDEX = "USF runs its schedule from the first step: no set_begin_index (test_usf_refuses_set_begin_index)"
SCHEDULE_TIMESTEPS = "USF's timesteps come from its solver_schedule, not from the config's grid options"


def _param(name: str, reason: str):
    """``name``, skipped with ``reason`` where it is schedule-driven (a contract item that cannot apply)."""
    return pytest.param(name, marks=pytest.mark.skip(reason=reason)) if name in SCHEDULE_DRIVEN else name


def _sample(shape=(2, 3, 4, 4), seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("name", NAMES)
def test_save_pretrained_round_trip(tmp_path, name):
    sched = make(name, steps=7, num_train_timesteps=500, beta_schedule="scaled_linear", beta_end=0.012)
    sched.save_pretrained(tmp_path)
    json.loads((tmp_path / "scheduler_config.json").read_text())  # JSON-serializable
    loaded = type(sched).from_pretrained(tmp_path)
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(sched.config)
    x = _sample()
    a = run_sampler(sched, MODEL, x, 7, generator=torch.Generator().manual_seed(0))
    b = run_sampler(loaded, MODEL, x, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


DIFFUSERS_MULTISTEP = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
                       "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler"]


@pytest.mark.parametrize("ours", OURS.values(), ids=list(OURS))
@pytest.mark.parametrize("theirs", DIFFUSERS_MULTISTEP)
def test_from_config_of_diffusers_schedulers_and_back(ours, theirs):
    source = getattr(diffusers, theirs)(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        prediction_type="v_prediction", num_train_timesteps=1000)
    swapped = ours.from_config(source.config)
    for key in ("beta_schedule", "beta_start", "beta_end", "prediction_type", "num_train_timesteps"):
        assert swapped.config[key] == source.config[key], key
    back = getattr(diffusers, theirs).from_config(swapped.config)
    assert back.config.prediction_type == "v_prediction" and back.config.beta_end == 0.012


@pytest.mark.parametrize("ours", [pytest.param(c, marks=pytest.mark.skip(reason=SCHEDULE_TIMESTEPS))
                                  if c is USFScheduler else c for c in OURS.values()], ids=list(OURS))
def test_from_flow_match_config_switches_to_flow(ours):
    source = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    swapped = ours.from_config(source.config)
    assert swapped.config.use_flow_sigmas and swapped.config.prediction_type == "flow_prediction"
    assert swapped.config.flow_shift == 3.0
    swapped.set_timesteps(4)
    assert swapped.timesteps[0] == pytest.approx(1000.0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_step_shape_dtype_and_tuple_equals_dict(name, dtype):
    sched_a, sched_b = make(name, steps=5), make(name, steps=5)
    for s in (sched_a, sched_b):
        s.set_timesteps(5)
    x = _sample(dtype=dtype)
    for t in sched_a.timesteps:
        out = MODEL(x, t).sample
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        a = sched_a.step(out, t, x, generator=g1).prev_sample
        b = sched_b.step(out, t, x, generator=g2, return_dict=False)
        assert isinstance(b, tuple) and torch.equal(a, b[0])
        assert a.shape == x.shape and a.dtype == dtype
        x = a
    assert torch.isfinite(x.float()).all()


def test_fp16_run_close_to_fp32():
    x = _sample()
    full = run_sampler(make("unipc-bh2"), MODEL, x, 8)
    half = run_sampler(make("unipc-bh2"), MODEL, x.half(), 8)
    assert (half.float() - full).abs().max() < 2e-2


@pytest.mark.parametrize("name", ["dpm++2m", "unipc-bh2", "deis-tab3", "usf-dpm++2m"])
def test_add_noise_closed_form(name):
    sched = make(name, steps=5)
    x0, noise = _sample(seed=1), _sample(seed=2)
    t = torch.tensor([0, 250, 999, 999])[: x0.shape[0]]
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32), 0).double()
    expected = ab[t].sqrt().view(-1, 1, 1, 1) * x0.double() + (1 - ab[t]).sqrt().view(-1, 1, 1, 1) * noise.double()
    torch.testing.assert_close(sched.add_noise(x0, noise, t).double(), expected, rtol=1e-6, atol=1e-6)


def test_scale_noise_flow():
    sched = UniPCScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
    x0, noise = _sample(seed=1), _sample(seed=2)
    out = sched.scale_noise(x0, torch.tensor([300.0]), noise)
    torch.testing.assert_close(out, 0.3 * noise + 0.7 * x0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 50, 100, 999, 1000])
def test_many_step_counts_without_nan(name, n):
    if n >= 999 and name not in ("dpm++2m", "unipc-bh2", "deis-tab3", "deis-heun", "usf-unipc-bh2"):
        pytest.skip("large step counts are covered by one variant per family")
    sched = make(name, steps=n)
    sched.set_timesteps(n)
    assert len(sched.timesteps) == n and torch.all(sched.timesteps[:-1] >= sched.timesteps[1:])
    x = run_sampler(sched, MODEL, _sample(shape=(1, 2, 2, 2)), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", ["dpm++3m", "unipc-bh2", "deis-tab3", "dpm++2s",
                                  *(_param(n, NO_BEGIN_INDEX) for n in SCHEDULE_DRIVEN)])
def test_set_begin_index_restarts_warmup(name):
    """img2img: starting at step b equals a fresh run on the remaining grid."""
    sched = make(name)
    sched.set_timesteps(10)
    b = 4
    sched.set_begin_index(b)
    x = _sample()
    for t in sched.timesteps[b:]:
        x = sched.step(MODEL(x, t).sample, t, x).prev_sample
    fresh = make(name)
    fresh.set_timesteps(timesteps=make(name).set_timesteps(10) or _timesteps(name)[b:])
    y = run_sampler(fresh, MODEL, _sample())
    torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", SCHEDULE_DRIVEN)
def test_usf_refuses_set_begin_index(name):
    """img2img inside a USF schedule is refused with a clear error, not run on a shifted plan."""
    sched = make(name, steps=10)
    sched.set_timesteps(10)
    with pytest.raises(ValueError, match="runs from its first step; set_begin_index / img2img starts"):
        sched.set_begin_index(4)
    with pytest.raises(ValueError, match="takes its timesteps from solver_schedule"):
        sched.set_timesteps(timesteps=sched.timesteps[4:].tolist())


def _timesteps(name):
    s = make(name)
    s.set_timesteps(10)
    return s.timesteps.double().numpy()


def test_step_index_and_begin_index():
    sched = make("dpm++2m")
    sched.set_timesteps(4)
    assert sched.step_index is None and sched.begin_index is None and len(sched) == 1000
    x = _sample()
    t = sched.timesteps[0]
    sched.step(MODEL(x, t).sample, t, x)
    assert sched.step_index == 1
    sched.set_begin_index(2)
    assert sched.begin_index == 2


@pytest.mark.parametrize("name", ["dpm++2m", "unipc-bh2", "deis-tab3", "usf-unipc-bh2"])
def test_torch_compile_fullgraph_compiles_at_most_twice(name):
    torch._dynamo.reset()
    sched = make(name, steps=20)
    sched.set_timesteps(20)
    compiles = []

    def backend(gm, example_inputs):
        compiles.append(1)
        return gm.forward

    step = torch.compile(sched.step, fullgraph=True, backend=backend)
    x = _sample()
    eager = make(name, steps=20)
    eager.set_timesteps(20)
    y = x.clone()
    for t in sched.timesteps:
        out = MODEL(x, t).sample
        x = step(out, t, x, return_dict=False)[0]
        y = eager.step(MODEL(y, t).sample, t, y).prev_sample
    assert len(compiles) <= 2
    torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_timesteps_are_integers_on_diffusers_grids_and_floats_elsewhere():
    s = DPMSolverPPScheduler()
    s.set_timesteps(10)
    assert s.timesteps.dtype == torch.int64 and s.timesteps[0] == 999
    s = DPMSolverPPScheduler(use_karras_sigmas=True)
    s.set_timesteps(10)
    assert s.timesteps.dtype == torch.float32
    assert np.all(np.diff(s.sigmas.numpy()[:-1]) < 0) and s.sigmas[-1] == 0
