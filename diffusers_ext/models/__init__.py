"""Embedded reference models (nothing is downloaded)."""

from .gmm import GaussianMixtureDenoiser
from .hmm import HiddenMarkovModel

__all__ = ["GaussianMixtureDenoiser", "HiddenMarkovModel"]
