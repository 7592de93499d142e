"""Results files never lie: a sweep cell, a DC calibration row and an S^3 archive entry are reused only when
everything that changes the result is equal, and two processes never double or mix rows of one file."""

import json
import multiprocessing as mp

import pytest
import torch

from diffusers_ext import DCSolverScheduler, USFScheduler
from diffusers_ext.eval import sweep as sw
from diffusers_ext.models import GaussianMixtureDenoiser
from diffusers_ext.results_log import ResultsFileBusy, append_row, exclusive, read_rows
from diffusers_ext.search import EndpointObjective, calibrate_dc_grid, s3_search

GMM = GaussianMixtureDenoiser()


def gmm_model(x, t):
    return GMM(x, t).sample


def _gmm(out, **kw):
    args = dict(model="gmm", schedulers=["dpm++2m"], nfes=[3], seeds=[0], num_samples=8, out=out, progress=False)
    return sw.run_sweep(**{**args, **kw})


# ---------------------------------------------------------------------------------------------- resume identity
def test_a_gmm_file_is_not_read_back_as_digits_fid(tmp_path):
    out = tmp_path / "s.jsonl"
    gmm = _gmm(out)
    digits = _gmm(out, model="digits", num_samples=20)
    assert gmm[0]["metric"] == "rmse" and digits[0]["metric"] == "fid" and digits[0]["model"] == "digits"
    assert digits[0]["value"] != gmm[0]["value"] and digits[0]["value"] > 1.0  # FID of 20 samples, not an RMSE
    assert len(read_rows(out)) == 2


def test_changing_the_sample_count_or_the_scheduler_config_recomputes(tmp_path):
    out = tmp_path / "s.jsonl"
    small = _gmm(out)
    large = _gmm(out, num_samples=16)
    assert large[0]["num_samples"] == 16 and large[0]["value"] != small[0]["value"]
    assert _gmm(out, num_samples=16) == large and len(read_rows(out)) == 2  # equal settings: reused
    ones = _gmm(out, schedulers=[], factories={"dc": lambda c: DCSolverScheduler(dc_ratios=[1.0] * c.nfe)})
    other = _gmm(out, schedulers=[], factories={"dc": lambda c: DCSolverScheduler(dc_ratios=[0.7] * c.nfe)})
    assert other[0]["value"] != ones[0]["value"] and len(read_rows(out)) == 4
    assert other[0]["scheduler_config"]["dc_ratios"] == [0.7] * 3


def test_an_unknown_extractor_is_refused_for_the_digits_model(tmp_path):
    out = tmp_path / "s.jsonl"
    with pytest.raises(ValueError, match="Unknown extractor 'nope'; valid choices: digits-cnn"):
        _gmm(out, model="digits", extractor="nope")
    assert not out.exists()


def test_dc_calibration_rows_are_keyed_by_their_settings(tmp_path):
    out = tmp_path / "cal.jsonl"
    kw = dict(sample_shape=(2, 4, 4), reference_steps=12, iterations=2, progress=False, out=out, model_key="gmm")
    first = calibrate_dc_grid(gmm_model, [3], num_samples=2, **kw)[(3, 1.0)]
    assert calibrate_dc_grid(gmm_model, [3], num_samples=2, **kw)[(3, 1.0)] == first  # resumed
    assert len(read_rows(out)) == 1
    more = calibrate_dc_grid(gmm_model, [3], num_samples=4, **kw)[(3, 1.0)]
    assert more.loss_at_one != first.loss_at_one and len(read_rows(out)) == 2
    ddim_grid = calibrate_dc_grid(gmm_model, [3], num_samples=2, scheduler=DCSolverScheduler(
        timestep_spacing="trailing"), **kw)[(3, 1.0)]
    assert ddim_grid.loss_at_one != first.loss_at_one and len(read_rows(out)) == 3


def test_s3_archive_entries_are_keyed_by_the_objective(tmp_path):
    archive = tmp_path / "a.jsonl"
    schedule = USFScheduler().noise_schedule

    def objective(seed):
        return EndpointObjective(gmm_model, torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(seed)),
                                 reference_steps=20)

    budget = 4 * 3 * 16
    first = s3_search(objective(0), schedule, 3, budget, archive=archive, progress=False)
    rows = len(read_rows(archive))
    assert s3_search(objective(0), schedule, 3, budget, archive=archive, progress=False).best_value == \
        first.best_value and len(read_rows(archive)) == rows  # resumed
    other = s3_search(objective(1), schedule, 3, budget, archive=archive, progress=False)
    assert len(read_rows(archive)) == 2 * rows and other.best_value != first.best_value
    s3_search(objective(0), schedule, 3, budget, archive=archive, progress=False, seed=5)
    assert len(read_rows(archive)) > 2 * rows  # another search seed is another search


# ---------------------------------------------------------------------------------------------- two writers
def _sweep_worker(out, barrier, queue):
    import time

    torch.set_num_threads(1)
    real = sw.GMMMetric.__call__
    sw.GMMMetric.__call__ = lambda self, s, c: (time.sleep(0.1), real(self, s, c))[1]  # cells that take a while
    barrier.wait()
    try:
        _gmm(out, nfes=[3, 4, 5], seeds=[0, 1])
        queue.put("done")
    except ResultsFileBusy as err:
        queue.put(str(err))


def test_two_sweeps_on_one_file_never_double_rows(tmp_path):
    ctx = mp.get_context("fork")  # children inherit the imports (spawn re-imports torch: ~10 s)
    out, barrier, queue = tmp_path / "s.jsonl", ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_sweep_worker, args=(out, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = [queue.get(timeout=5) for _ in procs]
    rows = read_rows(out)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 6 and len(out.read_text().splitlines()) == 6
    assert "done" in results
    refused = [r for r in results if r != "done"]
    assert all("another process is writing" in r for r in refused)


def _hold(path, held, release):
    with exclusive(path):
        held.set()
        release.wait(30)


def _append_many(path, tag, barrier):
    barrier.wait()
    for i in range(100):
        append_row(path, {"writer": tag, "i": i, "pad": "x" * 3000})


def test_a_held_file_is_refused_and_appends_never_mix(tmp_path):
    ctx = mp.get_context("fork")  # children inherit the imports (spawn re-imports torch: ~10 s)
    out = tmp_path / "s.jsonl"
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(out, held, release))
    holder.start()
    try:
        assert held.wait(30)
        with pytest.raises(ResultsFileBusy, match=f"another process is writing {out}"):
            _gmm(out)
        assert not out.exists()
    finally:
        release.set()
        holder.join(30)
    assert _gmm(out)[0]["value"] > 0  # free again
    barrier = ctx.Barrier(2)
    writers = [ctx.Process(target=_append_many, args=(tmp_path / "a.jsonl", tag, barrier)) for tag in "ab"]
    for p in writers:
        p.start()
    for p in writers:
        p.join(60)
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line is one whole row
    assert sorted((r["writer"], r["i"]) for r in rows) == sorted((w, i) for w in "ab" for i in range(100))
