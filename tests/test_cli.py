"""The command line: scheduler specs with several options, help with names and defaults, --version, errors
without a traceback, per-model default paths, KID that is not negative, readable plots, train-digits."""

import json
import subprocess
import sys

import pytest

from diffusers_ext import __version__, registry
from diffusers_ext.cli import main
from diffusers_ext.eval import sweep as sw
from diffusers_ext.results_log import read_rows

GMM_SWEEP = ["sweep", "--model", "gmm", "--nfe", "3", "--samples", "8"]


def test_a_scheduler_with_two_options(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    spec = "DPMSolverPPScheduler:solver_order=3,use_karras_sigmas=true"
    assert main([*GMM_SWEEP, "--scheduler", spec, "--scheduler", "dpm++3m", "--out", str(out)]) == 0
    rows = {r["scheduler"]: r for r in read_rows(out)}
    assert set(rows) == {spec, "dpm++3m"}
    assert rows[spec]["scheduler_config"]["use_karras_sigmas"] is True
    assert rows[spec]["scheduler_config"]["solver_order"] == 3 and rows[spec]["value"] != rows["dpm++3m"]["value"]
    # the old spelling (README): an option item continues the previous spec; nothing is recomputed
    assert main([*GMM_SWEEP, "--schedulers", f"dpm++3m,{spec}", "--out", str(out)]) == 0
    assert len(read_rows(out)) == 2
    assert registry.split_specs("diffusers:DDIMScheduler:clip_sample=false,unipc:dc_ratios=[1,0.9,1],deis") == [
        "diffusers:DDIMScheduler:clip_sample=false", "unipc:dc_ratios=[1,0.9,1]", "deis"]
    assert registry.parse_spec("unipc:dc_ratios=[1,0.9,1]")[1]["dc_ratios"] == [1, 0.9, 1]


def test_help_lists_short_names_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in registry.SHORT_NAMES)
    assert "(default: 500)" in text and "results/sweep_<model>.jsonl" in text


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"diffusers-ext {__version__}"


def test_errors_print_without_a_traceback(tmp_path, capsys):
    assert main([*GMM_SWEEP, "--scheduler", "nope", "--out", str(tmp_path / "s.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "error: Unknown scheduler 'nope'" in err and "Traceback" not in err
    assert not (tmp_path / "s.jsonl").exists()
    proc = subprocess.run([sys.executable, "-m", "diffusers_ext", "sweep", "--model", "imagenet", "--out",
                           str(tmp_path / "x.jsonl")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Unknown model 'imagenet'; valid choices: digits, gmm" in proc.stderr


def test_default_output_paths_differ_per_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*GMM_SWEEP, "--scheduler", "dpm++2m"]) == 0
    assert read_rows(tmp_path / "results" / "sweep_gmm.jsonl")[0]["model"] == "gmm"
    assert (tmp_path / "results" / "sweep_gmm.png").stat().st_size > 1000
    assert "RMSE" in capsys.readouterr().out
    assert sw.default_out("digits") == "results/sweep_digits.jsonl"
    assert sw.default_out(str(tmp_path / "my pipe")) == "results/sweep_my_pipe.jsonl"


def test_kid_of_a_folder_against_itself_is_not_negative(tmp_path, capsys):
    from diffusers_ext.eval.fid import kid_and_precision_recall, save_pngs
    from diffusers_ext.models.digits import load_digits, to_uint8

    test = to_uint8(load_digits("test")[0])[:120]
    save_pngs(test, tmp_path / "a")
    assert main(["fid", str(tmp_path / "a"), str(tmp_path / "a"), "--kid-prc"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    raw = kid_and_precision_recall(test, test)["kid_mean"]
    assert raw < -1.0  # torch-fidelity's unbiased estimate of a set against itself (measured: about -60)
    assert printed["kid_mean"] == 0.0 and printed["kid_unbiased_estimate"] == pytest.approx(raw, rel=1e-6)
    assert printed["fid"] == pytest.approx(0.0, abs=1e-2) and printed["precision"] == 1.0


def test_plot_has_integer_nfe_ticks_and_distinguishable_lines(tmp_path):
    summary = [{"scheduler": f"s{i}", "guidance": 1.0, "nfe": n, "mean": 1.0 + i + 1 / n, "std": 0.1}
               for i in range(12) for n in (3, 5, 8)]
    fig = sw.plot(summary, tmp_path / "p.png", "rmse")
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [3, 5, 8] and [t.get_text() for t in ax.get_xticklabels()] == ["3", "5", "8"]
    lines = [c.lines[0] for c in ax.containers]  # one errorbar container per scheduler
    assert len(lines) == 12
    assert len({(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}) == 12


def test_train_digits_scales_the_classifier_epochs(tmp_path, monkeypatch, capsys):
    from diffusers_ext.models.digits import classifier, train

    epochs = []

    def fake_classifier(out_path=None, epochs_=None, seed=0, **kw):
        epochs.append(kw.get("epochs", epochs_))
        return None, 0.5

    monkeypatch.setattr(classifier, "train_classifier", fake_classifier)
    monkeypatch.setattr(train, "train_digits_unet", lambda out, steps, seed, **kw: None)
    assert main(["train-digits", "--out", str(tmp_path), "--steps", "100"]) == 0
    assert main(["train-digits", "--out", str(tmp_path), "--steps", "100", "--classifier-epochs", "3"]) == 0
    assert main(["train-digits", "--out", str(tmp_path)]) == 0
    assert epochs == [1, 3, 60]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["classifier_epochs"] == 60


@pytest.mark.parametrize("spec,message", [
    # not schedulers: were accepted (then failed inside the sweep) or gave "'str' object is not callable"
    ("diffusers:UNet2DModel", "diffusers has no scheduler class 'UNet2DModel'; valid classes: "),
    ("diffusers:SchedulerMixin", "diffusers has no scheduler class 'SchedulerMixin'"),
    ("FirstHittingScheduler", "Unknown scheduler 'FirstHittingScheduler': use one of the short names dpm++2m, "),
    ("__version__", "one of our classes DPMSolverPPScheduler, UniPCScheduler, DEISScheduler, DCSolverScheduler, "
                    "USFScheduler"),
    # a known scheduler with an unknown option: the error names the valid options
    ("dpm++2m:solver_ordr=3", "Scheduler 'dpm++2m:solver_ordr=3': DPMSolverPPScheduler has no option(s) "
                              "'solver_ordr'; valid options: "),
    # a known scheduler with a bad value is not an "Unknown scheduler"
    ("dpm++2m:solver_order=9", "Scheduler 'dpm++2m:solver_order=9': solver_order must be an integer in [1, 3]"),
])
def test_bad_scheduler_specs_name_the_problem_before_any_work(tmp_path, capsys, spec, message):
    out = tmp_path / "s.jsonl"
    assert main([*GMM_SWEEP, "--scheduler", spec, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if "valid options" in message:
        listed = err.split("valid options: ")[1].strip().split(", ")
        assert {"solver_order", "num_train_timesteps", "algorithm_type"} <= set(listed)
    assert not out.exists()


def test_python_spelled_booleans_in_specs_are_booleans(tmp_path):
    """``clip_sample=False`` was the string "False" (truthy: DDIM clipped its samples) in the results config."""
    out = tmp_path / "s.jsonl"
    spec = "diffusers:DDIMScheduler:clip_sample=False,timestep_spacing=trailing"
    assert main([*GMM_SWEEP, "--scheduler", spec, "--scheduler", "dpm++2m:lower_order_final=True", "--out",
                 str(out)]) == 0
    rows = {r["scheduler"]: r for r in read_rows(out)}
    assert rows[spec]["scheduler_config"]["clip_sample"] is False
    assert rows[spec]["scheduler_config"]["timestep_spacing"] == "trailing"
    assert rows["dpm++2m:lower_order_final=True"]["scheduler_config"]["lower_order_final"] is True
