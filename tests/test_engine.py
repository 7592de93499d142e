"""The solver engine's public surface: the declared table layout, typed constructors, and a new family in one file."""

from __future__ import annotations

import inspect
from typing import Literal

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from diffusers_ext.schedulers import (
    DCSolverScheduler,
    DEISScheduler,
    DPMSolverPPScheduler,
    UniPCScheduler,
    USFScheduler,
    hand_designed_schedule,
)
from diffusers_ext.schedulers.engine import SolverScheduler, StepRule, TableLayout, X
from diffusers_ext.schedulers.engine.options import COMMON_OPTIONS
from diffusers_ext.schedulers.engine.step_rule import DATA

FAMILIES = [DPMSolverPPScheduler, UniPCScheduler, DCSolverScheduler, DEISScheduler, USFScheduler]


def test_layout_orders_columns_and_rows():
    layout = TableLayout(history=2, saved=True, noise=False, anchor=True, samples=True)
    assert layout.inputs == ("x", "out", "saved", "anchor")
    assert [layout.column(k) for k in layout.inputs] == [0, 1, 2, 3]
    assert [layout.history_column(s) for s in range(2)] == [4, 5]
    assert [layout.sample_column(s) for s in range(2)] == [6, 7] and layout.num_columns == 8
    assert layout.outputs == ("x_next", "saved_next", "history_entry", "sample_entry")
    assert layout.write_slots(np.array([0, 1])).tolist() == [[0, 2], [1, 3]]
    assert TableLayout(history=0, samples=True).samples is False  # no ring, no sample ring
    assert TableLayout(history=1).union(TableLayout(history=3, noise=True)) == TableLayout(history=3, noise=True)
    with pytest.raises(KeyError, match="no 'noise' column"):
        layout.column("noise")
    with pytest.raises(ValueError, match=r"needs \['saved'\]"):
        layout.gather(x=torch.zeros(1), out=torch.zeros(1), anchor=torch.zeros(1))


@pytest.mark.parametrize("make, expected", [
    (lambda: DPMSolverPPScheduler(solver_order=3), TableLayout(history=2)),
    (lambda: DPMSolverPPScheduler(solver_order=2, singlestep=True), TableLayout(history=1, saved=True)),
    (lambda: DPMSolverPPScheduler(algorithm_type="sde-dpmsolver++"), TableLayout(history=1, noise=True)),
    (lambda: DPMSolverPPScheduler(solver_order=1, dc_ratios=[1.0] * 6), TableLayout(history=2)),
    (lambda: DPMSolverPPScheduler(dualfast_strength=0.5), TableLayout(history=1, anchor=True)),
    (lambda: UniPCScheduler(solver_order=2), TableLayout(history=2, saved=True)),
    (lambda: DEISScheduler(solver_type="rk4"), TableLayout(history=3, saved=True)),
    (lambda: USFScheduler(solver_schedule=hand_designed_schedule("unipc-bh2", np.linspace(999, -1, 7).tolist())),
     TableLayout(history=2, saved=True)),
])
def test_families_declare_their_layout_and_the_plan_follows_it(make, expected):
    sched = make()
    assert sched.table_layout() == expected
    sched.set_timesteps(6)
    plan = sched.plan
    assert plan.layout == expected
    assert plan.table.shape[1:] == (len(expected.outputs), expected.num_columns)


def test_common_option_defaults_are_diffusers_defaults():
    """Where diffusers' DPMSolverMultistepScheduler has an option of the same name, the default is the same."""
    theirs = {k: p.default for k, p in inspect.signature(DPMSolverMultistepScheduler.__init__).parameters.items()}
    # lambda_min_clipped: None (no clip) rather than diffusers' -inf, so saved configs stay strict JSON
    shared = [k for k in COMMON_OPTIONS if k in theirs and k != "lambda_min_clipped"]
    assert len(shared) >= 20
    assert {k: COMMON_OPTIONS[k] for k in shared} == {k: theirs[k] for k in shared}


@pytest.mark.parametrize("cls", FAMILIES)
def test_constructor_signature_is_typed_and_complete(cls):
    """help() / IDE signature help show every option with its type; the config holds exactly these options."""
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self")
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert all(p.annotation is not inspect.Parameter.empty for p in params.values()), cls
    config = {k: v for k, v in cls(**({"solver_schedule": None} if cls is USFScheduler else {})).config.items()
              if not k.startswith("_")}
    assert set(config) == set(params)
    assert {k: p.default for k, p in params.items()} == config
    doc = cls.__init__.__doc__
    assert "solver_type" in doc or "solver_schedule" in doc
    assert "use_karras_sigmas: bool = False" in doc


def test_family_defaults_and_feature_options_in_signatures():
    deis = inspect.signature(DEISScheduler.__init__).parameters
    assert deis["solver_order"].default == 3 and deis["timestep_spacing"].default == "quadratic"
    assert "dc_ratios" not in deis and "dualfast_strength" not in deis
    unipc = inspect.signature(UniPCScheduler.__init__).parameters
    assert unipc["solver_type"].annotation == Literal["bh1", "bh2"]
    assert unipc["dualfast_strength"].annotation is float and "dc_cpr" in unipc
    assert list(unipc)[1:3] == ["solver_type", "predict_x0"]  # the family's own options first
    dc = inspect.signature(DCSolverScheduler.__init__).parameters
    assert list(dc) == list(unipc)


class FirstOrderScheduler(SolverScheduler):
    """A new family in a few lines: DDIM (arXiv 2010.02502) written as the engine's first-order data step,
    x_t = (sigma_t / sigma_s) x + (alpha_t - alpha_s sigma_t / sigma_s) x0."""

    def __init__(self, **options) -> None:
        """No options of its own."""

    def step_rule(self, grid, i, n):
        a, s = grid.alpha, grid.sigma
        ratio = s[i + 1] / s[i]
        return StepRule(ratio * X + (a[i + 1] - a[i] * ratio) * DATA)


def test_a_new_family_is_one_class_and_matches_diffusers(tmp_path):
    """The engine gives a new family the whole contract: config round trip, grids, prediction types, step."""
    config = DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", set_alpha_to_one=False,
                           clip_sample=False, timestep_spacing="leading").config
    ref = DDIMScheduler.from_config(config)
    ref.save_pretrained(tmp_path)
    ours = FirstOrderScheduler.from_pretrained(tmp_path)
    assert ours.table_layout() == TableLayout()
    n = 6
    ref.set_timesteps(n)
    ours.set_timesteps(timesteps=ref.timesteps.tolist())  # DDIM's "leading" grid, then the clean end
    assert torch.equal(ref.timesteps, ours.timesteps)
    generator = torch.Generator().manual_seed(0)
    x_ref = x_ours = torch.randn(2, 3, 4, 4, generator=generator)
    for k, t in enumerate(ref.timesteps):
        out = torch.randn(x_ref.shape, generator=generator)  # the same "model output" for both
        x_ref = ref.step(out, t, x_ref).prev_sample
        x_ours = ours.step(out, t, x_ours).prev_sample
        if k < n - 1:  # diffusers' last DDIM step goes to alphas_cumprod[0] (set_alpha_to_one=False), ours too
            torch.testing.assert_close(x_ours, x_ref, rtol=1e-5, atol=1e-5)


def test_grid_and_plan_are_read_only():
    sched = UniPCScheduler()
    sched.set_timesteps(5)
    with pytest.raises(ValueError, match="read-only"):
        sched.plan.table[0] *= 0
    with pytest.raises(ValueError, match="read-only"):
        sched.grid.sigma[0] = 1.0


def test_a_family_declaration_is_only_a_signature():
    """The declared __init__ is never run: a body, or options that are not keyword-only, are refused at once."""
    with pytest.raises(TypeError, match=r"keyword-only parameters with defaults.*\['eta'\]"):
        class Positional(SolverScheduler):
            def __init__(self, eta: float = 0.5, **options) -> None:
                """eta"""
    with pytest.raises(TypeError, match="its body is never run"):
        class WithBody(SolverScheduler):
            def __init__(self, *, eta: float = 0.5, **options) -> None:
                self.eta = eta


def test_generated_constructor_has_type_hints():
    import typing

    hints = typing.get_type_hints(DPMSolverPPScheduler.__init__)
    assert hints["solver_type"] == Literal["midpoint", "heun"] and hints["num_train_timesteps"] is int
