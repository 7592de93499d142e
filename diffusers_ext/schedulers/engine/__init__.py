"""The solver engine: the diffusers contract, options, schedules, grids, predictions and the step plan.

A solver family (one file above this package) writes each step as a linear combination in paper notation
(``step_rule``), declares what its steps read and write (``layout``), and inherits everything else from
``SolverScheduler`` (``scheduler``):

- ``options``: the options every family shares (diffusers' names and defaults) and the generated ``__init__``;
- ``config_loading``: how configs of other diffusers schedulers are read (``from_config``);
- ``training_schedule`` / ``noise_schedules``: the model's noise schedule, t -> (alpha, sigma, lambda);
- ``grids``: the timestep grid of a run (``Grid``: times, alphas, sigmas, lambdas);
- ``predictions``: model-output conversions (epsilon, v, sample, flow, EDM) as linear maps;
- ``step_rule``: the symbols X, M(k), S(k), DATA, SAVED, NOISE, ANCHOR and ``StepRule``;
- ``layout``: the coefficient table's columns and rows (``TableLayout``);
- ``plan``: the precomputed coefficient table of a run (``StepPlan``);
- ``config_files``: options given as paths of files our tools wrote.
"""

from .grids import Grid
from .layout import TableLayout
from .plan import StepPlan
from .scheduler import SolverScheduler, warmup_order
from .step_rule import ANCHOR, DATA, NOISE, SAVED, Lin, M, S, StepRule, X

__all__ = ["SolverScheduler", "Grid", "TableLayout", "StepPlan", "StepRule", "Lin", "M", "S", "X", "DATA", "SAVED",
           "NOISE", "ANCHOR", "warmup_order"]
