"""DC-Solver's scheduler: UniPC (``../unipc.py``) with dynamic compensation (``compensation.py``) always on."""

from __future__ import annotations

from ..unipc import UniPCScheduler


class DCSolverScheduler(UniPCScheduler):
    """DC-Solver (arXiv 2409.03755): UniPC with dynamic compensation of the buffered outputs.

    Ratios from ``dc_ratios`` (one per step, e.g. from ``diffusers_ext.search.calibrate_dc``), else from a
    fitted CPR ``dc_cpr`` (a dict, a shipped name such as "digits", or a ``calibrate-dc --cpr-out`` file) at
    ``dc_guidance_scale``, else all ones with a warning (then it is plain UniPC). The config stays JSON, so
    ``save_pretrained`` keeps them.
    """

    always_compensate = True
