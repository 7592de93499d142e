"""Fused update kernels: ``lincomb`` (Triton on CUDA, plain torch elsewhere)."""

from .lincomb import lincomb, use_triton

__all__ = ["lincomb", "use_triton"]
