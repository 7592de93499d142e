"""Each scheduler swapped into real diffusers pipelines by from_config (tiny random components, no downloads)."""

import json

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDPMPipeline,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from tests.helpers import make

FAMILIES = ["dpm++2m", "unipc-bh2", "deis-tab3", "sde-dpm++2m", "deis-heun"]


def _tokenizer(tmp_path):
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for tok in letters + [f"{c}</w>" for c in letters]:
        vocab[tok] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=16)
    return tok, len(vocab)


def _clip_config(vocab_size):
    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=16, projection_dim=32,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)


@pytest.mark.parametrize("name", FAMILIES)
def test_ddpm_pipeline(name):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    pipe.scheduler = type(make(name)).from_config(pipe.scheduler.config, **_family_kw(name))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 8, 8, 3) and (images >= 0).all() and (images <= 1).all()


def _family_kw(name):
    from tests.helpers import SCHEDULER_VARIANTS

    return SCHEDULER_VARIANTS[name][1]


@pytest.mark.parametrize("name", FAMILIES)
def test_stable_diffusion_with_guidance(tmp_path, name):
    torch.manual_seed(0)
    tokenizer, vocab_size = _tokenizer(tmp_path)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=4, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        norm_num_groups=4, sample_size=8)
    text_encoder = CLIPTextModel(_clip_config(vocab_size))
    source = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                           timestep_spacing="leading", steps_offset=1)
    scheduler = type(make(name)).from_config(source.config, **_family_kw(name))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a cat", num_inference_steps=4, guidance_scale=5.0, height=8, width=8, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 8, 8, 3) and torch.isfinite(torch.from_numpy(out)).all()
    assert pipe.scheduler.config.timestep_spacing == "leading" and pipe.scheduler.config.steps_offset == 1


def _sd3_components(tmp_path):
    torch.manual_seed(0)
    tokenizer, vocab_size = _tokenizer(tmp_path)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
    vae = AutoencoderKL(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    enc1 = CLIPTextModelWithProjection(_clip_config(vocab_size))
    enc2 = CLIPTextModelWithProjection(_clip_config(vocab_size))
    return dict(transformer=transformer, vae=vae, text_encoder=enc1, tokenizer=tokenizer, text_encoder_2=enc2,
                tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)


@pytest.mark.parametrize("name", FAMILIES)
def test_flow_matching_sd3_and_img2img(tmp_path, name):
    components = _sd3_components(tmp_path)
    source = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler = type(make(name)).from_config(source.config, **_family_kw(name))
    assert scheduler.config.use_flow_sigmas and scheduler.config.flow_shift == 3.0
    pipe = StableDiffusion3Pipeline(scheduler=scheduler, **components)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a cat", num_inference_steps=4, guidance_scale=3.0, height=8, width=8, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 8, 8) and torch.isfinite(image).all()

    img2img = StableDiffusion3Img2ImgPipeline(scheduler=scheduler, **components)
    img2img.set_progress_bar_config(disable=True)
    out = img2img("a dog", image=image, strength=0.6, num_inference_steps=5, guidance_scale=3.0,
                  output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 8, 8) and torch.isfinite(out).all()
    # strength 0.6 of 5 steps: the run started mid-grid, with its warm-up restarted there
    assert img2img.scheduler.begin_index == 2
