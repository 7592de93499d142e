"""Evaluation: solver accuracy on the exact GMM model (FID harness and sweeps come with the eval issue)."""

from .gmm_accuracy import DEFAULT_SOLVERS, gmm_accuracy, make_scheduler, markdown_table

__all__ = ["DEFAULT_SOLVERS", "gmm_accuracy", "make_scheduler", "markdown_table"]
