"""FID through torch-fidelity's feature extractors and formulas, with statistics cached as safetensors.

Inputs are uint8 images (N, C, H, W), a folder of PNGs, or a statistics file written by
``save_statistics``. Statistics are keyed by a hash of the data and of the extractor's weights
(torch-fidelity keys its cache by name only, so a retrained extractor would silently reuse old numbers).

Extractors: ``digits-cnn`` (the embedded classifier) and ``inception-v3-compat`` with weights from a
user path or torch's hub cache; without either, a clear error (no download is attempted).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from .digits_extractor import NAME as DIGITS_CNN
from .digits_extractor import register

EXTRACTORS = (DIGITS_CNN, "inception-v3-compat")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def inception_weights_path(user_path: str | os.PathLike | None = None) -> Path:
    """The Inception weights: the user's file, else torch's hub cache; never a download."""
    if user_path is not None:
        path = Path(user_path)
        if not path.is_file():
            raise FileNotFoundError(f"--inception-weights {path} does not exist")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return cached
    raise FileNotFoundError(
        "inception-v3-compat needs its weights and nothing is downloaded: pass --inception-weights PATH "
        f"(torch-fidelity's {INCEPTION_FILE}) or place that file in torch's hub cache ({cached.parent}); "
        "or use --extractor digits-cnn")


def _weights_file(extractor: str, inception_weights=None) -> Path:
    if extractor == DIGITS_CNN:
        from ..models.digits import CLASSIFIER_PATH

        return CLASSIFIER_PATH
    if extractor == "inception-v3-compat":
        return inception_weights_path(inception_weights)
    raise ValueError(f"Unknown extractor {extractor!r}; valid choices: {', '.join(EXTRACTORS)}")


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_images(source) -> torch.Tensor:
    """uint8 (N, C, H, W) from a uint8 tensor or a folder of PNGs (sorted by name)."""
    if isinstance(source, torch.Tensor):
        if source.dtype != torch.uint8 or source.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {source.dtype} {tuple(source.shape)}")
        return source
    folder = Path(source)
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{folder} is not a folder of PNG images")
    arrays = [np.array(Image.open(f)) for f in files]
    images = torch.from_numpy(np.stack(arrays))
    return images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)


def save_pngs(images: torch.Tensor, folder, start: int = 0) -> None:
    """Write uint8 (N, 1 or 3, H, W) images as PNG files 000000.png, ... (lossless)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images.cpu()):
        array = im[0].numpy() if im.shape[0] == 1 else im.permute(1, 2, 0).numpy()
        Image.fromarray(array).save(folder / f"{start + i:06d}.png")


def extract_features(images: torch.Tensor, extractor: str = DIGITS_CNN, inception_weights=None,
                     batch_size: int = 256) -> np.ndarray:
    """Features (N, D), float32 as torch-fidelity keeps them, from its extractor's default FID layer."""
    register()
    weights = _weights_file(extractor, inception_weights)
    cls = FEATURE_EXTRACTORS_REGISTRY[extractor]
    layer = cls.get_default_feature_layer_for_metric("fid")
    model = cls(extractor, [layer], feature_extractor_weights_path=str(weights)).eval()
    if extractor == "inception-v3-compat" and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    feats = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            feats.append(model(images[i:i + batch_size])[0].float())
    return torch.cat(feats).numpy()


def statistics(images, extractor: str = DIGITS_CNN, inception_weights=None, cache_dir=None) -> dict:
    """{"mu", "sigma"} of the features (torch-fidelity's formulas), cached by data and weights hash."""
    if isinstance(images, (str, os.PathLike)) and Path(images).is_file():
        return load_statistics(images)
    images = load_images(images)
    key = None
    if cache_dir is not None:
        digest = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()[:16]
        weights = _file_hash(_weights_file(extractor, inception_weights))
        key = Path(cache_dir) / f"{extractor}-{weights}-{digest}.safetensors"
        if key.is_file():
            return load_statistics(key)
    stats = fid_features_to_statistics(torch.from_numpy(extract_features(images, extractor, inception_weights)))
    if key is not None:
        save_statistics(stats, key)
    return stats


def save_statistics(stats: dict, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({"mu": np.ascontiguousarray(stats["mu"]), "sigma": np.ascontiguousarray(stats["sigma"])}, str(path))


def load_statistics(path) -> dict:
    data = load_file(str(path))
    if set(data) != {"mu", "sigma"}:
        raise ValueError(f"{path} is not a statistics file (needs mu and sigma)")
    return data


def fid(input1, input2, extractor: str = DIGITS_CNN, inception_weights=None, cache_dir=None) -> dict:
    """{"fid": ...} between two inputs (uint8 tensors, PNG folders or statistics files)."""
    s1 = statistics(input1, extractor, inception_weights, cache_dir)
    s2 = statistics(input2, extractor, inception_weights, cache_dir)
    return {"fid": fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"],
            "extractor": extractor}


def kid_and_precision_recall(input1, input2, extractor: str = DIGITS_CNN, inception_weights=None,
                             kid_subset_size: int = 1000, seed: int = 2020) -> dict:
    """KID (mean, std over subsets) and precision / recall / F-score with torch-fidelity's own functions
    (input1 generated, input2 real). The KID subset size is capped at the smaller input."""
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    f1 = torch.from_numpy(extract_features(load_images(input1), extractor, inception_weights))
    f2 = torch.from_numpy(extract_features(load_images(input2), extractor, inception_weights))
    size = min(kid_subset_size, len(f1), len(f2))
    kid = kid_features_to_metric(f1, f2, kid_subset_size=size, rng_seed=seed, verbose=False)
    prc = prc_features_to_metric(f1, f2, verbose=False, save_cpu_ram=True)
    return {"kid_mean": kid["kernel_inception_distance_mean"], "kid_std": kid["kernel_inception_distance_std"],
            "kid_subset_size": size, "precision": prc["precision"], "recall": prc["recall"],
            "f_score": prc["f_score"]}
