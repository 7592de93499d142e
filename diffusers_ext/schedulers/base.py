"""The diffusers scheduler contract, implemented once for every solver family.

A family subclasses ``SolverScheduler`` and provides:

- ``family_options``: its own config options with defaults (diffusers' names where they exist);
- ``step_rule(grid, i, n)``: the ``StepRule`` of step i given n earlier outputs (a pure function of the
  grid and the config);
- ``history_size``, ``uses_saved_sample``, ``stochastic``, ``uses_anchor``, ``target`` ("data" or "noise").

The base turns the config into a noise schedule and a grid, builds the float64 coefficient table in
``set_timesteps`` (see ``plan.py``), and makes ``step`` one table lookup plus one fused ``lincomb``:
no ``.item()``, no host math, no host-device copies. The step index lives on the device so that
``torch.compile(step, fullgraph=True)`` traces one graph for all steps after the first.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar, rescale_zero_terminal_snr
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ..kernels import lincomb, use_triton
from ..pipeline_loading import PipelineLoadable
from .grids import FINAL_SIGMA_TYPES, build_grid, resolve_spacing
from .noise_schedules import EDM, FlowMatching, NoiseSchedule, VPContinuous, VPDiscrete
from .plan import Grid, StepPlan, build_plan
from .predictions import EDM_PREDICTION_TYPES, PREDICTION_TYPES, conversion
from .step_rule import Lin, M, StepRule

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
NOISE_SCHEDULES = ("discrete", "linear", "cosine")

COMMON_OPTIONS: dict[str, Any] = {
    # training noise schedule (diffusers' names)
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "rescale_betas_zero_snr": False,
    "snr_shift_scale": 1.0,  # CogVideoX: alpha_bar / (s + (1 - s) alpha_bar)
    "noise_schedule": "discrete",  # "discrete" (betas), or continuous VP "linear" / "cosine"
    "use_flow_sigmas": False,  # flow matching: x_t = (1 - sigma) x0 + sigma eps
    "flow_shift": 1.0,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "shift_terminal": None,  # flow matching: stretch the shifted sigmas to end at this value (Wan, LTX)
    # model
    "prediction_type": "epsilon",
    "variance_type": None,
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    # grid
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "final_sigmas_type": "zero",
    "sigma_min": None,  # range of the karras / exponential / beta grids (default: the schedule's own)
    "sigma_max": None,
    "rho": 7.0,  # Karras grid exponent
    # EDM (arXiv 2206.00364): a number switches to the VE schedule x0 + sigma eps with EDM preconditioning,
    # sigma in [sigma_min, sigma_max] (defaults 0.002, 80), on a sigma_schedule grid ("karras" / "exponential")
    "sigma_data": None,
    "sigma_schedule": None,
    "lambda_min_clipped": None,  # time grids of discrete schedules start below this log-SNR clip (None/-inf: none)
    # solver
    "solver_order": 2,
    "lower_order_final": True,
}


def warmup_order(order: int, i: int, n: int, num_steps: int, lower_order_final: bool) -> int:
    """diffusers' multistep order schedule: warm up from order 1 (n earlier outputs exist) and, below 15
    steps with ``lower_order_final``, use orders 1 and 2 for the last two steps."""
    if lower_order_final and num_steps < 15:
        if i == num_steps - 1:
            order = 1
        elif i == num_steps - 2:
            order = min(order, 2)
    return max(1, min(order, n + 1))


def _make_init(options: dict[str, Any]):
    """An ``__init__`` whose signature lists every option, so diffusers' from_config sees them all; unknown
    keywords raise ``TypeError`` as a written-out signature would."""

    def __init__(self, **config):
        unknown = sorted(set(config) - set(options))
        if unknown:
            hints = {k: difflib.get_close_matches(k, options, n=1) for k in unknown}
            named = ", ".join(f"{k!r}" + (f" (did you mean {hints[k][0]!r}?)" if hints[k] else "") for k in unknown)
            raise TypeError(f"{type(self).__name__}.__init__() got unexpected keyword argument(s) {named}")
        self._setup()

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in options.items()]
    __init__.__signature__ = inspect.Signature(params)
    return register_to_config(__init__)


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


def infer_config_class(config: dict) -> str | None:
    """The scheduler class whose ``__init__`` takes exactly the config's keys: configs built in memory carry no
    ``_class_name`` (diffusers adds it when saving or loading)."""
    import diffusers

    keys = {k for k in config if not k.startswith("_")}
    names = [e.name for e in KarrasDiffusionSchedulers] + list(OTHER_DIFFUSERS_SCHEDULERS)
    classes = [getattr(diffusers, n, None) for n in names] + _all_subclasses(SolverScheduler)
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


def _all_subclasses(klass: type) -> list[type]:
    return [k for sub in klass.__subclasses__() for k in (sub, *_all_subclasses(sub))]


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


class SolverScheduler(PipelineLoadable, SchedulerMixin, ConfigMixin):
    """Base of the linear-combination solvers; see the module docstring."""

    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + ["FlowMatchEulerDiscreteScheduler"]
    order = 1  # model calls per timestep entry (diffusers' meaning), not the solver order

    family_options: ClassVar[dict[str, Any]] = {}
    default_overrides: ClassVar[dict[str, Any]] = {}
    order_range: ClassVar[tuple[int, int]] = (1, 3)
    # class names (ours and diffusers') whose configs use this family's option vocabulary; from_config keeps
    # their solver options and resets those of any other class
    config_family: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        options = dict(COMMON_OPTIONS)
        for klass in reversed(cls.__mro__):
            options.update(klass.__dict__.get("default_overrides", {}))
            options.update(klass.__dict__.get("family_options", {}))
        cls.__init__ = _make_init(options)

    # ----------------------------------------------------------------------------------- family API
    history_size: int = 0
    uses_saved_sample: bool = False
    stochastic: bool = False
    uses_anchor: bool = False  # the rules read ANCHOR (the first output as a noise prediction)
    records_samples: bool = False  # a second history ring keeps the samples the model saw (S(k))
    target: str = "data"

    def step_rule(self, grid: Grid, i: int, n: int) -> StepRule:
        raise NotImplementedError

    def validate_family_config(self) -> None:
        """Raise ValueError for bad family options (called once at construction)."""

    def family_grid(self, grid_times: np.ndarray) -> np.ndarray:
        """Hook for families that evaluate at extra points (Runge-Kutta stages); default: unchanged."""
        return grid_times

    def prepare_plan(self, grid: Grid) -> None:
        """Hook run before the table is built for ``grid`` (e.g. resolve per-step options); default: none."""

    def current_output(self, grid: Grid, i: int, n: int) -> Lin:
        """Step i's model output as the solver uses it (DualFast mixes it); default ``M(0)``."""
        return M(0)

    def recorded_output(self, grid: Grid, i: int, n: int) -> Lin:
        """The history entry of step i and the predictor's current output (dynamic compensation corrects it);
        default ``current_output``."""
        return self.current_output(grid, i, n)

    # ----------------------------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' from_config, reading configs as saved to disk (every key explicit):

        - a config of another solver family (``_class_name`` outside ``config_family``) carries the training
          schedule, prediction type and grid settings (``COMMON_OPTIONS``); the solver's own options
          (``solver_type``, ``algorithm_type``, ...) take this class's defaults, so e.g. a DPM-Solver
          ``solver_type="heun"`` never turns DEIS into Runge-Kutta;
        - a FlowMatch* config switches on flow matching (``use_flow_sigmas``, ``flow_prediction``, its ``shift``);
        - a config whose noise schedule is not implemented here (EDM, inverted or continuous-time sigmas) is
          refused with a ValueError instead of being read as a DDPM schedule.
        """
        if config is None:
            return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        config = dict(config)
        source = config.get("_class_name") or infer_config_class(config)
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
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def _setup(self) -> None:
        cfg = self.config
        if cfg.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"Unknown prediction_type {cfg.prediction_type!r}; valid choices: "
                             f"{', '.join(PREDICTION_TYPES)}")
        if cfg.final_sigmas_type not in FINAL_SIGMA_TYPES:
            raise ValueError(f"Unknown final_sigmas_type {cfg.final_sigmas_type!r}; valid choices: "
                             f"{', '.join(FINAL_SIGMA_TYPES)}")
        lo, hi = self.order_range
        if not (isinstance(cfg.solver_order, int) and lo <= cfg.solver_order <= hi):
            raise ValueError(f"solver_order must be an integer in [{lo}, {hi}] for {type(self).__name__}, "
                             f"got {cfg.solver_order!r}")
        self._validate_numbers()
        resolve_spacing(cfg)  # validates the grid name
        self.noise_schedule = self._make_noise_schedule()
        self.validate_family_config()
        self.num_inference_steps = None
        self._begin_index = None
        self._plan: StepPlan | None = None
        self._grid: Grid | None = None
        self._device: torch.device | None = None
        self._started = False
        T = cfg.num_train_timesteps
        if isinstance(self.noise_schedule, EDM):  # model times are log(sigma) / 4, not 0..T-1
            times = np.linspace(self.noise_schedule.t_max, self.noise_schedule.t_min, T)
        else:
            times = np.arange(T - 1, -1, -1, dtype=np.float64)
        self.timesteps = torch.from_numpy(times.astype(np.float32))
        self.sigmas = torch.from_numpy(self.noise_schedule.grid_sigma(self.timesteps.numpy()).astype(np.float32))
        if isinstance(self.noise_schedule, VPContinuous):  # the discrete case sets them from its betas
            alpha, _ = self.noise_schedule.alpha_sigma(np.arange(T, dtype=np.float64))
            self.alphas_cumprod = torch.from_numpy(alpha**2).float()
            self.alphas = self.alphas_cumprod / torch.cat([torch.ones(1), self.alphas_cumprod[:-1]])
            self.betas = 1.0 - self.alphas

    def _validate_numbers(self) -> None:
        """Out-of-range numbers fail here, before any work, with the valid range in the message."""
        cfg = self.config

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

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

    def _make_noise_schedule(self) -> NoiseSchedule:
        cfg = self.config
        if cfg.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"Unknown noise_schedule {cfg.noise_schedule!r}; valid choices: {NOISE_SCHEDULES}")
        if cfg.sigma_data is not None:
            if cfg.use_flow_sigmas or cfg.noise_schedule != "discrete" or cfg.trained_betas is not None:
                raise ValueError("sigma_data selects the EDM schedule; it cannot be combined with use_flow_sigmas, "
                                 "a continuous noise_schedule or trained_betas")
            if cfg.prediction_type not in EDM_PREDICTION_TYPES:
                raise ValueError(f"EDM preconditioning (sigma_data) supports prediction_type "
                                 f"{EDM_PREDICTION_TYPES}, got {cfg.prediction_type!r}")
            return EDM(cfg.sigma_min if cfg.sigma_min is not None else 0.002,
                       cfg.sigma_max if cfg.sigma_max is not None else 80.0, cfg.sigma_data)
        if cfg.use_flow_sigmas:
            if cfg.noise_schedule != "discrete":
                raise ValueError("use_flow_sigmas=True is a schedule of its own; leave noise_schedule='discrete'")
            return FlowMatching(cfg.num_train_timesteps)
        if cfg.noise_schedule != "discrete":
            if cfg.snr_shift_scale != 1.0 or cfg.rescale_betas_zero_snr:
                raise ValueError("snr_shift_scale and rescale_betas_zero_snr apply to discrete schedules "
                                 "(noise_schedule='discrete') only")
            return VPContinuous(cfg.noise_schedule, cfg.num_train_timesteps)
        T = cfg.num_train_timesteps
        if cfg.trained_betas is not None:
            betas = torch.tensor(np.asarray(cfg.trained_betas), dtype=torch.float32)
        elif cfg.beta_schedule == "linear":
            betas = torch.linspace(cfg.beta_start, cfg.beta_end, T, dtype=torch.float32)
        elif cfg.beta_schedule == "scaled_linear":
            betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, T, dtype=torch.float32) ** 2
        elif cfg.beta_schedule == "squaredcos_cap_v2":
            betas = betas_for_alpha_bar(T)
        elif cfg.beta_schedule == "sigmoid":  # GeoDiff, as diffusers' DDPMScheduler
            betas = torch.sigmoid(torch.linspace(-6, 6, T)) * (cfg.beta_end - cfg.beta_start) + cfg.beta_start
        else:
            raise ValueError(f"Unknown beta_schedule {cfg.beta_schedule!r}; valid choices: {BETA_SCHEDULES}")
        if cfg.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # float32, as the model's training schedule
        if cfg.snr_shift_scale != 1.0:  # CogVideoX: SNR divided by snr_shift_scale
            alphas_cumprod = alphas_cumprod / (cfg.snr_shift_scale + (1 - cfg.snr_shift_scale) * alphas_cumprod)
        alphas_cumprod = alphas_cumprod.double()
        if cfg.rescale_betas_zero_snr:
            # as diffusers: close to zero so the first sigma stays finite; below the previous value where the
            # rescaled schedule already reaches 2^-24 (diffusers' table is then not monotone at T - 1)
            alphas_cumprod[-1] = min(2.0**-24, 0.5 * float(alphas_cumprod[-2]))
        # diffusers' training-schedule attributes, read by pipelines and training scripts (t = 0..T-1)
        self.betas, self.alphas, self.alphas_cumprod = betas, 1.0 - betas, alphas_cumprod.float()
        return VPDiscrete(alphas_cumprod.numpy())

    # ----------------------------------------------------------------------------------- timesteps
    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list[float] | None = None, sigmas: list[float] | None = None,
                      mu: float | None = None) -> None:
        """Build the grid (N model calls + terminal) and the whole coefficient table."""
        cfg = self.config
        if cfg.use_dynamic_shifting and cfg.use_flow_sigmas and mu is None and timesteps is None:
            raise ValueError("use_dynamic_shifting=True needs `mu` in set_timesteps")
        times = build_grid(
            self.noise_schedule, num_inference_steps, spacing=resolve_spacing(cfg), timesteps=timesteps,
            sigmas=sigmas, final_sigmas_type=cfg.final_sigmas_type, steps_offset=cfg.steps_offset,
            flow_shift=cfg.flow_shift, mu=mu if cfg.use_dynamic_shifting else None,
            time_shift_type=cfg.time_shift_type, shift_terminal=cfg.shift_terminal, sigma_min=cfg.sigma_min,
            sigma_max=cfg.sigma_max, karras_rho=cfg.rho, last_timestep=self._last_timestep())
        times = self.family_grid(times)
        self._grid = Grid.from_times(self.noise_schedule, times)
        evaluation = times[:-1]
        integral = np.all(evaluation == np.round(evaluation)) and isinstance(self.noise_schedule, VPDiscrete)
        self.timesteps = torch.from_numpy(evaluation.astype(np.int64 if integral else np.float32)).to(device)
        self.sigmas = torch.from_numpy(self.noise_schedule.grid_sigma(times).astype(np.float32))
        self.num_inference_steps = len(evaluation)
        self._device = torch.device(device) if device is not None else None
        self._begin_index = None
        self._build_plan(begin=0)

    def _last_timestep(self) -> int | None:
        """diffusers' ``lambda_min_clipped``: time grids start below the first t whose log-SNR falls under it."""
        if self.config.lambda_min_clipped is None or not math.isfinite(self.config.lambda_min_clipped):
            return None
        T = self.config.num_train_timesteps
        lam = self.noise_schedule.lambda_(np.arange(T, dtype=np.float64))
        return T - int(np.searchsorted(lam[::-1], self.config.lambda_min_clipped))

    def _build_plan(self, begin: int) -> None:
        if not 0 <= begin < self._grid.num_steps:
            raise ValueError(f"begin index {begin} outside [0, {self._grid.num_steps - 1}]")
        output_type = "sample" if self.config.thresholding else self.config.prediction_type
        self.prepare_plan(self._grid)
        self._plan = build_plan(self._grid, begin, self.step_rule, history_size=self.history_size,
                                uses_saved=self.uses_saved_sample, stochastic=self.stochastic, target=self.target,
                                output_type=output_type, uses_anchor=self.uses_anchor,
                                records_samples=self.records_samples)
        if self.config.thresholding:
            self._convert_host = _data_conversion(self.config.prediction_type, self._grid)
        # on the pipeline's device already (set_timesteps(device=...)), so the first step copies nothing
        self._table = torch.from_numpy(self._plan.table.astype(np.float32)).to(self._device)
        slots = self._plan.slots[:, None]
        if self.records_samples and self.history_size:  # the sample ring follows the output ring
            slots = np.concatenate([slots, slots + self.history_size], axis=1)
        self._write_slots = slots
        self._slots = torch.from_numpy(slots).to(self._device)
        self._started = False
        self._history = None
        self._saved = None
        self._anchor = None

    @property
    def grid(self) -> Grid:
        """The grid set by ``set_timesteps`` (read-only): model times ``t`` of the evaluation points plus the
        terminal, and ``alpha``, ``sigma``, ``lam`` (log-SNR / 2) at each of them."""
        if self._grid is None:
            raise ValueError(f"{type(self).__name__} has no grid before set_timesteps")
        return self._grid

    @property
    def plan(self) -> StepPlan:
        """The coefficient table of the current run (read-only): ``table`` (steps, rows, columns) in float64,
        the history ``slots`` and the column layout (``plan.py``)."""
        if self._plan is None:
            raise ValueError(f"{type(self).__name__} has no plan before set_timesteps")
        return self._plan

    @property
    def step_index(self) -> int | None:
        """The index of the next step (syncs with the device when queried; ``step`` itself never does)."""
        return int(self._step_tensor) if self._started else None

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start sampling at ``timesteps[begin_index]`` (img2img); warm-up restarts there."""
        self._begin_index = int(begin_index)
        if self._grid is not None:
            self._build_plan(begin=self._begin_index)

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        t = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        return int(torch.argmin((schedule.double().cpu() - t).abs()))

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ----------------------------------------------------------------------------------- sampling
    @property
    def init_noise_sigma(self) -> float:
        """1 (VP, flow); sqrt(sigma_max^2 + 1) for EDM, as diffusers' EDM schedulers."""
        if isinstance(self.noise_schedule, EDM):
            return math.sqrt(math.exp(8.0 * self.noise_schedule.t_max) + 1.0)
        return 1.0

    def scale_model_input(self, sample: torch.Tensor, timestep=None, *args, **kwargs) -> torch.Tensor:
        """The identity, except EDM: sample / sqrt(sigma^2 + sigma_data^2) at ``timestep`` (= log(sigma) / 4)."""
        if not isinstance(self.noise_schedule, EDM):
            return sample
        if timestep is None:
            raise ValueError("scale_model_input needs the timestep for an EDM schedule (sigma_data is set)")
        t = torch.as_tensor(timestep, device=sample.device, dtype=torch.float64).reshape(-1)
        c_in = torch.rsqrt(torch.exp(8.0 * t) + self.noise_schedule.sigma_data**2)
        return (sample * c_in.reshape(-1, *([1] * (sample.dim() - 1)))).to(sample.dtype)

    def _start(self, timestep, sample: torch.Tensor, model_output: torch.Tensor) -> None:
        """First step of a run: find where it starts, move the table, allocate the history ring."""
        if self._begin_index is None and not torch.compiler.is_compiling():
            index = self.index_for_timestep(timestep)
            if index != self._plan.begin:
                self._build_plan(begin=index)
        device = sample.device
        self._table = self._table.to(device)
        self._slots = self._slots.to(device)
        if self.config.thresholding:
            self._convert_table = torch.from_numpy(self._convert_host.astype(np.float32)).to(device)
        K = self.history_size * (1 + self.records_samples)
        self._history = torch.zeros((K, *sample.shape), dtype=model_output.dtype, device=device) if K else None
        self._saved = torch.zeros_like(sample) if self.uses_saved_sample else None
        self._step_tensor = torch.full((), self._plan.begin, dtype=torch.int64, device=device)
        self._steps_left = len(self._plan.table) - self._plan.begin
        self._started = True

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True,
             variance_noise: torch.Tensor | None = None) -> SchedulerOutput | tuple:
        """Advance ``sample`` from ``timestep`` to the next grid point (one fused update)."""
        if self._plan is None:
            raise ValueError(f"{type(self).__name__}.step called before set_timesteps: call "
                             f"scheduler.set_timesteps(num_inference_steps) first")
        if model_output.shape != sample.shape:
            if self.config.variance_type in ("learned", "learned_range") and \
                    model_output.shape[1] == 2 * sample.shape[1]:
                model_output = model_output[:, : sample.shape[1]]
            else:
                raise ValueError(f"model_output shape {tuple(model_output.shape)} does not match sample shape "
                                 f"{tuple(sample.shape)}")
        first_step = not self._started
        if first_step:
            self._start(timestep, sample, model_output)
        if not torch.compiler.is_compiling():  # a host counter: checking the device index would sync
            if self._steps_left == 0:
                raise ValueError(f"step called after the last of the {self.num_inference_steps} steps set by "
                                 f"set_timesteps; call set_timesteps again to start a new run")
            self._steps_left -= 1
        if sample.device.type == "cpu" and not torch.compiler.is_compiling() and not use_triton(sample.device):
            # CPU: the host float64 table is the device's own memory; no tensor lookups needed
            i = int(self._step_tensor)
            coeffs, slot = self._plan.table[i], self._write_slots[i]
            self._step_tensor.add_(1)
        else:
            idx = self._step_tensor.reshape(1)  # a gather, not a select: no .item(), traceable by torch.compile
            coeffs, slot = self._table.index_select(0, idx)[0], self._slots.index_select(0, idx)[0]
            self._step_tensor = self._step_tensor + 1
        first = model_output.contiguous()
        if self.config.thresholding:
            convert = self._convert_host[i] if isinstance(coeffs, np.ndarray) else \
                self._convert_table.index_select(0, idx)[0]
            data = lincomb(None, convert, [sample, first])
            first = self._threshold(data).to(model_output.dtype)
        tensors = [sample.contiguous(), first]
        outs = [None]
        if self._saved is not None:  # allocated in _start when the family keeps a sample
            tensors.append(self._saved)
            outs.append(self._saved)
        if self.stochastic:
            if variance_noise is None:
                variance_noise = randn_tensor(sample.shape, generator=generator, device=sample.device,
                                              dtype=torch.float32)
            tensors.append(variance_noise.to(device=sample.device))
        if self._plan.anchor_coeffs is not None:
            if first_step:  # once per run: the first output as a noise prediction, kept in the output's dtype
                anchor_coeffs = self._plan.anchor_coeffs if isinstance(coeffs, np.ndarray) else \
                    torch.from_numpy(self._plan.anchor_coeffs.astype(np.float32)).to(sample.device)
                self._anchor = lincomb(None, anchor_coeffs, tensors[:2])
            tensors.append(self._anchor)
        results = lincomb(outs, coeffs, tensors, history=self._history,
                          write_slot=slot if self._history is not None else None, columns=self._plan.row_columns)
        prev_sample = results[0]
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Imagen's dynamic thresholding (arXiv 2205.11487), per sample, in float32."""
        flat = x0.float().reshape(x0.shape[0], -1)
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        s = s.clamp(min=1.0, max=self.config.sample_max_value).unsqueeze(1)
        return (flat.clamp(-s, s) / s).reshape(x0.shape)

    # ----------------------------------------------------------------------------------- noising
    def _alpha_sigma_at(self, timesteps, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(timesteps).reshape(-1).double().cpu().numpy()
        alpha, sigma = self.noise_schedule.alpha_sigma(t)
        shape = (-1,) + (1,) * (like.dim() - 1)
        alpha = torch.from_numpy(alpha).to(like.device, torch.float32).reshape(shape)
        sigma = torch.from_numpy(sigma).to(like.device, torch.float32).reshape(shape)
        return alpha, sigma

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x_t = alpha_t x_0 + sigma_t noise at the given model times (any schedule)."""
        alpha, sigma = self._alpha_sigma_at(timesteps, original_samples)
        return (alpha * original_samples.float() + sigma * noise.float()).to(original_samples.dtype)

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching img2img (FlowMatchEulerDiscreteScheduler's name): sigma noise + (1 - sigma) sample."""
        if noise is None:
            raise ValueError("scale_noise needs `noise`")
        return self.add_noise(sample, noise, timestep)



def _data_conversion(prediction_type: str, grid: Grid) -> np.ndarray:
    """(c_x, c_out) per step: the data prediction the thresholding pre-pass computes, shape (N, 2)."""
    n = grid.num_steps
    cx, co = conversion(prediction_type, "data", grid.alpha[:n], grid.sigma[:n], grid.sigma_data)
    return np.stack([cx, co], axis=-1)
