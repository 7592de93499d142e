"""The embedded digits model: a class-conditional UNet2DModel and a CNN classifier trained on scikit-learn's digits.

Both ship inside the package (``weights/``); nothing is downloaded::

    from diffusers_ext.models.digits import load_pipeline
    pipe = load_pipeline()                       # DigitsPipeline with diffusers' DDPMScheduler
    images = pipe(class_labels=[0, 1, 2], num_inference_steps=10, guidance_scale=2.0).images

Retrain with ``diffusers-ext train-digits`` (seeded, progress bar; about 15 minutes on 2 CPU cores).
"""

from __future__ import annotations

from pathlib import Path

from .classifier import DigitsClassifier, load_classifier, train_classifier
from .data import load_digits
from .pipeline import NULL_CLASS, NUM_CLASSES, DigitsPipeline, make_unet, to_uint8

WEIGHTS_DIR = Path(__file__).parent / "weights"
CLASSIFIER_PATH = WEIGHTS_DIR / "classifier.safetensors"


def load_pipeline(scheduler=None, path: str | Path | None = None) -> DigitsPipeline:
    """The shipped digits pipeline; ``scheduler``: a scheduler instance, or a scheduler class to build
    ``from_config`` of the shipped DDPM config (e.g. ``DPMSolverPPScheduler``)."""
    folder = Path(path) if path is not None else WEIGHTS_DIR
    if not (folder / "model_index.json").exists():
        raise FileNotFoundError(f"No digits pipeline at {folder} (model_index.json missing); "
                                f"train one with `diffusers-ext train-digits --out {folder}`")
    pipe = DigitsPipeline.from_pretrained(str(folder))
    if scheduler is not None:
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config) if isinstance(scheduler, type) else scheduler
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_digits_classifier() -> DigitsClassifier:
    return load_classifier(CLASSIFIER_PATH)


__all__ = ["CLASSIFIER_PATH", "NULL_CLASS", "NUM_CLASSES", "WEIGHTS_DIR", "DigitsClassifier", "DigitsPipeline",
           "load_classifier", "load_digits", "load_digits_classifier", "load_pipeline", "make_unet",
           "to_uint8", "train_classifier"]
