"""A tiny random-weight bidirectional transformer denoiser for masked diffusion speed measurements.

It has the cost structure of a masked diffusion language model (embedding, a few encoder layers, an
output head over a realistic vocabulary such as GPT-2's 50,257 tokens) without trained weights: use it
for wall-clock and numerics, the exact ``HiddenMarkovModel`` for sample quality. ``logit_scale`` spreads the
random logits so the categoricals are peaked and long-tailed like a trained model's.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyMaskedTransformer(nn.Module):
    """token ids (B, L) with ``mask_id`` = ``vocab_size`` -> logits (B, L, V), or (B, k, V) at ``positions``."""

    time_conditioned = False
    accepts_positions = True

    def __init__(self, vocab_size: int = 50257, max_length: int = 1024, d_model: int = 64, num_layers: int = 2,
                 num_heads: int = 4, logit_scale: float = 4.0, seed: int = 0):
        super().__init__()
        if vocab_size < 2 or max_length < 1:
            raise ValueError(f"vocab_size must be >= 2 and max_length >= 1, got {vocab_size}, {max_length}")
        self.vocab_size, self.max_length, self.logit_scale = vocab_size, max_length, logit_scale
        self.mask_id = vocab_size
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab_size + 1, d_model)
        self.position = nn.Embedding(max_length, d_model)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, 4 * d_model, dropout=0.0, batch_first=True)
        self.trunk = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        torch.random.set_rng_state(state)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, tokens: torch.Tensor, timesteps=None, positions: torch.Tensor | None = None):
        if tokens.ndim != 2 or tokens.shape[1] > self.max_length:
            raise ValueError(f"tokens must be (batch, length <= {self.max_length}), got {tuple(tokens.shape)}")
        h = self.embed(tokens) + self.position.weight[: tokens.shape[1]]
        h = self.norm(self.trunk(h))
        if positions is not None:
            h = h.gather(1, positions[..., None].expand(-1, -1, h.shape[-1]))
        return self.logit_scale * self.head(h)
