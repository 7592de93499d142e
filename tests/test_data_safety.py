"""Results files never lie: a sweep cell, a DC calibration row and an S^3 archive entry are reused only when
everything that changes the result is equal, and two processes never double or mix rows of one file."""

import json
import multiprocessing as mp

import pytest
import torch

from diffusers_ext import DCSolverScheduler, USFScheduler
from diffusers_ext.eval import sweep as sw
from diffusers_ext.results_log import ResultsFileBusy, append_row, exclusive, read_rows
from diffusers_ext.search import EndpointObjective, calibrate_dc_grid, s3_search


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


def test_dc_calibration_rows_are_keyed_by_their_settings(tmp_path, gmm_eps):
    out = tmp_path / "cal.jsonl"
    kw = dict(sample_shape=(2, 4, 4), reference_steps=12, iterations=2, progress=False, out=out, model_key="gmm")
    first = calibrate_dc_grid(gmm_eps, [3], num_samples=2, **kw)[(3, 1.0)]
    assert calibrate_dc_grid(gmm_eps, [3], num_samples=2, **kw)[(3, 1.0)] == first  # resumed
    assert len(read_rows(out)) == 1
    more = calibrate_dc_grid(gmm_eps, [3], num_samples=4, **kw)[(3, 1.0)]
    assert more.loss_at_one != first.loss_at_one and len(read_rows(out)) == 2
    ddim_grid = calibrate_dc_grid(gmm_eps, [3], num_samples=2, scheduler=DCSolverScheduler(
        timestep_spacing="trailing"), **kw)[(3, 1.0)]
    assert ddim_grid.loss_at_one != first.loss_at_one and len(read_rows(out)) == 3


def test_s3_archive_entries_are_keyed_by_the_objective(tmp_path, gmm_eps, seeded_noise):
    archive = tmp_path / "a.jsonl"
    schedule = USFScheduler().noise_schedule

    def objective(seed):
        return EndpointObjective(gmm_eps, seeded_noise((4, 2, 4, 4), seed), reference_steps=20)

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


def _start_and_join(procs, timeout=60):
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)


def test_two_sweeps_on_one_file_never_double_rows(tmp_path):
    ctx = mp.get_context("fork")  # children inherit the imports (spawn re-imports torch: ~10 s)
    out, barrier, queue = tmp_path / "s.jsonl", ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_sweep_worker, args=(out, barrier, queue)) for _ in range(2)]
    _start_and_join(procs)
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
    _start_and_join([ctx.Process(target=_append_many, args=(tmp_path / "a.jsonl", tag, barrier)) for tag in "ab"])
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line is one whole row
    assert sorted((r["writer"], r["i"]) for r in rows) == sorted((w, i) for w in "ab" for i in range(100))


# ---------------------------------------------------------------------------------------------- content of paths
def _save_pipeline(folder, seed):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)


def test_retraining_into_the_model_folder_or_new_reference_images_recomputes(tmp_path):
    from diffusers_ext.eval.fid import save_pngs
    from diffusers_ext.models.digits import load_digits, to_uint8

    out, pipe, real = tmp_path / "p.jsonl", tmp_path / "pipe", tmp_path / "real"
    _save_pipeline(pipe, 0)
    images = to_uint8(load_digits("test")[0][:40])
    save_pngs(images, real)

    def run():
        return sw.run_sweep(str(pipe), ["unipc"], [2], num_samples=12, out=out, reference=real, progress=False)[0]

    first = run()
    assert run() == first and len(read_rows(out)) == 1  # nothing changed: reused
    _save_pipeline(pipe, 1)  # retrained into the same folder
    retrained = run()
    assert len(read_rows(out)) == 2 and retrained["value"] != first["value"]
    save_pngs(images.flip(0), real)  # the same file names, other images
    new_reference = run()
    assert len(read_rows(out)) == 3 and new_reference["value"] != retrained["value"]


def test_changed_shipped_digits_weights_recompute(tmp_path, monkeypatch):
    import shutil

    from safetensors.torch import load_file, save_file

    from diffusers_ext.models import digits
    from diffusers_ext.search import DigitsFIDObjective
    from diffusers_ext.search.s3 import objective_identity

    weights = tmp_path / "weights"
    shutil.copytree(digits.WEIGHTS_DIR, weights)
    monkeypatch.setattr(digits, "WEIGHTS_DIR", weights)
    out = tmp_path / "d.jsonl"
    first = _gmm(out, model="digits", num_samples=20)[0]
    objective = objective_identity(DigitsFIDObjective(num_samples=10))
    unet = weights / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v * 1.01 for k, v in load_file(unet).items()}, unet)  # another package version's weights
    changed = _gmm(out, model="digits", num_samples=20)[0]
    assert len(read_rows(out)) == 2 and changed["value"] != first["value"]
    assert objective_identity(DigitsFIDObjective(num_samples=10)) != objective


def _rank_worker(rank, port, out, queue):
    import os

    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        _gmm(out, num_samples=4)
        queue.put((rank, "done"))
    except ResultsFileBusy as err:
        queue.put((rank, f"busy: {err}"))


def test_a_held_file_stops_every_rank_of_a_distributed_sweep(tmp_path):
    """Two gloo ranks (as torchrun starts them) on a file another process writes: both raise ResultsFileBusy
    (before, rank 0 raised and rank 1 went on alone: into the collectives of a digits sweep, a hang)."""
    import socket

    ctx = mp.get_context("fork")  # children inherit the imports (spawn re-imports torch: ~10 s)
    out, queue = tmp_path / "s.jsonl", ctx.Queue()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with exclusive(out):
        ranks = [ctx.Process(target=_rank_worker, args=(r, port, out, queue)) for r in range(2)]
        for p in ranks:
            p.start()
        results = dict(queue.get(timeout=60) for _ in ranks)
        for p in ranks:
            p.join(30)
    assert results == {r: f"busy: another process is writing {out} (it holds {out}.lock); wait for it to finish "
                       "or choose another output file (--out / --archive)" for r in range(2)}
    assert not out.exists()


def _try_lock(out, queue):
    try:
        with exclusive(out):
            queue.put("entered")
    except ResultsFileBusy:
        queue.put("busy")


def test_a_forked_child_does_not_share_its_parents_lock(tmp_path):
    ctx = mp.get_context("fork")
    out, queue = tmp_path / "s.jsonl", ctx.Queue()
    with exclusive(out):
        child = ctx.Process(target=_try_lock, args=(out, queue))
        child.start()
        assert queue.get(timeout=30) == "busy"  # the parent still writes the file
        child.join(30)
    child = ctx.Process(target=_try_lock, args=(out, queue))
    child.start()
    assert queue.get(timeout=30) == "entered"
    child.join(30)


def test_dc_calibration_of_a_retrained_pipeline_folder_recomputes(tmp_path):
    from diffusers_ext.cli import main
    from diffusers_ext.eval.sweep import load_pipeline_folder
    from diffusers_ext.search.calibrate_dc import calibration_settings

    pipe, out = tmp_path / "pipe", tmp_path / "cal.jsonl"
    argv = ["calibrate-dc", "--model", str(pipe), "--nfe", "3", "--samples", "1", "--reference-steps", "6",
            "--iterations", "1", "--out", str(out)]
    _save_pipeline(pipe, 0)
    settings = calibration_settings(load_pipeline_folder(pipe))  # the Python API: the folder, not only its name
    assert main(argv) == 0 and main(argv) == 0 and len(read_rows(out)) == 1  # resumed
    _save_pipeline(pipe, 1)  # retrained into the same folder
    assert calibration_settings(load_pipeline_folder(pipe)) != settings
    assert main(argv) == 0 and len(read_rows(out)) == 2
    first, second = read_rows(out)
    assert first["loss_at_one"] != second["loss_at_one"]
