"""A small CNN digit classifier; its penultimate layer is the ``digits-cnn`` FID feature extractor."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .data import load_digits

FEATURE_DIM = 128


class DigitsClassifier(nn.Module):
    """conv 32 - conv 64 - pool - conv 64 - pool - fc 128 (features) - fc 10, on [-1, 1] 8x8 images."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * 2 * 2, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to one pixel (background value -1 fills in)."""
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2,), generator=g).tolist()
    return padded[..., dy:dy + 8, dx:dx + 8]


def train_classifier(out_path: str | Path | None = None, epochs: int = 60, batch_size: int = 64, seed: int = 0,
                     progress: bool = True) -> tuple[DigitsClassifier, float]:
    """Train on the train split; returns the model and its test-split accuracy."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = load_digits("train")
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in tqdm(range(epochs), desc="train digits classifier", disable=not progress):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(_shift(x[idx], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    accuracy = evaluate_accuracy(model)
    if out_path is not None:
        save_file(model.state_dict(), str(out_path), metadata={"test_accuracy": f"{accuracy:.4f}"})
    return model, accuracy


@torch.no_grad()
def evaluate_accuracy(model: DigitsClassifier) -> float:
    model.eval()
    x, y = load_digits("test")
    return float((model(x).argmax(1) == y).float().mean())


def load_classifier(path: str | Path) -> DigitsClassifier:
    model = DigitsClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()
