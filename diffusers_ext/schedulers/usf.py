"""USF (unified sampling framework, arXiv 2312.07243): a scheduler that executes a solver schedule.

Each step i (from s = t_i to t = t_{i+1}, h = lambda_t - lambda_s) follows its own decisions
(``usf_schedule.py``): the Taylor expansion in lambda of the data prediction x0 or the noise prediction eps,

    data:  x_t = (sigma_t / sigma_s) x_s + alpha_t sum_{k<p} h^(k+1) phi_{k+1}(-h) D_k
    noise: x_t = (alpha_t / alpha_s) x_s - sigma_t sum_{k<p} h^(k+1) phi_{k+1}(h) D_k

with phi_1(z) = expm1(z) / z, phi_{k+1}(z) = (phi_k(z) - 1/k!) / z, D_0 the output at s and D_k (k >= 1)
the k-th lambda-derivative of the polynomial through the output at s and the step's chosen earlier points
(solving sum_j delta_a^j / j! D_j = F_a - F_s over those points, delta_a = lambda_a - lambda_s). D_1 may be
relaxed. A pseudo-corrector re-solves the step with one order more once the model has been evaluated at
its result (UniC-style, no extra call). The history keeps data predictions and, when a step expands noise
predictions, the samples they were computed at, so any earlier output converts to either type. Every
coefficient is folded into the usual float64 table: one fused kernel per step.

DDIM, DPM-Solver++ 2M and UniPC (bh1 / bh2) are schedules (``hand_designed_schedule``) and reproduce those
schedulers.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from typing_extensions import Unpack

from .engine import SAVED, Grid, Lin, M, S, SolverScheduler, StepRule, TableLayout, X
from .engine.config_files import read_option_file
from .engine.options import CommonOptions
from .usf_schedule import ScheduleError, SolverSchedule, StepDecision


def h_phi(k: int, h: float, prediction: str) -> float:
    """h^k phi_k(z), z = -h (data) or h (noise), by psi_1 = (h/z) expm1(z), psi_{k+1} = (h/z)(psi_k - h^k/k!):
    finite for k = 1 at h = inf (a data step into sigma = 0)."""
    sign = -1.0 if prediction == "data" else 1.0  # h / z
    psi = sign * math.expm1(sign * h)
    for j in range(1, k):
        psi = sign * (psi - h**j / math.factorial(j))
    return psi


def scaled_h_phi(k: int, h: float, prediction: str) -> float:
    """h phi_k = h^k phi_k / h^(k-1), the weight of h^(k-1) D_(k-1); its limit 1 / (k-1)! at h = inf for a data
    step from alpha = 0 (lambda = -inf, a flow grid's sigma = 1)."""
    if math.isinf(h) and prediction == "data":
        return 1.0 / math.factorial(k - 1)
    return h_phi(k, h, prediction) / h ** (k - 1)


def relaxation_factor(relaxation, h: float, prediction: str) -> float:
    """The factor on D_1: 1 + c h for a number c, or a hand-designed solver's (arXiv 2211.01095, 2302.04867):
    phi_1 / (2 phi_2) (DPM-Solver-2, UniPC bh2), 1 / (2 phi_2) (UniPC bh1); limits at h = inf as
    ``scaled_h_phi``."""
    if not isinstance(relaxation, str):
        return 1.0 + float(relaxation) * h if relaxation else 1.0
    h_phi2 = scaled_h_phi(2, h, prediction)  # h phi_2
    if relaxation in ("dpm-solver-2", "unipc-bh2"):
        return 0.5 * h_phi(1, h, prediction) / h_phi2
    return 0.5 * h / h_phi2  # unipc-bh1


def derivative_weights(deltas: np.ndarray) -> np.ndarray:
    """W (m, m): D_k = sum_a W[k-1, a] (F_a - F_s), from sum_j delta_a^j / j! D_j = F_a - F_s."""
    m = len(deltas)
    V = np.array([[d**j / math.factorial(j) for j in range(1, m + 1)] for d in deltas])
    return np.linalg.inv(V)


class USFScheduler(SolverScheduler):
    """Executes a USF solver schedule (arXiv 2312.07243) given as ``solver_schedule`` (a dict, see
    ``usf_schedule.py``, a shipped schedule's name such as "digits-nfe5", or the path of a ``diffusers-ext search``
    output file, whose contents the config then keeps). Its timesteps are the
    schedule's; ``set_timesteps(n)`` checks that it makes n model calls. Runs from the schedule's first step
    (no ``set_begin_index``); the last entry of its timesteps must be the noise schedule's clean end (e.g.
    -1 for DDPM-style discrete schedules)."""


    def __init__(self, *, solver_schedule: dict | str | os.PathLike | None = None,
                 **options: Unpack[CommonOptions]) -> None:
        """USF's own option, the solver schedule; ``options``: the common ones (the constructor is generated from
        this signature, see ``SolverScheduler.__init_subclass__``)."""

    order_range = (1, 4)
    target = "data"
    supports_begin_index = False  # a solver schedule runs from its first step

    def normalize_config(self) -> None:
        super().normalize_config()
        if is_schedule_file(self.config.solver_schedule):  # a `search` output: the config keeps its contents
            self.register_to_config(solver_schedule=read_option_file(
                "solver_schedule", self.config.solver_schedule, schedule_choices(), SolverSchedule.from_dict,
                "shipped solver schedule"))
        # the parsed (and so validated) schedule, once: the config is frozen
        schedule = self.config.solver_schedule
        if isinstance(schedule, str) and not schedule.lstrip().startswith("{"):
            schedule = load_shipped_schedule(schedule)
        self._schedule = None if schedule is None else SolverSchedule.from_dict(schedule)
        steps = self._schedule.steps if self._schedule is not None else ()
        reach = [max((max(p) for p in step.derivative_points), default=0) + (step.corrector == "pseudo")
                 for step in steps]
        # what the steps read: pseudo-correctors keep the predicted sample, noise-form steps convert earlier
        # outputs with the samples they were computed at
        self._layout = TableLayout(history=max(reach + [1]), saved=any(step.corrector == "pseudo" for step in steps),
                                   samples=any(step.prediction == "noise" for step in steps))

    @property
    def schedule(self) -> SolverSchedule:
        if self._schedule is None:
            raise ValueError("USFScheduler needs a solver_schedule (a dict; see diffusers_ext.schedulers."
                             "usf_schedule, or hand_designed_schedule for DDIM / DPM-Solver++ / UniPC)")
        return self._schedule

    @property
    def _offset(self) -> int:
        """1 when step 0 is analytical: the scheduler's steps are the schedule's steps 1, 2, ..."""
        return int(self._schedule is not None and self._schedule.analytical_first_step != "none")

    @property
    def init_noise_sigma(self) -> float:
        """The analytical first step (x0 = 0 at the start): x_1 = (sigma_1 / sigma_0) x_0, which pipelines apply
        when they scale the initial noise by ``init_noise_sigma``; 1 otherwise."""
        if not self._offset:
            return 1.0
        _, sigma = self.noise_schedule.alpha_sigma(np.array(self._schedule.timesteps[:2]))
        return float(sigma[1] / sigma[0])

    def table_layout(self) -> TableLayout:
        return super().table_layout().union(self._layout)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None, sigmas=None,
                      mu=None) -> None:
        schedule = self.schedule
        if timesteps is not None or sigmas is not None:
            raise ValueError("USFScheduler takes its timesteps from solver_schedule; do not pass timesteps/sigmas")
        schedule.validate(num_inference_steps)
        end, clean = schedule.timesteps[-1], self.noise_schedule.t_clean
        if not math.isclose(end, clean, abs_tol=1e-9):
            raise ScheduleError(f"the schedule ends at t={end:g}; USFScheduler samples to the clean end, "
                                f"t={clean:g} for this noise schedule")
        super().set_timesteps(device=device, timesteps=list(schedule.timesteps[self._offset:-1]))

    # ------------------------------------------------------------------------------ the step rule
    def _output(self, grid: Grid, i: int, j: int, prediction: str) -> Lin:
        """The output of grid point i - j as a ``prediction`` (seen from step i)."""
        data = M(j)
        if prediction == "data":
            return data
        sample = X if j == 0 else S(j)
        return (sample - grid.alpha[i - j] * data) / grid.sigma[i - j]

    def _taylor_step(self, grid: Grid, base: Lin, s: int, t: int, prediction: str, order: int,
                     point_sets: list[list[int]], relaxation, seen_from: int) -> Lin:
        """x_t from ``base`` at grid point s; point_sets[k-1] are the grid points fitting D_k."""
        h = grid.lam[t] - grid.lam[s]
        out = (lambda p: self._output(grid, seen_from, seen_from - p, prediction))
        f_s = out(s)
        if prediction == "data":
            x_t = (grid.sigma[t] / grid.sigma[s]) * base
            scale = grid.alpha[t]
        else:
            x_t = (grid.alpha[t] / grid.alpha[s]) * base
            scale = -grid.sigma[t]
        x_t = x_t + (scale * h_phi(1, h, prediction)) * f_s
        for k in range(1, order):
            points = point_sets[k - 1]
            # h^k D_k from r_a = delta_a / h: r = 1 at t itself, also for h = inf; r = +-inf (a point at
            # lambda = -inf seen from a finite s) gives weight 0; inf / inf (from s at lambda = -inf) is undefined
            r = np.array([1.0 if p == t else (grid.lam[p] - grid.lam[s]) / h for p in points])
            weights = np.full(len(points), np.nan) if np.isnan(r).any() else derivative_weights(r)[k - 1]
            d_k = Lin()
            for w, p in zip(weights, points):
                d_k = d_k + w * (out(p) - f_s)
            if k == 1:
                d_k = relaxation_factor(relaxation, h, prediction) * d_k
            x_t = x_t + (scale * scaled_h_phi(k + 1, h, prediction)) * d_k
        return x_t

    def step_rule(self, grid: Grid, i: int, n: int) -> StepRule:
        decisions = self.schedule.steps[self._offset:]
        x_c = X
        if n >= 1 and decisions[i - 1].corrector == "pseudo":  # re-solve step i - 1 with the output at x_i
            prev: StepDecision = decisions[i - 1]
            sets = [[i - 1 - j for j in points] + [i] for points in prev.derivative_points]
            sets.append(sets[-1] if sets else [i])
            corrected = self._taylor_step(grid, SAVED, i - 1, i, prev.prediction, prev.order + 1, sets,
                                          prev.corrector_relaxation, seen_from=i)
            # with a point at alpha = 0 (a flow grid's sigma = 1, lambda = -inf) the corrector may be undefined
            # (noise prediction, bh1, a polynomial through lambda = -inf): skipped then, as UniPCScheduler does
            touched = [i - 1] + [p for points in sets for p in points]
            if corrected.is_finite() or np.all(np.isfinite(grid.lam[touched])):
                x_c = corrected
        d = decisions[i]
        if not np.isfinite(grid.lam[i + 1]) and (d.order > 1 or d.prediction != "data"):
            raise ScheduleError(f"step {i} ends at sigma = 0 (lambda = inf), where only an order-1 data-prediction "
                                f"step is finite; got order {d.order}, {d.prediction} prediction")
        # at alpha = 0 the noise prediction is the sample itself: the (order-1, step 0) step is a data step there
        prediction = "data" if grid.alpha[i] == 0.0 else d.prediction
        sets = [[i - j for j in points] for points in d.derivative_points]
        x_next = self._taylor_step(grid, x_c, i, i + 1, prediction, d.order, sets, d.relaxation, seen_from=i)
        return StepRule(x_next, saved_next=x_c if self._layout.saved else None)


SHIPPED_SCHEDULES = {"digits": os.path.join(os.path.dirname(__file__), "..", "models", "digits", "weights",
                                           "usf_schedules.json")}


def shipped_schedule_names() -> list[str]:
    names = []
    for model, path in SHIPPED_SCHEDULES.items():
        if os.path.exists(path):
            with open(path) as f:
                names += [f"{model}-nfe{n}" for n in sorted(json.load(f), key=int)]
    return names


def schedule_choices() -> str:
    return (f"a shipped schedule name (valid names: {shipped_schedule_names()}), the path of a JSON file written by "
            f"`diffusers-ext search`, or the schedule itself (a dict or its JSON string)")


def is_schedule_file(schedule) -> bool:
    """True when ``solver_schedule`` names a file: a path object, or a string that is neither JSON nor a shipped
    schedule's name."""
    if isinstance(schedule, str):
        return not schedule.lstrip().startswith("{") and schedule not in shipped_schedule_names()
    return isinstance(schedule, os.PathLike)


def load_shipped_schedule(name: str) -> dict:
    """A schedule shipped with the package, by name: "<model>-nfe<N>" (e.g. "digits-nfe5")."""
    model, _, nfe = name.partition("-nfe")
    path = SHIPPED_SCHEDULES.get(model)
    if path is not None and os.path.exists(path):
        with open(path) as f:
            shipped = json.load(f)
        if nfe in shipped:
            return shipped[nfe]
    raise ValueError(f"Unknown shipped solver schedule {name!r}; valid names: {shipped_schedule_names()} "
                     f"(or pass the schedule dict)")


def hand_designed_schedule(solver: str, timesteps, lower_order_final: bool = True, prediction: str = "data") -> dict:
    """A hand-designed solver as a USF schedule on ``timesteps`` (model times, steps + 1, ending clean):
    "ddim", "dpm++2m", "unipc-bh1" / "unipc-bh2" (order 2, UniC corrector), with diffusers' warm-up and its
    first-order step into sigma = 0 (``lower_order_final=False`` keeps order 2 there, which USFScheduler rejects).
    ``prediction="noise"``: UniPC's noise-prediction form (its step into sigma = 0 stays a data step, as in
    UniPC; at alpha = 0, a flow grid's sigma = 1, USFScheduler takes the data step too)."""
    solvers = ("ddim", "dpm++2m", "unipc-bh1", "unipc-bh2")
    if solver not in solvers:
        raise ValueError(f"Unknown hand-designed solver {solver!r}; valid choices: {solvers}")
    if prediction not in ("data", "noise") or (prediction == "noise" and solver == "dpm++2m"):
        raise ValueError(f"prediction must be 'data' (any solver) or 'noise' (ddim, unipc), got {prediction!r}")
    n = len(timesteps) - 1
    steps = []
    for i in range(n):
        order = 1 if solver == "ddim" or i == 0 else 2
        if lower_order_final and i == n - 1:  # into sigma = 0, as diffusers' DPM-Solver++ and UniPC at any n
            order = 1
        relaxation = "dpm-solver-2" if solver == "dpm++2m" else (solver if solver.startswith("unipc") else 0.0)
        step = {"prediction": "data" if i == n - 1 else prediction, "order": order,
                "derivative_points": [[1]] * (order - 1), "relaxation": relaxation if order == 2 else 0.0}
        if solver.startswith("unipc") and i < n - 1:
            step.update(corrector="pseudo", corrector_relaxation=solver if order == 1 else 0.0)
        steps.append(step)
    return {"version": 1, "timesteps": [float(t) for t in timesteps], "analytical_first_step": "none",
            "steps": steps}
