"""Resumable sweeps: an interrupted sweep, rerun, gives the same table with no duplicated cells."""

import json

import pytest

from diffusers_ext.eval import sweep as sw


def _run(out, **kw):
    schedulers = ["dpm++2m", "unipc:solver_order=3", "diffusers:DDIMScheduler:clip_sample=false"]
    args = dict(model="gmm", schedulers=schedulers,
                nfes=[3, 6], seeds=[0, 1], num_samples=16, out=out, progress=False)
    args.update(kw)
    return sw.run_sweep(**args)


def test_interrupted_sweep_resumes_without_duplicates(tmp_path, monkeypatch):
    full = _run(tmp_path / "full.jsonl")
    out = tmp_path / "resumed.jsonl"
    calls = {"n": 0}
    real = sw.GMMMetric.__call__

    def dying(self, scheduler, cell):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed while the 5th cell is in flight
        return real(self, scheduler, cell)

    monkeypatch.setattr(sw.GMMMetric, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(out)
    with open(out, "a") as f:
        f.write('{"scheduler": "dpm++2m", "nf')  # a torn line, as a kill during a write leaves it
    assert len(out.read_text().splitlines()) == 5
    monkeypatch.setattr(sw.GMMMetric, "__call__", real)
    resumed = _run(out)
    rows = []
    for line in out.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            assert line.startswith('{"scheduler": "dpm++2m", "nf')  # only the torn line
    keys = [sw.Cell(r["scheduler"], r["nfe"], r["guidance"], r["seed"]).key() for r in rows]
    assert len(keys) == len(set(keys)) == 12
    assert sw.summary_table(sw.summarize(resumed)) == sw.summary_table(sw.summarize(full))


def test_summary_and_plot(tmp_path):
    rows = _run(tmp_path / "s.jsonl")
    summary = sw.summarize(rows)
    assert {r["seeds"] for r in summary} == {2}
    sw.plot(summary, tmp_path / "s.png", "rmse")
    assert (tmp_path / "s.png").stat().st_size > 1000


@pytest.mark.parametrize("kw,match", [
    ({"schedulers": ["nope"]}, "Unknown scheduler 'nope'"),
    ({"schedulers": ["diffusers:NotAScheduler"]}, "Unknown scheduler"),
    ({"nfes": []}, "non-empty and positive"),
    ({"nfes": [0, 5]}, "non-empty and positive"),
    ({"model": "imagenet"}, "Unknown model 'imagenet'; valid choices: digits, gmm"),
])
def test_bad_input_before_any_work(tmp_path, kw, match):
    out = tmp_path / "bad.jsonl"
    with pytest.raises(ValueError, match=match):
        _run(out, **kw)
    assert not out.exists()


def test_local_pipeline_folder(tmp_path):
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from diffusers_ext.eval.fid import save_pngs
    from diffusers_ext.models.digits import load_digits, to_uint8

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "pipe")
    save_pngs(to_uint8(load_digits("test")[0]), tmp_path / "real")
    rows = sw.run_sweep(str(tmp_path / "pipe"), ["unipc", "dpm++2m"], [2], num_samples=12, out=tmp_path / "p.jsonl",
                        reference=tmp_path / "real", progress=False)
    assert len(rows) == 2 and all(r["value"] > 0 for r in rows)


def test_pipeline_folder_errors(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="needs --reference"):
        sw.run_sweep(str(tmp_path / "broken"), ["unipc"], [2], out=tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="does not load"):
        sw.run_sweep(str(tmp_path / "broken"), ["unipc"], [2], out=tmp_path / "x.jsonl", reference=tmp_path)
    with pytest.raises(ValueError, match="a local diffusers pipeline folder"):
        sw.run_sweep(str(tmp_path / "missing"), ["unipc"], [2], out=tmp_path / "x.jsonl")


def test_factories_build_a_scheduler_per_cell(tmp_path):
    """A factory gets the cell: DC-Solver with ratios of one for the cell's NFE is UniPC's result."""
    from diffusers_ext import DCSolverScheduler

    rows = sw.run_sweep("gmm", ["unipc"], [4, 6], seeds=[0], num_samples=16, out=tmp_path / "s.jsonl",
                        progress=False, factories={"dc-ones": lambda c: DCSolverScheduler(dc_ratios=[1.0] * c.nfe)})
    value = {(r["scheduler"], r["nfe"]): r["value"] for r in rows}
    assert len(rows) == 4 and all(value[("dc-ones", n)] == value[("unipc", n)] for n in (4, 6))
