"""diffusers-ext: fast few-step samplers as drop-in Hugging Face diffusers schedulers."""

from .schedulers import DCSolverScheduler, DEISScheduler, DPMSolverPPScheduler, UniPCScheduler, USFScheduler

__version__ = "0.1.0"
__all__ = ["DEISScheduler", "DPMSolverPPScheduler", "UniPCScheduler", "DCSolverScheduler", "USFScheduler"]
