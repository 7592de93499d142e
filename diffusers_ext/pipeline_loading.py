"""Make our schedulers loadable by ``DiffusionPipeline.from_pretrained``.

A saved pipeline records a custom component as ``[module, class]`` in ``model_index.json``, e.g.
``["diffusers_ext.schedulers.unipc", "UniPCScheduler"]``. diffusers' loader then looks the loadable base
classes up *by name in that module* (``getattr(module, "SchedulerMixin")``) to find the load method, so the
name must exist in every module that defines a scheduler, including subclasses users write elsewhere.
"""

from __future__ import annotations

import sys

from diffusers.schedulers.scheduling_utils import SchedulerMixin


class PipelineLoadable:
    """Mixin for ``SchedulerMixin`` subclasses: each subclass's module gets the name ``SchedulerMixin``."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        vars(sys.modules[cls.__module__]).setdefault("SchedulerMixin", SchedulerMixin)
