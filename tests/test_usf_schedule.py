"""USF solver schedules (arXiv 2312.07243): JSON round trip and clear errors before any sampling."""

import json

import pytest

from diffusers_ext.schedulers.usf_schedule import ScheduleError, SolverSchedule


def schedule(**overrides):
    data = {"version": 1, "timesteps": [999, 600, 300, 100, -1], "analytical_first_step": "none",
            "steps": [{"prediction": "data", "order": 1},
                      {"prediction": "data", "order": 2, "relaxation": "dpm-solver-2", "corrector": "pseudo"},
                      {"prediction": "noise", "order": 3, "derivative_points": [[1], [1, 2]], "relaxation": 0.2},
                      {"prediction": "data", "order": 2, "derivative_points": [[2]]}]}
    data.update(overrides)
    return data


def test_round_trip_and_defaults():
    s = SolverSchedule.from_dict(schedule())
    assert s.nfe == 4 and s.num_steps == 4
    assert s.steps[1].derivative_points == ((1,),)  # default: the consecutive previous points
    again = SolverSchedule.from_dict(s.to_json())
    assert again == s and json.loads(s.to_json())["version"] == 1
    s.validate(num_inference_steps=4)


def _step(i, **kw):
    data = schedule()
    data["steps"][i] = {**data["steps"][i], **kw}
    return data


@pytest.mark.parametrize("data,match", [
    (schedule(timesteps=[999, 600, 600, 100, -1]), "strictly decrease"),
    (schedule(timesteps=[999, 600, 300, -1]), "need 5 timesteps"),
    (schedule(timesteps=[999, 600, "x", 100, -1]), "finite numbers"),
    (schedule(version=2), "version 2 is not supported"),
    (schedule(solver="usf"), r"unknown schedule keys \['solver'\]"),
    (schedule(steps=[]), "non-empty"),
    (schedule(analytical_first_step="mean_x0"), "valid choices"),
    (_step(1, order=3), "order 3 needs 2 earlier points but only 1 exist"),
    (_step(0, order=5), "from 1 to 4"),
    (_step(2, derivative_points=[[1]]), "needs 2 derivative_points entries"),
    (_step(2, derivative_points=[[1], [1]]), "derivative 2 needs at least 2 earlier points"),
    (_step(3, derivative_points=[[4]]), r"must lie in 1..3"),
    (_step(2, prediction="velocity"), "unknown prediction 'velocity'"),
    (_step(2, relaxation="dpm-solver-3"), "unknown relaxation"),
    (_step(2, relaxation=float("nan")), "finite number"),
    (_step(2, corrector="implicit"), "unknown corrector"),
    (_step(3, corrector="pseudo"), "is the last"),
    (_step(1, corrector_relaxation="bh3"), "unknown corrector_relaxation"),
    (_step(1, taylor=2), r"unknown step 1 keys \['taylor'\]"),
])
def test_invalid_schedules_raise_clear_errors(data, match):
    with pytest.raises(ScheduleError, match=match):
        SolverSchedule.from_dict(data)


def test_nfe_mismatch():
    s = SolverSchedule.from_dict(schedule())
    with pytest.raises(ScheduleError, match="makes 4 model calls .* num_inference_steps is 5"):
        s.validate(num_inference_steps=5)
