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

import inspect
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar, rescale_zero_terminal_snr
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ..kernels import lincomb, use_triton
from .grids import FINAL_SIGMA_TYPES, build_grid, resolve_spacing
from .noise_schedules import FlowMatching, NoiseSchedule, VPContinuous, VPDiscrete
from .plan import Grid, StepPlan, build_plan
from .predictions import PREDICTION_TYPES, conversion
from .step_rule import Lin, M, StepRule

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
NOISE_SCHEDULES = ("discrete", "linear", "cosine")

COMMON_OPTIONS: dict[str, Any] = {
    # training noise schedule (diffusers' names)
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "rescale_betas_zero_snr": False,
    "noise_schedule": "discrete",  # "discrete" (betas), or continuous VP "linear" / "cosine"
    "use_flow_sigmas": False,  # flow matching: x_t = (1 - sigma) x0 + sigma eps
    "flow_shift": 1.0,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
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
    """An ``__init__`` whose signature lists every option, so diffusers' from_config sees them all."""

    def __init__(self, **config):
        self._setup()

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in options.items()]
    __init__.__signature__ = inspect.Signature(params)
    return register_to_config(__init__)


class SolverScheduler(SchedulerMixin, ConfigMixin):
    """Base of the linear-combination solvers; see the module docstring."""

    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + ["FlowMatchEulerDiscreteScheduler"]
    order = 1  # model calls per timestep entry (diffusers' meaning), not the solver order
    init_noise_sigma = 1.0

    family_options: ClassVar[dict[str, Any]] = {}
    default_overrides: ClassVar[dict[str, Any]] = {}
    order_range: ClassVar[tuple[int, int]] = (1, 3)

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
        """diffusers' from_config, plus: a FlowMatch* scheduler config switches on flow matching."""
        if config is not None and not isinstance(config, dict):
            config = dict(config)
        flow_config = config is not None and (str(config.get("_class_name", "")).startswith("FlowMatch")
                                              or ("shift" in config and "beta_schedule" not in config))
        if flow_config:
            config = dict(config)
            config.setdefault("use_flow_sigmas", True)
            config.setdefault("prediction_type", "flow_prediction")
            config.setdefault("flow_shift", config.get("shift", 1.0))
            for key in ("use_flow_sigmas", "prediction_type", "flow_shift"):
                used = config.get("_use_default_values")
                if used and key in used:
                    config["_use_default_values"] = [k for k in used if k != key]
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
        self.timesteps = torch.from_numpy(np.arange(T - 1, -1, -1, dtype=np.float32).copy())
        self.sigmas = torch.from_numpy(self.noise_schedule.grid_sigma(self.timesteps.numpy()).astype(np.float32))

    def _make_noise_schedule(self) -> NoiseSchedule:
        cfg = self.config
        if cfg.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"Unknown noise_schedule {cfg.noise_schedule!r}; valid choices: {NOISE_SCHEDULES}")
        if cfg.use_flow_sigmas:
            if cfg.noise_schedule != "discrete":
                raise ValueError("use_flow_sigmas=True is a schedule of its own; leave noise_schedule='discrete'")
            return FlowMatching(cfg.num_train_timesteps)
        if cfg.noise_schedule != "discrete":
            return VPContinuous(cfg.noise_schedule, cfg.num_train_timesteps)
        if cfg.trained_betas is not None:
            betas = torch.tensor(np.asarray(cfg.trained_betas), dtype=torch.float32)
        elif cfg.beta_schedule == "linear":
            betas = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps, dtype=torch.float32)
        elif cfg.beta_schedule == "scaled_linear":
            betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps,
                                   dtype=torch.float32) ** 2
        elif cfg.beta_schedule == "squaredcos_cap_v2":
            betas = betas_for_alpha_bar(cfg.num_train_timesteps)
        else:
            raise ValueError(f"Unknown beta_schedule {cfg.beta_schedule!r}; valid choices: {BETA_SCHEDULES}")
        if cfg.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if cfg.rescale_betas_zero_snr:
            alphas_cumprod[-1] = 2**-24  # as diffusers: close to zero so the first sigma stays finite
        return VPDiscrete(alphas_cumprod.double().numpy())

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
            time_shift_type=cfg.time_shift_type)
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
    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return sample

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
    cx, co = conversion(prediction_type, "data", grid.alpha[:n], grid.sigma[:n])
    return np.stack([cx, co], axis=-1)
