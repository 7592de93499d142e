"""DC-Solver (arXiv 2409.03755): dynamic compensation of a multistep predictor-corrector solver.

Start here; the parts sit beside this file:

- ``scheduler.py``: ``DCSolverScheduler``, UniPC with compensation always on;
- ``compensation.py``: the mechanism (Lagrange interpolation of the buffered outputs at a shifted time,
  folded into the coefficient table) as the ``dc_*`` options of UniPC and DPM-Solver++ (a mixin);
- ``cpr.py``: the cascade polynomial regression that predicts the ratios at any (NFE, guidance scale);
- calibration (learning the ratios on a model) is a search over sampling runs and lives with the other
  searches: ``diffusers_ext.search.calibrate_dc`` (``diffusers-ext calibrate-dc``).

``scheduler.py`` is not imported here: UniPC imports the compensation mixin from this package.
"""

from .compensation import DynamicCompensation, load_cpr
from .cpr import CascadePolynomialRegression

__all__ = ["DynamicCompensation", "CascadePolynomialRegression", "load_cpr"]
