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
