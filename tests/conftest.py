import os

# Triton's interpreter must be chosen before triton is imported; it is only used where a test asks for
# the Triton backend (DIFFUSERS_EXT_BACKEND=triton), so the rest of the suite runs the torch path.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("DIFFUSERS_EXT_BACKEND", "triton")


@pytest.fixture(scope="session")
def gmm():
    """The exact Gaussian-mixture denoiser with its defaults (VP schedule, epsilon prediction), built once."""
    from diffusers_ext.models import GaussianMixtureDenoiser

    return GaussianMixtureDenoiser()


@pytest.fixture(scope="session")
def gmm_eps(gmm):
    """``gmm`` as a plain ``model(x, t) -> tensor`` function (what the search and calibration tools take)."""
    from diffusers_ext.sampling import model_fn

    return model_fn(gmm)


@pytest.fixture(scope="session")
def seeded_noise():
    """``seeded_noise(shape, seed=0, dtype=torch.float32)``: standard normal noise from its own generator seeded
    with ``seed`` (independent of the global seed)."""

    def noise(shape, seed=0, dtype=torch.float32):
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)

    return noise


@pytest.fixture
def reload_scheduler(tmp_path):
    """``reload_scheduler(scheduler, subfolder="", cls=None, **kwargs)``: ``scheduler.save_pretrained`` to
    ``tmp_path / subfolder`` and read back by ``cls`` (default: its own class), as a user's saved config is."""

    def reload(scheduler, subfolder="", cls=None, **kwargs):
        folder = tmp_path / subfolder
        scheduler.save_pretrained(folder)
        return (cls or type(scheduler)).from_pretrained(folder, **kwargs)

    return reload
