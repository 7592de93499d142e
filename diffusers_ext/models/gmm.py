"""An exact Gaussian-mixture denoiser and the exact probability-flow ODE endpoint.

Data: x0 ~ sum_k w_k N(mu_k, s_k^2 I) in D = prod(sample.shape[1:]) dimensions. Noised with
x = alpha x0 + sigma eps, each component stays Gaussian, x | k ~ N(alpha mu_k, v_k I) with
v_k = alpha^2 s_k^2 + sigma^2, so the posterior means are closed form:

    E[x0 | x] = sum_k r_k(x) (mu_k + alpha s_k^2 / v_k (x - alpha mu_k)),
    E[eps | x] = sum_k r_k(x) sigma (x - alpha mu_k) / v_k,     r_k ∝ w_k N(x; alpha mu_k, v_k I).

A solver run on this model has no approximation error: its distance to the exact ODE solution
(``ode_endpoint``: scipy DOP853, rtol 1e-10, in lambda = -log(sigma/alpha)) is pure discretization error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils import BaseOutput

from ..schedulers.engine.noise_schedules import NoiseSchedule, VPDiscrete
from ..schedulers.engine.predictions import PREDICTION_TYPES


@dataclass
class DenoiserOutput(BaseOutput):
    sample: torch.Tensor


def _default_schedule() -> NoiseSchedule:
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float32)
    return VPDiscrete.from_betas(betas)


class GaussianMixtureDenoiser(torch.nn.Module):
    """Closed-form denoiser of a Gaussian mixture, called like a diffusers model.

    Args:
        schedule: the noise schedule mapping the ``timestep`` argument to (alpha, sigma): a
            ``NoiseSchedule`` or one of our schedulers (its ``noise_schedule`` is used). Default: DDPM's
            linear betas.
        prediction_type: what ``forward`` returns: epsilon, v_prediction, sample or flow_prediction.
        num_components, seed: the mixture is drawn from ``seed`` for each sample dimension D it meets.
        mean_scale, std_range: component means ~ mean_scale * N(0, I); stds uniform in std_range.
    """

    def __init__(self, schedule=None, prediction_type: str = "epsilon", num_components: int = 8, seed: int = 0,
                 mean_scale: float = 0.8, std_range: tuple[float, float] = (0.15, 0.45)):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"Unknown prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")
        if num_components < 1:
            raise ValueError("num_components must be >= 1")
        self.schedule = getattr(schedule, "noise_schedule", schedule) or _default_schedule()
        self.prediction_type = prediction_type
        self.num_components, self.seed = num_components, seed
        self.mean_scale, self.std_range = mean_scale, std_range
        self._mixtures: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def mixture(self, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weights (K,), means (K, D), stds (K,)) in float64, drawn from the seed for dimension D."""
        if dim not in self._mixtures:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + dim)
            K = self.num_components
            weights = torch.rand(K, generator=g, dtype=torch.float64) + 0.5
            means = self.mean_scale * torch.randn(K, dim, generator=g, dtype=torch.float64)
            lo, hi = self.std_range
            stds = lo + (hi - lo) * torch.rand(K, generator=g, dtype=torch.float64)
            self._mixtures[dim] = (weights / weights.sum(), means, stds)
        return self._mixtures[dim]

    def sample_data(self, num_samples: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Exact draws x0 from the mixture (float64), shape (num_samples, *shape)."""
        dim = int(np.prod(shape))
        weights, means, stds = self.mixture(dim)
        k = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
        eps = torch.randn(num_samples, dim, generator=generator, dtype=torch.float64)
        return (means[k] + stds[k, None] * eps).reshape(num_samples, *shape)

    def posterior(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        """E[x0 | x] and E[eps | x] in float64. x: (B, D); alpha, sigma: (B, 1)."""
        weights, means, stds = (t.to(x.device) for t in self.mixture(x.shape[1]))
        var = alpha[:, :, None] ** 2 * stds[None, :, None] ** 2 + sigma[:, :, None] ** 2  # (B, K, 1)
        diff = x[:, None, :] - alpha[:, :, None] * means[None]  # (B, K, D)
        logp = torch.log(weights)[None] - 0.5 * x.shape[1] * torch.log(var[..., 0]) - \
            0.5 * (diff**2).sum(-1) / var[..., 0]
        r = torch.softmax(logp, dim=1)[:, :, None]  # (B, K, 1)
        x0 = (r * (means[None] + alpha[:, :, None] * stds[None, :, None] ** 2 / var * diff)).sum(1)
        eps = (r * sigma[:, :, None] * diff / var).sum(1)
        return x0, eps

    def forward(self, sample: torch.Tensor, timestep, *args, return_dict: bool = True, **kwargs):
        t = torch.as_tensor(timestep).reshape(-1).double().cpu().numpy()
        alpha, sigma = self.schedule.alpha_sigma(t)
        B = sample.shape[0]
        alpha = torch.from_numpy(np.broadcast_to(alpha, (B,)).copy()).to(sample.device)[:, None]
        sigma = torch.from_numpy(np.broadcast_to(sigma, (B,)).copy()).to(sample.device)[:, None]
        x = sample.reshape(B, -1).double()
        x0, eps = self.posterior(x, alpha, sigma)
        if self.prediction_type == "epsilon":
            out = eps
        elif self.prediction_type == "sample":
            out = x0
        elif self.prediction_type == "v_prediction":
            out = alpha * eps - sigma * x0
        else:
            out = eps - x0
        out = out.reshape(sample.shape).to(sample.dtype)
        return DenoiserOutput(sample=out) if return_dict else (out,)

    # ----------------------------------------------------------------------------------- reference
    def ode_endpoint(self, x_start: torch.Tensor, t_start: float, t_end: float | None = None, rtol: float = 1e-10,
                     atol: float = 1e-12, lambda_end: float = 30.0) -> torch.Tensor:
        """The exact probability-flow ODE solution from ``x_start`` at model time ``t_start`` to sigma = 0
        (or to model time ``t_end``).

        Integrates in lambda (= -log(sigma/alpha)) with scipy's DOP853: y = x / sigma with
        dy/dlambda = e^lambda E[x0] while lambda < 0, then z = x / alpha with dz/dlambda = -e^-lambda E[eps]
        (both right-hand sides stay bounded, so alpha = 0 at the start of a flow grid is fine).
        """
        from scipy.integrate import solve_ivp

        shape = x_start.shape
        B = shape[0]
        x = x_start.reshape(B, -1).double().cpu()
        lam0 = float(self.schedule.lambda_(np.array([t_start]))[0])
        if t_end is not None:
            lambda_end = float(self.schedule.lambda_(np.array([t_end]))[0])
        schedule = self.schedule

        def coeffs(lam):
            a, s = schedule.alpha_sigma_of_lambda(np.array([lam]))
            return torch.full((B, 1), float(a[0]), dtype=torch.float64), torch.full((B, 1), float(s[0]),
                                                                                    dtype=torch.float64)

        def rhs_y(lam, y):
            a, s = coeffs(lam)
            x0, _ = self.posterior(torch.from_numpy(y).reshape(B, -1) * s, a, s)
            return (np.exp(lam) * x0).reshape(-1).numpy()

        def rhs_z(lam, z):
            a, s = coeffs(lam)
            _, eps = self.posterior(torch.from_numpy(z).reshape(B, -1) * a, a, s)
            return (-np.exp(-lam) * eps).reshape(-1).numpy()

        lam = max(lam0, -40.0)
        if lam < 0.0:
            a, s = coeffs(lam)
            y = (x / s).reshape(-1).numpy()
            sol = solve_ivp(rhs_y, (lam, 0.0), y, method="DOP853", rtol=rtol, atol=atol)
            a, s = coeffs(0.0)
            x = torch.from_numpy(sol.y[:, -1]).reshape(B, -1) * s
            lam = 0.0
        a, s = coeffs(lam)
        z = (x / a).reshape(-1).numpy()
        sol = solve_ivp(rhs_z, (lam, lambda_end), z, method="DOP853", rtol=rtol, atol=atol)
        a, s = coeffs(lambda_end)
        x_end = torch.from_numpy(sol.y[:, -1]).reshape(B, -1) * a
        if t_end is None:
            x_end, _ = self.posterior(x_end, a, s)
        return x_end.reshape(shape)
