"""First-Hitting Sampler core: exact samples on an HMM, exact first-hitting times, Gumbel sampling."""

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chisquare, kstest

from diffusers_ext.masked import first_hitting_sample, first_hitting_times, gumbel_categorical
from diffusers_ext.models.hmm import HiddenMarkovModel

HMM = HiddenMarkovModel.random(num_states=3, vocab_size=3, seed=2, concentration=0.5)


def test_samples_follow_the_exact_sequence_distribution():
    """Chi-square over all 3^4 sequences (false-alarm rate 1e-3 at these fixed seeds)."""
    n, L = 4000, 4
    tokens = torch.full((n, L), HMM.mask_id)
    out, calls = first_hitting_sample(HMM, tokens, HMM.mask_id, torch.Generator().manual_seed(0))
    assert calls == L and (out != HMM.mask_id).all()
    assert _exact_chisquare_pvalue(out, L) > 1e-3

def test_prompt_tokens_are_kept_and_one_token_per_call():
    tokens = torch.tensor([[0, HMM.mask_id, 2, HMM.mask_id, HMM.mask_id], [1, 1, HMM.mask_id, 0, 2]])
    out, calls = first_hitting_sample(HMM, tokens, HMM.mask_id, torch.Generator().manual_seed(1))
    assert calls == 3 and (out != HMM.mask_id).all()
    keep = tokens != HMM.mask_id
    assert torch.equal(out[keep], tokens[keep])
    with pytest.raises(ValueError, match="no mask token"):
        first_hitting_sample(HMM, out, HMM.mask_id, torch.Generator())


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_first_hitting_time_is_the_minimum_of_n_unmasking_times(schedule):
    """From t = 1 each of n tokens unmasks independently at T_j with P(T_j >= s) = alpha(s); the first hit is
    max_j T_j, so P(first <= s) = (1 - alpha(s))^n (Kolmogorov-Smirnov, false-alarm rate 1e-3)."""
    import math

    alpha = {"linear": lambda s: 1 - s, "cosine": lambda s: math.cos(math.pi * s / 2)}[schedule]
    rng = np.random.default_rng(3)
    n = 5
    first = np.array([first_hitting_times(n, rng, schedule)[0] for _ in range(3000)])
    assert kstest(first, lambda s: np.array([(1 - alpha(v)) ** n for v in np.atleast_1d(s)])).pvalue > 1e-3
    with pytest.raises(ValueError, match="valid choices"):
        first_hitting_times(3, rng, "sigmoid")


def test_gumbel_sampling_matches_categorical_frequencies():
    """float64 Gumbel-argmax draws match the categorical (chi-square, false-alarm rate 1e-3)."""
    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03], dtype=torch.float64)
    draws = gumbel_categorical(torch.log(probs).expand(20000, 5), torch.Generator().manual_seed(4))
    counts = torch.bincount(draws, minlength=5).numpy()
    assert chisquare(counts, probs.numpy() * 20000).pvalue > 1e-3


def _exact_chisquare_pvalue(out, L):
    seqs = list(itertools.product(range(3), repeat=L))
    index = {s: k for k, s in enumerate(seqs)}
    counts = np.bincount([index[tuple(r)] for r in out.tolist()], minlength=len(seqs))
    expected = np.exp(HMM.log_likelihood(np.array(seqs))) * len(out)
    keep = expected >= 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    return chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


@pytest.mark.parametrize("cached", [False, True])
def test_mdlm_ancestral_matches_the_exact_distribution(cached):
    from diffusers_ext.masked import mdlm_ancestral_sample

    n, L, steps = 4000, 4, 64
    out, calls = mdlm_ancestral_sample(HMM, torch.full((n, L), HMM.mask_id), HMM.mask_id, steps,
                                       torch.Generator().manual_seed(5), cached=cached)
    assert (out != HMM.mask_id).all() and calls <= steps
    assert _exact_chisquare_pvalue(out, L) > 1e-3
    one, calls_one = mdlm_ancestral_sample(HMM, torch.full((1, L), HMM.mask_id), HMM.mask_id, steps,
                                           torch.Generator().manual_seed(6), cached=True)
    assert calls_one <= L  # cached, one sequence: a model call only after a step that unmasked something
    with pytest.raises(ValueError, match="num_steps"):
        mdlm_ancestral_sample(HMM, torch.full((1, L), HMM.mask_id), HMM.mask_id, 0, torch.Generator())
