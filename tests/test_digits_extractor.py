"""digits-cnn through torch-fidelity: real held-out digits score far below noise."""

import torch

from diffusers_ext.models.digits import load_digits, to_uint8
from tests.helpers import torch_fidelity_metrics


def _fid(a, b):
    return torch_fidelity_metrics(to_uint8(a), to_uint8(b), fid=True)["frechet_inception_distance"]


def test_held_out_digits_versus_noise():
    train, _ = load_digits("train")
    test, _ = load_digits("test")
    noise = torch.rand(test.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    real, fake = _fid(test, train), _fid(noise, train)
    assert real < 10 and fake > 20 * real, (real, fake)
