"""An exact masked denoiser from a small hidden Markov model (reference for masked diffusion samplers).

A hidden chain z_1..z_L (initial distribution pi, transitions A) emits tokens x_i ~ B[z_i]. For any mask
pattern, forward-backward gives the exact conditional p(x_i | unmasked tokens) at every masked position,
which is the ideal denoiser of absorbing-state diffusion (MDLM arXiv 2406.07524, First-Hitting Sampler
arXiv 2409.02908): time-agnostic, since the conditional does not depend on the noise level. The exact
log-likelihood of any full sequence makes sample quality measurable without a learned model.

Computed in float64 with per-position normalization (no underflow for long sequences).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class HiddenMarkovModel:
    initial: np.ndarray  # (S,)
    transition: np.ndarray  # (S, S), rows sum to 1
    emission: np.ndarray  # (S, V), rows sum to 1

    def __post_init__(self):
        self.initial = np.asarray(self.initial, dtype=np.float64)
        self.transition = np.asarray(self.transition, dtype=np.float64)
        self.emission = np.asarray(self.emission, dtype=np.float64)
        S = len(self.initial)
        if self.transition.shape != (S, S) or self.emission.ndim != 2 or self.emission.shape[0] != S:
            raise ValueError(f"HMM shapes must be initial (S,), transition (S, S), emission (S, V); got "
                             f"{self.initial.shape}, {self.transition.shape}, {self.emission.shape}")
        for name, rows in (("initial", self.initial[None]), ("transition", self.transition),
                           ("emission", self.emission)):
            if np.any(rows < 0) or not np.allclose(rows.sum(-1), 1.0):
                raise ValueError(f"HMM {name} probabilities must be non-negative and sum to 1 per row")

    @property
    def vocab_size(self) -> int:
        return self.emission.shape[1]

    @property
    def mask_id(self) -> int:
        """The mask token: one past the vocabulary."""
        return self.vocab_size

    @classmethod
    def random(cls, num_states: int = 4, vocab_size: int = 16, seed: int = 0, concentration: float = 0.3):
        """Dirichlet-random rows (small concentration: peaked, so the chain has structure worth modelling)."""
        rng = np.random.default_rng(seed)
        return cls(rng.dirichlet(np.ones(num_states)), rng.dirichlet(np.full(num_states, concentration), num_states),
                   rng.dirichlet(np.full(vocab_size, concentration), num_states))

    # ------------------------------------------------------------------------------ inference
    def _evidence(self, tokens: np.ndarray) -> np.ndarray:
        """(B, L, S): p(x_i | z_i = s) for observed tokens, 1 at masked positions."""
        masked = tokens == self.mask_id
        ev = np.moveaxis(self.emission[:, np.where(masked, 0, tokens)], 0, -1).copy()
        ev[masked] = 1.0
        return ev

    def _forward_backward(self, tokens: np.ndarray):
        """Scaled forward/backward messages (B, L, S) and per-position scales (B, L) for a batch."""
        ev = self._evidence(tokens)
        B, L, S = ev.shape
        alpha, beta, scale = np.empty((B, L, S)), np.empty((B, L, S)), np.empty((B, L))
        a = self.initial * ev[:, 0]
        for i in range(L):
            if i:
                a = (alpha[:, i - 1] @ self.transition) * ev[:, i]
            scale[:, i] = a.sum(-1)
            alpha[:, i] = a / scale[:, i, None]
        beta[:, -1] = 1.0
        for i in range(L - 2, -1, -1):
            beta[:, i] = (ev[:, i + 1] * beta[:, i + 1]) @ self.transition.T / scale[:, i + 1, None]
        return alpha, beta, scale

    def _check(self, tokens) -> np.ndarray:
        tokens = np.atleast_2d(np.asarray(tokens))
        if tokens.min() < 0 or tokens.max() > self.mask_id:
            raise ValueError(f"token ids must lie in 0..{self.mask_id} (mask id {self.mask_id})")
        return tokens

    def log_likelihood(self, tokens) -> np.ndarray:
        """log p(observed tokens) for each sequence of a (B, L) batch (masked positions marginalized)."""
        return np.log(self._forward_backward(self._check(tokens))[2]).sum(-1)

    def conditionals(self, tokens) -> np.ndarray:
        """(B, L, V) float64: p(x_i = v | unmasked tokens) at masked positions, one-hot at unmasked ones."""
        tokens = self._check(tokens)
        alpha, beta, _ = self._forward_backward(tokens)
        posterior = alpha * beta
        posterior /= posterior.sum(-1, keepdims=True)
        out = posterior @ self.emission
        masked = tokens == self.mask_id
        out[~masked] = 0.0
        rows, cols = np.nonzero(~masked)
        out[rows, cols, tokens[rows, cols]] = 1.0
        return out

    def __call__(self, tokens: torch.Tensor, timestep=None) -> torch.Tensor:
        """Denoiser interface: token ids (B, L) with ``mask_id`` -> log-probabilities (B, L, V), float64
        (-inf where impossible). Time-agnostic: ``timestep`` is ignored."""
        with np.errstate(divide="ignore"):
            return torch.from_numpy(np.log(self.conditionals(tokens.cpu().numpy()))).to(tokens.device)

    def sample(self, num_samples: int, length: int, generator: np.random.Generator) -> np.ndarray:
        """Exact ancestral samples (num_samples, length) of the chain."""
        S, V = len(self.initial), self.vocab_size
        out = np.empty((num_samples, length), dtype=np.int64)
        for n in range(num_samples):
            z = generator.choice(S, p=self.initial)
            for i in range(length):
                if i:
                    z = generator.choice(S, p=self.transition[z])
                out[n, i] = generator.choice(V, p=self.emission[z])
        return out
