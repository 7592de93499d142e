"""Files read by the package never lie and never run code: FID statistics (cache keys, validation), the
Inception weights pickle (SHA-256 checked before unpickling), quantized safetensors (validated before the
model is touched)."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file
from torch import nn

from diffusers_ext.eval import fid as fidmod
from diffusers_ext.models.digits import load_digits, to_uint8
from diffusers_ext.quant import QuantizedLayer, collect_layer_inputs, load_quantized, quantize, save_quantized
from tests.helpers import small_cnn


def _digits():
    train, _ = load_digits("train")
    test, _ = load_digits("test")
    return to_uint8(test), to_uint8(train)


# ---------------------------------------------------------------------------------------------- FID statistics
def test_cache_key_includes_the_shape_of_the_same_bytes(tmp_path):
    a, b = _digits()
    a = a[: len(a) // 2 * 2]
    reshaped = a.reshape(len(a), 1, 16, 4)  # the same bytes, other images (the extractor resizes to 8x8)
    assert reshaped.contiguous().numpy().tobytes() == a.contiguous().numpy().tobytes()
    fresh = fidmod.fid(reshaped, b)["fid"]
    original = fidmod.fid(a, b, cache_dir=tmp_path)["fid"]
    assert abs(fresh - original) > 1.0  # really different images
    assert fidmod.fid(reshaped, b, cache_dir=tmp_path)["fid"] == pytest.approx(fresh, rel=1e-9)
    assert len(list(tmp_path.iterdir())) == 3  # a, b and the reshaped a: three entries


def _stats(dim, seed=0):
    x = np.random.default_rng(seed).normal(size=(4 * dim, dim)).astype(np.float32)
    return {"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)}


@pytest.mark.parametrize("corrupt, message", [
    (lambda s: {"mu": s["mu"][:, None], "sigma": s["sigma"]}, "mu must have shape"),
    (lambda s: {"mu": s["mu"], "sigma": s["sigma"][:, :-1]}, "sigma must have shape"),
    (lambda s: {"mu": np.where(np.arange(128) == 3, np.nan, s["mu"]).astype(np.float32), "sigma": s["sigma"]},
     "not finite"),
    (lambda s: {"mu": s["mu"], "sigma": np.where(np.eye(128) > 0, np.inf, s["sigma"])}, "not finite"),
    (lambda s: {"mu": s["mu"].astype(np.int32), "sigma": s["sigma"]}, "floating"),
])
def test_statistics_loader_rejects_bad_shapes_and_values(tmp_path, corrupt, message):
    path = tmp_path / "stats.safetensors"
    save_numpy(corrupt(_stats(128)), str(path))
    with pytest.raises(ValueError, match=message):
        fidmod.load_statistics(path)
    with pytest.raises(ValueError, match=message):
        fidmod.fid(path, path)


def test_statistics_of_another_dimension_than_the_extractor_are_refused(tmp_path):
    path = tmp_path / "stats64.safetensors"
    save_numpy(_stats(64), str(path))
    assert fidmod.load_statistics(path)["mu"].shape == (64,)  # a valid file in itself
    with pytest.raises(ValueError, match="64 features.*digits-cnn.*128"):
        fidmod.fid(path, path)  # before: FID 0 computed from statistics digits-cnn cannot have made


def test_statistics_of_one_image_are_refused():
    a, b = _digits()
    with pytest.raises(ValueError, match="at least 2 images"):
        fidmod.fid(a[:1], b)


def test_saving_invalid_statistics_writes_nothing(tmp_path):
    stats = _stats(128)
    stats["sigma"][0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        fidmod.save_statistics(stats, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


# ------------------------------------------------------------------------------------------ Inception weights
class _Marker:
    """Unpickling this creates the directory ``path`` (proof that the file was unpickled)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _fake_weights(folder, marker):
    path = folder / fidmod.INCEPTION_FILE
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Marker(marker)))
    return path


def test_fake_inception_weights_are_refused_before_unpickling(tmp_path, monkeypatch):
    marker = tmp_path / "unpickled"
    user_file = _fake_weights(tmp_path / "user", marker)
    pickle.loads(user_file.read_bytes())  # the marker works: unpickling creates it
    assert marker.is_dir()
    marker.rmdir()
    hub = tmp_path / "hub"
    _fake_weights(hub / "checkpoints", marker)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    a, b = _digits()
    for weights in (user_file, None):  # the user's path, then torch's hub cache
        with pytest.raises(ValueError) as error:
            fidmod.fid(a[:8], b[:8], extractor="inception-v3-compat", inception_weights=weights)
        text = str(error.value)
        assert fidmod.INCEPTION_SHA256 in text and "--inception-weights" in text and "hub cache" in text
        assert not marker.exists()
    with pytest.raises(ValueError, match=fidmod.INCEPTION_SHA256):
        fidmod.fid(a[:8], b[:8], extractor="inception-v3-compat", cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_inception_weights_with_the_expected_hash_are_accepted(tmp_path, monkeypatch):
    import hashlib

    path = tmp_path / "weights.pth"
    path.write_bytes(b"stand-in for the real file")
    monkeypatch.setattr(fidmod, "INCEPTION_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    assert fidmod.inception_weights_path(path) == path


class _StandInInception(nn.Module):
    """A stand-in for torch-fidelity's Inception (the real file is 95 MB): features = flattened pixels @ W, with
    W loaded from the weights file it is given."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__()
        self.weight = torch.load(feature_extractor_weights_path, weights_only=True)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "2048"

    def forward(self, x):
        return (x[:, :, :8, :8].reshape(len(x), -1).float() @ self.weight,)


def test_inception_weights_are_hashed_once_per_file_version(tmp_path, monkeypatch):
    import hashlib

    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    monkeypatch.setitem(FEATURE_EXTRACTORS_REGISTRY, fidmod.INCEPTION, _StandInInception)
    path, first, second = tmp_path / "weights.pth", torch.randn(192, 2048), torch.randn(192, 2048)
    torch.save(first, path)
    monkeypatch.setattr(fidmod, "INCEPTION_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    hashed, real_sha256 = [], hashlib.sha256

    def counting_sha256(data=b"", **kwargs):
        if data == path.read_bytes():
            hashed.append(len(data))
        return real_sha256(data, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counting_sha256)
    images = _digits()[0][:20]
    expected = images.expand(-1, 3, -1, -1).reshape(20, -1).float() @ first
    stats = fidmod.statistics(images, fidmod.INCEPTION, inception_weights=path, cache_dir=tmp_path / "cache")
    assert stats["mu"] == pytest.approx(expected.mean(0).numpy(), rel=1e-5, abs=1e-3)
    for _ in range(2):
        assert np.allclose(fidmod.extract_features(images, fidmod.INCEPTION, path), expected.numpy())
    assert len(hashed) == 1  # one read and hash for the cache key and both extractions
    stat = path.stat()
    torch.save(second, path)  # other bytes, same size and time: what loads is still the verified copy
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    assert np.allclose(fidmod.extract_features(images, fidmod.INCEPTION, path), expected.numpy())
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new version: checked again, refused
    with pytest.raises(ValueError, match="is not torch-fidelity's Inception weights file"):
        fidmod.extract_features(images, fidmod.INCEPTION, path)
    monkeypatch.setattr(fidmod, "INCEPTION_SHA256", real_sha256(path.read_bytes()).hexdigest())
    expected = images.expand(-1, 3, -1, -1).reshape(20, -1).float() @ second
    assert np.allclose(fidmod.extract_features(images, fidmod.INCEPTION, path), expected.numpy())


# ------------------------------------------------------------------------------------------- quantized files
def _model(seed=0):
    return small_cnn(8, seed)


@pytest.fixture(scope="module")
def w8a8_file(tmp_path_factory):
    """Layers 0, 2, 5 quantized (FP8 weights and inputs), layer 7 kept in float."""
    model = _model()
    inputs = [torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    calibration = collect_layer_inputs(model, lambda: [model(x) for x in inputs])
    quantize(model, "fp8_e4m3", "fp8_e4m3", calibration=calibration, skip=("7",), progress=False)
    return save_quantized(model, tmp_path_factory.mktemp("quant") / "w8a8.safetensors")


def _rewrite(source, target, edit):
    with safe_open(str(source), framework="pt") as f:
        meta = json.loads(f.metadata()["diffusers_ext_quantized"])
    tensors = load_file(str(source))
    edit(tensors, meta["layers"])
    save_file(tensors, str(target), metadata={"diffusers_ext_quantized": json.dumps(meta)})
    return target


def _set(mapping, key, value):
    mapping[key] = value


CORRUPTIONS = {
    "unknown weight format": (lambda t, m: _set(m["5"], "weights", "fp3_e9m9"), "valid choices"),
    "unknown activation format": (lambda t, m: _set(m["5"], "activations", "fp9"), "valid choices"),
    "bit width differs from the format": (lambda t, m: _set(m["5"], "bits", 4), "bits"),
    "truncated codes": (lambda t, m: _set(t, "5.weight_packed", t["5.weight_packed"][:-1]), "bytes"),
    "extra code bytes": (lambda t, m: _set(t, "5.weight_packed", torch.cat([t["5.weight_packed"]] * 2)), "bytes"),
    "NaN weight code": (lambda t, m: t["5.weight_packed"].__setitem__(0, 0x7F), "not finite"),
    "infinite weight scale": (lambda t, m: t["5.weight_scale"].__setitem__(0, float("inf")), "weight_scale"),
    "zero weight scale": (lambda t, m: t["5.weight_scale"].__setitem__(1, 0.0), "weight_scale"),
    "weight scale of another length": (lambda t, m: _set(t, "5.weight_scale", t["5.weight_scale"][:-1]),
                                       "weight_scale"),
    "missing input scale": (lambda t, m: t.pop("5.input_scale"), "input_scale"),
    "NaN input scale": (lambda t, m: _set(t, "5.input_scale", torch.tensor([float("nan")])), "input_scale"),
    "input scale without activation format": (lambda t, m: _set(m["5"], "activations", None), "input_scale"),
    "shape differs from the model": (lambda t, m: _set(m["5"], "shape", [16, 64]), "shape"),
    "layer entry without shape": (lambda t, m: m["5"].pop("shape"), "shape"),
    "layer absent from the model": (lambda t, m: _set(m, "9", dict(m["5"])), "'9'"),
    "missing bias": (lambda t, m: t.pop("5.bias"), "5.bias"),
    "float tensor of another shape": (lambda t, m: _set(t, "7.weight", t["7.weight"][:, :-1].contiguous()), "7.weight"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_bad_quantized_file_is_refused_and_the_model_is_untouched(tmp_path, w8a8_file, case):
    edit, message = CORRUPTIONS[case]
    path = _rewrite(w8a8_file, tmp_path / "bad.safetensors", edit)
    model = _model(seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        load_quantized(model, path)
    assert not any(isinstance(m, QuantizedLayer) for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_valid_quantized_file_still_loads_exactly(tmp_path, w8a8_file):
    same = _rewrite(w8a8_file, tmp_path / "same.safetensors", lambda t, m: None)
    x = torch.randn(4, 1, 8, 8)
    reference = load_quantized(_model(seed=1), w8a8_file)
    assert torch.equal(load_quantized(_model(seed=2), same)(x), reference(x))
    assert sum(isinstance(m, QuantizedLayer) for m in reference.modules()) == 3


def test_integer_codes_beyond_the_grid_are_refused(tmp_path):
    model = quantize(_model(), "int4", activations=None, progress=False)
    path = save_quantized(model, tmp_path / "w4.safetensors")
    bad = _rewrite(path, tmp_path / "bad.safetensors", lambda t, m: t["2.weight_packed"].__setitem__(0, 0xFF))
    fresh = _model(seed=5)
    with pytest.raises(ValueError, match="beyond the int4 grid"):  # code 15 would decode to 8 > 7
        load_quantized(fresh, bad)
    assert not any(isinstance(m, QuantizedLayer) for m in fresh.modules())
