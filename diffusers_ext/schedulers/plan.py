"""The step plan: every step's coefficients, precomputed in float64 when the timesteps are set.

A solver family gives one ``StepRule`` per step (symbols X, M(k), DATA, SAVED, NOISE). The plan folds
the model-output conversion into it and maps each M(k) to its slot in a fixed-size ring of K history
entries, so that ``step`` only looks up row ``i`` and runs one fused ``lincomb``:

    inputs  (columns): x, out, [saved], [noise], [anchor], history[0..K-1], [samples[0..K-1]]
    outputs (rows):    x_next, [saved_next], [new history entry -> history[slot_i]], [x -> samples[slot_i]]

Families that record samples keep, next to each history entry, the sample the model saw (``S(k)``), so
earlier outputs can be converted between noise and data predictions; both rings share the slot.

The anchor (``ANCHOR``) is computed once, at the run's first step, as ``anchor_coeffs . (x, out)`` (the first
output converted to a noise prediction) and then read like any other input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .noise_schedules import NoiseSchedule
from .predictions import conversion
from .step_rule import SAVED, M, StepRule, X


@dataclass
class Grid:
    """Model times of the evaluation points plus the terminal, and the schedule at each of them."""

    t: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    lam: np.ndarray
    sigma_data: float | None = None  # EDM preconditioning of the model output (``predictions.conversion``)

    @classmethod
    def from_times(cls, schedule: NoiseSchedule, t: np.ndarray) -> Grid:
        t = np.asarray(t, dtype=np.float64)
        alpha, sigma = schedule.alpha_sigma(t)
        with np.errstate(divide="ignore"):
            lam = np.log(alpha) - np.log(sigma)
        return cls(t=t, alpha=alpha, sigma=sigma, lam=lam, sigma_data=getattr(schedule, "sigma_data", None))

    @property
    def num_steps(self) -> int:
        return len(self.t) - 1


@dataclass
class StepPlan:
    begin: int
    table: np.ndarray  # float64 (N, rows, cols)
    slots: np.ndarray  # int64 (N,): history slot the new entry is written to
    row_columns: list[list[int]] = field(default_factory=list)  # per row, the columns ever nonzero
    anchor_coeffs: np.ndarray | None = None  # float64 (2,): the anchor from (x, out) at the first step


def build_plan(grid: Grid, begin: int, rule: Callable[[Grid, int, int], StepRule], *, history_size: int,
               uses_saved: bool, stochastic: bool, target: str, output_type: str,
               uses_anchor: bool = False, records_samples: bool = False) -> StepPlan:
    """Fold each step's rule into a coefficient table.

    Args:
        rule: ``rule(grid, i, n)`` for step i with n earlier outputs available (n = i - begin).
        history_size: K, the ring size; M(k) needs 1 <= k <= min(n, K).
        target: "data" or "noise", what M(k) holds.
        output_type: what the ``out`` column holds: the model's prediction type, or "sample" when the
            scheduler passes a (thresholded) data prediction instead.
        uses_anchor: the rules read ``ANCHOR``, the first step's output as a noise prediction.
        records_samples: a second ring of K samples (``S(k)``), written with the history entries.
    """
    n_steps, K = grid.num_steps, history_size
    col = {"x": 0, "out": 1}
    for name, used in (("saved", uses_saved), ("noise", stochastic), ("anchor", uses_anchor)):
        if used:
            col[name] = len(col)
    first_hist = len(col)
    records_samples = records_samples and K > 0
    n_rows = 1 + uses_saved + (K > 0) + records_samples
    table = np.zeros((n_steps, n_rows, first_hist + K * (1 + records_samples)))
    slots = np.zeros(n_steps, dtype=np.int64)
    a, s = grid.alpha[:n_steps], grid.sigma[:n_steps]
    edm = grid.sigma_data if output_type != "sample" else None  # "sample": an already preconditioned x0
    cx_m, co_m = conversion(output_type, target, a, s, edm)
    cx_d, co_d = conversion(output_type, "data", a, s, edm)

    def fold(row: np.ndarray, lin, i: int, n: int) -> None:
        """Add ``lin``'s coefficients for step i into ``row`` (conversions folded, M(k) mapped to slots)."""
        for key, v in lin.terms.items():
            if v == 0.0:
                continue
            if key == "x":
                row[0] += v
            elif key == "data":
                row[0] += v * cx_d[i]
                row[1] += v * co_d[i]
            elif key == ("m", 0):
                row[0] += v * cx_m[i]
                row[1] += v * co_m[i]
            elif isinstance(key, tuple) and key[0] in ("m", "s"):
                k = key[1]
                if not 1 <= k <= min(n, K) or (key[0] == "s" and not records_samples):
                    raise AssertionError(f"step {i} uses {key[0].upper()}({k}) but only {min(n, K)} earlier "
                                         f"{'outputs' if key[0] == 'm' else 'recorded samples'} exist")
                row[first_hist + (K if key[0] == "s" else 0) + (n - k) % K] += v
            elif key in col:
                row[col[key]] += v
            else:
                raise AssertionError(f"step {i} uses {key!r}, which this scheduler does not provide")

    for i in range(begin, n_steps):
        n = i - begin
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            step = rule(grid, i, n)
        lins = [step.x_next] + ([step.saved_next if step.saved_next is not None else SAVED]
                                if uses_saved else [])
        if K > 0:
            lins.append(step.history_entry if step.history_entry is not None else M(0))
            slots[i] = n % K
        elif step.history_entry is not None:
            raise AssertionError(f"step {i} records a history entry but the scheduler keeps no history")
        if records_samples:
            lins.append(X)
        for r, lin in enumerate(lins):
            fold(table[i, r], lin, i, n)
    if not np.all(np.isfinite(table[begin:])):
        bad = int(np.argwhere(~np.isfinite(table[begin:]).all(axis=(1, 2)))[0, 0]) + begin
        raise ValueError(f"Step {bad} (t={grid.t[bad]:g} -> {grid.t[bad + 1]:g}) has non-finite coefficients: "
                         f"a {output_type!r} model output carries no {target} information there "
                         f"(alpha={grid.alpha[bad]:g}, sigma={grid.sigma[bad]:g}). Use a grid that avoids it.")
    row_columns = [sorted(set(np.nonzero(np.any(table[begin:, r] != 0, axis=0))[0].tolist())) for r in range(n_rows)]
    anchor_coeffs = None
    if uses_anchor:
        cx_n, co_n = conversion(output_type, "noise", a[begin:begin + 1], s[begin:begin + 1], edm)
        anchor_coeffs = np.array([cx_n[0], co_n[0]])
        if not np.all(np.isfinite(anchor_coeffs)):
            raise ValueError(f"The first step (t={grid.t[begin]:g}) has no finite noise prediction for a "
                             f"{output_type!r} model output (alpha={a[begin]:g}, sigma={s[begin]:g}), which the "
                             f"anchor needs. Use a grid that avoids it.")
    return StepPlan(begin=begin, table=table, slots=slots, row_columns=row_columns, anchor_coeffs=anchor_coeffs)

