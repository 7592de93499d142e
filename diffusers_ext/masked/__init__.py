"""Masked (absorbing-state) diffusion: mask schedules, the First-Hitting Sampler, the MDLM baseline and a
pipeline that runs either on any token denoiser."""

from .ancestral import MDLMAncestralScheduler
from .base import MaskedSchedulerOutput
from .categorical import filter_logits, gumbel_categorical
from .first_hitting import FirstHittingScheduler
from .mask_schedules import MASK_SCHEDULE_NAMES, MaskSchedule, get_mask_schedule
from .pipeline import MaskedDiffusionPipeline, MaskedDiffusionPipelineOutput

__all__ = ["FirstHittingScheduler", "MDLMAncestralScheduler", "MaskedDiffusionPipeline",
           "MaskedDiffusionPipelineOutput", "MaskedSchedulerOutput", "MASK_SCHEDULE_NAMES", "MaskSchedule",
           "get_mask_schedule", "filter_logits", "gumbel_categorical"]
