"""S^3 schedule search: improves on the hand-designed seed population, resumes exactly, stays valid."""

import json

import pytest
import torch

from diffusers_ext import USFScheduler
from diffusers_ext.schedulers.usf_schedule import SolverSchedule
from diffusers_ext.search import EndpointObjective, s3_search

NOISE_SCHEDULE = USFScheduler().noise_schedule


@pytest.fixture(scope="module")
def objective(gmm_eps, seeded_noise):
    return EndpointObjective(gmm_eps, seeded_noise((16, 2, 4, 4)))


def test_search_improves_on_its_first_population(objective):
    result = s3_search(objective, NOISE_SCHEDULE, 5, budget=16 * 5 * 60, progress=False)
    assert result.evaluations <= 16 * 5 * 60 and len(result.archive) == 60
    assert result.best_value < 0.8 * result.seed_best_value  # measured: 0.051 -> 0.037 (plain evolution 0.040)
    SolverSchedule.from_dict(result.best).validate(5)
    assert objective(result.best)[0] == pytest.approx(result.best_value, rel=1e-6)  # the archived value is real


def test_resumed_search_continues_exactly(objective, tmp_path):
    straight = s3_search(objective, NOISE_SCHEDULE, 4, budget=16 * 4 * 50, archive=tmp_path / "a.jsonl",
                         progress=False)
    s3_search(objective, NOISE_SCHEDULE, 4, budget=16 * 4 * 30, archive=tmp_path / "b.jsonl", progress=False)
    first = (tmp_path / "b.jsonl").read_text().splitlines()
    resumed = s3_search(objective, NOISE_SCHEDULE, 4, budget=16 * 4 * 50, archive=tmp_path / "b.jsonl",
                        progress=False)
    lines = (tmp_path / "b.jsonl").read_text().splitlines()
    assert lines[:len(first)] == first and len(lines) == 50  # nothing re-evaluated, nothing lost
    assert [json.loads(x)["value"] for x in lines] == \
        [json.loads(x)["value"] for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert resumed.best_value == straight.best_value


def test_validation_chooses_among_finalists_on_held_out_noise(objective, gmm_eps, seeded_noise):
    held_out = EndpointObjective(gmm_eps, seeded_noise((16, 2, 4, 4), seed=1))
    result = s3_search(objective, NOISE_SCHEDULE, 4, budget=16 * 4 * 40, progress=False, validation=held_out,
                       finalists=4)
    assert len(result.validation) in (4, 5) and sum(r["hand_designed"] for r in result.validation) >= 1
    values = [r["validation_value"] for r in result.validation]
    assert result.validation_value == min(values) <= result.seed_best_validation_value
    assert held_out(result.best)[0] == pytest.approx(result.validation_value, rel=1e-6)
    plain = s3_search(objective, NOISE_SCHEDULE, 4, budget=16 * 4 * 40, progress=False)
    assert result.evaluations == plain.evaluations + 16 * 4 * len(result.validation)


def test_plain_evolution_and_bad_input(objective):
    plain = s3_search(objective, NOISE_SCHEDULE, 4, budget=16 * 4 * 30, predictor=False, progress=False)
    assert plain.best_value < plain.seed_best_value  # the archive holds the seeds: equality = no progress
    with pytest.raises(ValueError, match=">= 1"):
        s3_search(objective, NOISE_SCHEDULE, 0, budget=10)


def test_cli_search_writes_a_runnable_schedule(tmp_path, capsys, gmm):
    from diffusers_ext.cli import main

    out = tmp_path / "best.json"
    argv = ["search", "--model", "gmm", "--nfe", "4", "--samples", "8", "--budget", str(8 * 4 * 60),
            "--archive", str(tmp_path / "archive.jsonl"), "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["schedules_evaluated"] == 60
    # the result is the finalist best on held-out noise (seed + 1), never worse there than the best hand-designed one
    assert summary["held_out"] <= summary["hand_designed_best_held_out"]
    schedule = json.loads(out.read_text())
    x = torch.randn(3, 2, 4, 4)
    sched = USFScheduler(solver_schedule=schedule)
    sched.set_timesteps(4)
    for t in sched.timesteps:
        x = sched.step(gmm(x, t).sample, t, x).prev_sample
    assert torch.isfinite(x).all()
    assert main(argv) == 0  # resumed: the archive already holds the budget
    assert len((tmp_path / "archive.jsonl").read_text().splitlines()) == 60


def test_initial_schedules_join_the_seed_population(objective, tmp_path):
    from diffusers_ext.schedulers import hand_designed_schedule

    # DPM-Solver++ 2M on a grid the seed population does not have (time-uniform between t=999 and 400, then clean)
    times = [999.0, 849.0, 699.0, 549.0, 400.0, -1.0]
    start = hand_designed_schedule("dpm++2m", times)
    result = s3_search(objective, NOISE_SCHEDULE, 5, budget=16 * 5 * 17, archive=tmp_path / "a.jsonl",
                       progress=False, initial_schedules=[start])
    stage0 = [r for r in result.archive if r["stage"] == 0]
    assert len(stage0) == 17 and stage0[0]["schedule"]["timesteps"] == times  # 16 seeds + the given one, first
    assert stage0[0]["value"] == pytest.approx(objective(start)[0], rel=1e-9)
    # an archive of the same search without initial schedules is a different search (its rows are not reused)
    plain = s3_search(objective, NOISE_SCHEDULE, 5, budget=16 * 5 * 16, archive=tmp_path / "a.jsonl", progress=False)
    assert plain.evaluations == 16 * 5 * 16 and len(plain.archive) == 16
    with pytest.raises(ValueError, match="nfe=4 model calls, one has 5"):
        s3_search(objective, NOISE_SCHEDULE, 4, budget=100, initial_schedules=[start])
    with pytest.raises(ValueError, match="invalid schedule"):
        s3_search(objective, NOISE_SCHEDULE, 5, budget=100, initial_schedules=[{"version": 1, "steps": []}])


def test_median_endpoint_objective(gmm_eps, seeded_noise):
    """tune's score: the median of the per-sample RMS errors, computed here with numpy from the same endpoints."""
    import numpy as np

    from diffusers_ext.sampling import sample
    from diffusers_ext.schedulers import hand_designed_schedule
    from diffusers_ext.search import MedianEndpointObjective

    noise = seeded_noise((9, 2, 4, 4))
    mean_objective = EndpointObjective(gmm_eps, noise, reference_steps=40)
    median = MedianEndpointObjective(gmm_eps, noise, reference=mean_objective.reference.float())
    schedule = hand_designed_schedule("unipc-bh2", [999.0, 750.0, 500.0, 250.0, -1.0])
    x = sample(gmm_eps, USFScheduler.from_config({}, solver_schedule=schedule), noise, 4).double()
    per_sample = (x - mean_objective.reference).flatten(1).pow(2).mean(1).sqrt().numpy()
    value, calls = median(schedule)
    assert value == pytest.approx(float(np.median(per_sample)), rel=1e-6) and calls == 9 * 4
    assert mean_objective(schedule)[0] == pytest.approx(float(np.mean(per_sample ** 2)), rel=1e-6)
