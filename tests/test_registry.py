"""The scheduler registry: the names results files and CLI calls use keep building the same schedulers, named
sets, the spec parser's precedence and errors, from_config, and a new family being one registry line."""

import json
from pathlib import Path

import diffusers
import pytest

from diffusers_ext import DEISScheduler, DPMSolverPPScheduler, UniPCScheduler, USFScheduler, registry
from diffusers_ext.cli import main
from diffusers_ext.eval import sweep as sw
from diffusers_ext.eval.gmm_accuracy import DEFAULT_SOLVERS
from diffusers_ext.registry import from_config, make_scheduler, named_set, parse_spec, scheduler_class
from diffusers_ext.results_log import read_rows, scheduler_identity
from tests.helpers import SCHEDULER_VARIANTS

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"

# what the short names meant before the registry (results files and scripts name them): frozen
SHORT_NAMES_BEFORE = {
    "dpm++2m": (DPMSolverPPScheduler, {}),
    "dpm++3m": (DPMSolverPPScheduler, {"solver_order": 3}),
    "dpm++3s": (DPMSolverPPScheduler, {"solver_order": 3, "singlestep": True}),
    "unipc": (UniPCScheduler, {}),
    "unipc3": (UniPCScheduler, {"solver_order": 3}),
    "deis": (DEISScheduler, {}),
    "ipndm": (DEISScheduler, {"solver_type": "ipndm", "solver_order": 4}),
}


@pytest.mark.parametrize("name", list(SHORT_NAMES_BEFORE))
def test_short_names_build_what_they_built_before(name):
    cls, options = SHORT_NAMES_BEFORE[name]
    assert list(registry.SHORT_NAMES) == list(SHORT_NAMES_BEFORE)
    assert scheduler_identity(make_scheduler(name)) == scheduler_identity(cls(**options))  # same results keys
    assert parse_spec(name) == (cls.__name__, options) and scheduler_class(name) is cls


def test_gmm_set_is_the_committed_benchmarks_rows():
    """The labels, classes and options of bench/results/gmm_accuracy.json's rows, in order."""
    rows = json.loads((RESULTS / "gmm_accuracy.json").read_text())["rows"]
    committed = {r["scheduler"]: (r["class"], r["config"]) for r in rows}
    assert list(DEFAULT_SOLVERS) == list(committed) == list(named_set("gmm"))
    assert DEFAULT_SOLVERS == committed
    for path, options in DEFAULT_SOLVERS.values():
        assert type(make_scheduler(path, options)) is scheduler_class(path)


def test_demo_set_is_the_demos_specs_in_order():
    demo = named_set("demo")
    assert list(demo) == ["dpm++2m", "dpm++3m", "unipc", "deis", "ipndm", "diffusers:DDIMScheduler:clip_sample=false",
                          "diffusers:DPMSolverMultistepScheduler", "diffusers:UniPCMultistepScheduler",
                          "diffusers:DEISMultistepScheduler"]
    assert all(label == spec for label, spec in demo.items())  # labels are the specs: results rows name them
    done = {r["scheduler"] for r in read_rows(RESULTS / "sweep_digits.jsonl")}
    assert set(demo) <= done


def test_diffusers_best_set_covers_each_grid_once():
    best = named_set("diffusers-best")
    built = {label: make_scheduler(spec) for label, spec in best.items()}
    assert len(built) == 18
    configs = {json.dumps(scheduler_identity(s), sort_keys=True) for s in built.values()}
    assert len(configs) == 18  # no two entries are the same scheduler
    assert built["diffusers DPM++ 3M lu_lambdas"].config.use_lu_lambdas is True
    assert built["diffusers DPM++ 3M lu_lambdas"].config.solver_order == 3
    assert built["diffusers UniPC trailing"].config.timestep_spacing == "trailing"
    assert built["diffusers DEIS karras"].config.use_karras_sigmas is True
    assert built["diffusers Euler karras"].config.use_karras_sigmas is True
    assert built["diffusers DDIM trailing"].config.clip_sample is False
    assert {type(s).__name__ for s in built.values()} == set(registry.COMPARED)
    for s in built.values():
        s.set_timesteps(6)
        assert len(s.timesteps) == 6


def test_options_precedence_spec_then_dict_then_keywords():
    assert make_scheduler("dpm++3m").config.solver_order == 3
    assert make_scheduler("dpm++3m:solver_order=2").config.solver_order == 2
    assert make_scheduler("dpm++3m:solver_order=2", {"solver_order": 1}).config.solver_order == 1
    sched = make_scheduler("ipndm:solver_order=3", {"solver_order": 1}, solver_order=2, use_karras_sigmas=True)
    assert (sched.config.solver_order, sched.config.solver_type, sched.config.use_karras_sigmas) == (2, "ipndm", True)
    assert parse_spec("unipc: solver_order = 3 , dc_ratios=[1, 0.9]") == (
        "UniPCScheduler", {"solver_order": 3, "dc_ratios": [1, 0.9]})
    assert parse_spec("diffusers:DDIMScheduler:clip_sample=False,steps_offset=None,timestep_spacing=leading") == (
        "diffusers:DDIMScheduler", {"clip_sample": False, "steps_offset": None, "timestep_spacing": "leading"})


def test_any_diffusers_scheduler_class_is_a_valid_spec():
    assert scheduler_class("diffusers:HeunDiscreteScheduler") is diffusers.HeunDiscreteScheduler
    sched = make_scheduler("diffusers:EulerAncestralDiscreteScheduler:timestep_spacing=trailing")
    assert type(sched) is diffusers.EulerAncestralDiscreteScheduler and sched.config.timestep_spacing == "trailing"


def test_from_config_keeps_the_pipelines_settings_and_the_specs_options():
    source = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                     prediction_type="v_prediction", timestep_spacing="leading", steps_offset=1)
    sched = from_config("dpm++3m:use_karras_sigmas=true", source.config, lower_order_final=False)
    assert type(sched) is DPMSolverPPScheduler
    assert (sched.config.beta_schedule, sched.config.prediction_type, sched.config.steps_offset) == (
        "scaled_linear", "v_prediction", 1)
    assert (sched.config.solver_order, sched.config.use_karras_sigmas, sched.config.lower_order_final) == (
        3, True, False)
    theirs = from_config("diffusers:UniPCMultistepScheduler:solver_order=3", sched.config)
    assert theirs.config.prediction_type == "v_prediction" and theirs.config.solver_order == 3
    # diffusers' from_config drops unknown keywords silently; the registry names them
    with pytest.raises(ValueError, match="UniPCScheduler has no option.*'solver_ordr'; valid options: .*solver_order"):
        from_config("unipc", source.config, solver_ordr=3)


@pytest.mark.parametrize("call,error,message", [
    (lambda: make_scheduler("nope"), ValueError, "Unknown scheduler 'nope': use one of the short names dpm++2m, "
     "dpm++3m, dpm++3s, unipc, unipc3, deis, ipndm; one of our classes DPMSolverPPScheduler, UniPCScheduler, "
     "DEISScheduler, DCSolverScheduler, USFScheduler; or diffusers:ClassName"),
    (lambda: make_scheduler("diffusers:NotAScheduler"), ValueError,
     "diffusers has no scheduler class 'NotAScheduler'; valid classes: .*DDIMScheduler"),
    (lambda: make_scheduler("diffusers:"), ValueError, "diffusers has no scheduler class ''"),
    (lambda: scheduler_class("unipc:solver_order"), ValueError, "option 'solver_order' of 'unipc:solver_order' is "
     "not key=value"),
    (lambda: make_scheduler("deis:solver_type=ab9"), ValueError, "Scheduler 'deis:solver_type=ab9': "),
    (lambda: make_scheduler("diffusers:DDIMScheduler:beta_schedule=nope"), ValueError,
     "Scheduler 'diffusers:DDIMScheduler:beta_schedule=nope': "),
    (lambda: make_scheduler(DPMSolverPPScheduler), TypeError, "a scheduler spec is a string"),
    (lambda: named_set("best"), ValueError, "Unknown scheduler set 'best'; valid sets: demo, sweep, gmm, "
     "diffusers-best"),
])
def test_clear_errors(call, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace("+", r"\+")):
        call()


def test_contract_matrix_runs_every_registered_class():
    covered = {scheduler_class(spec) for spec, _ in SCHEDULER_VARIANTS.values()}
    assert covered == set(registry.OURS.values())
    assert {name for name, (spec, _) in SCHEDULER_VARIANTS.items() if scheduler_class(spec) is USFScheduler}


def test_a_new_family_is_one_registry_line(tmp_path, monkeypatch):
    """With one entry in OURS a new class is a spec for the CLI, make_scheduler, scheduler_class and from_config."""

    class ToyScheduler(DPMSolverPPScheduler):
        pass

    monkeypatch.setitem(registry.OURS, "ToyScheduler", ToyScheduler)
    monkeypatch.setattr(sw.GMMMetric, "__call__", lambda self, scheduler, cell: 1.0)  # the sweep's path, not its ODE
    out = tmp_path / "s.jsonl"
    assert main(["sweep", "--model", "gmm", "--nfe", "3", "--samples", "4", "--scheduler",
                 "ToyScheduler:solver_order=1", "--out", str(out)]) == 0
    row = read_rows(out)[0]
    assert row["scheduler_class"].endswith("ToyScheduler") and row["scheduler_config"]["solver_order"] == 1
    assert type(from_config("ToyScheduler", diffusers.DDIMScheduler().config)) is ToyScheduler
    assert "ToyScheduler" in str(pytest.raises(ValueError, make_scheduler, "Toy").value)
