"""Dynamic compensation (DC-Solver, arXiv 2409.03755) as an option of multistep solvers.

At step i >= 2, after UniC's corrector and before the predictor, the newest buffered model output is
replaced by the Lagrange polynomial through the last three buffered outputs (in the model's time variable),
evaluated at

    t' = t_{i-1} + rho_i (t_i - t_{i-1}).

rho_i = 1 gives t' = t_i, the output itself: a no-op. The compensated output is what the predictor uses
and what the history keeps (later steps and the next corrector see it), so in the coefficient table it is
one more linear combination of M(0), M(1), M(2).

Ratios come from, in order: ``dc_ratios`` (one per step), ``dc_cpr`` (a fitted cascade polynomial
regression, see ``cpr.py``: its config dict, a shipped name, or the path of a ``calibrate-dc --cpr-out`` file, whose
contents the config then holds; evaluated at the run's NFE and ``dc_guidance_scale``), else none (or, for
``DCSolverScheduler``, all ones with a warning that it is uncalibrated).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Annotated, Any, ClassVar, TypedDict

import numpy as np

from ..engine import Grid, Lin, M, TableLayout
from ..engine.config_files import read_option_file
from ..engine.options import option_defaults
from .cpr import FIRST_COMPENSATED_STEP, CascadePolynomialRegression

DC_POINTS = 3  # Lagrange interpolation through three buffered outputs (the paper's dc_order 2)

SHIPPED_CPR = {"digits": os.path.join(os.path.dirname(__file__), "..", "..", "models", "digits", "weights",
                                      "dc_cpr.json")}


def lagrange_weights(nodes: np.ndarray, at: float) -> np.ndarray:
    """Weights l_j with p(at) = sum_j l_j f(nodes_j) for the interpolating polynomial through ``nodes``."""
    nodes = np.asarray(nodes, dtype=np.float64)
    weights = np.ones(len(nodes))
    for j in range(len(nodes)):
        for k in range(len(nodes)):
            if k != j:
                weights[j] *= (at - nodes[k]) / (nodes[j] - nodes[k])
    return weights


def compensated_output(grid: Grid, i: int, ratio: float, current: Lin | None = None) -> Lin:
    """The compensated output of step i: sum_j l_j M(j) at t' = t_{i-1} + ratio (t_i - t_{i-1}), with
    ``current`` (default M(0)) standing for the newest output M(0)."""
    at = grid.t[i - 1] + ratio * (grid.t[i] - grid.t[i - 1])
    weights = lagrange_weights(grid.t[[i - j for j in range(DC_POINTS)]], at)
    out = weights[0] * (M(0) if current is None else current)
    for j in range(1, DC_POINTS):
        out = out + weights[j] * M(j)
    return out


CPR_CHOICES = (f"a shipped CPR name (valid names: {sorted(SHIPPED_CPR)}), the path of a JSON file written by "
               f"`diffusers-ext calibrate-dc --cpr-out`, or its contents as a dict")


def is_cpr_file(cpr) -> bool:
    """True when ``cpr`` names a file (a path object, or a string that is no shipped name)."""
    return isinstance(cpr, os.PathLike) or (isinstance(cpr, str) and cpr not in SHIPPED_CPR)


def read_cpr_file(path: str | os.PathLike) -> dict:
    """The CPR config in a ``calibrate-dc --cpr-out`` file, validated."""
    return read_option_file("dc_cpr", path, CPR_CHOICES, CascadePolynomialRegression.from_config, "shipped CPR")


def load_cpr(cpr: str | os.PathLike | dict) -> CascadePolynomialRegression:
    """A CPR from its config dict, a shipped one by name (e.g. "digits"), or a ``--cpr-out`` file."""
    if is_cpr_file(cpr):
        cpr = read_cpr_file(cpr)
    elif isinstance(cpr, str):
        with open(SHIPPED_CPR[cpr]) as f:
            cpr = json.load(f)
    return CascadePolynomialRegression.from_config(cpr)


class CompensationOptions(TypedDict, total=False):
    """Dynamic compensation's options (``Annotated[type, default]``)."""

    dc_ratios: Annotated[list[float] | None, None]  # one ratio per step
    # a CPR config dict, a shipped CPR's name, or the path of a --cpr-out file
    dc_cpr: Annotated[dict | str | os.PathLike | None, None]
    dc_guidance_scale: Annotated[float | None, None]  # the guidance scale the CPR is evaluated at


class DynamicCompensation:
    """Mixin for multistep families: the ``dc_*`` options and the compensated current output.

    A family uses ``self.recorded_output(grid, i, n)`` where its predictor used ``M(0)`` and records it with
    ``StepRule(history_entry=...)``; the mixin adds the history it needs to the family's ``table_layout``.
    """

    family_options: ClassVar[dict[str, Any]] = option_defaults(CompensationOptions)
    option_fields: ClassVar[type] = CompensationOptions
    always_compensate: ClassVar[bool] = False  # DCSolverScheduler: on even when uncalibrated (ratios 1)

    @property
    def compensates(self) -> bool:
        cfg = self.config
        return self.always_compensate or cfg.dc_ratios is not None or cfg.dc_cpr is not None

    def table_layout(self) -> TableLayout:
        """The history must hold the DC_POINTS - 1 outputs the interpolation reads."""
        return super().table_layout().union(TableLayout(history=DC_POINTS - 1 if self.compensates else 0))

    def normalize_config(self) -> None:
        """A ``dc_cpr`` file is read here; the config keeps its contents instead of the path."""
        super().normalize_config()
        if is_cpr_file(self.config.dc_cpr):
            self.register_to_config(dc_cpr=read_cpr_file(self.config.dc_cpr))

    def check_config(self) -> None:
        super().check_config()
        dc_ratios = self.config.dc_ratios
        if dc_ratios is not None:
            ratios = np.asarray(dc_ratios, dtype=np.float64) if isinstance(dc_ratios, (list, tuple)) else None
            if ratios is None or ratios.ndim != 1 or not np.all(np.isfinite(ratios)):
                raise ValueError(f"dc_ratios must be a list of finite numbers, one per step; got {dc_ratios!r}")
        if self.config.dc_cpr is not None:
            load_cpr(self.config.dc_cpr)  # validates

    def resolve_ratios(self, num_steps: int) -> np.ndarray | None:
        """One ratio per step of a ``num_steps`` run, or None without compensation."""
        cfg = self.config
        if cfg.dc_ratios is not None:
            ratios = np.asarray(cfg.dc_ratios, dtype=np.float64)
            if len(ratios) != num_steps:
                raise ValueError(f"dc_ratios has {len(ratios)} entries but the run has {num_steps} steps: calibrate "
                                 f"for this number of steps, or use dc_cpr to predict ratios for it")
            return ratios
        if cfg.dc_cpr is not None:
            if cfg.dc_guidance_scale is None:
                raise ValueError("dc_cpr predicts ratios for an (NFE, guidance scale): set dc_guidance_scale to the "
                                 "pipeline's guidance_scale (1.0 without guidance)")
            return load_cpr(cfg.dc_cpr).ratios(num_steps, float(cfg.dc_guidance_scale))
        if self.always_compensate:
            warnings.warn(f"{type(self).__name__} has neither dc_ratios nor dc_cpr: it is uncalibrated and runs with "
                          f"ratios 1 (plain UniPC). Calibrate with diffusers_ext.search.calibrate_dc.", stacklevel=3)
            return np.ones(num_steps)
        return None

    @property
    def compensation_ratios(self) -> np.ndarray | None:
        """The ratio of each step of the current run (set by ``set_timesteps``), or None without compensation."""
        return None if getattr(self, "_dc_ratios", None) is None else self._dc_ratios.copy()

    def prepare_plan(self, grid: Grid) -> None:
        super().prepare_plan(grid)
        self._dc_ratios = self.resolve_ratios(grid.num_steps)

    def recorded_output(self, grid: Grid, i: int, n: int) -> Lin:
        """The current output, compensated when this step has a ratio and three buffered outputs."""
        current = self.current_output(grid, i, n)
        ratios = getattr(self, "_dc_ratios", None)
        if ratios is None or n < FIRST_COMPENSATED_STEP or i < FIRST_COMPENSATED_STEP or ratios[i] == 1.0:
            return current
        return compensated_output(grid, i, float(ratios[i]), current)
