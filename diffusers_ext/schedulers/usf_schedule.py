"""Solver schedules of the unified sampling framework (USF, arXiv 2312.07243): one decision set per step.

A schedule is plain, versioned JSON, so it can live in a scheduler config (``save_pretrained`` keeps it):

    {"version": 1,
     "timesteps": [999, 700.5, 420, 180, 40, -1],        # model times, strictly decreasing, steps + 1 entries
     "analytical_first_step": "none",                    # or "zero_x0": step 0 costs no model call
     "steps": [{"prediction": "data",                    # which output is Taylor-expanded: "data" or "noise"
                "order": 2,                              # Taylor order 1-4 in lambda (log-SNR)
                "derivative_points": [[1]],              # per derivative k = 1..order-1: earlier points
                                                         # (1 = the previous evaluation) fitting D_k, >= k of them
                "relaxation": 0.0,                       # D_1 *= 1 + c h, or a named factor (RELAXATIONS)
                "corrector": "none",                     # or "pseudo": UniC-style, reusing the next model call
                "corrector_relaxation": 0.0},            # the corrector's own D_1 factor
               ...]}

With ``"analytical_first_step": "zero_x0"`` step 0 assumes the data prediction at the pure-noise start is
0 (the data mean of centred data), so it is the order-1 data step x_1 = (sigma_1 / sigma_0) x_0 and needs no
model call (the paper's AFS); it must be an order-1 data step without corrector, and no later derivative
may use its point. Model calls (NFE) = steps (less one with the analytical first step); the pseudo-corrector
costs none (it re-solves step i from the same start with
one order more, the output at the predicted sample added to every derivative's points). The last step has
no next model call, so its corrector must be "none". Relaxation only matters where a derivative is fitted
by fewer points than the polynomial would allow: the hand-designed 2nd-order updates relax D_1
("dpm-solver-2" = "unipc-bh2": phi1 / (2 phi2), "unipc-bh1": 1 / (2 phi2), at -h for data and h for noise
prediction). Everything is checked before any sampling, with
errors naming the bad entry and the valid choices.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SCHEDULE_VERSION = 1
PREDICTIONS = ("data", "noise")
CORRECTORS = ("none", "pseudo")
ANALYTICAL_FIRST_STEPS = ("none", "zero_x0")
RELAXATIONS = ("dpm-solver-2", "unipc-bh1", "unipc-bh2")  # named D_1 factors of the hand-designed solvers
MAX_ORDER = 4
_SCHEDULE_KEYS = {"version", "timesteps", "steps", "analytical_first_step"}
_STEP_KEYS = {"prediction", "order", "derivative_points", "relaxation", "corrector", "corrector_relaxation"}


class ScheduleError(ValueError):
    """An invalid solver schedule (raised before any sampling)."""


@dataclass(frozen=True)
class StepDecision:
    prediction: str
    order: int
    derivative_points: tuple[tuple[int, ...], ...]
    relaxation: float | str = 0.0
    corrector: str = "none"
    corrector_relaxation: float | str = 0.0

    def to_dict(self) -> dict:
        return {"prediction": self.prediction, "order": self.order,
                "derivative_points": [list(p) for p in self.derivative_points], "relaxation": self.relaxation,
                "corrector": self.corrector, "corrector_relaxation": self.corrector_relaxation}


@dataclass(frozen=True)
class SolverSchedule:
    timesteps: tuple[float, ...]
    steps: tuple[StepDecision, ...]
    analytical_first_step: str = "none"

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def nfe(self) -> int:
        """Model calls: one per step, less the analytical first step."""
        return self.num_steps - (self.analytical_first_step != "none")

    # ------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {"version": SCHEDULE_VERSION, "timesteps": list(self.timesteps),
                "analytical_first_step": self.analytical_first_step, "steps": [s.to_dict() for s in self.steps]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping) -> SolverSchedule:
        """Parse and validate a schedule dict (or its JSON string)."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as err:
                raise ScheduleError(f"a solver schedule must be JSON: {err}") from None
        if not isinstance(data, Mapping):
            raise ScheduleError(f"a solver schedule is a dict with keys {sorted(_SCHEDULE_KEYS)}, got "
                                f"{type(data).__name__}")
        _no_unknown_keys(data, _SCHEDULE_KEYS, "schedule")
        if data.get("version") != SCHEDULE_VERSION:
            raise ScheduleError(f"schedule version {data.get('version')!r} is not supported; this package reads "
                                f"version {SCHEDULE_VERSION}")
        for key in ("timesteps", "steps"):
            if key not in data:
                raise ScheduleError(f"the schedule misses {key!r}")
        steps = data["steps"]
        if not isinstance(steps, Sequence) or isinstance(steps, str) or not steps:
            raise ScheduleError("'steps' must be a non-empty list of step decisions")
        schedule = cls(timesteps=tuple(_float_list(data["timesteps"], "timesteps")),
                       steps=tuple(_parse_step(i, s) for i, s in enumerate(steps)),
                       analytical_first_step=data.get("analytical_first_step", "none"))
        schedule.validate()
        return schedule

    # ------------------------------------------------------------------------------ validation
    def validate(self, num_inference_steps: int | None = None) -> None:
        """Raise ScheduleError for anything that cannot run (``num_inference_steps``: the NFE it must have)."""
        n = self.num_steps
        t = self.timesteps
        if len(t) != n + 1:
            raise ScheduleError(f"{n} steps need {n + 1} timesteps (the last one is where sampling ends), got "
                                f"{len(t)}")
        bad = [j for j in range(n) if not t[j] > t[j + 1]]
        if bad:
            raise ScheduleError(f"timesteps must strictly decrease; timesteps[{bad[0]}] = {t[bad[0]]:g} is not above "
                                f"timesteps[{bad[0] + 1}] = {t[bad[0] + 1]:g}")
        if self.analytical_first_step not in ANALYTICAL_FIRST_STEPS:
            raise ScheduleError(f"Unknown analytical_first_step {self.analytical_first_step!r}; valid choices: "
                                f"{ANALYTICAL_FIRST_STEPS}")
        for i, step in enumerate(self.steps):
            _validate_step(i, step, last=i == n - 1)
        if self.analytical_first_step != "none":
            first = self.steps[0]
            if n < 2 or first.prediction != "data" or first.order != 1 or first.corrector != "none":
                raise ScheduleError("with an analytical first step, step 0 must be an order-1 data step without "
                                    "corrector, followed by at least one model-evaluated step")
            for i, step in enumerate(self.steps[1:], start=1):
                if any(p >= i for points in step.derivative_points for p in points):
                    raise ScheduleError(f"step {i}: with an analytical first step, derivative points must lie in "
                                        f"1..{i - 1} (point 0 has no model output)")
        if num_inference_steps is not None and num_inference_steps != self.nfe:
            raise ScheduleError(f"the schedule makes {self.nfe} model calls ({n} steps"
                                f"{', the first analytical' if self.nfe != n else ''}) but num_inference_steps is "
                                f"{num_inference_steps}")


def _no_unknown_keys(data: Mapping, valid: set, what: str) -> None:
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ScheduleError(f"unknown {what} keys {unknown}; valid keys: {sorted(valid)}")


def _float_list(values, name: str) -> list[float]:
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise ScheduleError(f"{name!r} must be a list of numbers")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ScheduleError(f"{name!r} must hold finite numbers, got {v!r}")
        out.append(float(v))
    return out


def _parse_step(i: int, step) -> StepDecision:
    if not isinstance(step, Mapping):
        raise ScheduleError(f"step {i}: a step decision is a dict with keys {sorted(_STEP_KEYS)}")
    _no_unknown_keys(step, _STEP_KEYS, f"step {i}")
    for key in ("prediction", "order"):
        if key not in step:
            raise ScheduleError(f"step {i} misses {key!r}")
    points = step.get("derivative_points")
    order = step["order"]
    if points is None and isinstance(order, int):  # default: the consecutive previous points (multistep)
        points = [list(range(1, order)) for _ in range(order - 1)]
    if not isinstance(points, Sequence) or not all(isinstance(p, Sequence) and not isinstance(p, str)
                                                   for p in points):
        raise ScheduleError(f"step {i}: derivative_points must be a list (one per derivative) of lists of ints")
    return StepDecision(prediction=step["prediction"], order=order,
                        derivative_points=tuple(tuple(p) for p in points),
                        relaxation=step.get("relaxation", 0.0), corrector=step.get("corrector", "none"),
                        corrector_relaxation=step.get("corrector_relaxation", 0.0))


def _validate_step(i: int, step: StepDecision, last: bool) -> None:
    if step.prediction not in PREDICTIONS:
        raise ScheduleError(f"step {i}: unknown prediction {step.prediction!r}; valid choices: {PREDICTIONS}")
    if isinstance(step.order, bool) or not isinstance(step.order, int) or not 1 <= step.order <= MAX_ORDER:
        raise ScheduleError(f"step {i}: order must be an int from 1 to {MAX_ORDER}, got {step.order!r}")
    if step.order > i + 1:
        raise ScheduleError(f"step {i}: order {step.order} needs {step.order - 1} earlier points but only {i} "
                            f"exist (at most order {i + 1} here)")
    if len(step.derivative_points) != step.order - 1:
        raise ScheduleError(f"step {i}: order {step.order} needs {step.order - 1} derivative_points entries (one per "
                            f"derivative), got {len(step.derivative_points)}")
    for k, points in enumerate(step.derivative_points, start=1):
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in points) or len(set(points)) != len(points):
            raise ScheduleError(f"step {i}: derivative {k} points must be distinct ints, got {list(points)}")
        if len(points) < k:
            raise ScheduleError(f"step {i}: derivative {k} needs at least {k} earlier points, got {list(points)}")
        if any(not 1 <= p <= i for p in points):
            raise ScheduleError(f"step {i}: derivative {k} points {list(points)} must lie in 1..{i} (1 = the "
                                f"previous evaluation; step {i} has {i} earlier points)")
    for name in ("relaxation", "corrector_relaxation"):
        relaxation = getattr(step, name)
        if isinstance(relaxation, str):
            if relaxation not in RELAXATIONS:
                raise ScheduleError(f"step {i}: unknown {name} {relaxation!r}; valid: a number c (D_1 *= 1 + c h) "
                                    f"or one of {RELAXATIONS}")
        elif isinstance(relaxation, bool) or not isinstance(relaxation, (int, float)) or \
                not math.isfinite(relaxation):
            raise ScheduleError(f"step {i}: {name} must be a finite number or one of {RELAXATIONS}, got "
                                f"{relaxation!r}")
    if step.corrector not in CORRECTORS:
        raise ScheduleError(f"step {i}: unknown corrector {step.corrector!r}; valid choices: {CORRECTORS}")
    if last and step.corrector != "none":
        raise ScheduleError(f"step {i} is the last: no model call follows it to correct with; set corrector 'none'")
