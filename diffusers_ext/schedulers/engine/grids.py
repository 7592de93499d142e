"""Timestep grids: where a sampler evaluates the model.

A grid is ``num_inference_steps`` strictly decreasing model times (the evaluation points) followed by
one terminal time (sigma = 0 by default). Names follow diffusers where the concept exists:

- time-based: ``linspace``, ``leading``, ``trailing`` (diffusers' rules, Table 2 of arXiv 2305.08891;
  integer times on discrete schedules), ``quadratic`` (DEIS, arXiv 2204.13902);
- sigma-based: ``logsnr`` (uniform in lambda, DPM-Solver arXiv 2206.00927; diffusers' ``use_lu_lambdas``),
  ``karras`` (EDM rho = 7, arXiv 2206.00364), ``exponential`` (uniform in log sigma), ``beta``
  (arXiv 2407.12173, alpha = beta = 0.6);
- explicit ``timesteps=`` (model times) or ``sigmas=`` (rho = sigma/alpha for VP schedules; flow sigmas,
  before the shift, for flow matching, as diffusers' FlowMatchEulerDiscreteScheduler takes them).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .noise_schedules import FlowMatching, NoiseSchedule, VPDiscrete

TIME_SPACINGS = ("linspace", "leading", "trailing", "quadratic")
SIGMA_SPACINGS = ("logsnr", "karras", "exponential", "beta")
SPACINGS = TIME_SPACINGS + SIGMA_SPACINGS
FINAL_SIGMA_TYPES = ("zero", "sigma_min")


def resolve_spacing(config) -> str:
    """The grid a scheduler config asks for; diffusers' ``use_*_sigmas`` flags win over ``timestep_spacing``."""
    flags = [name for name, flag in (("karras", "use_karras_sigmas"), ("exponential", "use_exponential_sigmas"),
                                     ("beta", "use_beta_sigmas"), ("logsnr", "use_lu_lambdas"))
             if config.get(flag, False)]
    if len(flags) > 1:
        raise ValueError(f"Only one sigma grid flag may be set, got {flags}")
    spacing = flags[0] if flags else config["timestep_spacing"]
    if config.get("sigma_data") is not None and not flags:  # EDM: its sigma_schedule, or a sigma-based spacing
        edm = config.get("sigma_schedule")
        if edm is not None and edm not in ("karras", "exponential"):
            raise ValueError(f"Unknown sigma_schedule {edm!r}; valid choices: 'karras', 'exponential'")
        spacing = edm or (spacing if spacing in SIGMA_SPACINGS else "karras")
    if spacing not in SPACINGS:
        raise ValueError(f"Unknown timestep_spacing {spacing!r}; valid choices: {', '.join(SPACINGS)}")
    return spacing


def shift_flow_sigmas(sigmas, shift: float = 1.0, mu: float | None = None, time_shift_type: str = "exponential"):
    """Flow-matching resolution shift (SD3, arXiv 2403.03206) or dynamic shift with ``mu`` (Flux)."""
    s = np.asarray(sigmas, dtype=np.float64)
    if mu is None:
        return shift * s / (1.0 + (shift - 1.0) * s)
    if not (isinstance(mu, numbers.Real) and -50.0 <= mu <= 50.0):
        raise ValueError(f"mu must be a number in [-50, 50] (Flux-style pipelines use about 0.5-1.2), got {mu!r}")
    with np.errstate(divide="ignore"):
        odds = 1.0 / s - 1.0
    if time_shift_type == "exponential":
        return math.exp(mu) / (math.exp(mu) + odds)
    if time_shift_type == "linear":
        return mu / (mu + odds)
    raise ValueError(f"Unknown time_shift_type {time_shift_type!r}; valid choices: 'exponential', 'linear'")


def stretch_to_terminal(sigmas, shift_terminal: float) -> np.ndarray:
    """Stretch shifted flow sigmas so the last one equals ``shift_terminal`` (diffusers' flow ``shift_terminal``,
    Wan / LTX-Video): 1 - sigma is scaled by (1 - sigma_last) / (1 - shift_terminal)."""
    s = np.asarray(sigmas, dtype=np.float64)
    scale = (1.0 - s[-1]) / (1.0 - shift_terminal)
    return 1.0 - (1.0 - s) / scale


def _discrete_time_grid(num_steps: int, spacing: str, num_train: int, steps_offset: int) -> np.ndarray:
    """diffusers' integer grids (DPMSolverMultistep / UniPC rules); ``num_train`` is diffusers' last timestep
    (num_train_timesteps, lowered by ``lambda_min_clipped``)."""
    if spacing == "linspace":
        raw = np.linspace(0, num_train - 1, num_steps + 1)[::-1][:-1]
        rounded = raw.round()
        # rounding collapses neighbours when num_steps is close to num_train: keep the exact times then
        return rounded if np.all(np.diff(rounded) < 0) else raw
    if spacing == "leading":
        ratio = num_train // (num_steps + 1)
        times = (np.arange(0, num_steps + 1) * ratio).round()[::-1][:-1] + steps_offset
    else:  # trailing
        times = np.arange(num_train, 0, -num_train / num_steps).round() - 1
    if len(times) != num_steps or not np.all(np.diff(times) < 0):
        raise ValueError(f"timestep_spacing={spacing!r} gives repeated timesteps for {num_steps} steps of "
                         f"{num_train}; use 'linspace' or fewer steps")
    return times.astype(np.float64)


def _sigma_grid(kind: str, s_max: float, s_min: float, n: int, rho: float = 7.0) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, n)
    if kind == "karras":
        return (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    if kind == "exponential":
        return np.exp(np.log(s_max) + ramp * (np.log(s_min) - np.log(s_max)))
    import scipy.stats

    return s_min + scipy.stats.beta.ppf(1.0 - ramp, 0.6, 0.6) * (s_max - s_min)


def build_grid(schedule: NoiseSchedule, num_inference_steps: int | None = None, *, spacing: str = "linspace",
               timesteps=None, sigmas=None, final_sigmas_type: str = "zero", steps_offset: int = 0,
               flow_shift: float = 1.0, mu: float | None = None, time_shift_type: str = "exponential",
               shift_terminal: float | None = None, sigma_min: float | None = None, sigma_max: float | None = None,
               karras_rho: float = 7.0, last_timestep: int | None = None) -> np.ndarray:
    """Model times of the evaluation points plus the terminal time, shape (N + 1,), float64.

    ``sigma_min`` / ``sigma_max`` bound the sigma-based grids (diffusers' names); ``last_timestep`` bounds
    the time-based grids of discrete schedules (diffusers' ``lambda_min_clipped``)."""
    if final_sigmas_type not in FINAL_SIGMA_TYPES:
        raise ValueError(f"Unknown final_sigmas_type {final_sigmas_type!r}; valid choices: {FINAL_SIGMA_TYPES}")
    given = [name for name, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps),
                                  ("sigmas", sigmas)) if v is not None]
    if not given:
        raise ValueError("set_timesteps needs one of num_inference_steps, timesteps or sigmas")
    if timesteps is not None and sigmas is not None:
        raise ValueError("Pass either timesteps= or sigmas=, not both")
    flow = isinstance(schedule, FlowMatching)
    custom = timesteps if timesteps is not None else sigmas
    if custom is not None:
        custom = np.asarray(custom.cpu() if hasattr(custom, "cpu") else custom, dtype=np.float64).reshape(-1)
        name = "timesteps" if timesteps is not None else "sigmas"
        if num_inference_steps is not None and len(custom) != num_inference_steps:
            raise ValueError(f"{name}= has {len(custom)} entries but num_inference_steps={num_inference_steps}; "
                             f"they must match (one entry per model call, the terminal is appended)")
        if len(custom) < 1 or not np.all(np.isfinite(custom)) or not np.all(np.diff(custom) < 0):
            raise ValueError(f"{name}= must be finite and strictly decreasing (one entry per model call), "
                             f"got {custom.tolist()[:8]}")
        if sigmas is not None:
            top = float(schedule.grid_sigma(np.array([schedule.t_max]))[0])
            if custom[0] > top * (1 + 1e-6):
                raise ValueError(f"sigmas= starts at {custom[0]:g}, above the schedule's largest sigma {top:g}")
        if timesteps is not None:
            times = custom
        elif flow:
            shifted = shift_flow_sigmas(custom, flow_shift, mu, time_shift_type)
            if shift_terminal is not None:
                shifted = stretch_to_terminal(shifted, shift_terminal)
            times = schedule.t_of_grid_sigma(shifted)
        else:
            if custom[-1] <= 0:
                raise ValueError("sigmas= must be positive; the terminal sigma is appended per final_sigmas_type")
            times = schedule.t_of_grid_sigma(custom)
        lo, hi = min(schedule.t_min, schedule.t_clean), schedule.t_max
        if times[0] > hi + 1e-9 or times[-1] < lo - 1e-9:
            raise ValueError(f"{name}= reaches outside the schedule's model-time range [{lo:g}, {hi:g}]")
    else:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral):
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        n = int(num_inference_steps)
        if n < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if isinstance(schedule, VPDiscrete) and n > schedule.num_train_timesteps:
            raise ValueError(f"num_inference_steps={n} exceeds num_train_timesteps={schedule.num_train_timesteps}")
        times = _base_grid(schedule, n, spacing, steps_offset, flow, flow_shift, mu, time_shift_type,
                           shift_terminal, sigma_min, sigma_max, last_timestep, karras_rho)
    if not (np.all(np.isfinite(times)) and np.all(np.diff(times) < 0)):
        raise ValueError(f"the grid is not finite and strictly decreasing (check flow_shift, mu, sigma_min / "
                         f"sigma_max): model times {np.round(times, 4).tolist()[:8]}")
    terminal = schedule.t_clean if final_sigmas_type == "zero" else schedule.t_min
    if terminal >= times[-1] - 1e-9 * max(1.0, abs(times[-1])):  # the grid already ends at sigma_min
        terminal = schedule.t_clean
    return np.concatenate([times, [terminal]])


def _base_grid(schedule, n, spacing, steps_offset, flow, flow_shift, mu, time_shift_type, shift_terminal=None,
               sigma_min=None, sigma_max=None, last_timestep=None, karras_rho=7.0) -> np.ndarray:
    def shifted(sigma):
        if not flow:
            return sigma
        sigma = shift_flow_sigmas(sigma, flow_shift, mu, time_shift_type)
        return stretch_to_terminal(sigma, shift_terminal) if shift_terminal is not None else sigma

    if spacing in ("leading", "trailing") and not isinstance(schedule, VPDiscrete):
        raise ValueError(f"timestep_spacing={spacing!r} is defined for discrete VP schedules only; "
                         f"valid here: linspace, quadratic, {', '.join(SIGMA_SPACINGS)}")
    discrete = isinstance(schedule, VPDiscrete)
    last = (last_timestep or schedule.num_train_timesteps) if discrete else None
    if spacing in ("linspace", "leading", "trailing") and discrete:
        return _discrete_time_grid(n, spacing, last, steps_offset)
    if spacing in ("linspace", "quadratic"):
        t_lo = schedule.t_clean if flow else schedule.t_min
        t_hi = float(last - 1) if discrete else schedule.t_max
        if spacing == "linspace":
            t = np.linspace(t_hi, t_lo, n + 1)[:-1]
        else:
            t = np.linspace(math.sqrt(t_hi - t_lo), 0.0, n + 1)[:-1] ** 2 + t_lo
        return schedule.t_of_grid_sigma(shifted(schedule.grid_sigma(t))) if flow else t
    # sigma-based grids: n points from the noisiest to the least noisy grid sigma, both included
    t_hi = schedule.t_max
    if flow:  # alpha = 0 at sigma = 1: start one training step below, as diffusers' flow grids do
        t_hi = schedule.t_max - 1.0
    s_hi, s_lo = shifted(schedule.grid_sigma(np.array([t_hi, schedule.t_min])))
    s_hi = s_hi if sigma_max is None else sigma_max
    s_lo = s_lo if sigma_min is None else sigma_min
    top = schedule.grid_sigma(np.array([schedule.t_max]))[0]
    if not (s_lo < s_hi <= top * (1 + 1e-9)):
        raise ValueError(f"sigma_min={s_lo:g} / sigma_max={s_hi:g} must satisfy sigma_min < sigma_max <= {top:g} "
                         f"(the schedule's largest sigma)")
    if spacing == "logsnr":
        lam_hi, lam_lo = schedule.lambda_(schedule.t_of_grid_sigma(np.array([s_hi, s_lo])))
        return schedule.t_of_lambda(np.linspace(lam_hi, lam_lo, n))
    if n == 1:
        return schedule.t_of_grid_sigma(np.array([s_hi]))
    times = schedule.t_of_grid_sigma(_sigma_grid(spacing, float(s_hi), float(s_lo), n, karras_rho))
    return np.clip(times, schedule.t_min, schedule.t_max)  # round-off of the sigma -> t inversion


@dataclass
class Grid:
    """Model times of the evaluation points plus the terminal, and the schedule at each of them."""

    t: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    lam: np.ndarray
    sigma_data: float | None = None  # EDM preconditioning of the model output (``predictions.conversion``)

    @classmethod
    def from_times(cls, schedule: NoiseSchedule, t: np.ndarray) -> Grid:
        t = np.asarray(t, dtype=np.float64)
        alpha, sigma = schedule.alpha_sigma(t)
        with np.errstate(divide="ignore"):
            lam = np.log(alpha) - np.log(sigma)
        t = t.copy()
        for array in (t, alpha, sigma, lam):
            array.flags.writeable = False  # a run's grid is read, never edited (``SolverScheduler.grid``)
        return cls(t=t, alpha=alpha, sigma=sigma, lam=lam, sigma_data=getattr(schedule, "sigma_data", None))

    @property
    def num_steps(self) -> int:
        return len(self.t) - 1
