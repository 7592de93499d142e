"""Evaluation: solver accuracy on the exact GMM model, FID, sweeps (schedulers by name: ``diffusers_ext.registry``)."""

from ..registry import make_scheduler
from .gmm_accuracy import DEFAULT_SOLVERS, gmm_accuracy, markdown_table

__all__ = ["DEFAULT_SOLVERS", "gmm_accuracy", "make_scheduler", "markdown_table"]
