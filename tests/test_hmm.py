"""The exact HMM masked denoiser against brute-force enumeration."""

import itertools

import numpy as np
import pytest
import torch

from diffusers_ext.models.hmm import HiddenMarkovModel

HMM = HiddenMarkovModel.random(num_states=3, vocab_size=4, seed=1)
L = 5


def _joint(seq):
    """p(x) by summing over every hidden path."""
    total = 0.0
    for z in itertools.product(range(3), repeat=len(seq)):
        p = HMM.initial[z[0]] * HMM.emission[z[0], seq[0]]
        for i in range(1, len(seq)):
            p *= HMM.transition[z[i - 1], z[i]] * HMM.emission[z[i], seq[i]]
        total += p
    return total


ALL = list(itertools.product(range(4), repeat=L))
JOINT = {seq: _joint(seq) for seq in ALL}


def test_log_likelihood_is_exact_and_normalized():
    ll = HMM.log_likelihood(np.array(ALL))
    np.testing.assert_allclose(np.exp(ll), [JOINT[s] for s in ALL], rtol=1e-10)
    assert np.exp(ll).sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_conditionals_match_enumeration(seed):
    rng = np.random.default_rng(seed)
    truth = ALL[int(rng.integers(len(ALL)))]
    masked = rng.random(L) < 0.6
    tokens = np.where(masked, HMM.mask_id, truth)
    got = HMM.conditionals(tokens)[0]
    compatible = [s for s in ALL if all(m or s[i] == truth[i] for i, m in enumerate(masked))]
    norm = sum(JOINT[s] for s in compatible)
    for i in range(L):
        expected = np.zeros(4)
        for s in compatible:
            expected[s[i]] += JOINT[s] / norm
        np.testing.assert_allclose(got[i], expected, atol=1e-12)
    # the masked-marginal likelihood too
    assert np.exp(HMM.log_likelihood(tokens))[0] == pytest.approx(norm, rel=1e-10)


def test_denoiser_interface_and_bad_input():
    tokens = torch.tensor([[HMM.mask_id, 1, HMM.mask_id, 2, 0]])
    logp = HMM(tokens)
    assert logp.shape == (1, L, 4) and logp.dtype == torch.float64
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(1, L, dtype=torch.float64))
    assert logp[0, 1, 1] == 0.0 and torch.isinf(logp[0, 1, 0])  # unmasked positions carry their token
    with pytest.raises(ValueError, match="token ids must lie in 0..4"):
        HMM.conditionals(np.array([[0, 5, 1, 1, 1]]))
    with pytest.raises(ValueError, match="sum to 1"):
        HiddenMarkovModel([0.5, 0.6], np.eye(2), np.full((2, 3), 1 / 3))


def test_ancestral_samples_follow_the_exact_distribution():
    samples = HMM.sample(4000, 2, np.random.default_rng(0))
    counts = np.zeros((4, 4))
    for a, b in samples:
        counts[a, b] += 1
    exact = np.exp(HMM.log_likelihood(np.array(list(itertools.product(range(4), repeat=2))))).reshape(4, 4)
    tv = 0.5 * np.abs(counts / counts.sum() - exact).sum()
    assert tv < 0.05  # 16 cells, 4000 samples: expected TV about 0.02
