"""scikit-learn's digits (1,797 real 8x8 handwritten digits, UCI), scaled to [-1, 1], with a fixed split."""

from __future__ import annotations

import numpy as np
import torch

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 8, 8) in [-1, 1] (float32) and labels (N,) for split "train", "test" or "all".

    The held-out test split is a fixed stratified 20% (seed 0), the same on every machine.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"Unknown split {split!r}; valid choices: 'train', 'test', 'all'")
    from ...optional import require

    data = require("sklearn.datasets", "the digits data (digits FID, train-digits)").load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    labels = torch.from_numpy(data.target.astype(np.int64))
    if split == "all":
        return images, labels
    rng = np.random.default_rng(SPLIT_SEED)
    test_idx = []
    for digit in range(10):
        idx = np.flatnonzero(data.target == digit)
        test_idx.extend(rng.choice(idx, size=int(round(TEST_FRACTION * len(idx))), replace=False).tolist())
    mask = np.zeros(len(labels), dtype=bool)
    mask[test_idx] = True
    keep = torch.from_numpy(mask if split == "test" else ~mask)
    return images[keep], labels[keep]
