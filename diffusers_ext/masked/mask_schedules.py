"""Mask schedules of absorbing-state diffusion: alpha(t) = P(a token is unmasked at time t).

alpha decreases from alpha(0) = 1 (clean data) to alpha(1) = 0 (all masked). Named schedules come with
their exact inverse; a user callable is validated on a grid and inverted by bisection (float64, to 1e-15).

- linear (MDLM arXiv 2406.07524): alpha = 1 - t
- cosine: alpha = cos(pi t / 2)
- polynomial with exponent p > 0: alpha = 1 - t^p
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

MASK_SCHEDULE_NAMES = ("linear", "cosine", "polynomial")


class MaskSchedule:
    """alpha(t) with its inverse, both vectorized over float64 tensors."""

    def __init__(self, alpha: Callable, inverse: Callable | None = None, name: str = "custom"):
        self.name = name
        self._alpha = alpha
        self._inverse = inverse

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self._alpha(t), dtype=torch.float64)

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        """The time t with alpha(t) = a (a in [0, 1])."""
        a = a.to(torch.float64).clamp(0.0, 1.0)
        if self._inverse is not None:
            return self._inverse(a)
        lo, hi = torch.zeros_like(a), torch.ones_like(a)  # alpha(lo) >= a >= alpha(hi)
        for _ in range(55):
            mid = 0.5 * (lo + hi)
            above = self.alpha(mid) >= a
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def __repr__(self):
        return f"MaskSchedule({self.name})"


def _validated_callable(alpha: Callable) -> MaskSchedule:
    grid = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    try:
        values = torch.as_tensor(alpha(grid), dtype=torch.float64)
    except Exception as err:  # noqa: BLE001 - reported with the cause
        raise ValueError(f"mask schedule callable must accept a float64 tensor of times in [0, 1]: {err}") from err
    if values.shape != grid.shape or not torch.isfinite(values).all():
        raise ValueError("mask schedule callable must return one finite alpha per time")
    if abs(values[0] - 1.0) > 1e-6 or abs(values[-1]) > 1e-6:
        raise ValueError(f"mask schedule must have alpha(0) = 1 and alpha(1) = 0; got alpha(0) = {values[0]:.6g}, "
                         f"alpha(1) = {values[-1]:.6g}")
    if (values.diff() > 1e-12).any():
        raise ValueError("mask schedule alpha(t) must be non-increasing in t")
    return MaskSchedule(alpha, None, "custom")


def get_mask_schedule(schedule: str | Callable = "linear", exponent: float = 2.0) -> MaskSchedule:
    """A named schedule ("linear", "cosine", "polynomial" with ``exponent``) or a validated callable alpha(t)."""
    if callable(schedule):
        return _validated_callable(schedule)
    if schedule == "linear":
        return MaskSchedule(lambda t: 1.0 - t, lambda a: 1.0 - a, "linear")
    if schedule == "cosine":
        return MaskSchedule(lambda t: torch.cos(0.5 * math.pi * torch.as_tensor(t, dtype=torch.float64)),
                            lambda a: torch.arccos(a) * (2.0 / math.pi), "cosine")
    if schedule == "polynomial":
        if not (isinstance(exponent, (int, float)) and np.isfinite(exponent) and exponent > 0):
            raise ValueError(f"polynomial mask schedule needs an exponent > 0, got {exponent!r}")
        p = float(exponent)
        return MaskSchedule(lambda t: 1.0 - torch.as_tensor(t, dtype=torch.float64) ** p,
                            lambda a: (1.0 - a) ** (1.0 / p), f"polynomial({p:g})")
    raise ValueError(f"Unknown mask schedule {schedule!r}; valid choices: {list(MASK_SCHEDULE_NAMES)} or a "
                     "callable alpha(t) with alpha(0) = 1, alpha(1) = 0, non-increasing")
