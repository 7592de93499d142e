"""Our FID harness against torch-fidelity's own calculate_metrics, and its statistics cache."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusers_ext.eval import fid as fidmod
from diffusers_ext.models.digits import load_digits, to_uint8
from tests.helpers import torch_fidelity_metrics


def _inputs():
    train, _ = load_digits("train")
    test, _ = load_digits("test")
    blurred = torch.nn.functional.avg_pool2d(test, 3, 1, 1)  # a distribution near, not at, the data
    return to_uint8(blurred), to_uint8(train)


def test_equals_torch_fidelity_calculate_metrics():
    a, b = _inputs()
    theirs = torch_fidelity_metrics(a, b, fid=True)
    ours = fidmod.fid(a, b)["fid"]
    assert abs(ours - theirs["frechet_inception_distance"]) <= 1e-4 * theirs["frechet_inception_distance"]
    assert ours > 1.0


def test_cache_equals_recompute_and_is_keyed_by_data_and_weights(tmp_path, monkeypatch):
    a, b = _inputs()
    fresh = fidmod.fid(a, b)["fid"]
    first = fidmod.fid(a, b, cache_dir=tmp_path)["fid"]
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2 and first == pytest.approx(fresh, rel=1e-12)
    assert fidmod.fid(a, b, cache_dir=tmp_path)["fid"] == first  # served from the cache
    # changed data: a new entry
    fidmod.fid(a[:-1], b, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3
    # changed extractor weights: new entries and a different number
    import diffusers_ext.models.digits as digits

    weights = load_file(str(digits.CLASSIFIER_PATH))
    weights = {k: v * 1.1 if k.endswith("weight") else v for k, v in weights.items()}
    changed = tmp_path / "changed.safetensors"
    save_file(weights, str(changed))
    monkeypatch.setattr(digits, "CLASSIFIER_PATH", changed)
    other = fidmod.fid(a, b, cache_dir=tmp_path / "cache")["fid"]
    assert len(list((tmp_path / "cache").iterdir())) == 2 and other != pytest.approx(first, rel=1e-6)


def test_statistics_file_and_png_folder_inputs(tmp_path):
    a, b = _inputs()
    stats = fidmod.statistics(b)
    fidmod.save_statistics(stats, tmp_path / "train.safetensors")
    fidmod.save_pngs(a, tmp_path / "pngs")
    assert torch.equal(fidmod.load_images(tmp_path / "pngs"), a)
    direct = fidmod.fid(a, b)["fid"]
    assert fidmod.fid(tmp_path / "pngs", tmp_path / "train.safetensors")["fid"] == pytest.approx(direct, rel=1e-9)


def test_missing_inception_weights_names_both_options(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--inception-weights.*hub cache"):
        fidmod.fid(*_inputs(), extractor="inception-v3-compat")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fidmod.inception_weights_path(tmp_path / "nope.pth")


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="valid choices: digits-cnn, inception-v3-compat"):
        fidmod.fid(*_inputs(), extractor="clip")
    with pytest.raises(FileNotFoundError, match="not a folder of PNG images"):
        fidmod.load_images(tmp_path)
    with pytest.raises(ValueError, match="uint8"):
        fidmod.load_images(torch.zeros(2, 1, 8, 8))
    shutil.rmtree(tmp_path)


def test_fid_cli_prints_json(tmp_path, capsys):
    from diffusers_ext.cli import main

    a, b = _inputs()
    fidmod.save_pngs(a, tmp_path / "a")
    fidmod.save_pngs(b, tmp_path / "b")
    assert main(["fid", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["fid"] == pytest.approx(fidmod.fid(a, b)["fid"], rel=1e-9)


def test_kid_and_precision_recall_equal_torch_fidelity():
    a, b = _inputs()
    theirs = torch_fidelity_metrics(a, b, kid=True, prc=True, kid_subset_size=len(a))
    ours = fidmod.kid_and_precision_recall(a, b)
    assert ours["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)
    assert ours["precision"] == pytest.approx(theirs["precision"], rel=1e-6)
    assert ours["recall"] == pytest.approx(theirs["recall"], rel=1e-6)
