"""S^3: predictor-guided evolutionary search over USF solver schedules (arXiv 2312.07243).

The search runs in stages. Stage 0 evaluates a seed population: the hand-designed solvers (DDIM,
DPM-Solver++ 2M, UniPC bh1 / bh2) on several timestep grids, plus any ``initial_schedules``. Every later
stage breeds many candidates from the best schedules found so far (mutations of timesteps in log-SNR,
prediction types, orders, derivative points, D_1 relaxation and correctors, plus per-step crossover), ranks
them with a small MLP trained on every schedule evaluated so far (a pairwise ranking loss), and evaluates only
the top few with the true objective. ``predictor=False`` is plain evolution (the authors' released search):
it evaluates random candidates of the same breeding instead, which makes an equal-budget ablation.

The objective is any callable ``schedule dict -> (value, model evaluations)`` (lower is better), e.g.
``objectives.EndpointObjective`` (error against a fine reference solve on calibration noises; any model)
or ``objectives.DigitsFIDObjective``. The budget counts model evaluations (samples x calls) spent on objectives.
Every evaluated schedule is appended to a JSONL archive at once; a rerun with the same arguments and
archive skips what is there and continues (each stage's candidates come from its own seeded RNG).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..results_log import append_row, canonical, exclusive, identity, read_rows
from ..schedulers import hand_designed_schedule
from ..schedulers.engine.grids import build_grid
from ..schedulers.usf_schedule import MAX_ORDER, ScheduleError, SolverSchedule

Objective = Callable[[dict], tuple[float, int]]
SEED_SOLVERS = ("ddim", "dpm++2m", "unipc-bh1", "unipc-bh2")
SEED_SPACINGS = ("linspace", "quadratic", "logsnr", "karras")


# ---------------------------------------------------------------------------------------------- schedules
def seed_population(noise_schedule, nfe: int) -> list[dict]:
    """The hand-designed solvers on several grids, as schedules of ``nfe`` steps."""
    population = []
    for spacing in SEED_SPACINGS:
        times = build_grid(noise_schedule, nfe, spacing=spacing)
        for solver in SEED_SOLVERS:
            population.append(hand_designed_schedule(solver, [float(t) for t in times]))
    return population


def _key(schedule: dict) -> str:
    return json.dumps(SolverSchedule.from_dict(schedule).to_dict(), sort_keys=True)


def mutate(schedule: dict, rng: np.random.Generator, noise_schedule) -> dict:
    """One random change to one decision (kept valid: the step into sigma = 0 stays an order-1 data step)."""
    s = copy.deepcopy(schedule)
    steps, n = s["steps"], len(s["steps"])
    kind = rng.choice(["time", "prediction", "order", "points", "relaxation", "corrector"])
    if kind == "time" and n > 1:  # move an interior time in log-SNR, keeping the order of the grid
        j = int(rng.integers(1, n))
        t = np.array(s["timesteps"], dtype=np.float64)
        lam = noise_schedule.lambda_(t[j - 1:j + 2])
        new = lam[1] + rng.normal(0.0, 0.15) * (lam[2] - lam[0] if np.isfinite(lam[2]) else 1.0)
        lo, hi = lam[0], lam[2] if np.isfinite(lam[2]) else lam[1] + 3.0
        new = float(np.clip(new, lo + 0.05 * (hi - lo), hi - 0.05 * (hi - lo)))
        t[j] = float(noise_schedule.t_of_lambda(np.array([new]))[0])
        s["timesteps"] = t.tolist()
        return s
    i = int(rng.integers(0, max(n - 1, 1)))  # the last step is fixed: order-1 data into sigma = 0
    step = steps[i]
    if kind == "prediction":
        step["prediction"] = "noise" if step["prediction"] == "data" else "data"
    elif kind == "order":
        step["order"] = int(rng.integers(1, min(MAX_ORDER, i + 1) + 1))
        step["derivative_points"] = [list(range(1, step["order"]))] * (step["order"] - 1)
    elif kind == "points" and step["order"] > 1:  # D_1 from fewer (or other) earlier points
        m = int(rng.integers(1, step["order"]))
        step["derivative_points"][0] = list(range(1, m + 1))
    elif kind == "relaxation" and step["order"] > 1:  # D_1 exists only from order 2
        current = step["relaxation"] if not isinstance(step["relaxation"], str) else 0.0
        step["relaxation"] = round(float(current + rng.normal(0.0, 0.1)), 4) if rng.random() < 0.8 else \
            str(rng.choice(["dpm-solver-2", "unipc-bh1"]))
    elif kind == "corrector" and i < n - 1:
        step["corrector"] = "none" if step.get("corrector", "none") == "pseudo" else "pseudo"
        step["corrector_relaxation"] = 0.0
    return s


def crossover(a: dict, b: dict, rng: np.random.Generator) -> dict:
    """Timesteps of ``a``; each step's decisions from ``a`` or ``b`` at random."""
    child = copy.deepcopy(a)
    for i, step in enumerate(b["steps"]):
        if rng.random() < 0.5:
            child["steps"][i] = copy.deepcopy(step)
    return child


def encode(schedule: dict, noise_schedule) -> np.ndarray:
    """Fixed-length features of a schedule (NFE fixed within a search): per step the start's log-SNR
    (scaled), prediction type, order (one-hot), D_1 points, relaxation, corrector."""
    t = np.array(schedule["timesteps"][:-1], dtype=np.float64)
    lam = noise_schedule.lambda_(t) / 5.0
    rows = []
    for i, step in enumerate(schedule["steps"]):
        order = np.eye(MAX_ORDER)[step["order"] - 1]
        relax = step["relaxation"]
        named = [float(relax == "dpm-solver-2" or relax == "unipc-bh2"), float(relax == "unipc-bh1")]
        numeric = 0.0 if isinstance(relax, str) else float(relax)
        d1 = len(step["derivative_points"][0]) if step["order"] > 1 else 0
        rows.append(np.concatenate([[lam[i], float(step["prediction"] == "noise"), d1 / MAX_ORDER, numeric],
                                    named, order, [float(step.get("corrector", "none") == "pseudo")]]))
    return np.concatenate(rows).astype(np.float32)


# ---------------------------------------------------------------------------------------------- predictor
class RankingPredictor(torch.nn.Module):
    """A small MLP scoring schedules (lower = predicted better), trained with a pairwise hinge ranking loss."""

    def __init__(self, num_features: int, hidden: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(num_features, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)

    def fit(self, features: np.ndarray, values: np.ndarray, seed: int, epochs: int = 150) -> None:
        torch.manual_seed(seed)
        for layer in self.net:
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
        x = torch.from_numpy(features)
        y = torch.from_numpy(np.log(np.maximum(values, 1e-12))).float()
        mean, std = x.mean(0), x.std(0) + 1e-6
        self._norm = (mean, std)
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        diff = y[:, None] - y[None, :]
        pairs = diff.abs() > 1e-3
        for _ in range(epochs):
            score = self((x - mean) / std)
            margin = score[:, None] - score[None, :]  # want sign(margin) == sign(diff)
            loss = torch.relu(1.0 - margin * torch.sign(diff))[pairs].mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    @torch.no_grad()
    def score(self, features: np.ndarray) -> np.ndarray:
        mean, std = self._norm
        return self((torch.from_numpy(features) - mean) / std).numpy()


# ---------------------------------------------------------------------------------------------- search
def objective_identity(objective):
    """What an archive row's value depends on besides the schedule: the objective's ``identity`` attribute if
    it has one, else its qualified name and public, non-callable state (noises, references, configs, sample
    counts; arrays by hash). A closure over other data must set ``identity``."""
    if getattr(objective, "identity", None) is not None:
        return canonical(objective.identity)
    name = getattr(objective, "__qualname__", type(objective).__qualname__)
    return {"callable": f"{getattr(objective, '__module__', '')}.{name}", "state": canonical(objective)}


@dataclass
class SearchResult:
    best: dict
    best_value: float
    seed_best_value: float  # the best of the seed population (hand-designed solvers and any initial_schedules)
    evaluations: int  # model evaluations spent on objectives (samples x calls)
    archive: list[dict] = field(default_factory=list)
    # with a validation objective: the finalists' held-out values; ``best`` is then the finalist that is best there
    validation: list[dict] = field(default_factory=list)
    validation_value: float | None = None
    seed_best_validation_value: float | None = None


def s3_search(objective: Objective, noise_schedule, nfe: int, budget: int, *, predictor: bool = True,
              archive=None, seed: int = 0, candidates_per_stage: int = 256, evaluated_per_stage: int = 8,
              parents: int = 8, progress: bool = True, validation: Objective | None = None,
              finalists: int = 8, initial_schedules: Sequence[dict] = ()) -> SearchResult:
    """Search a schedule of ``nfe`` steps within ``budget`` model evaluations (see the module docstring).

    Args:
        objective: schedule dict -> (value, model evaluations); lower is better.
        noise_schedule: the scheduler's ``noise_schedule`` (grids and log-SNR for mutations).
        archive: JSONL path, locked while the search runs; evaluated schedules persist there and a rerun
            resumes from the rows of the same search: equal ``objective_identity``, noise schedule, NFE and
            search settings (``predictor``, ``seed``, stage sizes; not the budget, so a larger budget continues).
        validation: an objective on held-out noise (or samples). The ``finalists`` best schedules of the search and
            the best of stage 0 are scored on it and the best there is returned, so a schedule that only
            fits the search's own noises is not chosen, and the result is never worse on held-out noise than the
            best of stage 0 (the hand-designed solvers and ``initial_schedules``). Its model evaluations are
            counted in ``evaluations`` too.
        initial_schedules: more schedules for the seed population (stage 0), evaluated first, e.g. the best solver
            ``tune`` found, on its own grid, so the search starts from it and its neighbours.
    """
    if nfe < 1 or budget < 1:
        raise ValueError(f"nfe and budget must be >= 1, got {nfe} and {budget}")
    for schedule in initial_schedules:
        try:
            steps = SolverSchedule.from_dict(schedule).nfe
        except ScheduleError as e:
            raise ValueError(f"initial_schedules holds an invalid schedule: {e}") from e
        if steps != nfe:
            raise ValueError(f"initial_schedules must have nfe={nfe} model calls, one has {steps}")
    search = identity({"objective": objective_identity(objective), "noise_schedule": noise_schedule, "nfe": nfe,
                       "predictor": predictor, "seed": seed, "candidates_per_stage": candidates_per_stage,
                       "evaluated_per_stage": evaluated_per_stage, "parents": parents,
                       # only when given, so the archives of searches without them keep their keys
                       **({"initial_schedules": [_key(s) for s in initial_schedules]} if initial_schedules else {})})
    with exclusive(archive) if archive is not None else contextlib.nullcontext():
        rows = [r for r in read_rows(archive) if r.get("search") == search] if archive is not None else []
        result = _search(objective, noise_schedule, nfe, budget, predictor, archive, seed, candidates_per_stage,
                         evaluated_per_stage, parents, progress, rows, search, list(initial_schedules))
    return result if validation is None else _validate(result, validation, finalists)


def _validate(result: SearchResult, validation: Objective, finalists: int) -> SearchResult:
    """``result`` with ``best`` chosen among its finalists (and the best hand-designed schedule) on ``validation``."""
    scored = sorted((r for r in result.archive if r["value"] is not None), key=lambda r: r["value"])
    seeds = [r for r in scored if r["stage"] == 0]
    chosen = scored[:finalists] + [r for r in seeds[:1] if r not in scored[:finalists]]
    rows = []
    for r in chosen:
        value, cost = validation(r["schedule"])
        result.evaluations += cost
        rows.append({"schedule": r["schedule"], "value": r["value"], "validation_value": value,
                     "hand_designed": r["stage"] == 0})
    best = min(rows, key=lambda r: r["validation_value"])
    result.best, result.best_value, result.validation_value = best["schedule"], best["value"], best["validation_value"]
    result.validation = rows
    hand = [r["validation_value"] for r in rows if r["hand_designed"]]
    result.seed_best_validation_value = min(hand) if hand else None
    return result


def _search(objective, noise_schedule, nfe, budget, predictor, archive, seed, candidates_per_stage,
            evaluated_per_stage, parents, progress, rows, search, initial_schedules) -> SearchResult:
    done = {_key(r["schedule"]): r for r in rows}
    spent = sum(r["evaluations"] for r in rows)
    bar = tqdm(total=budget, initial=min(spent, budget), desc=f"S^3 search (NFE {nfe})", disable=not progress,
               unit="evals")

    def evaluate(schedule: dict, stage: int) -> dict | None:
        nonlocal spent
        key = _key(schedule)
        if key in done:
            return done[key]
        if spent >= budget:
            return None
        value, cost = objective(schedule)
        row = {"nfe": nfe, "stage": stage, "schedule": schedule, "value": value if math.isfinite(value) else None,
               "evaluations": cost, "search": search}
        if archive is not None:
            append_row(archive, row)
        done[key], spent = row, spent + cost
        bar.update(cost)
        return row

    for schedule in initial_schedules + seed_population(noise_schedule, nfe):
        evaluate(schedule, 0)
    seed_values = [r["value"] for r in done.values() if r["stage"] == 0 and r["value"] is not None]
    ranker = None
    stage = 1
    while spent < budget:
        rng = np.random.default_rng([seed, stage])
        # only what earlier stages found: a resumed run regenerates this stage exactly
        scored = sorted((r for r in done.values() if r["value"] is not None and r["stage"] < stage),
                        key=lambda r: r["value"])
        elite = [r["schedule"] for r in scored[:parents]]
        pool, keys = [], {k for k, r in done.items() if r["stage"] < stage}
        for _ in range(candidates_per_stage * 4):
            if len(pool) >= candidates_per_stage:
                break
            a = elite[int(rng.integers(len(elite)))]
            child = crossover(a, elite[int(rng.integers(len(elite)))], rng) if rng.random() < 0.3 else a
            for _ in range(int(rng.integers(1, 3))):
                child = mutate(child, rng, noise_schedule)
            try:
                key = _key(child)
            except ScheduleError:
                continue
            if key not in keys:
                keys.add(key)
                pool.append(child)
        if not pool:
            break
        if predictor:
            ranker = ranker or RankingPredictor(len(encode(pool[0], noise_schedule)))
            ranker.fit(np.stack([encode(r["schedule"], noise_schedule) for r in scored]),
                       np.array([r["value"] for r in scored]), seed=seed * 1000 + stage)
            order = np.argsort(ranker.score(np.stack([encode(c, noise_schedule) for c in pool])), kind="stable")
        else:
            order = rng.permutation(len(pool))
        for idx in order[:evaluated_per_stage]:
            if evaluate(pool[int(idx)], stage) is None:
                break
        stage += 1
    bar.close()
    scored = sorted((r for r in done.values() if r["value"] is not None), key=lambda r: r["value"])
    return SearchResult(best=scored[0]["schedule"], best_value=scored[0]["value"],
                        seed_best_value=min(seed_values) if seed_values else math.inf, evaluations=spent,
                        archive=list(done.values()))
