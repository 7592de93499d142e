"""The embedded digits model: data split, shipped pipeline and classifier."""

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from diffusers_ext import DPMSolverPPScheduler, UniPCScheduler
from diffusers_ext.models.digits import load_digits, load_digits_classifier, load_pipeline, to_uint8
from diffusers_ext.models.digits.classifier import evaluate_accuracy


def test_split_is_fixed_stratified_and_disjoint():
    x_tr, y_tr = load_digits("train")
    x_te, y_te = load_digits("test")
    x_all, _ = load_digits("all")
    assert len(x_tr) + len(x_te) == len(x_all) == 1797
    assert x_tr.shape[1:] == (1, 8, 8) and x_tr.min() == -1 and x_tr.max() == 1
    assert np.all(np.bincount(y_te.numpy(), minlength=10) >= 35)
    rows_tr = {tuple(r) for r in x_tr.reshape(len(x_tr), -1).tolist()}
    overlap = sum(tuple(r) in rows_tr for r in x_te.reshape(len(x_te), -1).tolist())
    assert overlap <= 5  # the UCI digits contain a few exact duplicates across writers
    torch.testing.assert_close(load_digits("test")[0], x_te)
    with pytest.raises(ValueError, match="valid choices"):
        load_digits("validation")


def test_shipped_classifier_accuracy():
    accuracy = evaluate_accuracy(load_digits_classifier())
    assert accuracy >= 0.97, accuracy


@pytest.mark.parametrize("scheduler", [None, DPMSolverPPScheduler, UniPCScheduler, UniPCMultistepScheduler])
def test_pipeline_loads_in_one_line_and_samples(scheduler):
    pipe = load_pipeline(scheduler)
    out = pipe(class_labels=[0, 3, 7], num_inference_steps=8, guidance_scale=2.0,
               generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (3, 1, 8, 8) and out.min() >= -1 and out.max() <= 1
    pil = pipe(class_labels=[1], num_inference_steps=4, output_type="pil").images
    assert pil[0].size == (8, 8)


def test_samples_are_recognized_as_their_class():
    """The classifier reads the model's guided samples as the requested digits most of the time."""
    pipe = load_pipeline(UniPCScheduler)
    labels = torch.arange(10).repeat(5)
    images = pipe(class_labels=labels, num_inference_steps=20, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(0), output_type="pt").images
    quantized = to_uint8(images).float() / 127.5 - 1
    with torch.no_grad():
        pred = load_digits_classifier()(quantized).argmax(1)
    assert (pred == labels).float().mean() >= 0.8


def test_bad_class_labels():
    pipe = load_pipeline()
    with pytest.raises(ValueError, match="digits 0-9"):
        pipe(class_labels=[10], num_inference_steps=2)
    with pytest.raises(ValueError, match="output_type"):
        pipe(class_labels=[1], num_inference_steps=2, output_type="jpeg")


def test_fid_of_50_step_samples_against_noise_and_shuffled_labels():
    """Samples score far below noise, and per class far below a shuffled-label control (each class's
    samples compared with another class's real digits): the model uses its labels."""
    from diffusers_ext.eval.fid import fid

    train, train_labels = load_digits("train")
    pipe = load_pipeline(UniPCScheduler)
    labels = torch.arange(1000) % 10
    images = pipe(class_labels=labels, num_inference_steps=50, generator=torch.Generator().manual_seed(1),
                  output_type="uint8").images
    real = to_uint8(train)
    model_fid = fid(images, real)["fid"]
    noise_fid = fid(to_uint8(torch.rand(1000, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1),
                    real)["fid"]
    matched = np.mean([fid(images[labels == c], real[train_labels == c])["fid"] for c in range(10)])
    shuffled = np.mean([fid(images[labels == c], real[train_labels == (c + 3) % 10])["fid"] for c in range(10)])
    print(f"digits FID: model {model_fid:.2f}, noise {noise_fid:.1f}, per-class matched {matched:.2f}, "
          f"shuffled labels {shuffled:.2f}")
    assert model_fid < noise_fid / 50
    assert matched < shuffled / 5
