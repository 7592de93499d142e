"""Masked (absorbing-state) diffusion: mask schedules, the First-Hitting Sampler and the MDLM baseline."""

from .ancestral import mdlm_ancestral_sample
from .first_hitting import MASK_SCHEDULES, first_hitting_sample, first_hitting_times, gumbel_categorical

__all__ = ["MASK_SCHEDULES", "mdlm_ancestral_sample", "first_hitting_sample", "first_hitting_times",
           "gumbel_categorical"]
