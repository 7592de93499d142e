"""diffusers-ext: fast few-step samplers as drop-in Hugging Face diffusers schedulers."""

from .masked import FirstHittingScheduler, MaskedDiffusionPipeline, MDLMAncestralScheduler
from .schedulers import DCSolverScheduler, DEISScheduler, DPMSolverPPScheduler, UniPCScheduler, USFScheduler
from .tuning import tune

__version__ = "0.1.0"
__all__ = ["DEISScheduler", "DPMSolverPPScheduler", "UniPCScheduler", "DCSolverScheduler", "USFScheduler",
           "FirstHittingScheduler", "MDLMAncestralScheduler", "MaskedDiffusionPipeline", "tune"]
