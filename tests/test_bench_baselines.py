"""Diffusers at its best in the older benchmark tables (issue 14): the GMM scores (median per-sample error, flips,
RMSE over held-out seeds), diffusers' best of 18 per NFE, and the bench helpers that reuse computed cells."""

import json

import numpy as np
import pytest
import torch

from diffusers_ext.eval.gmm_accuracy import BEST, endpoint_scores, gmm_accuracy, held_out_noise, markdown_table
from diffusers_ext.eval.sweep import summarize
from diffusers_ext.models.gmm import GaussianMixtureDenoiser
from diffusers_ext.registry import make_scheduler, named_set
from diffusers_ext.sampling import model_fn, sample
from tests.test_bench_reruns import _load

GMM = GaussianMixtureDenoiser()
SHAPE = (2, 4, 4)


def _means():
    return GMM.mixture(32)[1].reshape(-1, *SHAPE)


def test_endpoint_scores_hand_computed():
    means = _means()
    exact = means[[0, 1, 2, 3]]
    # errors: 0.1, 0.3 (seed A); 0.2, and a sample that lands exactly on another component's mean (seed B)
    x = torch.stack([exact[0] + 0.1, exact[1] - 0.3, exact[2] + 0.2, means[5]])
    far = float((means[5] - means[3]).pow(2).mean().sqrt())
    scores = endpoint_scores(GMM, x, exact, num_seeds=2)
    assert scores["median"] == pytest.approx(0.25)  # (0.2 + 0.3) / 2
    assert scores["seed_medians"] == pytest.approx([0.2, (0.2 + far) / 2])
    assert scores["rmse"] == pytest.approx(np.sqrt((0.01 + 0.09 + 0.04 + far**2) / 4))
    assert scores["flips"] == 1

    x[0] = float("nan")  # a diverged sample is infinitely wrong and a flip; the RMSE is no number
    scores = endpoint_scores(GMM, x, exact)
    assert scores["median"] == pytest.approx((0.3 + far) / 2) and scores["rmse"] is None and scores["flips"] == 2


def test_gmm_accuracy_seeds_baselines_and_best(monkeypatch, tmp_path):
    monkeypatch.setattr(GaussianMixtureDenoiser, "ode_endpoint", lambda self, x, t_start: 0.5 * x)
    baselines = {"diffusers DDIM trailing": "diffusers:DDIMScheduler:timestep_spacing=trailing,clip_sample=false",
                 "diffusers UniPC": "diffusers:UniPCMultistepScheduler"}
    solvers = {"dpm++2m": ("DPMSolverPPScheduler", {}), "deis (callable)": lambda nfe: make_scheduler("deis"),
               "diffusers UniPC": ("diffusers:UniPCMultistepScheduler", {})}  # a baseline's label too
    result = gmm_accuracy(solvers, nfes=(3, 5), num_samples=8, seeds=(1, 2), progress=False, baselines=baselines)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    result = json.loads(path.read_text())

    noise = held_out_noise((1, 2), 8, SHAPE)
    assert torch.equal(noise[8:], torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(2),
                                              dtype=torch.float64))
    assert [r["scheduler"] for r in result["rows"]] == [name for name in solvers for _ in range(2)]
    assert [r["scheduler"] for r in result["baseline_rows"]] == [name for name in baselines for _ in range(2)]
    assert result["rows"][2]["class"] == "DEISScheduler" and result["seeds"] == [1, 2]
    for r in result["rows"] + result["baseline_rows"]:
        spec = baselines.get(r["scheduler"]) or {"dpm++2m": "dpm++2m", "deis (callable)": "deis"}[r["scheduler"]]
        x = sample(model_fn(GMM), make_scheduler(spec), noise.float(), r["nfe"])
        assert r == {**r, **endpoint_scores(GMM, x, 0.5 * noise, 2)} and len(r["seed_medians"]) == 2
    for nfe in ("3", "5"):
        medians = {r["scheduler"]: r["median"] for r in result["baseline_rows"] if r["nfe"] == int(nfe)}
        assert result["diffusers_best"][nfe] == min(medians, key=medians.get)

    table = markdown_table(result)
    label = BEST.format(n=2)
    best_line = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
    best3 = next(r for r in result["baseline_rows"]
                 if r["nfe"] == 3 and r["scheduler"] == result["diffusers_best"]["3"])
    assert f"{best3['median']:.3g} ({best3['flips']})" in best_line.split(" | ")[1]
    assert table.count(f"| {label} |") == 2  # the median table and the RMSE table
    assert f"| ↳ option | {result['diffusers_best']['3'].removeprefix('diffusers ')} |" in table
    lowest3 = min(r["median"] for r in result["rows"] + result["baseline_rows"] if r["nfe"] == 3)
    assert table.count(f"**{lowest3:.3g} (") >= 1  # the best median of the column is bold
    assert "of the 16 samples (2 seed(s) x 8)" in table


def test_gmm_accuracy_rejects_no_seeds():
    with pytest.raises(ValueError, match="at least one seed"):
        gmm_accuracy(nfes=(3,), num_samples=4, seeds=(), progress=False)


def _row(scheduler, nfe, seed, value, guidance=1.0, key=None, samples=500):
    row = {"scheduler": scheduler, "nfe": nfe, "guidance": guidance, "seed": seed, "value": value,
           "num_samples": samples}
    return row if key is None else {**row, "key": key}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_reuse_rows_copies_only_matching_cells_once(tmp_path):
    results_io = _load("results_io")
    source, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write(source, [_row("s", 4, 1, 2.0, key="k1"), _row("s", 4, 3, 2.5, key="k2"),  # seed 3: not asked for
                    _row("t", 4, 1, 3.0, key="k3"), _row("s", 5, 1, 4.0),  # another scheduler; no key
                    _row("s", 5, 2, 4.5, key="k4", samples=300)])  # other sample count
    _write(out, [_row("s", 5, 2, 9.0, key="k5")])
    keep = results_io.cell_filter(["s"], [4, 5], [1], [1, 2], 500)
    assert results_io.reuse_rows([source], out, keep) == 1
    assert results_io.reuse_rows([source], out, keep) == 0  # already there
    assert [r["key"] for r in map(json.loads, out.read_text().splitlines())] == ["k5", "k1"]


def test_cell_rows_prefers_keyed_rows(tmp_path):
    results_io = _load("results_io")
    path = tmp_path / "s.jsonl"
    _write(path, [_row("s", 4, 0, 1.0), _row("s", 4, 0, 1.1, key="a"), _row("s", 4, 0, 1.2),
                  _row("s", 4, 1, 2.0)])
    rows = sorted(results_io.cell_rows(path), key=lambda r: r["seed"])
    assert [(r["seed"], r["value"]) for r in rows] == [(0, 1.1), (1, 2.0)]


def test_best_table_picks_diffusers_best_per_nfe_and_guidance(tmp_path):
    results_io = _load("results_io")
    options = named_set("diffusers-best")
    rows = [_row("ours", n, s, 1.0 + s) for n in (4, 5) for s in (1, 2)] + [_row("ours", 4, 3, 2.5)]  # 3 seeds
    for i, spec in enumerate(options.values()):  # option i: FID 10 + i at NFE 4, 30 - i at NFE 5
        rows += [_row(spec, 4, s, 10.0 + i + s) for s in (1, 2)] + [_row(spec, 5, s, 30.0 - i + s) for s in (1, 2)]
    rows += [_row(spec, 4, s, 1.0, guidance=3.0) for spec in list(options.values())[:17] for s in (1, 2)]
    rows += [_row(list(options.values())[17], 4, 1, 0.5, guidance=3.0)]  # the last option: one seed so far
    path = tmp_path / "rows.jsonl"
    _write(path, rows)
    table = results_io.best_table(results_io.cell_rows(path))
    lines = table.splitlines()
    label = BEST.format(n=18)
    at = lines.index(f"| {label} | 1 | 11.5 ± 0.71 | 14.5 ± 0.71 |")
    first, last = (name.removeprefix("diffusers ") for name in (list(options)[0], list(options)[-1]))
    assert lines[at + 1] == f"| ↳ option | 1 | {first} | {last} |"
    assert f"| {label} | 3 |" not in table  # guidance 3 lacks a seed of one option: no best, nor that cell
    assert f"| {list(options)[17]} | 3 |" not in table and f"| {list(options)[0]} | 3 | 1 ± 0 |" in table
    assert lines[2] == "| ours | 1 | 2.5 ± 0.5 | 2.5 ± 0.71 |"
    summary = summarize(results_io.cell_rows(path))  # the plot's pick: the same cells as the table's
    assert [(r["guidance"], r["nfe"], r["option"]) for r in results_io.diffusers_best_rows(summary)] == [
        (1.0, 4, list(options)[0]), (1.0, 5, list(options)[-1])]
    assert "<details><summary>diffusers' 18 options</summary>" in table and f"| {list(options)[0]} | 1 |" in table


def test_dc_dualfast_takes_committed_calibrations(tmp_path):
    dc = _load("dc_dualfast")
    path = tmp_path / "cal.jsonl"
    _write(path, [{"ratios": [1.0, 1.0, 1.2], "num_inference_steps": 3, "guidance_scale": 1.0, "model_calls": 5},
                  {"ratios": [1.0] * 4, "num_inference_steps": 4, "guidance_scale": 1.0, "key": "k", "settings": {}}])

    def calibrate(nfes, guidances):
        return {"called": (list(nfes), list(guidances))}

    found = dc.calibrations(path, (3, 4), (1.0,), False, calibrate)
    assert found[(3, 1.0)].ratios == [1.0, 1.0, 1.2] and found[(4, 1.0)].num_inference_steps == 4
    assert dc.calibrations(path, (3, 5), (1.0,), False, calibrate) == {"called": ([3, 5], [1.0])}  # NFE 5 missing
    assert dc.calibrations(path, (3,), (1.0,), True, calibrate) == {"called": ([3], [1.0])}


def test_usf_committed_best_is_the_shipped_digits_schedules():
    usf = _load("usf_search")
    from diffusers_ext.schedulers.usf import SHIPPED_SCHEDULES

    shipped = json.loads(open(SHIPPED_SCHEDULES["digits"]).read())
    assert {str(n): s for n, s in usf.committed_best("digits").items()} == shipped


def test_a_diverged_option_ranks_last_and_shows_as_a_dash():
    """endpoint_scores gives None where most samples diverge: tune_gmm ranks it last, the search table prints -."""
    tune_gmm, report = _load("tune_gmm"), _load("report")
    rows = {"diffusers a": {"median": None}, "diffusers b": {"median": 0.2}}
    assert min(rows, key=lambda k: tune_gmm._median(rows[k])) == "diffusers b"
    tuned = {"scheduler": "x", "median": None, "flips": 256, "rmse": None}
    row = {"tuned": tuned, "ratio tuned / diffusers best": 2.0}
    result = {"settings": {"search": 4}, "models": {"gmm": {"5": row}}}
    assert "| gmm | 5 | x | - / 256 / - | x | - / 256 / - | no | 2.00x / **2.00x** |" in report.tune_search_table(
        result, result)
