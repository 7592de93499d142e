"""diffusers_ext.tune: the catalogue's best scheduler at one NFE, chosen on calibration noise, checked on held-out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_ext.models.gmm import GaussianMixtureDenoiser
from diffusers_ext.results_log import read_rows
from diffusers_ext.sampling import model_fn, reference_solve
from diffusers_ext.schedulers import DPMSolverPPScheduler, UniPCScheduler
from diffusers_ext.schedulers.engine.noise_schedules import FlowMatching
from diffusers_ext.tuning import Score, beats_beyond_spread, catalogue, search_is_kept, tune

SHAPE = (2, 4, 4)


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixtureDenoiser()


def small_catalogue():
    return catalogue(["dpm++2m", "unipc-bh2", "deis-ipndm3"], ["linspace", "quadratic", "karras"])


def test_chooses_the_lowest_calibration_median_and_reports_held_out(gmm, tmp_path):
    config = DPMSolverPPScheduler().config
    result = tune(model_fn(gmm), 5, scheduler_config=config, sample_shape=SHAPE, num_calibration=6,
                  num_validation=6, candidates=small_catalogue(), refine=False, progress=False)
    assert len(result.report) == 9 and result.baseline is None
    # recompute every candidate's errors with a plain loop against the same reference
    noise = torch.randn((12, *SHAPE), generator=torch.Generator().manual_seed(0))
    reference = reference_solve(model_fn(gmm), config, noise).double()
    medians = {}
    for cand in small_catalogue():
        sched = cand.build(config)
        sched.set_timesteps(5)
        x = noise.clone()
        for t in sched.timesteps:
            x = sched.step(gmm(x, t).sample, t, x).prev_sample
        err = (x.double() - reference).flatten(1).pow(2).mean(1).sqrt().numpy()
        medians[cand.name] = (np.median(err[:6]), np.median(err[6:]))
    best = min(medians, key=lambda k: medians[k][0])
    assert result.chosen == best
    for score in result.report:
        np.testing.assert_allclose([score.calibration_median, score.validation_median], medians[score.name], rtol=1e-9)
    assert result.model_calls == 12 * (200 + 9 * 5)  # the reference and each candidate, per sample
    # the chosen scheduler carries its options through save / load
    result.save(tmp_path)
    loaded = type(result.scheduler).from_pretrained(tmp_path / "scheduler")
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}
    assert public(loaded.config) == public(result.scheduler.config)
    assert (tmp_path / "tune.png").stat().st_size > 1000 and "chosen" in (tmp_path / "tune.md").read_text()


def test_resumes_from_its_results_file(gmm, tmp_path):
    out = tmp_path / "tune.jsonl"
    kw = dict(scheduler_config=DPMSolverPPScheduler().config, sample_shape=SHAPE, num_calibration=4, num_validation=4,
              candidates=small_catalogue()[:4], refine=False, out=out, progress=False)
    first = tune(model_fn(gmm), 4, **kw)
    assert len(read_rows(out)) == 4 and first.model_calls > 0
    again = tune(model_fn(gmm), 4, **kw)
    assert again.model_calls == 0 and again.chosen == first.chosen  # nothing recomputed
    other_nfe = tune(model_fn(gmm), 5, **kw)
    assert other_nfe.model_calls > 0 and len(read_rows(out)) == 8


def test_refinement_is_kept_only_beyond_the_spread(gmm):
    result = tune(model_fn(gmm), 6, scheduler_config=UniPCScheduler().config, sample_shape=SHAPE, num_calibration=6,
                  num_validation=8, candidates=catalogue(["unipc-bh2"], ["linspace"]), dc_draws=1, reference_steps=60,
                  progress=False)
    assert result.refinement is not None and len(result.refinement.options["dc_ratios"]) == 6
    assert result.refinement_model_calls > 0  # the DC stage's batched evaluations are reported
    ratios = np.array(result.refinement.options["dc_ratios"])
    assert np.all((ratios >= 0.5) & (ratios <= 1.5))
    winner = result.report[0]
    kept = beats_beyond_spread(result.refinement.validation, winner.validation)
    assert result.refinement_kept == kept
    assert (result.scheduler.config.dc_ratios is not None) == kept


def test_search_stage_starts_from_the_winner_and_is_kept_only_beyond_the_spread(gmm, tmp_path, monkeypatch):
    from diffusers_ext import USFScheduler, tuning

    kw = dict(scheduler_config=DPMSolverPPScheduler().config, sample_shape=SHAPE, num_calibration=8, num_validation=8,
              candidates=catalogue(["dpm++2m"], ["linspace"]), refine=False, reference_steps=60, progress=False)
    result = tune(model_fn(gmm), 5, search_schedules=24, **kw)
    searched = result.search
    assert searched is not None and searched.name == "S^3 schedule seeded with dpm++2m on the dpm++2m linspace grid"
    winner = result.report[0]
    # measured: the search lowers the calibration median 0.164 -> 0.061 (its seeds include the winner itself)
    assert searched.calibration_median < 0.5 * winner.calibration_median
    assert result.search_kept == search_is_kept(searched, winner)
    assert result.search_kept and isinstance(result.scheduler, USFScheduler)
    assert result.chosen == searched.name and "S^3" in result.table()
    # the chosen schedule survives save / load and samples what was scored
    result.save(tmp_path)
    loaded = USFScheduler.from_pretrained(tmp_path / "scheduler")
    noise = torch.randn((16, *SHAPE), generator=torch.Generator().manual_seed(0))
    reference = reference_solve(model_fn(gmm), DPMSolverPPScheduler().config, noise, 60)
    x = tuning.sample(model_fn(gmm), loaded, noise, 5)
    np.testing.assert_allclose(tuning.per_sample_error(x, reference)[8:], searched.validation, rtol=1e-6)

    # a search result that is worse on held-out noise is reported but not kept
    ddim = {"version": 1, "timesteps": [999.0, 799.0, 599.0, 399.0, 199.0, -1.0], "analytical_first_step": "none",
            "steps": [{"prediction": "data", "order": 1, "derivative_points": [], "relaxation": 0.0}] * 5}
    monkeypatch.setattr(tuning, "searched_schedule",
                        lambda *a, **k: (USFScheduler.from_config(kw["scheduler_config"], solver_schedule=ddim),
                                         ["ddim"]))
    worse = tune(model_fn(gmm), 5, search_schedules=24, **kw)
    assert not worse.search_kept and worse.chosen == "dpm++2m linspace"
    assert "not kept" in worse.table()


def test_search_seeds_a_winner_without_usf_form_and_a_grid_ending_at_sigma_min(gmm, tmp_path):
    """A DEIS winner seeds DPM-Solver++ 2M and UniPC bh2 on its grid; a config whose grid ends at sigma_min (it
    crashed the search: USF samples to the clean end) seeds that grid ending clean."""
    from diffusers_ext import DEISScheduler, USFScheduler
    from diffusers_ext.tuning import searched_schedule

    DPMSolverPPScheduler(final_sigmas_type="sigma_min", use_karras_sigmas=True).save_pretrained(tmp_path)
    config = DPMSolverPPScheduler.load_config(tmp_path)
    winner = DEISScheduler.from_config(config, solver_type="ipndm")
    noise = torch.randn((4, *SHAPE), generator=torch.Generator().manual_seed(0))
    reference = reference_solve(model_fn(gmm), config, noise, 40)
    searched, seeded = searched_schedule(model_fn(gmm), config, winner, "deis-ipndm3 karras", noise, reference, 5, 2)
    assert seeded == ["dpm++2m", "unipc-bh2"] and isinstance(searched, USFScheduler)
    winner.set_timesteps(5)
    times = searched.config.solver_schedule["timesteps"]
    np.testing.assert_allclose(times[:-1], winner.grid.t[:-1])  # the budget of 2 schedules: one of the two seeds
    assert times[-1] == searched.noise_schedule.t_clean


def test_beats_beyond_spread():
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 2.0, 40)
    assert beats_beyond_spread(base * 0.7, base)
    assert not beats_beyond_spread(base * 0.999 + rng.normal(0, 0.3, 40), base)
    assert not beats_beyond_spread(base * 1.2, base)


def test_flow_matching_config(tmp_path):
    """A saved FlowMatchEuler config (SD3/Flux-style): candidates follow its flow schedule."""
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(tmp_path)
    config = FlowMatchEulerDiscreteScheduler.load_config(tmp_path)
    model = GaussianMixtureDenoiser(schedule=FlowMatching(1000), prediction_type="flow_prediction")
    result = tune(model_fn(model), 5, scheduler_config=config, sample_shape=SHAPE, num_calibration=4,
                  num_validation=4, candidates=small_catalogue(), refine=False, progress=False)
    assert result.scheduler.config.use_flow_sigmas and result.scheduler.config.flow_shift == 3.0
    # measured: 0.07 for the best (quadratic grid), 0.12 on linspace, 0.77 on karras
    assert result.report[0].validation_median < 0.1


def test_digits_pipeline_with_guidance():
    from diffusers_ext.models.digits import load_pipeline

    pipe = load_pipeline()
    result = tune(pipe, 4, guidance_scale=2.0, num_calibration=2, num_validation=2,
                  candidates=catalogue(["dpm++2m"], ["linspace", "karras"]), refine=False, reference_steps=20,
                  progress=False)
    assert result.baseline is not None and result.baseline.name.startswith("model's own")
    assert result.chosen in ("dpm++2m linspace", "dpm++2m karras")
    pipe.scheduler = result.scheduler
    images = pipe(class_labels=[3], num_inference_steps=4, guidance_scale=2.0, output_type="pt").images
    assert torch.isfinite(images).all()
    # the search stage samples the calibration noises alone: their labels, not the whole batch's (it crashed)
    searched = tune(pipe, 4, guidance_scale=2.0, num_calibration=2, num_validation=3,
                    candidates=catalogue(["dpm++2m"], ["karras"]), refine=False, reference_steps=20,
                    search_schedules=3, progress=False)
    assert searched.search is not None and len(searched.search.validation) == 3
    assert all(np.isfinite(searched.search.calibration + searched.search.validation))


@pytest.mark.parametrize("kwargs, match", [
    ({"nfe": 0}, "nfe must be an integer >= 1"),
    ({"nfe": 5, "num_validation": 0}, "num_calibration and num_validation"),
    ({"nfe": 5, "sample_shape": None}, "needs sample_shape"),
    ({"nfe": 5, "search_schedules": -1}, "search_schedules must be an integer >= 0"),
])
def test_bad_input(gmm, kwargs, match):
    kw = {"sample_shape": SHAPE, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        tune(model_fn(gmm), **kw)


def test_unknown_catalogue_entries():
    with pytest.raises(ValueError, match="Unknown catalogue entries.*solvers"):
        catalogue(["dpm++9m"])


def test_cli_writes_the_folder_and_resumes(tmp_path, capsys):
    from diffusers_ext.cli import main

    argv = ["tune", "--model", "gmm", "--nfe", "4", "--samples", "3", "--reference-steps", "40", "--no-refine",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    config = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] in ("DPMSolverPPScheduler", "UniPCScheduler", "DEISScheduler")
    assert first["chosen"] in (tmp_path / "tune.md").read_text() and (tmp_path / "tune.png").exists()
    assert first["model_evaluations"] == 6 * (40 + 66 * 4)
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["model_evaluations"] == 0 and again["chosen"] == first["chosen"]


def test_cli_bad_model(tmp_path, capsys):
    from diffusers_ext.cli import main

    assert main(["tune", "--model", str(tmp_path / "missing"), "--nfe", "4", "--out", str(tmp_path / "out")]) == 2
    assert "does not load" in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match="the gmm model is unconditional"):
        main(["tune", "--model", "gmm", "--nfe", "4", "--guidance", "3", "--out", str(tmp_path / "out")])
    assert main(["tune", "--model", "gmm", "--nfe", "4", "--search", "-1", "--out", str(tmp_path / "out")]) == 2
    assert "search_schedules must be an integer >= 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_searched_schedule_with_a_better_median_but_a_worse_tail_is_not_kept():
    rng = np.random.default_rng(0)
    incumbent = Score("winner", [], list(rng.uniform(1.0, 2.0, 64)))
    better = Score("search", [], [e * 0.5 for e in incumbent.validation])  # every sample better
    assert search_is_kept(better, incumbent)
    worse_tail = Score("search", [], sorted(better.validation)[:-8] + [10.0] * 8)  # median as good, top 1/8 worse
    assert worse_tail.validation_median == better.validation_median and worse_tail.validation_p90 > 2.0
    assert beats_beyond_spread(worse_tail.validation, incumbent.validation)  # the median rule alone would keep it
    assert not search_is_kept(worse_tail, incumbent)
