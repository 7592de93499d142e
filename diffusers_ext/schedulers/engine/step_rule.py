"""A solver step written as the paper writes it: a linear combination of named tensors.

Solver families build ``Lin`` expressions from these symbols, with float64 scalars:

- ``X``: the sample the model was just evaluated at,
- ``M(k)``: the converted model output k steps ago (``M(0)`` is the current one), in the family's
  prediction type (data or noise),
- ``DATA``: the current output converted to a data prediction (for data-form fallbacks),
- ``SAVED``: a sample the scheduler keeps across steps (UniPC's corrected sample, a singlestep
  block's start),
- ``NOISE``: fresh standard Gaussian noise (SDE variants),
- ``ANCHOR``: the run's first model output as a noise prediction, kept for the whole run (DualFast's
  reference prediction at the noisiest point).

For example DPM-Solver++ 1st order (arXiv 2211.01095, eq. 8): ``(sigma_t / sigma_s) * X - alpha_t * phi1 * M(0)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class Lin:
    """An immutable linear combination {symbol: coefficient}."""

    __slots__ = ("terms",)
    __array_ufunc__ = None  # numpy scalars defer to Lin's own operators

    def __init__(self, terms: dict | None = None):
        self.terms = dict(terms or {})

    def __add__(self, other: Lin) -> Lin:
        if isinstance(other, (int, float)) and other == 0:
            return self
        out = dict(self.terms)
        for key, value in other.terms.items():
            out[key] = out.get(key, 0.0) + value
        return Lin(out)

    __radd__ = __add__

    def __neg__(self) -> Lin:
        return Lin({k: -v for k, v in self.terms.items()})

    def __sub__(self, other: Lin) -> Lin:
        return self + (-other)

    def __mul__(self, scalar) -> Lin:
        scalar = float(scalar)
        return Lin({k: scalar * v for k, v in self.terms.items()})

    __rmul__ = __mul__

    def __truediv__(self, scalar) -> Lin:
        return self * (1.0 / float(scalar))

    def is_finite(self) -> bool:
        return all(np.isfinite(v) for v in self.terms.values())

    def __repr__(self) -> str:
        return " + ".join(f"{v:.6g}*{k}" for k, v in self.terms.items()) or "0"


X = Lin({"x": 1.0})
SAVED = Lin({"saved": 1.0})
NOISE = Lin({"noise": 1.0})
DATA = Lin({"data": 1.0})
ANCHOR = Lin({"anchor": 1.0})


def M(k: int) -> Lin:
    """The converted model output k steps back (k = 0: the current step)."""
    return Lin({("m", k): 1.0})


def S(k: int) -> Lin:
    """The sample the model saw k steps back (k >= 1; the current one is X), for families that record
    samples (``TableLayout.samples``: they convert earlier outputs between noise and data predictions)."""
    return Lin({("s", k): 1.0})


@dataclass
class StepRule:
    """What one ``step`` computes: the next sample, optionally the sample to keep for later, and the
    history entry recorded for this step (default ``M(0)``; dynamic compensation records a corrected one)."""

    x_next: Lin
    saved_next: Lin | None = None
    history_entry: Lin | None = None

    def is_finite(self) -> bool:
        return all(lin is None or lin.is_finite() for lin in (self.x_next, self.saved_next, self.history_entry))
