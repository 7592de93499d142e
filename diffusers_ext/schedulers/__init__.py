"""Solver schedulers: the shared core (schedules, grids, conversion, plan, base) and one module per family."""

from .base import SolverScheduler
from .dc_solver import DCSolverScheduler
from .deis import DEISScheduler
from .dpm_solver_pp import DPMSolverPPScheduler
from .unipc import UniPCScheduler
from .usf import USFScheduler, hand_designed_schedule

__all__ = ["SolverScheduler", "DEISScheduler", "DPMSolverPPScheduler", "UniPCScheduler", "DCSolverScheduler",
           "USFScheduler", "hand_designed_schedule"]
