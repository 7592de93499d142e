"""Low-bit floating-point quantization of diffusion models (arXiv 2408.06995): number formats, calibration
along the sampling trajectory, learned rounding, quantized layers and packed storage."""

from .calibration import collect_layer_inputs, input_scale, quantizable_layers, weight_scales
from .format_choice import FP4_FORMATS
from .formats import FORMATS, FloatFormat, IntFormat, get_format
from .layers import QuantizedLayer
from .memory import call_peak_bytes, pipeline_peak_memory, resident_weight_bytes
from .pipeline import load_quantized_pipeline, quantize_pipeline, save_quantized_pipeline
from .quantize import quantize
from .rounding import learn_rounding, reconstruction_error
from .storage import load_quantized, save_quantized

__all__ = ["FORMATS", "FP4_FORMATS", "FloatFormat", "IntFormat", "QuantizedLayer", "call_peak_bytes",
           "collect_layer_inputs", "get_format", "input_scale", "learn_rounding", "load_quantized",
           "load_quantized_pipeline",
           "pipeline_peak_memory", "quantizable_layers", "quantize", "quantize_pipeline", "reconstruction_error",
           "resident_weight_bytes", "save_quantized", "save_quantized_pipeline", "weight_scales"]
