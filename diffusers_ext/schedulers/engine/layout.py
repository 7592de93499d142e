"""The coefficient table's layout: which tensors a step reads (columns) and writes (rows), in which order.

A family declares what its steps need (``SolverScheduler.table_layout``); this module is the only place
that orders them. The plan (``plan.py``), the fused step (``scheduler.py``) and anything that replays a
plan by hand (``search/calibrate_dc.py``) all ask the layout:

    columns: x, out, [saved], [noise], [anchor], history[0..K-1], [samples[0..K-1]]
    rows:    x_next, [saved_next], [history entry -> history[slot]], [x -> samples[slot]]

- ``x``: the sample the model was just evaluated at; ``out``: its model output;
- ``saved``: a sample kept across steps (UniPC's corrected sample, a singlestep block's start);
- ``noise``: fresh standard Gaussian noise (SDE variants);
- ``anchor``: the run's first output as a noise prediction (DualFast);
- ``history``: a ring of K earlier outputs; ``samples``: a second ring, the samples those outputs were
  computed at (families that convert earlier outputs between noise and data predictions).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

OPTIONAL_INPUTS = ("saved", "noise", "anchor")


@dataclass(frozen=True)
class TableLayout:
    """What a family's steps read and write; see the module docstring."""

    history: int = 0  # K, the ring of earlier outputs
    saved: bool = False
    noise: bool = False
    anchor: bool = False
    samples: bool = False  # a ring of K samples beside the outputs (needs history > 0)

    def __post_init__(self) -> None:
        if self.history < 0:
            raise ValueError(f"history must be >= 0, got {self.history}")
        if self.samples and self.history == 0:
            object.__setattr__(self, "samples", False)

    def union(self, other: TableLayout) -> TableLayout:
        """Everything either layout needs (the larger history ring)."""
        return replace(self, history=max(self.history, other.history), saved=self.saved or other.saved,
                       noise=self.noise or other.noise, anchor=self.anchor or other.anchor,
                       samples=self.samples or other.samples)

    # ------------------------------------------------------------------------------ columns
    @property
    def inputs(self) -> tuple[str, ...]:
        """The named input columns, in order (the history rings follow them)."""
        return ("x", "out") + tuple(name for name in OPTIONAL_INPUTS if getattr(self, name))

    def column(self, name: str) -> int:
        """The column of a named input (``x``, ``out``, ``saved``, ``noise``, ``anchor``)."""
        if name not in self.inputs:
            raise KeyError(f"this layout has no {name!r} column; its inputs are {self.inputs}")
        return self.inputs.index(name)

    def history_column(self, slot: int) -> int:
        return len(self.inputs) + slot

    def sample_column(self, slot: int) -> int:
        if not self.samples:
            raise KeyError("this layout records no samples")
        return len(self.inputs) + self.history + slot

    @property
    def ring_size(self) -> int:
        """Entries of the history buffer: K outputs, and K samples when recorded."""
        return self.history * (1 + self.samples)

    @property
    def num_columns(self) -> int:
        return len(self.inputs) + self.ring_size

    def gather(self, **tensors):
        """The named input tensors in column order (the history rings are passed to the kernel separately)."""
        missing = [name for name in self.inputs if tensors.get(name) is None]
        if missing:
            raise ValueError(f"the step needs {missing} (layout inputs {self.inputs})")
        return [tensors[name] for name in self.inputs]

    # ------------------------------------------------------------------------------ rows
    @property
    def outputs(self) -> tuple[str, ...]:
        """The named rows, in order: ``x_next``, ``saved_next``, ``history_entry``, ``sample_entry``."""
        return ("x_next",) + ("saved_next",) * self.saved + ("history_entry",) * (self.history > 0) + \
            ("sample_entry",) * self.samples

    def row(self, name: str) -> int:
        if name not in self.outputs:
            raise KeyError(f"this layout has no {name!r} row; its rows are {self.outputs}")
        return self.outputs.index(name)

    def write_slots(self, slots: np.ndarray) -> np.ndarray:
        """(N, H) ring entries each step writes: its history slot, and the same slot of the sample ring."""
        slots = np.asarray(slots, dtype=np.int64)[:, None]
        return np.concatenate([slots, slots + self.history], axis=1) if self.samples else slots
