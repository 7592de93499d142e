"""Shared test helpers."""


import numpy as np

from diffusers_ext import DCSolverScheduler, DEISScheduler, DPMSolverPPScheduler, UniPCScheduler
from diffusers_ext.sampling import model_fn, sample


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
    "dpm++2m-dualfast": (DPMSolverPPScheduler, {"dualfast_strength": 0.3}),
    "dc-solver-dualfast": (DCSolverScheduler, {**DC, "dualfast_strength": 0.2, "dualfast_schedule": "constant"}),
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
