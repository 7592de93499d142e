"""digits-cnn through torch-fidelity: real held-out digits score far below noise."""

import torch
import torch_fidelity

from diffusers_ext.eval.digits_extractor import register
from diffusers_ext.models.digits import load_digits, to_uint8


class _Images(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def _fid(a, b):
    register()
    return torch_fidelity.calculate_metrics(input1=_Images(to_uint8(a)), input2=_Images(to_uint8(b)), fid=True,
                                            feature_extractor="digits-cnn", verbose=False, cuda=False,
                                            save_cpu_ram=True)["frechet_inception_distance"]


def test_held_out_digits_versus_noise():
    train, _ = load_digits("train")
    test, _ = load_digits("test")
    noise = torch.rand(test.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    real, fake = _fid(test, train), _fid(noise, train)
    assert real < 10 and fake > 20 * real, (real, fake)
