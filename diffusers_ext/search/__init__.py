"""Searches over sampler parameters: DC-Solver ratio calibration (and, later, solver-schedule search)."""

from .calibrate_dc import DCCalibration, calibrate_dc, reference_trajectory
from .denoisers import PipelineDenoiser, pipeline_denoiser

__all__ = ["DCCalibration", "PipelineDenoiser", "calibrate_dc", "pipeline_denoiser", "reference_trajectory"]
