"""DPM-Solver++ (arXiv 2211.01095): multistep 1-3, singlestep 2S/3S, SDE-DPM-Solver++(2M).

Data prediction m, lambda = log(alpha / sigma), h = lambda_t - lambda_s, phi1 = expm1(-h):

    1st order:  x_t = (sigma_t / sigma_s) x - alpha_t phi1 m0
    2M:         r0 = h0 / h, D1 = (m0 - m1) / r0,  x_t = ... - 0.5 alpha_t phi1 D1          (midpoint)
    3M:         D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1) / (r0 + r1),
                x_t = (sigma_t / sigma_s) x - alpha_t phi1 m0 + alpha_t phi2 D1 - alpha_t phi3 D2
                with phi2 = phi1 / h + 1, phi3 = phi2 / h - 0.5.

The SDE variant (arXiv 2211.01095, section 5) replaces exp(-h) by exp(-2h) in the data terms and adds
sigma_t sqrt(1 - exp(-2h)) noise. Warm-up uses lower orders; like diffusers, the last steps drop to lower
orders below 15 steps (``lower_order_final``) and the step into sigma = 0 is first order. A grid starting at
alpha = 0 (a flow grid's sigma = 1) has no derivative information there: multistep lowers the order, singlestep
takes that first step alone before its blocks.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from typing_extensions import Unpack

from .dc_solver.compensation import CompensationOptions, DynamicCompensation
from .dualfast import DualFastMixing, DualFastOptions
from .engine import NOISE, SAVED, Grid, M, SolverScheduler, StepRule, TableLayout, X, warmup_order
from .engine.options import CommonOptions

ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")


def singlestep_orders(num_steps: int, order: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """Order of each step of singlestep DPM-Solver: blocks 1, 2, .., order (diffusers' partition)."""
    if lower_order_final:
        full, rest = divmod(num_steps, order)
        if order == 3:
            orders = [1, 2, 3] * (full - 1) + [1, 2, 1] if rest == 0 else [1, 2, 3] * full + list(range(1, rest + 1))
        elif order == 2:
            orders = [1, 2] * (full - 1) + [1, 1] if rest == 0 else [1, 2] * full + [1]
        else:
            orders = [1] * num_steps
    else:
        orders = (list(range(1, order + 1)) * (num_steps // order + 1))[:num_steps]
    if final_zero:
        orders[-1] = 1
    return orders


class DPMSolverPPOptions(CommonOptions, CompensationOptions, DualFastOptions, total=False):
    """The options DPM-Solver++ takes besides its own."""


class DPMSolverPPScheduler(DualFastMixing, DynamicCompensation, SolverScheduler):
    """DPM-Solver++ as a diffusers scheduler (arXiv 2211.01095).

    Options (diffusers' names): ``solver_order`` 1-3, ``algorithm_type`` "dpmsolver++" or
    "sde-dpmsolver++", ``solver_type`` "midpoint" or "heun", ``singlestep`` (2S/3S instead of multistep),
    ``lower_order_final``, ``euler_at_final``, ``thresholding`` and every grid / schedule option of
    ``SolverScheduler``.

    Predictor-only dynamic compensation (DC-Solver, arXiv 2409.03755, section 4.4): the ``dc_*`` options of
    ``dc_solver/compensation.py`` (multistep only).

    DualFast (arXiv 2506.13058): the ``dualfast_*`` options of ``dualfast.py`` (multistep only) mix each
    output with the first one in noise space; with ``solver_order=1`` this is DualFast-DDIM.

    ``third_order_taylor``: the published 3M update (official code and diffusers) weights
    D2 = (D1_0 - D1_1) / (r0 + r1) = h^2 m''/2 with phi3, whose Taylor coefficient multiplies h^2 m'', so
    3M converges at order 2 (measured: endpoint-error slope 2.0 on the GMM, tests/test_accuracy.py). True
    doubles D2 and restores order 3. Off by default so 3M matches diffusers. SDE 3M: the exact weight of
    h^2 m'' under the exp(-2h) kernel is phi3 = phi2 / (2h) - 0.5 with phi2 = expm1(-2h) / (2h) + 1; diffusers'
    SDE 3M (the default here) uses + 0.5, a D2 term wrong by O(h^2) per step (first order in the drift);
    ``third_order_taylor`` uses the exact weight: third order in the drift, while the noise keeps the strong
    error first order, as for SDE 2M (tests/test_valid_config_crashes.py).
    """

    config_family = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
                     "DPMSolverMultistepInverseScheduler")
    presets = {  # README "Presets": the evidence behind them
        "few-step": {"solver_order": 2, "timestep_spacing": "quadratic", "algorithm_type": "dpmsolver++",
                     "singlestep": False, "lower_order_final": True},
    }

    def __init__(self, *, algorithm_type: Literal["dpmsolver++", "sde-dpmsolver++"] = "dpmsolver++",
                 solver_type: Literal["midpoint", "heun"] = "midpoint", singlestep: bool = False,
                 euler_at_final: bool = False, third_order_taylor: bool = False,
                 **options: Unpack[DPMSolverPPOptions]) -> None:
        """DPM-Solver++'s own options; ``options``: DC-Solver's, DualFast's and the common ones (the constructor
        is generated from this signature, see ``SolverScheduler.__init_subclass__``)."""

    target = "data"

    def normalize_config(self) -> None:
        super().normalize_config()
        if self.config.singlestep and self.config.solver_order == 1:  # singlestep order 1 is multistep order 1
            self.register_to_config(singlestep=False)

    def check_config(self) -> None:
        super().check_config()
        cfg = self.config
        if cfg.singlestep and self.compensates:
            raise ValueError("dynamic compensation (dc_ratios / dc_cpr) needs multistep DPM-Solver++; set "
                             "singlestep=False")
        if cfg.singlestep and self.mixes:
            raise ValueError("DualFast (dualfast_strength > 0) needs multistep DPM-Solver++; set singlestep=False")
        if cfg.algorithm_type in ("dpmsolver", "sde-dpmsolver"):
            raise ValueError(f"algorithm_type={cfg.algorithm_type!r} (DPM-Solver on the noise prediction) is not "
                             f"implemented; valid choices: {ALGORITHM_TYPES}. UniPCScheduler(predict_x0=False, "
                             f"use_corrector=False) is the noise-prediction multistep solver of this package.")
        if cfg.algorithm_type not in ALGORITHM_TYPES:
            raise ValueError(f"Unknown algorithm_type {cfg.algorithm_type!r}; valid choices: {ALGORITHM_TYPES}")
        if cfg.solver_type not in SOLVER_TYPES:
            raise ValueError(f"Unknown solver_type {cfg.solver_type!r}; valid choices: {SOLVER_TYPES}")
        if cfg.singlestep and cfg.algorithm_type != "dpmsolver++":
            raise ValueError("singlestep=True supports algorithm_type='dpmsolver++' only")

    def table_layout(self) -> TableLayout:
        """order - 1 earlier outputs; singlestep: also the block's start sample; SDE: fresh noise."""
        cfg = self.config
        return super().table_layout().union(TableLayout(history=cfg.solver_order - 1, saved=cfg.singlestep,
                                                        noise=cfg.algorithm_type == "sde-dpmsolver++"))

    # ------------------------------------------------------------------------------------- rules
    def _multistep_order(self, grid: Grid, i: int, n: int) -> int:
        cfg, N = self.config, grid.num_steps
        order = warmup_order(cfg.solver_order, i, n, N, cfg.lower_order_final)
        if i == N - 1 and (cfg.euler_at_final or grid.sigma[N] == 0.0):
            order = 1
        # a point at infinite lambda carries no derivative information
        while order > 1 and not np.all(np.isfinite(grid.lam[i - order + 1: i + 2])):
            order -= 1
        return order

    def step_rule(self, grid: Grid, i: int, n: int) -> StepRule:
        if self.config.singlestep:
            return self._singlestep_rule(grid, i, n)
        order = self._multistep_order(grid, i, n)
        lam, alpha, sigma = grid.lam, grid.alpha, grid.sigma
        t, s0 = i + 1, i
        h = lam[t] - lam[s0]
        a_t = alpha[t]
        sde = self.config.algorithm_type == "sde-dpmsolver++"
        if sde:
            base = (sigma[t] / sigma[s0] * np.exp(-h)) * X + NOISE * (sigma[t] * np.sqrt(-np.expm1(-2.0 * h)))
            phi1 = np.expm1(-2.0 * h)  # plays the role of expm1(-h) in the data terms
            hh = 2.0 * h
        else:
            base = (sigma[t] / sigma[s0]) * X
            phi1 = np.expm1(-h)
            hh = h
        m0 = self.recorded_output(grid, i, n)  # predictor-only dynamic compensation acts here
        x_next = base - (a_t * phi1) * m0
        if order == 2:
            r0 = (lam[s0] - lam[s0 - 1]) / h
            d1 = (m0 - M(1)) / r0
            if self.config.solver_type == "midpoint":
                x_next = x_next - (0.5 * a_t * phi1) * d1
            else:
                x_next = x_next + (a_t * (phi1 / hh + 1.0)) * d1
        elif order == 3:
            r0 = (lam[s0] - lam[s0 - 1]) / h
            r1 = (lam[s0 - 1] - lam[s0 - 2]) / h
            d1_0, d1_1 = (m0 - M(1)) / r0, (M(1) - M(2)) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)  # = h^2 m'' / 2 (the published formula)
            if self.config.third_order_taylor:
                d2 = 2.0 * d2  # the Taylor term needs h^2 m''; see the class docstring
            phi2 = phi1 / hh + 1.0
            # phi3 = phi2 / hh - 0.5 (hh = h, or 2h for the SDE's exp(-2h) kernel) weights h^2 m'' exactly;
            # diffusers' SDE 3M flips the constant (O(h^2) wrong per step, first order), kept unless third_order_taylor
            diffusers_sde = sde and not self.config.third_order_taylor
            phi3 = (phi1 + hh) / hh**2 + (0.5 if diffusers_sde else -0.5)
            x_next = x_next + (a_t * phi2) * d1 - (a_t * phi3) * d2
        return StepRule(x_next, history_entry=m0 if self.table_layout().history else None)

    def _singlestep_orders(self, grid: Grid, begin: int) -> list[int]:
        """Step orders from ``begin``: blocks of ``singlestep_orders``, after a lone first-order step where the
        grid starts at alpha = 0 (a flow grid's sigma = 1, lambda = -inf), which no higher-order block can span."""
        cfg, N = self.config, grid.num_steps
        lone = int(not np.isfinite(grid.lam[begin]))
        rest = N - begin - lone
        blocks = singlestep_orders(rest, cfg.solver_order, cfg.lower_order_final, grid.sigma[N] == 0.0) if rest else []
        return [1] * lone + blocks

    def _singlestep_rule(self, grid: Grid, i: int, n: int) -> StepRule:
        cfg = self.config
        j = self._singlestep_orders(grid, i - n)[n] - 1  # position in the block; the block started at step i - j
        lam, alpha, sigma = grid.lam, grid.alpha, grid.sigma
        b, t = i - j, i + 1
        base = X if j == 0 else SAVED
        h = lam[t] - lam[b]
        phi1 = np.expm1(-h)
        a_t = alpha[t]
        m_b = M(j)  # the output at the block start
        x_next = (sigma[t] / sigma[b]) * base - (a_t * phi1) * m_b
        if j == 1:
            r0 = (lam[i] - lam[b]) / h
            d1 = (M(0) - m_b) / r0
            if cfg.solver_type == "midpoint":
                x_next = x_next - (0.5 * a_t * phi1) * d1
            else:
                x_next = x_next + (a_t * (phi1 / h + 1.0)) * d1
        elif j == 2:
            r0, r1 = (lam[i] - lam[b]) / h, (lam[i - 1] - lam[b]) / h
            d1_0, d1_1 = (M(1) - m_b) / r1, (M(0) - m_b) / r0
            phi2 = phi1 / h + 1.0
            if cfg.solver_type == "midpoint":
                x_next = x_next + (a_t * phi2) * d1_1
            else:
                d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
                d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
                x_next = x_next + (a_t * phi2) * d1 - (a_t * ((phi1 + h) / h**2 - 0.5)) * d2
        return StepRule(x_next, saved_next=X if j == 0 else SAVED)

