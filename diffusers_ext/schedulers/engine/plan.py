"""The step plan: every step's coefficients, precomputed in float64 when the timesteps are set.

A solver family gives one ``StepRule`` per step (symbols X, M(k), S(k), DATA, SAVED, NOISE, ANCHOR of
``step_rule.py``). The plan folds the model-output conversion into it and maps each M(k) to its slot in a
fixed-size ring of K history entries, so that ``step`` only looks up row ``i`` and runs one fused
``lincomb``. Which column and row each symbol occupies is the ``TableLayout``'s business (``layout.py``).

Families that record samples keep, next to each history entry, the sample the model saw (``S(k)``), so
earlier outputs can be converted between noise and data predictions; both rings share the slot.

The anchor (``ANCHOR``) is computed once, at the run's first step, as ``anchor_coeffs . (x, out)`` (the first
output converted to a noise prediction) and then read like any other input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .grids import Grid
from .layout import TableLayout
from .predictions import conversion
from .step_rule import SAVED, Lin, M, StepRule, X


@dataclass
class StepPlan:
    """A run's coefficient table and where each step writes its history entry."""

    begin: int
    layout: TableLayout
    table: np.ndarray  # float64 (N, rows, columns), in ``layout``'s order
    slots: np.ndarray  # int64 (N,): history slot the new entry is written to
    row_columns: list[list[int]] = field(default_factory=list)  # per row, the columns ever nonzero
    anchor_coeffs: np.ndarray | None = None  # float64 (2,): the anchor from (x, out) at the first step

    @property
    def write_slots(self) -> np.ndarray:
        """(N, H): the ring entries each step writes (the history slot, and the sample ring's)."""
        return self.layout.write_slots(self.slots)


def build_plan(grid: Grid, begin: int, rule: Callable[[Grid, int, int], StepRule], layout: TableLayout, *,
               target: str, output_type: str) -> StepPlan:
    """Fold each step's rule into a coefficient table.

    Args:
        rule: ``rule(grid, i, n)`` for step i with n earlier outputs available (n = i - begin).
        layout: what the rules may read and write; M(k) needs 1 <= k <= min(n, layout.history).
        target: "data" or "noise", what M(k) holds.
        output_type: what the ``out`` column holds: the model's prediction type, or "sample" when the
            scheduler passes a (thresholded) data prediction instead.
    """
    n_steps, K = grid.num_steps, layout.history
    table = np.zeros((n_steps, len(layout.outputs), layout.num_columns))
    slots = np.zeros(n_steps, dtype=np.int64)
    a, s = grid.alpha[:n_steps], grid.sigma[:n_steps]
    edm = grid.sigma_data if output_type != "sample" else None  # "sample": an already preconditioned x0
    cx_m, co_m = conversion(output_type, target, a, s, edm)
    cx_d, co_d = conversion(output_type, "data", a, s, edm)
    x_col, out_col = layout.column("x"), layout.column("out")

    def fold(row: np.ndarray, lin: Lin, i: int, n: int) -> None:
        """Add ``lin``'s coefficients for step i into ``row`` (conversions folded, M(k) mapped to slots)."""
        for key, v in lin.terms.items():
            if v == 0.0:
                continue
            if key == "x":
                row[x_col] += v
            elif key == "data":
                row[x_col] += v * cx_d[i]
                row[out_col] += v * co_d[i]
            elif key == ("m", 0):
                row[x_col] += v * cx_m[i]
                row[out_col] += v * co_m[i]
            elif isinstance(key, tuple) and key[0] in ("m", "s"):
                k = key[1]
                if not 1 <= k <= min(n, K) or (key[0] == "s" and not layout.samples):
                    raise AssertionError(f"step {i} uses {key[0].upper()}({k}) but only {min(n, K)} earlier "
                                         f"{'outputs' if key[0] == 'm' else 'recorded samples'} exist")
                slot = (n - k) % K
                row[layout.history_column(slot) if key[0] == "m" else layout.sample_column(slot)] += v
            elif key in layout.inputs:
                row[layout.column(key)] += v
            else:
                raise AssertionError(f"step {i} uses {key!r}, which this scheduler's layout {layout} lacks")

    for i in range(begin, n_steps):
        n = i - begin
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            step = rule(grid, i, n)
        if K == 0 and step.history_entry is not None:
            raise AssertionError(f"step {i} records a history entry but the scheduler keeps no history")
        rows = {"x_next": step.x_next,
                "saved_next": step.saved_next if step.saved_next is not None else SAVED,
                "history_entry": step.history_entry if step.history_entry is not None else M(0),
                "sample_entry": X}
        for r, name in enumerate(layout.outputs):
            fold(table[i, r], rows[name], i, n)
        slots[i] = n % K if K else 0
    if not np.all(np.isfinite(table[begin:])):
        bad = int(np.argwhere(~np.isfinite(table[begin:]).all(axis=(1, 2)))[0, 0]) + begin
        raise ValueError(f"Step {bad} (t={grid.t[bad]:g} -> {grid.t[bad + 1]:g}) has non-finite coefficients: "
                         f"a {output_type!r} model output carries no {target} information there "
                         f"(alpha={grid.alpha[bad]:g}, sigma={grid.sigma[bad]:g}). Use a grid that avoids it.")
    n_rows = len(layout.outputs)
    row_columns = [sorted(set(np.nonzero(np.any(table[begin:, r] != 0, axis=0))[0].tolist())) for r in range(n_rows)]
    anchor_coeffs = None
    if layout.anchor:
        cx_n, co_n = conversion(output_type, "noise", a[begin:begin + 1], s[begin:begin + 1], edm)
        anchor_coeffs = np.array([cx_n[0], co_n[0]])
        if not np.all(np.isfinite(anchor_coeffs)):
            raise ValueError(f"The first step (t={grid.t[begin]:g}) has no finite noise prediction for a "
                             f"{output_type!r} model output (alpha={a[begin]:g}, sigma={s[begin]:g}), which the "
                             f"anchor needs. Use a grid that avoids it.")
    for array in (table, slots) + ((anchor_coeffs,) if anchor_coeffs is not None else ()):
        array.flags.writeable = False  # the plan is read by ``step`` on every call; nobody edits it
    return StepPlan(begin=begin, layout=layout, table=table, slots=slots, row_columns=row_columns,
                    anchor_coeffs=anchor_coeffs)
