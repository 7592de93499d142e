"""Searches over sampler parameters: DC-Solver ratio calibration and the S^3 solver-schedule search."""

from .calibrate_dc import DCCalibration, calibrate_dc, calibrate_dc_grid, fit_cpr, reference_trajectory
from .denoisers import PipelineDenoiser, pipeline_denoiser
from .objectives import DigitsFIDObjective, EndpointObjective, MedianEndpointObjective
from .s3 import RankingPredictor, SearchResult, s3_search

__all__ = ["DCCalibration", "PipelineDenoiser", "calibrate_dc", "calibrate_dc_grid", "fit_cpr", "pipeline_denoiser",
           "reference_trajectory", "DigitsFIDObjective", "EndpointObjective", "MedianEndpointObjective",
           "RankingPredictor", "SearchResult", "s3_search"]
