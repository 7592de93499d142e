"""Each scheduler swapped into real diffusers pipelines by from_config (tiny random components, no downloads)."""


import pytest
import torch
from diffusers import (
    DDPMPipeline,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
    UNet2DModel,
)

from tests.helpers import tiny_sd3_components, tiny_stable_diffusion, variant_from_config

FAMILIES = ["dpm++2m", "unipc-bh2", "deis-tab3", "sde-dpm++2m", "deis-heun", "dpm++2m-dualfast"]


@pytest.mark.parametrize("name", FAMILIES)
def test_ddpm_pipeline(name):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    pipe.scheduler = variant_from_config(name, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 8, 8, 3) and (images >= 0).all() and (images <= 1).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_stable_diffusion_with_guidance(tmp_path, name):
    source = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                           timestep_spacing="leading", steps_offset=1)
    pipe = tiny_stable_diffusion(tmp_path, variant_from_config(name, source.config))
    out = pipe("a cat", num_inference_steps=4, guidance_scale=5.0, height=8, width=8, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 8, 8, 3) and torch.isfinite(torch.from_numpy(out)).all()
    assert pipe.scheduler.config.timestep_spacing == "leading" and pipe.scheduler.config.steps_offset == 1


@pytest.mark.parametrize("name", FAMILIES)
def test_flow_matching_sd3_and_img2img(tmp_path, name):
    components = tiny_sd3_components(tmp_path)
    source = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler = variant_from_config(name, source.config)
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
