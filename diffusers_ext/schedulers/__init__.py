"""Solver schedulers: the engine (``engine/``: the diffusers contract, schedules, grids, the coefficient table) and
one module per paper above it."""

from .dc_solver.scheduler import DCSolverScheduler
from .deis import DEISScheduler
from .dpm_solver_pp import DPMSolverPPScheduler
from .engine import SolverScheduler
from .unipc import UniPCScheduler
from .usf import USFScheduler, hand_designed_schedule

__all__ = ["SolverScheduler", "DEISScheduler", "DPMSolverPPScheduler", "UniPCScheduler", "DCSolverScheduler",
           "USFScheduler", "hand_designed_schedule"]
