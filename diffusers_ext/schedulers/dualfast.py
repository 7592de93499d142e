"""DualFast (arXiv 2506.13058) approximation-error mixing as an option of multistep solvers.

The paper splits the sampling error into the solver's discretization error and the network's
approximation error, finds the approximation error smaller at larger noise, and replaces the noise
prediction at step t by a mix with one taken at an earlier, noisier point tau:

    eps'(x_t, t) = (1 + c_t) eps(x_t, t) - c_t eps(x_tau, tau)

with zero extra model calls, plugged into DDIM, DPM-Solver, DPM-Solver++ and UniPC. Here the solver runs
as if the network had returned eps' at every step: the mixed output is what the predictor and UniPC's
corrector use and what the history records, so later steps' differences see it too. For a family that
integrates data predictions (DPM-Solver++, UniPC with ``predict_x0``) the mixed noise prediction is
converted with the sample the model saw:

    x0' = (x_t - sigma_t eps') / alpha_t = (1 + c) x0 - (c / alpha_t) x_t + (c sigma_t / alpha_t) eps_tau

Everything is linear in the current sample, the current output and eps_tau, so it folds into the
coefficient table: no extra kernels per step, no extra model calls. eps_tau is the run's first output as a
noise prediction (``ANCHOR``), computed once at the first step and kept in one extra tensor.

Choices made because the sources we could read (abstract, reviews, secondary summaries; not the paper's
method section itself) do not settle them:

- tau is the run's first (noisiest) evaluation point. The paper's analysis motivates the noisiest point
  (smallest approximation error); that its experiments use exactly this point is unconfirmed.
- The mixing is in noise space, as the paper writes it, also for data-prediction solvers (converted as
  above), not a mix of the two data predictions (which is a different update).
- The history records the mixed output (the solver sees eps' as the model output everywhere).
- c_t: ``dualfast_schedule`` "linear" (default) grows from 0 at the first step to ``dualfast_strength``
  at the last step, since the approximation error, which the mixing compensates, grows towards low
  noise; "constant" uses ``dualfast_strength`` at every step after the first. The paper's exact schedule
  and typical values are unconfirmed; strength 0 (the default) is the plain solver, bit for bit.
- With dynamic compensation (DC-Solver) the order is: mix the current output, then compensate, i.e.
  interpolate it with the history entries, which are mixed already. (Mixing after compensating would mix
  the history's share of the interpolation a second time.) UniPC's corrector, which DC-Solver runs before
  compensating, sees the mixed uncompensated output.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, TypedDict

from .engine import ANCHOR, Grid, Lin, TableLayout, X
from .engine.options import option_defaults

DUALFAST_SCHEDULES = ("linear", "constant")


def mixing_coefficient(strength: float, schedule: str, n: int, run_steps: int) -> float:
    """c for the n-th step (n = 0: the run's first) of a run of ``run_steps`` steps."""
    if n == 0 or strength == 0.0:
        return 0.0
    if schedule == "constant":
        return strength
    return strength * n / (run_steps - 1)


class DualFastOptions(TypedDict, total=False):
    """DualFast's options (``Annotated[type, default]``)."""

    dualfast_strength: Annotated[float, 0.0]  # the largest mixing coefficient c; 0 = off
    dualfast_schedule: Annotated[Literal["linear", "constant"], "linear"]  # c over the steps: 0 -> strength, or flat


class DualFastMixing:
    """Mixin for multistep families: the ``dualfast_*`` options and the mixed output (``mix_output``)."""

    family_options: ClassVar[dict[str, Any]] = option_defaults(DualFastOptions)
    option_fields: ClassVar[type] = DualFastOptions

    @property
    def mixes(self) -> bool:
        return self.config.dualfast_strength != 0.0

    def table_layout(self) -> TableLayout:
        """Mixing reads the anchor (the run's first output as a noise prediction)."""
        return super().table_layout().union(TableLayout(anchor=self.mixes))

    def check_config(self) -> None:
        super().check_config()
        cfg = self.config
        strength = cfg.dualfast_strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
                or strength < 0:
            raise ValueError(f"dualfast_strength must be a finite number >= 0 (0 turns DualFast off), got "
                             f"{strength!r}")
        if cfg.dualfast_schedule not in DUALFAST_SCHEDULES:
            raise ValueError(f"Unknown dualfast_schedule {cfg.dualfast_schedule!r}; valid choices: "
                             f"{DUALFAST_SCHEDULES}")

    def mix_output(self, grid: Grid, i: int, n: int, out: Lin, target: str | None = None) -> Lin:
        """``out``, an output of step i as a ``target`` ("data" or "noise"; default the family's) prediction,
        as DualFast's mixed one (see above). The base's ``current_output`` is the mixed M(0); compensation
        (``DynamicCompensation.recorded_output``) starts from it."""
        cfg = self.config
        c = mixing_coefficient(float(cfg.dualfast_strength), cfg.dualfast_schedule, n, grid.num_steps - (i - n))
        if c == 0.0:
            return out
        if (target or self.target) == "noise":
            return (1.0 + c) * out - c * ANCHOR
        a, s = grid.alpha[i], grid.sigma[i]
        return (1.0 + c) * out - (c / a) * X + (c * s / a) * ANCHOR
