"""The diffusers scheduler contract, implemented once for every solver family.

A family subclasses ``SolverScheduler`` and provides:

- ``family_options``: its own config options with defaults (diffusers' names where they exist);
- ``step_rule(grid, i, n)``: the ``StepRule`` of step i given n earlier outputs (a pure function of the
  grid and the config), in the paper's notation (``step_rule.py``);
- ``table_layout()``: what its steps read and write (``layout.py``), and ``target`` ("data" or "noise"),
  what its history holds;
- optionally ``normalize_config`` / ``check_config`` (construction) and ``family_grid`` / ``prepare_plan``
  (``set_timesteps``).

Features that several families share (DC-Solver's compensation, DualFast's mixing) are mixins that
override the same hooks cooperatively (each calls ``super()``): ``current_output`` / ``mix_output`` /
``recorded_output`` in the step rules, ``table_layout``, ``normalize_config``, ``check_config``,
``prepare_plan``.

The base turns the config into a noise schedule and a grid, builds the float64 coefficient table in
``set_timesteps`` (``plan.py``), and makes ``step`` one table lookup plus one fused ``lincomb``:
no ``.item()``, no host math, no host-device copies. The step index lives on the device so that
``torch.compile(step, fullgraph=True)`` traces one graph for all steps after the first.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ...kernels import lincomb, use_triton
from ...pipeline_loading import PipelineLoadable
from .config_loading import all_subclasses, translate_config
from .grids import Grid, build_grid, resolve_spacing
from .layout import TableLayout
from .noise_schedules import EDM, VPDiscrete
from .options import COMMON_OPTIONS, CommonOptions, check_common_options, declared_options, make_init, option_types
from .plan import StepPlan, build_plan
from .predictions import conversion
from .step_rule import Lin, M, StepRule
from .training_schedule import training_schedule


def warmup_order(order: int, i: int, n: int, num_steps: int, lower_order_final: bool) -> int:
    """diffusers' multistep order schedule: warm up from order 1 (n earlier outputs exist) and, below 15
    steps with ``lower_order_final``, use orders 1 and 2 for the last two steps."""
    if lower_order_final and num_steps < 15:
        if i == num_steps - 1:
            order = 1
        elif i == num_steps - 2:
            order = min(order, 2)
    return max(1, min(order, n + 1))


# a preset's grid replaces the config's whatever grid flag the config set
GRID_FLAGS_OFF = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                  "use_lu_lambdas": False}


def _type_name(annotation) -> str:
    """``list[float] | None`` rather than ``typing.Optional[...]`` reprs, for the generated docstrings."""
    if annotation is None:
        return "Any"
    return getattr(annotation, "__name__", None) if isinstance(annotation, type) else \
        str(annotation).replace("typing.", "")


class SolverScheduler(PipelineLoadable, SchedulerMixin, ConfigMixin):
    """Base of the linear-combination solvers; see the module docstring."""

    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + ["FlowMatchEulerDiscreteScheduler"]
    order = 1  # model calls per timestep entry (diffusers' meaning), not the solver order

    # named solver + grid settings for users who cannot tune (``from_config(config, preset=...)``)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # options a class adds: a family declares them as keyword-only parameters of its own ``__init__`` (typed, with
    # defaults; the body is never run), a mixin as a TypedDict of ``Annotated[type, default]`` (``option_fields``)
    family_options: ClassVar[dict[str, Any]] = {}
    option_fields: ClassVar[type | None] = None
    default_overrides: ClassVar[dict[str, Any]] = {}  # common options whose default differs for this family
    order_range: ClassVar[tuple[int, int]] = (1, 3)
    # class names (ours and diffusers') whose configs use this family's option vocabulary; from_config keeps
    # their solver options and resets those of any other class
    config_family: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        """Generate the constructor from every option the class and its bases declare (``options.make_init``)."""
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("__init__")
        if declared is not None and not getattr(declared, "generated", False):
            cls.family_options, cls._family_option_types = declared_options(declared)
        options, types = dict(COMMON_OPTIONS), option_types(CommonOptions)
        for klass in reversed(cls.__mro__):
            fields = klass.__dict__.get("option_fields")
            if fields is not None:
                types.update(option_types(fields))
            types.update(klass.__dict__.get("_family_option_types", {}))
            options.update(klass.__dict__.get("default_overrides", {}))
            options.update(klass.__dict__.get("family_options", {}))
        # the signature lists the family's own options first, then its features', then the common ones
        order = [k for klass in cls.__mro__ for k in klass.__dict__.get("family_options", {})] + list(COMMON_OPTIONS)
        options = {k: options[k] for k in dict.fromkeys(order)}
        listing = "\n".join(f"    {k}: {_type_name(types.get(k))} = {v!r}" for k, v in options.items())
        doc = (f"{cls.__name__}'s options: its own, its features', then those every solver shares (diffusers' "
               f"names; ``engine/options.py``).\n\n{listing}\n")
        cls.__init__ = make_init(options, types, doc)

    # ----------------------------------------------------------------------------------- family API
    target: ClassVar[str] = "data"  # what M(k) holds: "data" or "noise" predictions
    supports_begin_index: ClassVar[bool] = True  # img2img starts inside the grid (``set_begin_index``)
    compensates: bool = False  # DC-Solver's mixin: dynamic compensation is on
    mixes: bool = False  # DualFast's mixin: the outputs are mixed with the anchor

    def table_layout(self) -> TableLayout:
        """What this scheduler's steps read and write (history ring, kept sample, noise, anchor); families
        return ``super().table_layout().union(their own)`` so that mixins add what they need."""
        return TableLayout()

    def step_rule(self, grid: Grid, i: int, n: int) -> StepRule:
        raise NotImplementedError

    def normalize_config(self) -> None:
        """Rewrite the config into its canonical form once at construction (read option files, drop settings
        that change nothing); overrides call ``super()``."""

    def check_config(self) -> None:
        """Raise ValueError for bad family options, after ``normalize_config``; overrides call ``super()``."""

    def family_grid(self, grid_times: np.ndarray) -> np.ndarray:
        """Hook for families that evaluate at extra points (Runge-Kutta stages); default: unchanged."""
        return grid_times

    def prepare_plan(self, grid: Grid) -> None:
        """Run before the table is built for ``grid`` (e.g. resolve per-step options); overrides call
        ``super()``."""

    def current_output(self, grid: Grid, i: int, n: int) -> Lin:
        """Step i's model output as the solver uses it (DualFast mixes it); default ``M(0)``."""
        return self.mix_output(grid, i, n, M(0))

    def mix_output(self, grid: Grid, i: int, n: int, out: Lin, target: str | None = None) -> Lin:
        """``out``, an output of step i as a ``target`` prediction (default the family's), as the solver uses
        it: unchanged here, mixed by DualFast."""
        return out

    def recorded_output(self, grid: Grid, i: int, n: int) -> Lin:
        """The history entry of step i and the predictor's current output (dynamic compensation corrects it);
        default ``current_output``."""
        return self.current_output(grid, i, n)

    # ----------------------------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, preset: str | None = None, **kwargs):
        """diffusers' from_config, reading any diffusers scheduler config as ``config_loading.translate_config``
        describes (other families' solver options take our defaults; unsupported schedules are refused).

        ``preset``: a named setting of the solver and its grid for users who cannot tune (``presets``; README
        "Presets"); the config keeps the model's schedule and prediction type, ``kwargs`` still win."""
        if preset is not None:
            if preset not in cls.presets:
                with_presets = sorted(k.__name__ for k in all_subclasses(SolverScheduler) if k.presets)
                raise ValueError(f"Unknown preset {preset!r} for {cls.__name__}; valid choices: {sorted(cls.presets)}"
                                 f" (schedulers with presets: {', '.join(with_presets)})")
            kwargs = {**GRID_FLAGS_OFF, **cls.presets[preset], **kwargs}
        if config is not None:
            config = translate_config(cls, config, SolverScheduler)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def _setup(self) -> None:
        check_common_options(self.config, type(self).__name__, self.order_range)
        resolve_spacing(self.config)  # validates the grid name
        training = training_schedule(self.config)
        self.noise_schedule = training.noise_schedule
        if training.betas is not None:  # diffusers' attributes, read by pipelines and training scripts
            self.betas, self.alphas, self.alphas_cumprod = training.betas, training.alphas, training.alphas_cumprod
        self.normalize_config()
        self.check_config()
        self.num_inference_steps = None
        self._begin_index = None
        self._plan: StepPlan | None = None
        self._grid: Grid | None = None
        self._device: torch.device | None = None
        self._started = False
        self._history: torch.Tensor | None = None
        T = self.config.num_train_timesteps
        if isinstance(self.noise_schedule, EDM):  # model times are log(sigma) / 4, not 0..T-1
            times = np.linspace(self.noise_schedule.t_max, self.noise_schedule.t_min, T)
        else:
            times = np.arange(T - 1, -1, -1, dtype=np.float64)
        self.timesteps = torch.from_numpy(times.astype(np.float32))
        self.sigmas = torch.from_numpy(self.noise_schedule.grid_sigma(self.timesteps.numpy()).astype(np.float32))

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
        if begin != 0 and not self.supports_begin_index:
            raise ValueError(f"{type(self).__name__} runs from its first step; set_begin_index / img2img starts "
                             f"inside the grid are not supported")
        output_type = "sample" if self.config.thresholding else self.config.prediction_type
        self.prepare_plan(self._grid)
        self._plan = build_plan(self._grid, begin, self.step_rule, self.table_layout(), target=self.target,
                                output_type=output_type)
        if self.config.thresholding:
            self._convert_host = _data_conversion(self.config.prediction_type, self._grid)
        # on the pipeline's device already (set_timesteps(device=...)), so the first step copies nothing
        self._table = torch.from_numpy(self._plan.table.astype(np.float32)).to(self._device)
        self._write_slots = self._plan.write_slots
        self._slots = torch.from_numpy(np.array(self._write_slots)).to(self._device)  # a writable copy for torch
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
        """The coefficient table of the current run (read-only arrays): ``table`` (steps, rows, columns) in float64,
        the history ``slots`` and its ``layout`` (``layout.py``)."""
        if self._plan is None:
            raise ValueError(f"{type(self).__name__} has no plan before set_timesteps")
        return self._plan

    @property
    def history(self) -> torch.Tensor | None:
        """A copy of the run's history ring (K earlier outputs, then K samples for families that record them);
        ``plan.write_slots[i]`` says where step i wrote. None before the first step or without history."""
        return None if self._history is None else self._history.clone()

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
        layout = self._plan.layout
        K = layout.ring_size
        self._history = torch.zeros((K, *sample.shape), dtype=model_output.dtype, device=device) if K else None
        self._saved = torch.zeros_like(sample) if layout.saved else None
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
        coeffs, slot, convert = self._next_coefficients(sample.device)
        first = model_output.contiguous()
        if convert is not None:
            first = self._threshold(lincomb(None, convert, [sample, first])).to(model_output.dtype)
        layout = self._plan.layout
        if layout.noise and variance_noise is None:
            variance_noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
        if first_step and layout.anchor:  # once per run: the first output as a noise prediction, in its dtype
            anchor_coeffs = self._plan.anchor_coeffs if isinstance(coeffs, np.ndarray) else \
                torch.from_numpy(self._plan.anchor_coeffs.astype(np.float32)).to(sample.device)
            self._anchor = lincomb(None, anchor_coeffs, [sample.contiguous(), first])
        tensors = layout.gather(x=sample.contiguous(), out=first, saved=self._saved, anchor=self._anchor,
                                noise=None if variance_noise is None else variance_noise.to(device=sample.device))
        # the rows before the ring's: a new x_next, and the kept sample updated in place
        outs = [self._saved if name == "saved_next" else None for name in layout.outputs if not name.endswith("_entry")]
        results = lincomb(outs, coeffs, tensors, history=self._history,
                          write_slot=slot if self._history is not None else None, columns=self._plan.row_columns)
        prev_sample = results[0]
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def _next_coefficients(self, device: torch.device):
        """This step's coefficient rows, the ring slots it writes and, with thresholding, the data-prediction
        conversion; advances the step index.

        On the CPU (eager, torch backend) the host float64 table is the device's own memory: plain indexing.
        Elsewhere a gather on the device, not a select: no ``.item()``, traceable by ``torch.compile``.
        """
        if device.type == "cpu" and not torch.compiler.is_compiling() and not use_triton(device):
            i = int(self._step_tensor)
            self._step_tensor.add_(1)
            convert = self._convert_host[i] if self.config.thresholding else None
            return self._plan.table[i], self._write_slots[i], convert
        idx = self._step_tensor.reshape(1)
        self._step_tensor = self._step_tensor + 1
        convert = self._convert_table.index_select(0, idx)[0] if self.config.thresholding else None
        return self._table.index_select(0, idx)[0], self._slots.index_select(0, idx)[0], convert

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
