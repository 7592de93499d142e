"""Reading other schedulers' configs: what a diffusers config means for one of our schedulers.

``from_config`` of every solver family runs ``translate_config`` first (README "Swap a scheduler in"):
a config of another class keeps its training schedule, prediction type and grid, its solver options take our
defaults unless it belongs to the same family (``config_family``), minimal hub files get their class's
defaults, and schedules this core does not implement are refused instead of being read as DDPM.
"""

from __future__ import annotations

import inspect
from typing import Any

from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin

from .options import COMMON_OPTIONS

# Keys of diffusers schedulers that define a noise schedule or model-time convention this core does not
# implement, with the value that is harmless: a config holding another value is refused, never replaced by
# a DDPM schedule.
UNSUPPORTED_SCHEDULE_KEYS: dict[str, tuple[Any, str]] = {
    "invert_sigmas": (False, "inverted flow sigmas"),
    "timestep_type": ("discrete", "continuous (0.25 log sigma) model times"),
}

# diffusers classes whose configs look like a supported schedule but whose model time is another function
UNSUPPORTED_CLASSES = {
    "CosineDPMSolverMultistepScheduler": "its model time is atan(sigma) * 2 / pi (Stable Audio), not EDM's "
                                         "log(sigma) / 4",
}

OTHER_DIFFUSERS_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "LCMScheduler",
                              "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler", "EDMEulerScheduler",
                              "EDMDPMSolverMultistepScheduler", "DPMSolverMultistepInverseScheduler", "TCDScheduler",
                              "CosineDPMSolverMultistepScheduler")


def infer_config_class(config: dict, solver_base: type) -> str | None:
    """The scheduler class (diffusers' or a subclass of ``solver_base``) whose ``__init__`` takes exactly the
    config's keys: configs built in memory carry no ``_class_name`` (diffusers adds it when saving or loading)."""
    import diffusers

    keys = {k for k in config if not k.startswith("_")}
    names = [e.name for e in KarrasDiffusionSchedulers] + list(OTHER_DIFFUSERS_SCHEDULERS)
    classes = [getattr(diffusers, n, None) for n in names] + all_subclasses(solver_base)
    for klass in classes:
        if klass is not None and set(inspect.signature(klass.__init__).parameters) - {"self"} == keys:
            return klass.__name__
    return None


def _diffusers_class(name: str | None) -> type | None:
    """diffusers' scheduler class of that name (None if unknown or a missing-dependency placeholder)."""
    import diffusers

    klass = getattr(diffusers, name, None) if name else None
    return klass if isinstance(klass, type) and issubclass(klass, SchedulerMixin) else None


def _init_defaults(klass: type | None) -> dict[str, Any]:
    if klass is None:
        return {}
    params = inspect.signature(klass.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty and p.name != "self"}


def all_subclasses(klass: type) -> list[type]:
    return [k for sub in klass.__subclasses__() for k in (sub, *all_subclasses(sub))]


def refuse_unsupported_schedule(config: dict, scheduler_name: str, source: str | None = None) -> None:
    """Raise ValueError when ``config`` asks for a noise schedule this core does not implement."""
    if source in UNSUPPORTED_CLASSES:
        raise ValueError(f"{scheduler_name} cannot follow {source}: {UNSUPPORTED_CLASSES[source]}. Keep the "
                         f"pipeline's own scheduler.")
    source = source or "the config"
    for key, (harmless, what) in UNSUPPORTED_SCHEDULE_KEYS.items():
        if key in config and config[key] != harmless:
            raise ValueError(
                f"{scheduler_name} cannot follow {source}: {key}={config[key]!r} selects {what}, a noise schedule "
                f"diffusers-ext does not implement. Keep the pipeline's own scheduler, or build {scheduler_name} "
                f"for a VP (beta_schedule) or flow-matching (use_flow_sigmas) model.")


def translate_config(cls: type, config: dict, solver_base: type) -> dict:
    """``config`` as scheduler ``cls`` reads it (``from_config``), every key explicit as on disk:

    - a config of another solver family (``_class_name`` outside ``config_family``) carries the training
      schedule, prediction type and grid settings (``COMMON_OPTIONS``); the solver's own options
      (``solver_type``, ``algorithm_type``, ...) take this class's defaults, so e.g. a DPM-Solver
      ``solver_type="heun"`` never turns DEIS into Runge-Kutta;
    - a FlowMatch* config switches on flow matching (``use_flow_sigmas``, ``flow_prediction``, its ``shift``);
    - a config whose noise schedule is not implemented here (EDM, inverted or continuous-time sigmas) is
      refused with a ValueError instead of being read as a DDPM schedule.
    """
    config = dict(config)
    source = config.get("_class_name") or infer_config_class(config, solver_base)
    # a minimal file names only what differs from its class's defaults: those defaults are its schedule
    for key, value in _init_defaults(_diffusers_class(source)).items():
        config.setdefault(key, value)
    refuse_unsupported_schedule(config, cls.__name__, source)
    if str(source or "").startswith("FlowMatch") or ("shift" in config and "beta_schedule" not in config):
        config.setdefault("use_flow_sigmas", True)
        config.setdefault("prediction_type", "flow_prediction")
        config.setdefault("flow_shift", config.get("shift", 1.0))
    ours = _init_defaults(cls)
    if source is not None and source != cls.__name__ and source not in cls.config_family:
        # another family's word for one of our solver options means something else: take our default
        # (keys we do not have are left to diffusers, which keeps them hidden in the config)
        for key in [k for k in config if k in ours and k not in COMMON_OPTIONS]:
            config.pop(key)
    # diffusers drops the keys an in-memory config took from its class's defaults; keep those whose value
    # differs from ours (a schedule, a grid), so a config in memory reads as the same config on disk
    if config.get("_use_default_values"):
        config["_use_default_values"] = [k for k in config["_use_default_values"]
                                         if k not in ours or config.get(k) == ours[k]]
    return config
