"""The drop-in swap as a diffusers user does it: configs saved to disk by diffusers' own schedulers, saved
pipelines reloaded, strict keywords, diffusers' public attributes, refused schedules and range checks
(issue 12, items 1-5 and 7)."""

import inspect
import math

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DiffusionPipeline, UNet2DModel

from diffusers_ext import DCSolverScheduler, DEISScheduler, DPMSolverPPScheduler, UniPCScheduler, USFScheduler
from diffusers_ext.models import GaussianMixtureDenoiser
from diffusers_ext.schedulers import hand_designed_schedule
from tests.helpers import DC, run_sampler

SOURCES = ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
           "DEISMultistepScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "PNDMScheduler",
           "FlowMatchEulerDiscreteScheduler", "LCMScheduler"]
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def saved_config(tmp_path, name, **kwargs):
    """The config of diffusers' ``name`` as it comes from disk: every key explicit, ``_class_name`` set."""
    cls = getattr(diffusers, name)
    if not name.startswith(("FlowMatch", "EDM")):
        kwargs = {**SD_BETAS, "prediction_type": "v_prediction", **kwargs}
    cls(**kwargs).save_pretrained(tmp_path)
    return cls.load_config(tmp_path)


SHAPE = (2, 3, 4, 4)


def _usf_schedule(flow: bool = False) -> dict:
    """UniPC-bh2 as a USF schedule on the default 6-step grid of a VP (ends at t = -1) or flow model."""
    grid = UniPCScheduler(use_flow_sigmas=flow, prediction_type="flow_prediction" if flow else "epsilon")
    grid.set_timesteps(6)
    return hand_designed_schedule("unipc-bh2", grid.timesteps.double().tolist() + [0.0 if flow else -1.0])


def _ours(cls, flow: bool = False, **kw):
    if cls is USFScheduler:
        kw.setdefault("solver_schedule", _usf_schedule(flow))
    if cls is DCSolverScheduler:
        kw = {**DC, **kw}
    return cls, kw


# ----------------------------------------------------------------------------------- item 1: from_config
@pytest.mark.parametrize("ours", [DPMSolverPPScheduler, UniPCScheduler, DEISScheduler, DCSolverScheduler,
                                  USFScheduler])
@pytest.mark.parametrize("source", SOURCES)
def test_from_config_of_every_saved_diffusers_config(tmp_path, ours, source, gmm, seeded_noise):
    config = saved_config(tmp_path, source)
    cls, kw = _ours(ours, flow=source.startswith("FlowMatch"))
    sched = cls.from_config(config, **kw)
    if source.startswith("FlowMatch"):
        assert sched.config.use_flow_sigmas and sched.config.prediction_type == "flow_prediction"
    else:
        for key, value in {**SD_BETAS, "prediction_type": "v_prediction"}.items():
            assert sched.config[key] == value, key
    sched.set_timesteps(6)
    x = run_sampler(sched, gmm, seeded_noise(SHAPE))
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("ours", [DPMSolverPPScheduler, UniPCScheduler, DEISScheduler, DCSolverScheduler])
def test_wan_style_unipc_flow_config_into_every_family(tmp_path, ours, seeded_noise):
    """Wan / LTX save UniPCMultistep with flow sigmas: every family follows the flow schedule."""
    config = saved_config(tmp_path, "UniPCMultistepScheduler", use_flow_sigmas=True, flow_shift=5.0,
                          prediction_type="flow_prediction", beta_schedule="linear", beta_start=0.0001,
                          beta_end=0.02)
    theirs = diffusers.UniPCMultistepScheduler.from_config(config)
    cls, kw = _ours(ours)
    mine = cls.from_config(config, **kw)
    assert mine.config.use_flow_sigmas and mine.config.flow_shift == 5.0
    theirs.set_timesteps(8)
    mine.set_timesteps(8)
    np.testing.assert_allclose(mine.sigmas.numpy(), theirs.sigmas.numpy(), atol=2e-3)  # grid convention: README
    flow = GaussianMixtureDenoiser(schedule=mine.noise_schedule, prediction_type="flow_prediction")
    assert torch.isfinite(run_sampler(mine, flow, seeded_noise(SHAPE))).all()


@pytest.mark.parametrize("source,kwargs,expected", [
    ("DPMSolverMultistepScheduler", {"solver_type": "heun"}, "tab"),
    ("DPMSolverMultistepScheduler", {"solver_type": "midpoint"}, "tab"),
    ("UniPCMultistepScheduler", {"solver_type": "bh1"}, "tab"),
    ("DEISMultistepScheduler", {}, "tab"),  # diffusers' logrho is its default, not a user choice
])
def test_deis_never_takes_a_foreign_solver_type(tmp_path, source, kwargs, expected):
    sched = DEISScheduler.from_config(saved_config(tmp_path, source, **kwargs))
    assert sched.config.solver_type == expected and not sched.is_rk
    # in memory (no _class_name): the source class is recognised by its keys
    in_memory = DEISScheduler.from_config(getattr(diffusers, source)(**kwargs).config)
    assert in_memory.config.solver_type == expected


def test_foreign_solver_options_take_our_defaults(tmp_path, reload_scheduler):
    assert DPMSolverPPScheduler.from_config(saved_config(tmp_path / "u", "UniPCMultistepScheduler")
                                            ).config.solver_type == "midpoint"
    deis = saved_config(tmp_path / "d", "DEISMultistepScheduler")
    assert DPMSolverPPScheduler.from_config(deis).config.algorithm_type == "dpmsolver++"
    assert UniPCScheduler.from_config(saved_config(tmp_path / "p", "DPMSolverMultistepScheduler")
                                      ).config.solver_type == "bh2"
    # a solver option of our own DC-Solver is not a DPM-Solver++ option
    dc = DCSolverScheduler(**DC, solver_type="bh1")
    dpm = reload_scheduler(dc, "dc", cls=DPMSolverPPScheduler)
    assert dpm.config.solver_type == "midpoint" and not dpm.compensates


def test_same_family_options_are_kept_and_match_diffusers(tmp_path, gmm, seeded_noise):
    """A saved DPM-Solver / UniPC pipeline config gives the same algorithm as diffusers' scheduler."""
    for source, ours, kwargs in [
        ("DPMSolverMultistepScheduler", DPMSolverPPScheduler, {"solver_order": 3, "timestep_spacing": "trailing"}),
        ("DPMSolverMultistepScheduler", DPMSolverPPScheduler, {"algorithm_type": "dpmsolver++",
                                                                "solver_type": "heun"}),
        ("UniPCMultistepScheduler", UniPCScheduler, {"solver_order": 3, "disable_corrector": [2]}),
    ]:
        folder = tmp_path / f"{source}{len(kwargs)}{kwargs.get('solver_type')}"
        config = saved_config(folder, source, **kwargs)
        theirs = getattr(diffusers, source).from_config(config)
        mine = ours.from_config(config)
        for key, value in kwargs.items():
            assert mine.config[key] == value, key
        a = run_sampler(mine, gmm, seeded_noise(SHAPE), 8)
        b = run_sampler(theirs, gmm, seeded_noise(SHAPE), 8)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_deis_logrho_weights_are_the_closed_form():
    """Order 2: diffusers' integral of (log r - log c) / (log b - log c) over r, in float64."""
    from diffusers_ext.schedulers.deis import integral_times_exp, lagrange_basis

    def ind_fn(t, b, c):
        return t * (-np.log(c) + np.log(t) - 1) / (np.log(b) - np.log(c))

    rho_t, rho_s0, rho_s1 = 0.3, 1.7, 4.2
    basis = lagrange_basis(np.log([rho_s0, rho_s1]))
    ours = [integral_times_exp(p, rho_t) - integral_times_exp(p, rho_s0) for p in basis]
    expected = [ind_fn(rho_t, rho_s0, rho_s1) - ind_fn(rho_s0, rho_s0, rho_s1),
                ind_fn(rho_t, rho_s1, rho_s0) - ind_fn(rho_s0, rho_s1, rho_s0)]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    assert integral_times_exp(basis[0], 0.0) == 0.0  # the step into sigma = 0


def test_deis_logrho_is_diffusers_deis(gmm, seeded_noise):
    """DEIS' log-rho variant (diffusers' DEISMultistepScheduler), step by step (diffusers' DEIS stops at
    sigma_min, so the last step differs by design)."""
    for order in (2, 3):
        theirs = diffusers.DEISMultistepScheduler(solver_order=order, **SD_BETAS)
        mine = DEISScheduler(solver_type="logrho", solver_order=order, timestep_spacing="linspace", **SD_BETAS)
        theirs.set_timesteps(10)
        mine.set_timesteps(10)
        assert torch.equal(mine.timesteps, theirs.timesteps)
        x = y = seeded_noise(SHAPE)
        for t in mine.timesteps[:-1]:
            x = mine.step(gmm(x, t).sample, t, x).prev_sample
            y = theirs.step(gmm(y, t).sample, t, y).prev_sample
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)  # diffusers' float32 coefficients


# ----------------------------------------------------------------------------------- item 2: pipelines
@pytest.mark.parametrize("ours", [DPMSolverPPScheduler, UniPCScheduler, DEISScheduler, DCSolverScheduler,
                                  USFScheduler])
def test_saved_pipeline_reloads(tmp_path, ours):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=4, in_channels=1, out_channels=1, block_out_channels=(4, 8), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    cls, kw = _ours(ours)
    pipe = DDPMPipeline(unet=unet, scheduler=cls(**kw))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is cls
    a = pipe(batch_size=1, num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="np")
    b = loaded(batch_size=1, num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="np")
    np.testing.assert_array_equal(a.images, b.images)


@pytest.mark.parametrize("name", ["DPMSolverPPScheduler", "UniPCScheduler", "DEISScheduler", "DCSolverScheduler",
                                  "USFScheduler", "FirstHittingScheduler", "MDLMAncestralScheduler"])
def test_diffusers_loader_finds_the_load_method_of_every_scheduler(name):
    """What DiffusionPipeline.from_pretrained does with a model_index.json entry [module, class]."""
    from diffusers.pipelines.pipeline_loading_utils import (
        ALL_IMPORTABLE_CLASSES,
        _fetch_class_library_tuple,
        get_class_obj_and_candidates,
    )

    import diffusers_ext

    cls = getattr(diffusers_ext, name)
    library, class_name = _fetch_class_library_tuple(cls)
    class_obj, candidates = get_class_obj_and_candidates(library, class_name, ALL_IMPORTABLE_CLASSES, None, False)
    methods = [ALL_IMPORTABLE_CLASSES[c][1] for c, base in candidates.items()
               if base is not None and issubclass(class_obj, base)]
    assert class_obj is cls and methods == ["from_pretrained"]


# ----------------------------------------------------------------------------------- item 3: keywords
@pytest.mark.parametrize("cls", [DPMSolverPPScheduler, UniPCScheduler, DEISScheduler, DCSolverScheduler])
def test_unknown_keyword_is_a_type_error(cls):
    with pytest.raises(TypeError, match="use_karas_sigmas.*did you mean 'use_karras_sigmas'"):
        cls(use_karas_sigmas=True)


def test_from_config_ignores_foreign_keys_as_diffusers_does(tmp_path):
    config = saved_config(tmp_path, "DDIMScheduler", clip_sample=False)
    sched, unused = DPMSolverPPScheduler.from_config(config, return_unused_kwargs=True, use_karras_sigmas=True)
    theirs, theirs_unused = diffusers.DPMSolverMultistepScheduler.from_config(config, return_unused_kwargs=True,
                                                                               use_karras_sigmas=True)
    assert sched.config.clip_sample == theirs.config.clip_sample is False  # kept hidden, not an option
    assert "clip_sample" not in inspect.signature(DPMSolverPPScheduler.__init__).parameters
    public = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    assert public(unused) == public(theirs_unused) and sched.config.use_karras_sigmas
    _, unused = DPMSolverPPScheduler.from_config(config, return_unused_kwargs=True, not_an_option=1)
    _, theirs_unused = diffusers.DPMSolverMultistepScheduler.from_config(config, return_unused_kwargs=True,
                                                                          not_an_option=1)
    assert public(unused) == public(theirs_unused) and unused["not_an_option"] == 1


def test_configs_from_memory_read_as_from_disk(tmp_path):
    """diffusers drops an in-memory config's defaulted keys; a schedule must not be lost that way."""
    for name in ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler", "CogVideoXDDIMScheduler",
                 "DEISMultistepScheduler", "DDPMScheduler", "FlowMatchEulerDiscreteScheduler"):
        source = getattr(diffusers, name)()
        source.save_pretrained(tmp_path / name)
        for ours in (DPMSolverPPScheduler, DEISScheduler):
            from_memory = ours.from_config(source.config)
            from_disk = ours.from_pretrained(tmp_path / name)
            options = inspect.signature(ours.__init__).parameters
            assert {k: from_memory.config[k] for k in options if k != "self"} == \
                {k: from_disk.config[k] for k in options if k != "self"}, (name, ours)
    # a minimal hub-style file: what it leaves out is its class's default
    minimal = {"_class_name": "EDMEulerScheduler", "prediction_type": "v_prediction"}
    sched = DPMSolverPPScheduler.from_config(minimal)
    assert sched.config.sigma_data == 0.5 and sched.init_noise_sigma == pytest.approx((80.0**2 + 1) ** 0.5)


def test_stable_audio_cosine_scheduler_is_refused():
    config = {"_class_name": "CosineDPMSolverMultistepScheduler", "prediction_type": "v_prediction",
              "sigma_data": 1.0, "sigma_max": 500.0, "sigma_min": 0.3, "sigma_schedule": "exponential"}
    with pytest.raises(ValueError, match="atan"):
        DPMSolverPPScheduler.from_config(config)


def test_saved_configs_are_strict_json(tmp_path):
    import json

    for cls in (DPMSolverPPScheduler, UniPCScheduler, DEISScheduler):
        cls().save_pretrained(tmp_path / cls.__name__)
        text = (tmp_path / cls.__name__ / "scheduler_config.json").read_text()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_thresholding_numbers_are_checked_only_with_thresholding():
    DPMSolverPPScheduler(dynamic_thresholding_ratio=1.5, sample_max_value=0.5)  # as diffusers: unused
    with pytest.raises(ValueError, match="dynamic_thresholding_ratio"):
        DPMSolverPPScheduler(thresholding=True, dynamic_thresholding_ratio=1.5)


def test_lambda_min_clipped_as_diffusers():
    for kw in ({"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
               {"lambda_min_clipped": -3.0, "timestep_spacing": "leading"},
               {"lambda_min_clipped": -3.0}):
        theirs = diffusers.DPMSolverMultistepScheduler(**kw)
        mine = DPMSolverPPScheduler.from_config(theirs.config)
        assert mine.config.lambda_min_clipped == kw["lambda_min_clipped"]
        theirs.set_timesteps(10)
        mine.set_timesteps(10)
        assert mine.timesteps.tolist() == theirs.timesteps.tolist()
        assert mine.timesteps[0] < 999 or kw["lambda_min_clipped"] < -10


@pytest.mark.parametrize("grid", ["use_karras_sigmas", "use_exponential_sigmas"])
def test_unipc_sigma_min_max_as_diffusers(tmp_path, grid):
    config = saved_config(tmp_path, "UniPCMultistepScheduler", sigma_min=0.1, sigma_max=10.0, **{grid: True})
    theirs = diffusers.UniPCMultistepScheduler.from_config(config)
    mine = UniPCScheduler.from_config(config)
    theirs.set_timesteps(6)
    mine.set_timesteps(6)
    np.testing.assert_allclose(mine.sigmas.numpy(), theirs.sigmas.numpy(), rtol=1e-5, atol=1e-6)
    assert mine.sigmas[0] == pytest.approx(10.0) and mine.sigmas[-2] == pytest.approx(0.1)


def test_shift_terminal_as_diffusers(tmp_path):
    config = saved_config(tmp_path, "FlowMatchEulerDiscreteScheduler", shift=3.0, shift_terminal=0.1)
    theirs = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    mine = UniPCScheduler.from_config(config)
    assert mine.config.shift_terminal == 0.1
    sigmas = np.linspace(1.0, 1 / 6, 6)  # what flow pipelines pass
    theirs.set_timesteps(sigmas=sigmas)
    mine.set_timesteps(sigmas=sigmas)
    np.testing.assert_allclose(mine.sigmas.numpy(), theirs.sigmas.numpy(), rtol=1e-6, atol=1e-6)
    mine.set_timesteps(6)
    assert mine.sigmas[-2] == pytest.approx(0.1)


def test_solver_p_is_refused_clearly():
    with pytest.raises(ValueError, match="solver_p"):
        UniPCScheduler(solver_p=DPMSolverPPScheduler())
    assert UniPCScheduler.from_config(diffusers.UniPCMultistepScheduler().config).config.solver_p is None


def test_noise_prediction_dpm_solver_is_refused_clearly(tmp_path):
    config = saved_config(tmp_path, "DPMSolverMultistepScheduler", algorithm_type="dpmsolver",
                          final_sigmas_type="sigma_min")
    with pytest.raises(ValueError, match="dpmsolver.*not implemented.*predict_x0=False"):
        DPMSolverPPScheduler.from_config(config)


# ----------------------------------------------------------------------------------- item 4: attributes
@pytest.mark.parametrize("betas", [{}, SD_BETAS, {"beta_schedule": "squaredcos_cap_v2"},
                                   {"beta_schedule": "sigmoid"}, {**SD_BETAS, "rescale_betas_zero_snr": True}])
def test_training_schedule_attributes_as_diffusers(betas):
    theirs = diffusers.DDPMScheduler(**betas)
    mine = UniPCScheduler.from_config(theirs.config)
    for attr in ("betas", "alphas", "alphas_cumprod"):
        expected = getattr(theirs, attr)
        if betas.get("rescale_betas_zero_snr") and attr == "alphas_cumprod":
            expected = expected.clone()
            expected[-1] = 2.0**-24  # diffusers' DPM/UniPC value, used in place of 0
        torch.testing.assert_close(getattr(mine, attr), expected.float(), rtol=0, atol=0)


def test_training_scripts_compute_snr_with_our_scheduler():
    from diffusers.training_utils import compute_snr

    t = torch.tensor([0, 10, 500, 999])
    theirs = diffusers.DDPMScheduler(**SD_BETAS)
    torch.testing.assert_close(compute_snr(UniPCScheduler(**SD_BETAS), t), compute_snr(theirs, t))


def test_sigmas_and_timesteps_as_diffusers():
    theirs = diffusers.DPMSolverMultistepScheduler(**SD_BETAS, use_karras_sigmas=True)
    mine = DPMSolverPPScheduler.from_config(theirs.config)
    theirs.set_timesteps(8)
    mine.set_timesteps(8)
    np.testing.assert_allclose(mine.sigmas.numpy(), theirs.sigmas.numpy(), rtol=2e-4)
    np.testing.assert_allclose(mine.timesteps.double().numpy(), theirs.timesteps.double().numpy(), atol=0.51)


# ----------------------------------------------------------------------------------- item 5: schedules
def edm_denoiser(gmm, prediction_type: str, sigma_data: float = 0.5):
    """The exact GMM denoiser ``gmm`` behind EDM preconditioning: model(c_in x, log(sigma) / 4) -> F with
    c_skip x + c_out F = E[x0 | x] (arXiv 2206.00364, table 1)."""

    def model(x_in, c_noise):
        sigma = torch.exp(4 * torch.as_tensor(c_noise, dtype=torch.float64)).reshape(-1).expand(x_in.shape[0])[:, None]
        norm = sigma**2 + sigma_data**2
        x = x_in.reshape(x_in.shape[0], -1).double() * norm.sqrt()
        x0, _ = gmm.posterior(x, torch.ones_like(sigma), sigma)
        F = (x0 - sigma_data**2 / norm * x) / (sigma * sigma_data / norm.sqrt())
        return (F if prediction_type == "epsilon" else -F).reshape(x_in.shape).to(x_in.dtype)

    return model


def run_edm(sched, model, x):
    """A pipeline's loop: initial noise scaled by init_noise_sigma, model input by scale_model_input."""
    x = x * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(model(sched.scale_model_input(x, t), t), t, x).prev_sample
    return x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("kwargs", [{}, {"solver_order": 3}, {"sigma_schedule": "exponential"}])
def test_edm_dpm_solver_config_is_followed_as_diffusers(tmp_path, prediction_type, kwargs, gmm, seeded_noise):
    """Playground v2.5's scheduler: DPM-Solver++ on the EDM schedule equals diffusers' EDMDPMSolverMultistep."""
    config = saved_config(tmp_path, "EDMDPMSolverMultistepScheduler", prediction_type=prediction_type, **kwargs)
    theirs = diffusers.EDMDPMSolverMultistepScheduler.from_config(config)
    mine = DPMSolverPPScheduler.from_config(config)
    assert mine.config.sigma_data == 0.5 and mine.init_noise_sigma == pytest.approx(theirs.init_noise_sigma)
    theirs.set_timesteps(10)
    mine.set_timesteps(10)
    torch.testing.assert_close(mine.timesteps, theirs.timesteps.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(mine.sigmas, theirs.sigmas.float(), rtol=1e-6, atol=0)
    model, x = edm_denoiser(gmm, prediction_type), seeded_noise((4, 2, 4, 4))
    torch.testing.assert_close(run_edm(mine, model, x), run_edm(theirs, model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ours", [UniPCScheduler, DEISScheduler, DCSolverScheduler])
def test_edm_euler_config_is_followed_by_every_family(tmp_path, ours, gmm, seeded_noise):
    config = saved_config(tmp_path, "EDMEulerScheduler")
    theirs = diffusers.EDMEulerScheduler.from_config(config)
    cls, kw = _ours(ours)
    mine = cls.from_config(config, **kw)
    theirs.set_timesteps(8)
    mine.set_timesteps(8)
    torch.testing.assert_close(mine.sigmas, theirs.sigmas.float(), rtol=1e-6, atol=0)  # not a DDPM schedule
    x = seeded_noise((4, 2, 4, 4))
    assert torch.isfinite(run_edm(mine, edm_denoiser(gmm, "epsilon"), x)).all()
    torch.testing.assert_close(mine.scale_model_input(x, mine.timesteps[0]),
                               theirs.scale_model_input(x, theirs.timesteps[0]), rtol=1e-6, atol=0)


def test_edm_needs_an_edm_prediction_type():
    with pytest.raises(ValueError, match="EDM preconditioning.*supports prediction_type"):
        DPMSolverPPScheduler(sigma_data=0.5, prediction_type="sample")


def test_inverted_flow_sigmas_are_refused(tmp_path):
    diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="invert_sigmas"):
        UniPCScheduler.from_pretrained(tmp_path)


def test_cogvideox_snr_shift_is_followed(tmp_path):
    for name in ("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"):
        getattr(diffusers, name)(snr_shift_scale=3.0).save_pretrained(tmp_path / name)
        theirs = getattr(diffusers, name).from_pretrained(tmp_path / name)
        mine = DPMSolverPPScheduler.from_pretrained(tmp_path / name)
        assert mine.config.snr_shift_scale == 3.0
        # CogVideoX builds scaled_linear betas in float64, DPM-Solver in float32 (as the models were trained)
        torch.testing.assert_close(mine.alphas_cumprod.double(), theirs.alphas_cumprod.double(), rtol=0, atol=2e-6)
        in_memory = DPMSolverPPScheduler.from_config(getattr(diffusers, name)().config)
        assert in_memory.config.snr_shift_scale == 3.0


# ----------------------------------------------------------------------------------- item 6 (schedule part)
def test_rescale_zero_snr_with_default_linear_betas(gmm, seeded_noise):
    """Rescaled linear betas reach alpha_bar < 2^-24 before T - 1, where diffusers puts 2^-24."""
    sched = DPMSolverPPScheduler.from_config(diffusers.DDPMScheduler(rescale_betas_zero_snr=True).config)
    assert sched.config.rescale_betas_zero_snr
    assert torch.all(sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1])
    x = run_sampler(sched, gmm, seeded_noise(SHAPE), 6, timesteps=[999, 800, 600, 400, 200, 0])
    assert torch.isfinite(x).all()


# ----------------------------------------------------------------------------------- item 7: ranges
@pytest.mark.parametrize("kwargs,match", [
    ({"steps_offset": 1000}, "steps_offset must be an integer in"),
    ({"flow_shift": 0.0}, "flow_shift must be > 0"),
    ({"flow_shift": -2.0}, "flow_shift must be > 0"),
    ({"dynamic_thresholding_ratio": 1.5, "thresholding": True}, "dynamic_thresholding_ratio must be in"),
    ({"sigma_min": 5.0, "sigma_max": 1.0}, "sigma_min=5.0 must be below sigma_max"),
    ({"shift_terminal": 0.1}, "shift_terminal is only defined for flow matching"),
    ({"lambda_min_clipped": float("nan")}, "lambda_min_clipped must be None or a number"),
])
def test_out_of_range_config_numbers(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPMSolverPPScheduler(**kwargs)


@pytest.mark.parametrize("call,match", [
    ({"num_inference_steps": 5.5}, "num_inference_steps must be an integer"),
    ({"num_inference_steps": "5"}, "num_inference_steps must be an integer"),
    ({"sigmas": [1e6, 10.0, 1.0]}, "above the schedule's largest sigma"),
])
def test_out_of_range_set_timesteps(call, match):
    with pytest.raises(ValueError, match=match):
        DPMSolverPPScheduler().set_timesteps(**call)


def test_huge_mu_is_refused():
    sched = DPMSolverPPScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="mu must be a number in"):
        sched.set_timesteps(6, mu=1e4)
    sched.set_timesteps(6, mu=1.0)  # a Flux-like value works
    assert math.isfinite(float(sched.sigmas[0]))


def test_step_once_too_often(gmm, seeded_noise):
    sched = DPMSolverPPScheduler()
    x = run_sampler(sched, gmm, seeded_noise(SHAPE), 4)
    t = sched.timesteps[-1]
    with pytest.raises(ValueError, match="step called after the last of the 4 steps"):
        sched.step(gmm(x, t).sample, t, x)
    sched.set_timesteps(4)  # a new run works
    assert torch.isfinite(run_sampler(sched, gmm, seeded_noise(SHAPE))).all()


# ----------------------------------------------------------------------------------- item 9: README recipes
def test_readme_recipes_for_diffusers_exact_grids():
    """The README's table: how to get diffusers' grids where ours differ by convention."""
    ref = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True)
    ref.set_timesteps(6)
    mine = DPMSolverPPScheduler.from_config(ref.config)
    mine.set_timesteps(6)
    assert not torch.equal(mine.timesteps.double(), ref.timesteps.double())  # fractional here
    mine.set_timesteps(timesteps=ref.timesteps)
    assert mine.timesteps.tolist() == ref.timesteps.tolist()

    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(6)
    mine = UniPCScheduler.from_config(ref.config)
    mine.set_timesteps(6)
    assert not np.allclose(mine.sigmas.numpy(), ref.sigmas.numpy(), atol=1e-3)
    mine.set_timesteps(sigmas=np.linspace(1, ref.sigma_min, 6))
    np.testing.assert_allclose(mine.sigmas.numpy(), ref.sigmas.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mine.timesteps.numpy(), ref.timesteps.numpy(), rtol=1e-6)

    ref = diffusers.DEISMultistepScheduler()
    ref.set_timesteps(6)
    mine = DEISScheduler.from_config(ref.config, final_sigmas_type="sigma_min")
    mine.set_timesteps(6)
    assert mine.sigmas[-1] == pytest.approx(float(ref.sigmas[-1]), rel=1e-6) and mine.sigmas[-1] > 0


def test_public_grid_and_plan_are_read_only_views():
    sched = DPMSolverPPScheduler()
    with pytest.raises(ValueError, match="before set_timesteps"):
        sched.grid  # noqa: B018
    sched.set_timesteps(5)
    assert sched.grid.t[0] == 999 and sched.grid.sigma[-1] == 0 and sched.plan.table.shape[0] == 5
    with pytest.raises(AttributeError):
        sched.grid = None
