"""FID through torch-fidelity's feature extractors and formulas, with statistics cached as safetensors.

Inputs are uint8 images (N, C, H, W), a folder of PNGs, or a statistics file written by
``save_statistics``. Statistics are keyed by a hash of the data (with its shape and dtype) and of the
extractor's weights (torch-fidelity keys its cache by name only, so a retrained extractor would silently
reuse old numbers). Statistics files are validated when read: mu (D,), sigma (D, D), finite, D the
extractor's feature dimension.

Extractors: ``digits-cnn`` (the embedded classifier) and ``inception-v3-compat`` with weights from a
user path or torch's hub cache; without either, a clear error (no download is attempted). The Inception
weights are a pickle (torch-fidelity loads them with ``weights_only=False``, which can run code), so their
SHA-256 is checked against torch-fidelity's file before anything loads them. A process reads, checks and
loads each weights file once per version (path, size, mtime_ns); what it loads is a private copy of the
checked bytes.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import save_file

from ..optional import require

try:
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
except ImportError:
    require("torch_fidelity", "FID and sweeps (diffusers_ext.eval.fid)")  # clear error if torch-fidelity is missing
    raise

from ..models.digits.classifier import FEATURE_DIM
from .digits_extractor import NAME as DIGITS_CNN
from .digits_extractor import register

INCEPTION = "inception-v3-compat"
EXTRACTORS = (DIGITS_CNN, INCEPTION)
FEATURE_DIMS = {DIGITS_CNN: FEATURE_DIM, INCEPTION: 2048}  # each extractor's FID feature layer
# torch-fidelity's URL_INCEPTION_V3 (feature_extractor_inceptionv3.py):
# https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
# SHA-256 of that file (95,628,359 bytes; the same bytes as pytorch-fid's pt_inception-2015-12-05-6726825d.pth),
# as recorded by several independent public projects; its first 8 hex digits are the prefix in the file name,
# which is what torch.hub's check_hash verifies. Not recomputed here: the file cannot be downloaded in our CI.
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


def _how_to_provide_inception(cache_dir: Path) -> str:
    return (f"pass --inception-weights PATH (inception_weights= in Python) to torch-fidelity's {INCEPTION_FILE}, "
            f"or place that file in torch's hub cache ({cache_dir}); or use --extractor {DIGITS_CNN}")


_VERIFIED: dict[tuple[str, int, int], Path] = {}  # (path, size, mtime_ns) -> private copy of the checked bytes
_EXTRACTORS: dict[tuple, torch.nn.Module] = {}  # (extractor, class, weights file, size, mtime_ns) -> extractor


def _stat_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _verified_inception(user_path=None) -> tuple[Path, Path]:
    """(the Inception weights file, a private copy of its bytes whose SHA-256 is torch-fidelity's). The file is
    the user's, else torch's hub cache (never a download); it is read, checked and copied once per version
    (path, size, mtime_ns) in this process, and only the private copy is ever unpickled, so the bytes loaded are
    the bytes checked even if the file changes later."""
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    path = Path(user_path) if user_path is not None else cache_dir / INCEPTION_FILE
    if not path.is_file():
        if user_path is not None:
            raise FileNotFoundError(f"--inception-weights {path} does not exist")
        raise FileNotFoundError(f"{INCEPTION} needs its weights and nothing is downloaded: "
                                + _how_to_provide_inception(cache_dir))
    key = _stat_key(path)  # taken before reading: a change during the read makes the next call check again
    copy = _VERIFIED.get(key)
    if copy is None or not copy.is_file():
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != INCEPTION_SHA256:
            raise ValueError(f"{path} is not torch-fidelity's Inception weights file (SHA-256 {digest}, expected "
                             f"{INCEPTION_SHA256}); refusing to load it, since it is a pickle that can run code. "
                             + _how_to_provide_inception(cache_dir))
        copy = _private_dir() / f"{os.getpid()}-{len(_VERIFIED)}-{INCEPTION_FILE}"
        copy.write_bytes(data)
        _VERIFIED[key] = copy
    return path, copy


@functools.lru_cache(maxsize=1)
def _private_dir() -> Path:
    """A folder only this process writes (mode 0700), removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="diffusers_ext-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def inception_weights_path(user_path: str | os.PathLike | None = None) -> Path:
    """The verified Inception weights file: the user's, else torch's hub cache (see ``_verified_inception``)."""
    return _verified_inception(user_path)[0]


def extractor_fingerprint(extractor: str, inception_weights=None) -> str:
    """What identifies an extractor's weights: the SHA-256 of the digits classifier (once per file version), the
    fixed digest of torch-fidelity's Inception file (checked before use)."""
    if extractor == DIGITS_CNN:
        from ..models.digits import CLASSIFIER_PATH

        return _file_digest(CLASSIFIER_PATH)
    if extractor == INCEPTION:
        _verified_inception(inception_weights)
        return INCEPTION_SHA256
    raise ValueError(f"Unknown extractor {extractor!r}; valid choices: {', '.join(EXTRACTORS)}")


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """SHA-256 of a file, computed once per version (path, size, mtime_ns) in this process."""
    key = _stat_key(path)
    if key not in _DIGESTS:
        _DIGESTS[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _DIGESTS[key]


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


def _feature_extractor(extractor: str, inception_weights=None) -> torch.nn.Module:
    """torch-fidelity's extractor at its FID layer, loaded once per weights version in this process. Inception
    loads the private copy of the bytes whose hash was checked (``_verified_inception``)."""
    if extractor == INCEPTION:
        weights = _verified_inception(inception_weights)[1]
    elif extractor == DIGITS_CNN:
        from ..models.digits import CLASSIFIER_PATH

        weights = CLASSIFIER_PATH
    else:
        raise ValueError(f"Unknown extractor {extractor!r}; valid choices: {', '.join(EXTRACTORS)}")
    register()
    cls = FEATURE_EXTRACTORS_REGISTRY[extractor]
    key = (extractor, cls, *_stat_key(weights))
    if key not in _EXTRACTORS:
        for old in [k for k in _EXTRACTORS if k[0] == extractor]:  # one loaded version per extractor
            del _EXTRACTORS[old]
        layer = cls.get_default_feature_layer_for_metric("fid")
        _EXTRACTORS[key] = cls(extractor, [layer], feature_extractor_weights_path=str(weights)).eval()
    return _EXTRACTORS[key]


def extract_features(images: torch.Tensor, extractor: str = DIGITS_CNN, inception_weights=None,
                     batch_size: int = 256) -> np.ndarray:
    """Features (N, D), float32 as torch-fidelity keeps them, from its extractor's default FID layer."""
    model = _feature_extractor(extractor, inception_weights)
    if extractor == INCEPTION and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    feats = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            feats.append(model(images[i:i + batch_size])[0].float())
    return torch.cat(feats).numpy()


def statistics(images, extractor: str = DIGITS_CNN, inception_weights=None, cache_dir=None) -> dict:
    """{"mu", "sigma"} of the features (torch-fidelity's formulas), cached by data and weights hash."""
    if extractor not in EXTRACTORS:
        raise ValueError(f"Unknown extractor {extractor!r}; valid choices: {', '.join(EXTRACTORS)}")
    if isinstance(images, (str, os.PathLike)) and Path(images).is_file():
        return load_statistics(images, extractor)
    images = load_images(images)
    if len(images) < 2:
        raise ValueError(f"FID statistics need at least 2 images (a covariance), got {len(images)}")
    key = None
    if cache_dir is not None:
        data = hashlib.sha256(f"{tuple(images.shape)} {images.dtype}\n".encode())
        data.update(images.contiguous().numpy().tobytes())
        weights = extractor_fingerprint(extractor, inception_weights)[:16]
        key = Path(cache_dir) / f"{extractor}-{weights}-{data.hexdigest()[:16]}.safetensors"
        if key.is_file():
            return load_statistics(key, extractor)
    stats = fid_features_to_statistics(torch.from_numpy(extract_features(images, extractor, inception_weights)))
    if key is not None:
        save_statistics(stats, key, extractor)
    return stats


def check_statistics(stats: dict, extractor: str | None = None, source: str = "statistics") -> dict:
    """``stats`` as torch-fidelity's dtypes (mu float32 (D,), sigma float64 (D, D)) after checking keys, shapes,
    finiteness and, given an extractor, that D is its feature dimension; ValueError otherwise."""
    if extractor is not None and extractor not in FEATURE_DIMS:
        raise ValueError(f"Unknown extractor {extractor!r}; valid choices: {', '.join(EXTRACTORS)}")
    if not isinstance(stats, dict) or set(stats) != {"mu", "sigma"}:
        raise ValueError(f"{source} must hold exactly mu and sigma, got "
                         f"{sorted(stats) if isinstance(stats, dict) else type(stats).__name__}")
    mu, sigma = np.asarray(stats["mu"]), np.asarray(stats["sigma"])
    for name, value in (("mu", mu), ("sigma", sigma)):
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{source}: {name} must be floating point, got {value.dtype}")
    dim = mu.shape[0] if mu.ndim else 0
    if mu.ndim != 1 or dim == 0:
        raise ValueError(f"{source}: mu must have shape (D,), got {mu.shape}")
    if sigma.shape != (dim, dim):
        raise ValueError(f"{source}: sigma must have shape ({dim}, {dim}) like mu, got {sigma.shape}")
    for name, value in (("mu", mu), ("sigma", sigma)):
        if not np.isfinite(value).all():
            raise ValueError(f"{source}: {name} is not finite ({int((~np.isfinite(value)).sum())} NaN/inf entries)")
    if extractor is not None and dim != FEATURE_DIMS[extractor]:
        raise ValueError(f"{source} holds statistics of {dim} features; {extractor} has {FEATURE_DIMS[extractor]} "
                         "(statistics from another extractor?)")
    return {"mu": mu.astype(np.float32), "sigma": sigma.astype(np.float64)}


def save_statistics(stats: dict, path, extractor: str | None = None) -> None:
    """Write validated statistics (and the extractor's name, if given) to ``path``, atomically."""
    stats = check_statistics(stats, extractor)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        save_file(stats, str(partial), metadata={"extractor": extractor} if extractor else None)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def load_statistics(path, extractor: str | None = None) -> dict:
    """Statistics written by ``save_statistics``, validated (``check_statistics``); with ``extractor``, the
    file must match its feature dimension and, if it records one, its name."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            recorded = (f.metadata() or {}).get("extractor")
            stats = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as error:  # safetensors' own error type for unreadable files
        raise ValueError(f"{path} is not a statistics file (safetensors with mu and sigma): {error}") from error
    if extractor is not None and recorded is not None and recorded != extractor:
        raise ValueError(f"{path} holds {recorded} statistics, not {extractor} ones")
    return check_statistics(stats, extractor, source=str(path))


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
