"""Masked (absorbing-state) diffusion: mask schedules and the First-Hitting Sampler."""

from .first_hitting import MASK_SCHEDULES, first_hitting_sample, first_hitting_times, gumbel_categorical

__all__ = ["MASK_SCHEDULES", "first_hitting_sample", "first_hitting_times", "gumbel_categorical"]
