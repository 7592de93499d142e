"""DEIS (arXiv 2204.13902): exponential integrators on the noise prediction.

With rho = sigma / alpha and v = x / alpha, the probability-flow ODE is dv/drho = eps(x, t), so

    x_t = (alpha_t / alpha_s) x_s + alpha_t * integral_{rho_s}^{rho_t} eps(t(rho)) drho.

- ``tab`` (tAB-DEIS): eps is the Lagrange polynomial in model time t through the last p outputs; the
  weights integral of l_j(t(rho)) drho are computed by composite Gauss-Legendre quadrature, split where the
  schedule is only piecewise smooth (DEIS' own code uses a 10,000-point Riemann sum).
- ``rhoab`` (rhoAB-DEIS): the Lagrange polynomial in rho, integrated exactly.
- ``logrho`` (diffusers' DEISMultistepScheduler): the Lagrange polynomial in log(rho), integrated exactly
  (integral of P(u) e^u du = e^u sum_m (-1)^m P^(m)(u), u = log rho).
- ``ipndm``: Adams-Bashforth in rho with the fixed weights [1], [3/2, -1/2], [23, -16, 5]/12,
  [55, -59, 37, -9]/24 (the DEIS paper's improved PNDM).
- ``heun``, ``kutta3``, ``rk4`` (rhoRK-DEIS): Runge-Kutta in rho. ``num_inference_steps`` counts model
  calls: the calls are split into RK blocks whose stages are extra timesteps, and the step into
  sigma = 0 is an Euler step, so the model is never called at sigma = 0.

The default grid is quadratic in t (``timestep_spacing="quadratic"``), as in the paper. Order 1 of the
multistep types is DDIM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.polynomial import Polynomial
from typing_extensions import Unpack

from .engine import DATA, SAVED, Grid, Lin, M, SolverScheduler, StepRule, TableLayout, X, warmup_order
from .engine.options import CommonOptions

MULTISTEP_TYPES = ("tab", "rhoab", "logrho", "ipndm")
RK_TABLEAUX = {  # c (stage positions in rho), A (stage weights), b (final weights)
    "euler": ([0.0], [[]], [1.0]),
    "heun": ([0.0, 1.0], [[], [1.0]], [0.5, 0.5]),
    "kutta3": ([0.0, 0.5, 1.0], [[], [0.5], [-1.0, 2.0]], [1 / 6, 2 / 3, 1 / 6]),
    "rk4": ([0.0, 0.5, 0.5, 1.0], [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
}
RK_TYPES = ("heun", "kutta3", "rk4")
SOLVER_TYPES = MULTISTEP_TYPES + RK_TYPES
IPNDM_WEIGHTS = ([1.0], [1.5, -0.5], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24])
_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(8)


def lagrange_basis(nodes: np.ndarray) -> list[Polynomial]:
    """The Lagrange basis polynomials l_j with l_j(nodes[k]) = delta_jk."""
    basis = []
    for j, xj in enumerate(nodes):
        others = np.delete(nodes, j)
        basis.append(Polynomial.fromroots(others) / np.prod(xj - others) if len(others) else Polynomial([1.0]))
    return basis


def gauss_legendre(f, a: float, b: float, breaks: np.ndarray | None = None, pieces: int = 16) -> np.ndarray:
    """Composite 8-point Gauss-Legendre integral of vector-valued f over [a, b], split at ``breaks``."""
    lo, hi = min(a, b), max(a, b)
    inner = breaks[(breaks > lo) & (breaks < hi)] if breaks is not None and len(breaks) else np.array([])
    edges = np.unique(np.concatenate([[lo, hi], inner])) if len(inner) else np.linspace(lo, hi, pieces + 1)
    mid, half = 0.5 * (edges[1:] + edges[:-1]), 0.5 * (edges[1:] - edges[:-1])
    x = (mid[:, None] + half[:, None] * _GAUSS_NODES[None, :]).reshape(-1)
    w = (half[:, None] * _GAUSS_WEIGHTS[None, :]).reshape(-1)
    total = (f(x) * w).sum(axis=-1)
    return total if b >= a else -total


def integral_times_exp(p: Polynomial, rho: float) -> float:
    """The antiderivative e^u sum_m (-1)^m p^(m)(u) of p(u) e^u at u = log(rho) (0 at rho = 0)."""
    if rho == 0.0:
        return 0.0
    u, total, sign = np.log(rho), 0.0, 1.0
    for _ in range(p.degree() + 1):
        total += sign * p(u)
        p, sign = p.deriv(), -sign
    return rho * total


@dataclass
class RKStage:
    method: str  # a key of RK_TABLEAUX
    stage: int
    start: int  # index of the block's first evaluation in the (expanded) grid
    end: int  # index of the point the block ends at


class DEISScheduler(SolverScheduler):
    """DEIS as a diffusers scheduler (arXiv 2204.13902).

    Options: ``solver_type`` one of tab, rhoab, logrho, ipndm (multistep, ``solver_order`` 1-3, ipndm 1-4),
    heun, kutta3, rk4 (Runge-Kutta in rho); ``lower_order_final``; every grid / schedule option of
    ``SolverScheduler`` (default grid: quadratic in t). ``logrho`` is diffusers' DEISMultistepScheduler; a
    config of that class (or any other) read by ``from_config`` takes our default, tab.
    """


    def __init__(self, *, solver_type: Literal["tab", "rhoab", "logrho", "ipndm", "heun", "kutta3", "rk4"] = "tab",
                 **options: Unpack[CommonOptions]) -> None:
        """DEIS's own option; ``options``: the common ones, with defaults solver_order=3 and
        timestep_spacing="quadratic" (the constructor is generated from this signature, see
        ``SolverScheduler.__init_subclass__``)."""

    default_overrides = {"solver_order": 3, "timestep_spacing": "quadratic"}
    presets = {  # README "Presets": iPNDM-3 on the quadratic grid, below diffusers' best at NFE 4-20 on the GMMs
        "few-step": {"solver_type": "ipndm", "solver_order": 3, "timestep_spacing": "quadratic",
                     "lower_order_final": True},
    }
    order_range = (1, 4)
    target = "noise"

    def check_config(self) -> None:
        super().check_config()
        cfg = self.config
        if cfg.solver_type not in SOLVER_TYPES:
            raise ValueError(f"Unknown solver_type {cfg.solver_type!r}; valid choices: {', '.join(SOLVER_TYPES)}")
        if cfg.solver_type in ("tab", "rhoab", "logrho") and cfg.solver_order > 3:
            raise ValueError(f"solver_order must be in [1, 3] for solver_type={cfg.solver_type!r} "
                             f"(ipndm allows 4), got {cfg.solver_order}")
        self._rk_stages: list[RKStage] = []

    @property
    def is_rk(self) -> bool:
        return self.config.solver_type in RK_TYPES

    def table_layout(self) -> TableLayout:
        """Multistep: order - 1 earlier outputs. Runge-Kutta: the block's earlier stages and its start sample."""
        if self.is_rk:
            return super().table_layout().union(
                TableLayout(history=len(RK_TABLEAUX[self.config.solver_type][0]) - 1, saved=True))
        return super().table_layout().union(TableLayout(history=self.config.solver_order - 1))

    # ------------------------------------------------------------------------------------- grids
    def family_grid(self, times: np.ndarray) -> np.ndarray:
        """RK types: the requested N calls become RK blocks on a sub-grid, plus their stage points."""
        if not self.is_rk:
            return times
        n_calls = len(times) - 1
        stages = len(RK_TABLEAUX[self.config.solver_type][0])
        final_zero = self.noise_schedule.rho(times[-1:])[0] == 0.0
        body = n_calls - 1 if final_zero else n_calls
        first_euler = not np.isfinite(self.noise_schedule.rho(times[:1])[0])  # alpha = 0: a data-form step
        full, rest = divmod(body - first_euler, stages)
        ladder = {1: "euler", 2: "heun", 3: "kutta3"}
        blocks = (["euler"] * first_euler + ([ladder[rest]] if rest else []) + [self.config.solver_type] * full
                  + (["euler"] if final_zero else []))
        sizes = [len(RK_TABLEAUX[m][0]) for m in blocks]
        bounds = times[np.concatenate([[0], np.cumsum(sizes)])]
        rho_bounds = self.noise_schedule.rho(bounds)
        expanded, self._rk_stages = [], []
        for b, method in enumerate(blocks):
            c = np.array(RK_TABLEAUX[method][0])
            start = len(expanded)
            for k, ck in enumerate(c):
                self._rk_stages.append(RKStage(method, k, start, start + len(c)))
                if k == 0:
                    expanded.append(bounds[b])
                else:
                    rho = rho_bounds[b] + ck * (rho_bounds[b + 1] - rho_bounds[b])
                    expanded.append(float(self.noise_schedule.t_of_rho(np.array([rho]))[0]))
        expanded.append(bounds[-1])
        return np.array(expanded)

    # ------------------------------------------------------------------------------------- rules
    def step_rule(self, grid: Grid, i: int, n: int) -> StepRule:
        a, rho = grid.alpha, grid.sigma / grid.alpha
        if grid.alpha[i] == 0.0:  # flow grids starting at sigma = 1: eps = x there, take the data-form step
            return StepRule((grid.sigma[i + 1] / grid.sigma[i]) * X + grid.alpha[i + 1] * DATA, saved_next=X)
        if self.is_rk:
            return self._rk_rule(grid, a, rho, i, n)
        cfg = self.config
        order = warmup_order(cfg.solver_order, i, n, grid.num_steps, cfg.lower_order_final)
        if cfg.solver_type != "tab":  # rho-space interpolation cannot use a point at rho = inf
            while order > 1 and not np.isfinite(rho[i - order + 1]):
                order -= 1
        points = [i - j for j in range(order)]
        if cfg.solver_type == "ipndm":
            eps = sum((w * M(j) for j, w in enumerate(IPNDM_WEIGHTS[order - 1])), Lin())
            increment = (rho[i + 1] - rho[i]) * eps
        elif cfg.solver_type == "rhoab":
            basis = lagrange_basis(rho[points])
            weights = [(p.integ()(rho[i + 1]) - p.integ()(rho[i])) for p in basis]
            increment = sum((w * M(j) for j, w in enumerate(weights)), Lin())
        elif cfg.solver_type == "logrho":
            basis = lagrange_basis(np.log(rho[points]))
            weights = [integral_times_exp(p, rho[i + 1]) - integral_times_exp(p, rho[i]) for p in basis]
            increment = sum((w * M(j) for j, w in enumerate(weights)), Lin())
        else:
            weights = self._tab_weights(grid.t[points], rho[i], rho[i + 1])
            increment = sum((w * M(j) for j, w in enumerate(weights)), Lin())
        return StepRule((a[i + 1] / a[i]) * X + a[i + 1] * increment)

    def _tab_weights(self, nodes: np.ndarray, rho_s: float, rho_t: float) -> np.ndarray:
        """C_j = integral_{rho_s}^{rho_t} l_j(t(rho)) drho, l_j the Lagrange basis in model time."""
        basis = lagrange_basis(nodes)
        schedule = self.noise_schedule
        knots = schedule.rho(schedule.knots) if schedule.knots is not None else None

        def integrand(r):
            t = schedule.t_of_rho(r)
            return np.stack([p(t) for p in basis])

        return gauss_legendre(integrand, rho_s, rho_t, breaks=knots)

    def _rk_rule(self, grid: Grid, a: np.ndarray, rho: np.ndarray, i: int, n: int) -> StepRule:
        info = self._rk_stages[i]
        c, A, b = RK_TABLEAUX[info.method]
        k, start, end = info.stage, info.start, info.end
        if i - start > n:
            raise ValueError("DEIS Runge-Kutta types cannot begin inside an RK block; set_begin_index must "
                             f"point at a block start ({[s.start for s in self._rk_stages if s.stage == 0]})")
        base = X if k == 0 else SAVED
        v_n = base / a[start]
        d_rho = rho[end] - rho[start]
        if k + 1 < len(c):  # the next stage point
            weights, target = A[k + 1], i + 1
        else:
            weights, target = b, end
        # M(k - j) is the output of stage j of this block
        increment = sum((w * M(k - j) for j, w in enumerate(weights) if w != 0.0), Lin())
        x_next = a[target] * (v_n + d_rho * increment)
        return StepRule(x_next, saved_next=X if k == 0 else SAVED)
