"""Low-bit quantization of diffusion models (arXiv 2408.06995): number formats, ..."""

from .formats import FORMATS, FloatFormat, IntFormat, get_format

__all__ = ["FORMATS", "FloatFormat", "IntFormat", "get_format"]
