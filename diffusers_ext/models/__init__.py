"""Embedded reference models (nothing is downloaded)."""

from .gmm import GaussianMixtureDenoiser

__all__ = ["GaussianMixtureDenoiser"]
