"""UniPC (arXiv 2302.04867): the UniP predictor and the UniC corrector, B(h) variants bh1 / bh2.

With hh = -h (data prediction) or h (noise prediction), h_phi_1 = expm1(hh) and
B(h) = hh (bh1) or expm1(hh) (bh2), a step of order p from s0 to t through earlier points s_k is

    x_t = (sigma_t / sigma_s0) x - alpha_t h_phi_1 m_s0 - alpha_t B(h) sum_k rho_k (m_sk - m_s0) / r_k

with r_k = (lambda_sk - lambda_s0) / h and rho the solution of R rho = b, R_jk = r_k^j,
b_j = j! h_phi_(j+1) / B(h) (Algorithm 2 of the paper; noise prediction swaps alpha for sigma). UniC reuses
the model output at t as an extra point (r = 1) to correct x_t before the next predictor, so it costs no
extra model call. Warm-up and ``lower_order_final`` follow diffusers' UniPCMultistepScheduler; a step whose
order is undefined (into sigma = 0, where h = inf makes every r_k = 0 and R singular) lowers its order.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from typing_extensions import Unpack

from .dc_solver.compensation import CompensationOptions, DynamicCompensation
from .dualfast import DualFastMixing, DualFastOptions
from .engine import DATA, SAVED, Grid, Lin, M, SolverScheduler, StepRule, TableLayout, X
from .engine.options import CommonOptions

SOLVER_TYPES = ("bh1", "bh2")


def unipc_weights(lam: np.ndarray, s0: int, t: int, earlier: list[int], order: int, predict_x0: bool,
                  solver_type: str, corrector: bool):
    """(h_phi_1, B(h), rks, rhos) for one UniP (corrector=False) or UniC (corrector=True) update."""
    h = lam[t] - lam[s0]
    rks = np.array([(lam[p] - lam[s0]) / h for p in earlier] + [1.0])
    hh = -h if predict_x0 else h
    h_phi_1 = np.expm1(hh)
    b_h = hh if solver_type == "bh1" else np.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    R, b = [], []
    for j in range(1, order + 1):
        R.append(rks ** (j - 1))
        b.append(h_phi_k * math.factorial(j) / b_h)
        h_phi_k = h_phi_k / hh - 1.0 / math.factorial(j + 1)
    R, b = np.array(R), np.array(b)
    undefined = np.full(max(order - (not corrector), 0), np.nan)  # the caller lowers the order
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(b))):
        return h_phi_1, b_h, rks, undefined
    try:
        if corrector:
            rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
        elif order == 1:
            rhos = np.zeros(0)
        elif order == 2:
            rhos = np.array([0.5])
        else:
            rhos = np.linalg.solve(R[:-1, :-1], b[:-1])
    except np.linalg.LinAlgError:  # coinciding r_k: a step into sigma = 0 (h = inf) gives r_k = 0 for all k
        return h_phi_1, b_h, rks, undefined
    return h_phi_1, b_h, rks, rhos


class UniPCOptions(CommonOptions, CompensationOptions, DualFastOptions, total=False):
    """The options UniPC takes besides its own."""


class UniPCScheduler(DualFastMixing, DynamicCompensation, SolverScheduler):
    """UniPC as a diffusers scheduler (arXiv 2302.04867).

    Options (diffusers' names): ``solver_order`` 1-3, ``solver_type`` "bh1" / "bh2", ``predict_x0``,
    ``lower_order_final``, ``disable_corrector`` (step indices whose following corrector is skipped), and
    ``use_corrector=False`` for UniP alone. Every grid / schedule option of ``SolverScheduler`` applies, and
    the ``dc_*`` options of dynamic compensation (``dc_solver/compensation.py``; ``DCSolverScheduler`` is UniPC with it)
    and the ``dualfast_*`` options of DualFast (``dualfast.py``, arXiv 2506.13058; with ``predict_x0=False``
    the noise-prediction, DPM-Solver-like form).
    """

    config_family = ("UniPCMultistepScheduler", "UniPCScheduler", "DCSolverScheduler")
    presets = {  # README "Presets": the evidence behind them
        "few-step": {"solver_order": 2, "solver_type": "bh2", "timestep_spacing": "quadratic", "predict_x0": True,
                     "lower_order_final": True},
    }

    def __init__(self, *, solver_type: Literal["bh1", "bh2"] = "bh2", predict_x0: bool = True,
                 use_corrector: bool = True, disable_corrector: list[int] = [],  # noqa: B006 (never mutated)
                 solver_p: None = None,  # diffusers' "another scheduler as predictor": refused, see check_config
                 **options: Unpack[UniPCOptions]) -> None:
        """UniPC's own options; ``options``: DC-Solver's, DualFast's and the common ones (the constructor is
        generated from this signature, see ``SolverScheduler.__init_subclass__``)."""

    def check_config(self) -> None:
        super().check_config()
        cfg = self.config
        if cfg.solver_type not in SOLVER_TYPES:
            raise ValueError(f"Unknown solver_type {cfg.solver_type!r}; valid choices: {SOLVER_TYPES}")
        if cfg.solver_p is not None:
            raise ValueError("solver_p (another scheduler as UniPC's predictor) is not supported: leave it None. "
                             "For a DPM-Solver++ predictor with a UniC-style corrector, use USFScheduler with a "
                             "schedule whose steps set corrector='pseudo'.")
        if not all(isinstance(i, int) for i in cfg.disable_corrector):
            raise ValueError("disable_corrector must be a list of step indices (ints)")

    @property
    def target(self) -> str:
        return "data" if self.config.predict_x0 else "noise"

    def table_layout(self) -> TableLayout:
        """solver_order earlier outputs and the corrected sample x_i^c, the base of the next corrector."""
        return super().table_layout().union(TableLayout(history=self.config.solver_order, saved=True))

    def predictor_order(self, grid: Grid, i: int, n: int) -> int:
        cfg = self.config
        order = min(cfg.solver_order, grid.num_steps - i) if cfg.lower_order_final else cfg.solver_order
        return max(1, min(order, n + 1))

    def _update(self, grid: Grid, base: Lin, s0: int, t: int, order: int, m_s0: Lin, earlier: list[tuple[int, Lin]],
                new: Lin | None) -> Lin:
        """x_t from ``base`` at s0 using m_s0, earlier (index, M) pairs and, for UniC, the new output."""
        cfg = self.config
        h_phi_1, b_h, rks, rhos = unipc_weights(grid.lam, s0, t, [p for p, _ in earlier], order, cfg.predict_x0,
                                                cfg.solver_type, corrector=new is not None)
        a_t, s_t = grid.alpha[t], grid.sigma[t]
        if cfg.predict_x0:
            scale, x_next = a_t, (s_t / grid.sigma[s0]) * base
        else:
            scale, x_next = s_t, (a_t / grid.alpha[s0]) * base
        x_next = x_next - (scale * h_phi_1) * m_s0
        residual = Lin()
        for rho, rk, (_, m_k) in zip(rhos, rks, earlier):
            residual = residual + (rho / rk) * (m_k - m_s0)
        if new is not None:
            residual = residual + rhos[-1] * (new - m_s0)
        return x_next - (scale * b_h) * residual

    def step_rule(self, grid: Grid, i: int, n: int) -> StepRule:
        cfg = self.config
        # UniC: correct x_i with the output just computed at it (order of the previous predictor)
        x_c = X
        if cfg.use_corrector and n >= 1 and (i - 1) not in cfg.disable_corrector:
            order_c = self.predictor_order(grid, i - 1, n - 1)
            earlier = [(i - 1 - k, M(k + 1)) for k in range(1, order_c)]
            new = self.current_output(grid, i, n)  # DualFast's mixed output (M(0) without it)
            corrected = self._update(grid, SAVED, i - 1, i, order_c, M(1), earlier, new=new)
            if corrected.is_finite():
                x_c = corrected
        # UniP: predict x_{i+1}; lower the order where a point at infinite lambda makes it degenerate
        m0 = self.recorded_output(grid, i, n)  # dynamic compensation and DualFast act here, after the corrector
        for order in range(self.predictor_order(grid, i, n), 0, -1):
            earlier = [(i - k, M(k)) for k in range(1, order)]
            x_next = self._update(grid, x_c, i, i + 1, order, m0, earlier, new=None)
            if x_next.is_finite():
                return StepRule(x_next, saved_next=x_c, history_entry=m0)
        # noise prediction at alpha = 0 (flow grids starting at sigma = 1) or into sigma = 0: the data-form
        # first-order step (with DualFast's mixing, which is 0 at alpha = 0, the first step)
        h = grid.lam[i + 1] - grid.lam[i]
        data = self.mix_output(grid, i, n, DATA, target="data")
        return StepRule((grid.sigma[i + 1] / grid.sigma[i]) * x_c - (grid.alpha[i + 1] * np.expm1(-h)) * data,
                        saved_next=x_c, history_entry=m0)

