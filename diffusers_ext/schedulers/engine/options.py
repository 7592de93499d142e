"""Scheduler options: the ones every solver family shares, their checks, and the generated constructor.

Names and defaults follow diffusers (``DPMSolverMultistepScheduler`` and friends) wherever the concept exists,
so a saved diffusers config reads as the same settings here. A family adds its own options
(``SolverScheduler.family_options``); ``make_init`` turns the union into a keyword-only ``__init__`` whose
signature, annotations and docstring list every option (for ``help()``, IDE signature help and diffusers'
``from_config``, which reads the signature).
"""

from __future__ import annotations

import difflib
import dis
import inspect
import math
import numbers
from typing import Annotated, Any, Literal, TypedDict, get_type_hints

from diffusers.configuration_utils import register_to_config

from .grids import FINAL_SIGMA_TYPES
from .predictions import PREDICTION_TYPES


class CommonOptions(TypedDict, total=False):
    """The options every solver family takes: ``name: Annotated[type, default]`` (diffusers' names and defaults)."""

    # training noise schedule (diffusers' names)
    num_train_timesteps: Annotated[int, 1000]
    beta_start: Annotated[float, 0.0001]
    beta_end: Annotated[float, 0.02]
    beta_schedule: Annotated[Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"], "linear"]
    trained_betas: Annotated[list[float] | None, None]
    rescale_betas_zero_snr: Annotated[bool, False]
    snr_shift_scale: Annotated[float, 1.0]  # CogVideoX: alpha_bar / (s + (1 - s) alpha_bar)
    noise_schedule: Annotated[Literal["discrete", "linear", "cosine"], "discrete"]  # betas, or a continuous VP
    use_flow_sigmas: Annotated[bool, False]  # flow matching: x_t = (1 - sigma) x0 + sigma eps
    flow_shift: Annotated[float, 1.0]
    use_dynamic_shifting: Annotated[bool, False]
    time_shift_type: Annotated[Literal["exponential", "linear"], "exponential"]
    base_shift: Annotated[float, 0.5]
    max_shift: Annotated[float, 1.15]
    base_image_seq_len: Annotated[int, 256]
    max_image_seq_len: Annotated[int, 4096]
    # flow matching: stretch the shifted sigmas to end at this value (Wan, LTX)
    shift_terminal: Annotated[float | None, None]
    # model
    prediction_type: Annotated[Literal["epsilon", "v_prediction", "sample", "flow_prediction"], "epsilon"]
    variance_type: Annotated[str | None, None]
    thresholding: Annotated[bool, False]
    dynamic_thresholding_ratio: Annotated[float, 0.995]
    sample_max_value: Annotated[float, 1.0]
    # grid
    timestep_spacing: Annotated[Literal["linspace", "leading", "trailing", "quadratic", "logsnr", "karras",
                                        "exponential", "beta"], "linspace"]
    steps_offset: Annotated[int, 0]
    use_karras_sigmas: Annotated[bool, False]
    use_exponential_sigmas: Annotated[bool, False]
    use_beta_sigmas: Annotated[bool, False]
    use_lu_lambdas: Annotated[bool, False]
    final_sigmas_type: Annotated[Literal["zero", "sigma_min"], "zero"]
    # range of the karras / exponential / beta grids (default: the schedule's own)
    sigma_min: Annotated[float | None, None]
    sigma_max: Annotated[float | None, None]
    rho: Annotated[float, 7.0]  # Karras grid exponent
    # EDM (arXiv 2206.00364): a number switches to the VE schedule x0 + sigma eps with EDM preconditioning,
    # sigma in [sigma_min, sigma_max] (defaults 0.002, 80), on a sigma_schedule grid ("karras" / "exponential")
    sigma_data: Annotated[float | None, None]
    sigma_schedule: Annotated[Literal["karras", "exponential"] | None, None]
    # time grids of discrete schedules start below this log-SNR clip (None / -inf: none)
    lambda_min_clipped: Annotated[float | None, None]
    # solver
    solver_order: Annotated[int, 2]
    lower_order_final: Annotated[bool, True]


def option_defaults(options: type) -> dict[str, Any]:
    """{name: default} of an options TypedDict whose keys are ``Annotated[type, default]``."""
    return {name: hint.__metadata__[0] for name, hint in get_type_hints(options, include_extras=True).items()}


def option_types(options: type) -> dict[str, Any]:
    """{name: type} of an options TypedDict (the ``Annotated`` defaults stripped)."""
    return get_type_hints(options)


COMMON_OPTIONS: dict[str, Any] = option_defaults(CommonOptions)



def check_common_options(cfg, scheduler_name: str, order_range: tuple[int, int]) -> None:
    """Out-of-range or unknown values of the common options fail here, before any work, naming the valid
    choices."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    if cfg.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"Unknown prediction_type {cfg.prediction_type!r}; valid choices: "
                         f"{', '.join(PREDICTION_TYPES)}")
    if cfg.final_sigmas_type not in FINAL_SIGMA_TYPES:
        raise ValueError(f"Unknown final_sigmas_type {cfg.final_sigmas_type!r}; valid choices: "
                         f"{', '.join(FINAL_SIGMA_TYPES)}")
    lo, hi = order_range
    if not (isinstance(cfg.solver_order, int) and lo <= cfg.solver_order <= hi):
        raise ValueError(f"solver_order must be an integer in [{lo}, {hi}] for {scheduler_name}, "
                         f"got {cfg.solver_order!r}")
    T = cfg.num_train_timesteps
    need(isinstance(T, numbers.Integral) and T >= 2, f"num_train_timesteps must be an integer >= 2, got {T!r}")
    need(isinstance(cfg.steps_offset, numbers.Integral) and 0 <= cfg.steps_offset < T,
         f"steps_offset must be an integer in [0, num_train_timesteps={T}), got {cfg.steps_offset!r}")
    need(cfg.flow_shift > 0 and math.isfinite(cfg.flow_shift), f"flow_shift must be > 0, got {cfg.flow_shift}")
    if cfg.thresholding:
        need(0.0 < cfg.dynamic_thresholding_ratio <= 1.0,
             f"dynamic_thresholding_ratio must be in (0, 1], got {cfg.dynamic_thresholding_ratio}")
        need(cfg.sample_max_value >= 1.0, f"sample_max_value must be >= 1, got {cfg.sample_max_value}")
    need(cfg.snr_shift_scale > 0 and math.isfinite(cfg.snr_shift_scale),
         f"snr_shift_scale must be > 0, got {cfg.snr_shift_scale}")
    if cfg.shift_terminal is not None:
        need(cfg.use_flow_sigmas, "shift_terminal is only defined for flow matching (use_flow_sigmas=True)")
        need(0.0 < cfg.shift_terminal < 1.0, f"shift_terminal must be in (0, 1), got {cfg.shift_terminal}")
    for key in ("sigma_min", "sigma_max"):
        value = cfg[key]
        need(value is None or (value > 0 and math.isfinite(value)), f"{key} must be None or > 0, got {value}")
    if cfg.sigma_min is not None and cfg.sigma_max is not None:
        need(cfg.sigma_min < cfg.sigma_max, f"sigma_min={cfg.sigma_min} must be below sigma_max={cfg.sigma_max}")
    need(cfg.rho > 0 and math.isfinite(cfg.rho), f"rho (the Karras exponent) must be > 0, got {cfg.rho}")
    clip = cfg.lambda_min_clipped
    need(clip is None or (isinstance(clip, numbers.Real) and not math.isnan(clip)),
         f"lambda_min_clipped must be None or a number, got {clip!r}")
    if clip is not None and math.isfinite(clip):
        need(cfg.noise_schedule == "discrete" and not cfg.use_flow_sigmas,
             "lambda_min_clipped applies to discrete VP schedules (beta_schedule) only")


def _declaration(self, **options) -> None:
    """A declaration: nothing in its body."""


def _instructions(function) -> list[tuple[str, Any]]:
    return [(i.opname, i.argval) for i in dis.get_instructions(function)]


def declared_options(init) -> tuple[dict[str, Any], dict[str, Any]]:
    """(defaults, types) of the keyword-only parameters of a family's own ``__init__`` (its typed declaration).

    The declaration's body is never run (the generated constructor replaces it), so anything but a docstring there
    is refused, as are options that are not keyword-only with a default: setup belongs in ``normalize_config`` /
    ``check_config``."""
    owner = init.__qualname__
    params = list(inspect.signature(init).parameters.values())[1:]
    bad = [p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD and
           (p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty)]
    if bad:
        raise TypeError(f"{owner} declares options as keyword-only parameters with defaults (after `*`); {bad} are "
                        f"not")
    if _instructions(init) != _instructions(_declaration):
        raise TypeError(f"{owner} is a declaration of options: its body is never run (the constructor is generated "
                        f"from its signature). Leave only a docstring; put setup in normalize_config / check_config.")
    hints = get_type_hints(init)
    params = [p for p in inspect.signature(init).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return {p.name: p.default for p in params}, {p.name: hints.get(p.name, Any) for p in params}


def make_init(options: dict[str, Any], types: dict[str, Any], doc: str | None = None):
    """The constructor of a scheduler class: keyword-only, one parameter per option (typed, with its default), so
    ``help()``, ``inspect.signature`` and diffusers' ``from_config`` see them all; unknown keywords raise
    ``TypeError`` naming the closest option."""

    def __init__(self, **config):
        unknown = sorted(set(config) - set(options))
        if unknown:
            hints = {k: difflib.get_close_matches(k, options, n=1) for k in unknown}
            named = ", ".join(f"{k!r}" + (f" (did you mean {hints[k][0]!r}?)" if hints[k] else "") for k in unknown)
            raise TypeError(f"{type(self).__name__}.__init__() got unexpected keyword argument(s) {named}")
        self._setup()

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v,
                                 annotation=types.get(k, inspect.Parameter.empty)) for k, v in options.items()]
    __init__.__signature__ = inspect.Signature(params, return_annotation=None)
    __init__.__annotations__ = {**{k: types[k] for k in options if k in types}, "return": None}
    __init__.__doc__ = doc
    __init__.generated = True  # subclasses without an ``__init__`` of their own inherit the options, not re-declare
    return register_to_config(__init__)
