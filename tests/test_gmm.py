"""The exact GMM denoiser and its ODE endpoint against closed forms."""

import numpy as np
import pytest
import torch

from diffusers_ext import UniPCScheduler
from diffusers_ext.models import GaussianMixtureDenoiser


def test_single_gaussian_ode_endpoint_is_closed_form():
    """One Gaussian N(mu, s^2 I): a linear flow, x0 = mu + s (x_T - a mu) / sqrt(a^2 s^2 + sigma_T^2)."""
    model = GaussianMixtureDenoiser(num_components=1)
    weights, means, stds = model.mixture(8)
    x = torch.randn(5, 2, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alpha, sigma = (float(v[0]) for v in model.schedule.alpha_sigma(np.array([700.0])))
    mu, s = means[0].reshape(1, 2, 2, 2), float(stds[0])
    expected = mu + s * (x - alpha * mu) / np.sqrt(alpha**2 * s**2 + sigma**2)
    torch.testing.assert_close(model.ode_endpoint(x, 700.0), expected, rtol=1e-8, atol=1e-8)


def test_flow_schedule_endpoint_from_sigma_one():
    sched = UniPCScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
    model = GaussianMixtureDenoiser(schedule=sched, num_components=1, prediction_type="flow_prediction")
    _, means, stds = model.mixture(4)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = means[0] + stds[0] * x  # alpha = 0, sigma = 1 at the start
    torch.testing.assert_close(model.ode_endpoint(x, 1000.0), expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample", "flow_prediction"])
def test_prediction_types_are_consistent(prediction_type):
    """Every parameterization encodes the same posterior: convert back to x0 and compare."""
    model = GaussianMixtureDenoiser(prediction_type=prediction_type)
    ref = GaussianMixtureDenoiser(prediction_type="sample")
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor(400.0)
    out = model(x, t).sample
    a, s = (float(v[0]) for v in model.schedule.alpha_sigma(np.array([400.0])))
    x0 = {"epsilon": (x - s * out) / a, "v_prediction": a * x - s * out, "sample": out,
          "flow_prediction": (x - s * out) / (a + s)}[prediction_type]
    torch.testing.assert_close(x0, ref(x, t).sample, rtol=1e-10, atol=1e-10)


def test_posterior_mean_is_the_bayes_estimate():
    """E[x0 | x] from the closed form matches a Monte Carlo estimate on a 1-D mixture."""
    model = GaussianMixtureDenoiser(num_components=3, seed=3)
    g = torch.Generator().manual_seed(0)
    x0 = model.sample_data(400_000, (1,), g)
    alpha, sigma = 0.6, 0.8
    x = alpha * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    bins = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    est, _ = model.posterior(bins[:, None], torch.full((5, 1), alpha, dtype=torch.float64),
                             torch.full((5, 1), sigma, dtype=torch.float64))
    for b, e in zip(bins, est[:, 0]):
        near = (x[:, 0] - b).abs() < 0.01
        assert abs(x0[near, 0].mean() - e) < 0.03
