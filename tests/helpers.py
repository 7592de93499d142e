"""Shared test helpers."""


import numpy as np
import torch

from diffusers_ext import UniPCScheduler
from diffusers_ext.registry import OURS, from_config, make_scheduler, scheduler_class
from diffusers_ext.sampling import model_fn, sample
from diffusers_ext.schedulers import hand_designed_schedule


def simple_cpr(c0=1.0, c1=-0.1, nfe_range=(3, 50), guidance_range=(1, 15)) -> dict:
    """A CPR config with rho(x) = c0 + c1 x for every (NFE, guidance): ratios for any number of steps."""
    w = np.zeros((4, 3, 3))
    w[0, 2, 2], w[1, 2, 2] = c0, c1
    return {"coefficients": w.reshape(-1).tolist(), "nfe_range": list(nfe_range),
            "guidance_range": list(guidance_range)}


DC = {"dc_cpr": simple_cpr(), "dc_guidance_scale": 1.0}


class ScheduleFor:
    """A USF ``solver_schedule`` built per run: the hand-designed ``solver`` on the grid a UniPCScheduler with the
    run's config makes for the run's step count (a schedule fixes both)."""

    def __init__(self, solver: str, prediction: str = "data"):
        self.solver, self.prediction = solver, prediction

    def __call__(self, steps: int | None, config: dict) -> dict:
        if steps is None:
            raise ValueError(f"a USF variant runs a schedule for one step count: pass steps= ({self.solver})")
        grid = UniPCScheduler(**config)
        grid.set_timesteps(steps)
        return hand_designed_schedule(self.solver, [float(t) for t in grid.grid.t], prediction=self.prediction)


# test name -> (registry spec, options): one main variant per family, plus the variants with their own code paths
SCHEDULER_VARIANTS = {
    "dpm++2m": ("dpm++2m", {}),
    "dpm++3m": ("dpm++3m", {}),
    "dpm++2s": ("DPMSolverPPScheduler", {"singlestep": True}),
    "dpm++3s": ("dpm++3s", {}),
    "sde-dpm++2m": ("dpm++2m", {"algorithm_type": "sde-dpmsolver++"}),
    "unipc-bh2": ("unipc", {}),
    "unipc-bh1-3": ("unipc3", {"solver_type": "bh1"}),
    "unip-noise": ("unipc", {"use_corrector": False, "predict_x0": False}),
    "dc-solver": ("DCSolverScheduler", DC),
    "dpm++2m-dc": ("dpm++2m", DC),
    "dpm++2m-dualfast": ("dpm++2m", {"dualfast_strength": 0.3}),
    "dc-solver-dualfast": ("DCSolverScheduler", {**DC, "dualfast_strength": 0.2, "dualfast_schedule": "constant"}),
    "deis-tab3": ("deis", {}),
    "deis-rhoab3": ("deis", {"solver_type": "rhoab"}),
    "deis-ipndm4": ("ipndm", {}),
    "deis-heun": ("deis", {"solver_type": "heun"}),
    "deis-rk4": ("deis", {"solver_type": "rk4"}),
    "usf-unipc-bh2": ("USFScheduler", {"solver_schedule": ScheduleFor("unipc-bh2")}),  # pseudo-corrector
    "usf-dpm++2m": ("USFScheduler", {"solver_schedule": ScheduleFor("dpm++2m")}),
    "usf-unipc-bh1-noise": ("USFScheduler", {"solver_schedule": ScheduleFor("unipc-bh1", "noise")}),  # samples kept
}
# every class in the registry runs the contract: a new family with its defaults until it adds variants above
_COVERED = {scheduler_class(spec) for spec, _ in SCHEDULER_VARIANTS.values()}
SCHEDULER_VARIANTS.update({name: (name, {}) for name, cls in OURS.items() if cls not in _COVERED})
SCHEDULE_DRIVEN = [n for n, (_, opts) in SCHEDULER_VARIANTS.items() if any(isinstance(v, ScheduleFor)
                                                                         for v in opts.values())]


def variant_options(name: str, steps: int | None = None, **overrides) -> dict:
    """The options of test variant ``name`` with ``overrides`` (a USF schedule built for ``steps`` and them)."""
    options = {**SCHEDULER_VARIANTS[name][1], **overrides}
    plain = {k: v for k, v in options.items() if not isinstance(v, ScheduleFor)}
    return {k: v(steps, plain) if isinstance(v, ScheduleFor) else v for k, v in options.items()}


def make(name: str, steps: int | None = None, **overrides):
    """Test variant ``name`` built through the registry; ``steps``: the step count of a USF variant's schedule
    (the other variants take any step count and ignore it)."""
    return make_scheduler(SCHEDULER_VARIANTS[name][0], variant_options(name, steps, **overrides))


def variant_from_config(name: str, config, **overrides):
    """Test variant ``name`` swapped into a pipeline's scheduler ``config`` through the registry."""
    return from_config(SCHEDULER_VARIANTS[name][0], config, **variant_options(name, **overrides))


def run_sampler(scheduler, model, x, num_steps=None, generator=None, **set_kw):
    """``sampling.sample`` of a diffusers-style model; ``set_timesteps(num_steps, **set_kw)`` first if given."""
    if num_steps is not None or set_kw:
        scheduler.set_timesteps(num_steps, **set_kw)
    extra = {} if generator is None else {"generator": generator}  # diffusers' UniPC/DEIS reject generator
    return sample(model_fn(model), scheduler, x, extra_step_kwargs=extra)


def tiny_tokenizer(tmp_path):
    """A CLIP tokenizer over single letters (written to tmp_path): no downloads."""
    import json

    from transformers import CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for tok in letters + [f"{c}</w>" for c in letters]:
        vocab[tok] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=16)
    return tok, len(vocab)


def tiny_clip_config(vocab_size):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=16, projection_dim=32,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)


def tiny_stable_diffusion(tmp_path, scheduler):
    """A StableDiffusionPipeline with tiny random components (8x8 latents) and the given scheduler."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer, vocab_size = tiny_tokenizer(tmp_path)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=4, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        norm_num_groups=4, sample_size=8)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(tiny_clip_config(vocab_size)),
                                   tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_components(tmp_path) -> dict:
    """The components of a StableDiffusion3Pipeline (one-layer SD3 transformer, tiny VAE, two tiny CLIP text
    encoders, no T5), scheduler excluded."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer, vocab_size = tiny_tokenizer(tmp_path)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
    vae = AutoencoderKL(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    enc1 = CLIPTextModelWithProjection(tiny_clip_config(vocab_size))
    enc2 = CLIPTextModelWithProjection(tiny_clip_config(vocab_size))
    return dict(transformer=transformer, vae=vae, text_encoder=enc1, tokenizer=tokenizer, text_encoder_2=enc2,
                tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)


def lagrange_f64(ts, values, at):
    """Direct float64 reference: the quadratic through three (t, value) points, by solving Vandermonde."""
    V = np.vander(np.asarray(ts, dtype=np.float64), 3)
    coef = np.linalg.solve(V, np.stack([np.asarray(v).reshape(-1) for v in values]))
    return (np.array([at**2, at, 1.0]) @ coef).reshape(np.shape(values[0]))


def dpm_solver_pp_2m_f64(sched, model, x0, data_prediction):
    """DPM-Solver++ 2M (arXiv 2211.01095) as a direct loop over ``sched``'s grid (set already), no warm-down;
    ``data_prediction(i, x, eps, earlier_ms)`` gives the data prediction m_i the update uses and records."""
    g = sched.grid
    x, ms = x0.clone(), []
    for i, ts in enumerate(sched.timesteps):
        m = data_prediction(i, x, model(x, ts).sample, ms)
        ms.append(m)
        h = g.lam[i + 1] - g.lam[i]
        phi1 = np.expm1(-h)
        x_next = (g.sigma[i + 1] / g.sigma[i]) * x - g.alpha[i + 1] * phi1 * m
        if i >= 1:
            r0 = (g.lam[i] - g.lam[i - 1]) / h
            x_next = x_next - 0.5 * g.alpha[i + 1] * phi1 * (m - ms[-2]) / r0
        x = x_next
    return x


class ImageDataset(torch.utils.data.Dataset):
    """A map-style dataset over a uint8 image tensor: item i is image i (what torch-fidelity's inputs take)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def small_cnn(width: int, seed: int = 0):
    """An 8x8 one-channel image classifier (two convolutions, two linear layers, 10 classes), ``width`` channels,
    weights drawn after ``torch.manual_seed(seed)``."""
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, width, 3, stride=2, padding=1),
                         nn.SiLU(), nn.Flatten(), nn.Linear(width * 4 * 4, 2 * width), nn.SiLU(),
                         nn.Linear(2 * width, 10)).eval()


def torch_fidelity_metrics(a, b, **metrics):
    """torch-fidelity's own ``calculate_metrics`` of uint8 images ``a`` against ``b`` on the CPU with the
    digits-cnn feature extractor (registered first); ``metrics``: e.g. ``fid=True``."""
    import torch_fidelity

    from diffusers_ext.eval.digits_extractor import register

    register()
    return torch_fidelity.calculate_metrics(input1=ImageDataset(a), input2=ImageDataset(b), cuda=False,
                                            feature_extractor="digits-cnn", verbose=False, save_cpu_ram=True,
                                            **metrics)
