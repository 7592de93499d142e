"""Noise schedules: model time t -> (alpha_t, sigma_t, lambda_t), all in float64 on the host.

A sample at model time ``t`` is ``x_t = alpha_t * x_0 + sigma_t * eps``. The model is called with ``t``
itself (diffusers' ``timestep``). Solvers work with the half log-SNR ``lambda = log(alpha / sigma)`` and
with ``rho = sigma / alpha = exp(-lambda)`` (the EDM / VE sigma), as in DPM-Solver (arXiv 2206.00927,
section 3 and its ``NoiseScheduleVP``).

Every schedule also defines the *clean* end point ``t_clean`` where ``sigma = 0`` (lambda = +inf), the
terminal of a sampling run with ``final_sigmas_type="zero"``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_COSINE_S = 0.008


def _log_alpha_from_lambda(lam: np.ndarray) -> np.ndarray:
    """VP: alpha^2 + sigma^2 = 1, so log(alpha) = -0.5 * log(1 + exp(-2 lambda))."""
    return -0.5 * np.logaddexp(0.0, -2.0 * np.asarray(lam, dtype=np.float64))


class NoiseSchedule:
    """Base class. Subclasses implement ``alpha_sigma`` and ``t_of_lambda``."""

    kind: str = ""
    t_max: float  # noisiest model time a grid may start at
    t_min: float  # least noisy model time a grid ends at (before the terminal step)
    t_clean: float  # model time of sigma = 0
    knots: np.ndarray | None = None  # model times where the schedule is only piecewise smooth

    def alpha_sigma(self, t) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def t_of_lambda(self, lam) -> np.ndarray:
        raise NotImplementedError

    def alpha_sigma_of_lambda(self, lam) -> tuple[np.ndarray, np.ndarray]:
        """VP: alpha^2 = sigmoid(2 lambda), sigma^2 = sigmoid(-2 lambda)."""
        lam = np.asarray(lam, dtype=np.float64)
        return np.exp(-0.5 * np.logaddexp(0.0, -2.0 * lam)), np.exp(-0.5 * np.logaddexp(0.0, 2.0 * lam))

    def lambda_(self, t) -> np.ndarray:
        alpha, sigma = self.alpha_sigma(t)
        with np.errstate(divide="ignore"):
            return np.log(alpha) - np.log(sigma)

    def rho(self, t) -> np.ndarray:
        """sigma / alpha (inf where alpha = 0)."""
        alpha, sigma = self.alpha_sigma(t)
        with np.errstate(divide="ignore"):
            return sigma / alpha

    def t_of_rho(self, rho) -> np.ndarray:
        rho = np.asarray(rho, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return self.t_of_lambda(-np.log(rho))

    def grid_sigma(self, t) -> np.ndarray:
        """The variable sigma-based grids (Karras, exponential, beta) are spaced in: rho for VP."""
        return self.rho(t)

    def t_of_grid_sigma(self, s) -> np.ndarray:
        return self.t_of_rho(s)


class VPDiscrete(NoiseSchedule):
    """diffusers' discrete VP schedule (``betas`` -> ``alphas_cumprod``) on model times 0..T-1.

    Fractional times interpolate log(alpha) linearly, as DPM-Solver's discrete NoiseScheduleVP. The clean
    end is t = -1 (alpha_bar = 1), the extension diffusers' DDIM uses (``alphas_cumprod[-1]`` "prev" = 1).
    """

    kind = "vp_discrete"

    def __init__(self, alphas_cumprod):
        ab = np.asarray(alphas_cumprod, dtype=np.float64)
        self.num_train_timesteps = len(ab)
        self.knots = np.arange(-1.0, len(ab), dtype=np.float64)
        self._log_alpha = np.concatenate([[0.0], 0.5 * np.log(ab)])  # at knots -1, 0, ..., T-1
        self.t_max, self.t_min, self.t_clean = float(len(ab) - 1), 0.0, -1.0
        if not np.all(np.diff(self._log_alpha) < 0):
            raise ValueError("alphas_cumprod must be strictly decreasing and below 1")

    @classmethod
    def from_betas(cls, betas) -> VPDiscrete:
        betas = torch.as_tensor(np.asarray(betas), dtype=torch.float32)
        # float32 cumprod, exactly as diffusers computes the schedule its models were trained with
        return cls(torch.cumprod(1.0 - betas, dim=0).double().numpy())

    def alpha_sigma(self, t):
        t = np.asarray(t, dtype=np.float64)
        log_alpha = np.interp(t, self.knots, self._log_alpha)
        alpha = np.exp(log_alpha)
        sigma = np.sqrt(-np.expm1(2.0 * log_alpha))
        return alpha, sigma

    def t_of_lambda(self, lam):
        log_alpha = _log_alpha_from_lambda(lam)
        # log_alpha decreases along the knots; np.interp wants increasing x
        return np.interp(log_alpha, self._log_alpha[::-1], self.knots[::-1])


class VPContinuous(NoiseSchedule):
    """Continuous VP schedules on t in (0, 1], model time = t * num_train_timesteps.

    ``linear``: log alpha = -(beta_1 - beta_0) t^2 / 4 - beta_0 t / 2 (beta_0 = 0.1, beta_1 = 20);
    ``cosine``: alpha = cos((t + s) / (1 + s) * pi / 2) / cos(s / (1 + s) * pi / 2), s = 0.008, t <= 0.9946
    (both as DPM-Solver's NoiseScheduleVP, arXiv 2206.00927).
    """

    kind = "vp_continuous"

    def __init__(self, schedule: str = "linear", num_train_timesteps: int = 1000, beta_0: float = 0.1,
                 beta_1: float = 20.0, t_eps: float = 1e-3):
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"Unknown continuous VP schedule {schedule!r}; valid: 'linear', 'cosine'")
        self.schedule, self.scale = schedule, float(num_train_timesteps)
        self.beta_0, self.beta_1 = beta_0, beta_1
        t_end = 1.0 if schedule == "linear" else 0.9946
        self.t_max, self.t_min, self.t_clean = t_end * self.scale, t_eps * self.scale, 0.0
        self._cos0 = math.log(math.cos(_COSINE_S / (1.0 + _COSINE_S) * math.pi / 2.0))

    def _log_alpha(self, u):
        if self.schedule == "linear":
            return -0.25 * u**2 * (self.beta_1 - self.beta_0) - 0.5 * u * self.beta_0
        return np.log(np.cos((u + _COSINE_S) / (1.0 + _COSINE_S) * math.pi / 2.0)) - self._cos0

    def alpha_sigma(self, t):
        log_alpha = self._log_alpha(np.asarray(t, dtype=np.float64) / self.scale)
        return np.exp(log_alpha), np.sqrt(-np.expm1(2.0 * log_alpha))

    def t_of_lambda(self, lam):
        log_alpha = _log_alpha_from_lambda(lam)
        if self.schedule == "linear":
            b0, db = self.beta_0, self.beta_1 - self.beta_0
            # solve db/4 u^2 + b0/2 u + log_alpha = 0 for u >= 0, in a cancellation-free form
            u = -2.0 * log_alpha / (0.5 * b0 + np.sqrt(0.25 * b0**2 - db * log_alpha))
        else:
            u = 2.0 * (1.0 + _COSINE_S) / math.pi * np.arccos(np.exp(log_alpha + self._cos0)) - _COSINE_S
        return u * self.scale


class FlowMatching(NoiseSchedule):
    """Rectified flow: x_t = (1 - sigma) x_0 + sigma eps, model time = sigma * num_train_timesteps.

    The flow ``shift`` (and dynamic ``mu``) warp the grid, not the schedule: see ``grids.shift_flow_sigmas``.
    Sigma-based grids are spaced in sigma itself, as diffusers' FlowMatchEulerDiscreteScheduler does.
    """

    kind = "flow"

    def __init__(self, num_train_timesteps: int = 1000):
        self.scale = float(num_train_timesteps)
        self.t_max, self.t_min, self.t_clean = self.scale, 1.0, 0.0

    def alpha_sigma(self, t):
        sigma = np.asarray(t, dtype=np.float64) / self.scale
        return 1.0 - sigma, sigma

    def t_of_lambda(self, lam):
        # sigma = 1 / (1 + exp(lambda)), written to stay finite for lambda = +-inf
        return self.scale * np.exp(-np.logaddexp(0.0, np.asarray(lam, dtype=np.float64)))

    def alpha_sigma_of_lambda(self, lam):
        """alpha = sigmoid(lambda), sigma = sigmoid(-lambda)."""
        lam = np.asarray(lam, dtype=np.float64)
        return np.exp(-np.logaddexp(0.0, -lam)), np.exp(-np.logaddexp(0.0, lam))

    def grid_sigma(self, t):
        return np.asarray(t, dtype=np.float64) / self.scale

    def t_of_grid_sigma(self, s):
        return np.asarray(s, dtype=np.float64) * self.scale


class EDM(NoiseSchedule):
    """Variance-exploding schedule of EDM (arXiv 2206.00364): x = x_0 + sigma eps (alpha = 1), sigma in
    [sigma_min, sigma_max], model time c_noise = log(sigma) / 4 (diffusers' EDM schedulers' timesteps).

    ``sigma_data`` is the preconditioning constant: the network's raw output F gives the data prediction
    c_skip x + c_out F (``predictions.conversion``), and its input is scaled by c_in = 1 / sqrt(sigma^2 +
    sigma_data^2) (the scheduler's ``scale_model_input``)."""

    kind = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        if not 0.0 < sigma_min < sigma_max:
            raise ValueError(f"EDM needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if not sigma_data > 0.0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.sigma_data = float(sigma_data)
        self.t_max, self.t_min, self.t_clean = 0.25 * math.log(sigma_max), 0.25 * math.log(sigma_min), -math.inf

    def alpha_sigma(self, t):
        t = np.asarray(t, dtype=np.float64)
        return np.ones_like(t), np.exp(4.0 * t)

    def t_of_lambda(self, lam):
        return -0.25 * np.asarray(lam, dtype=np.float64)  # lambda = -log(sigma)

    def alpha_sigma_of_lambda(self, lam):
        lam = np.asarray(lam, dtype=np.float64)
        return np.ones_like(lam), np.exp(-lam)
