"""First-Hitting Sampler, MDLM ancestral baseline and MaskedDiffusionPipeline against the exact HMM."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare, kstest, poisson

from diffusers_ext.masked import (
    FirstHittingScheduler,
    MaskedDiffusionPipeline,
    MDLMAncestralScheduler,
    filter_logits,
    get_mask_schedule,
    gumbel_categorical,
)
from diffusers_ext.models.hmm import HiddenMarkovModel
from diffusers_ext.models.tiny_masked_transformer import TinyMaskedTransformer

HMM = HiddenMarkovModel.random(num_states=3, vocab_size=3, seed=2, concentration=0.5)
MASK = HMM.mask_id


def _pipe(scheduler, denoiser=HMM):
    pipe = MaskedDiffusionPipeline(denoiser, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _recording(denoiser):
    """``denoiser`` wrapped to keep a copy of the tokens of every call: (wrapped denoiser, list of those tokens)."""
    seen = []

    def recording(tokens):
        seen.append(tokens.clone())
        return denoiser(tokens)

    return recording, seen


def _exact_chisquare_pvalue(out, L, prefix=()):
    """Chi-square of sampled sequences (rows of ``out``) against the HMM's exact distribution over the L
    free positions after a fixed ``prefix`` (classes with expectation < 5 pooled)."""
    seqs = [prefix + s for s in itertools.product(range(3), repeat=L)]
    index = {s[len(prefix):]: k for k, s in enumerate(seqs)}
    counts = np.bincount([index[tuple(r)] for r in np.asarray(out).tolist()], minlength=len(seqs))
    expected = np.exp(HMM.log_likelihood(np.array(seqs)))
    expected *= len(out) / expected.sum()
    keep = expected >= 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    return chisquare(observed, expected).pvalue


# ------------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_first_hitting_samples_follow_the_exact_distribution(schedule):
    """Chi-square over all 3^4 sequences, false-alarm rate 1e-3 (fixed seeds); exactly L calls for L tokens."""
    out = _pipe(FirstHittingScheduler(mask_schedule=schedule))(
        batch_size=4000, sequence_length=4, generator=torch.Generator().manual_seed(0))
    assert out.num_model_calls == 4 and (out.sequences != MASK).all()
    assert _exact_chisquare_pvalue(out.sequences, 4) > 1e-3


def test_first_hitting_with_a_prompt_samples_the_exact_conditional():
    prompt = (2, 0)
    out = _pipe(FirstHittingScheduler())(batch_size=3000, sequence_length=5, prompt_ids=torch.tensor(prompt),
                                         generator=torch.Generator().manual_seed(1))
    assert (out.sequences[:, :2] == torch.tensor(prompt)).all()
    assert _exact_chisquare_pvalue(out.sequences[:, 2:], 3, prefix=prompt) > 1e-3


@pytest.mark.parametrize("use_cache", [False, True])
def test_mdlm_ancestral_with_many_steps_matches_the_exact_distribution(use_cache):
    out = _pipe(MDLMAncestralScheduler(num_inference_steps=64))(
        batch_size=4000, sequence_length=4, use_cache=use_cache, generator=torch.Generator().manual_seed(5))
    assert (out.sequences != MASK).all()
    assert _exact_chisquare_pvalue(out.sequences, 4) > 1e-3
    assert out.num_model_calls == 64 if not use_cache else out.num_model_calls <= 64


def test_cached_mdlm_calls_the_model_only_after_a_change():
    """One sequence of 6 tokens in 64 steps. Uncached: a call at every step until the sequence is complete;
    cached: a call only for each distinct sequence the uncached run saw; same tokens for the same seed."""
    recording_hmm, seen = _recording(HMM)
    pipe = _pipe(MDLMAncestralScheduler(num_inference_steps=64), recording_hmm)
    uncached = pipe(sequence_length=6, mask_token_id=MASK, use_cache=False, generator=torch.Generator().manual_seed(6))
    distinct = len({tuple(x.flatten().tolist()) for x in seen})
    assert uncached.num_model_calls == len(seen) and distinct < len(seen)
    cached = pipe(sequence_length=6, mask_token_id=MASK, generator=torch.Generator().manual_seed(6))
    assert cached.num_model_calls == distinct
    assert torch.equal(cached.sequences, uncached.sequences)


# --------------------------------------------------------------------------------------- hitting times
class _Recorder:
    """Uniform logits over ``vocab`` tokens; records the times and the masked count seen at each call."""

    def __init__(self, vocab=4):
        self.vocab, self.times, self.masked = vocab, [], []

    def __call__(self, tokens, times=None):
        self.times.append(None if times is None else times.clone())
        self.masked.append((tokens == self.vocab).sum(1).clone())
        return torch.zeros(*tokens.shape, self.vocab)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "polynomial", "callable"])
def test_hitting_times_are_n_independent_unmasking_times(schedule):
    """From t = 1 each of n tokens unmasks at an independent time T with P(T <= s) = 1 - alpha(s): the n
    times at which a sequence's calls happen, pooled, have that CDF (KS test, false-alarm rate 1e-3), and
    they decrease within a sequence."""
    alpha = {"linear": lambda t: 1 - t, "cosine": lambda t: torch.cos(math.pi * torch.as_tensor(t) / 2),
             "polynomial": lambda t: 1 - torch.as_tensor(t) ** 2.0, "callable": lambda t: (1 - t) ** 3}[schedule]
    spec = alpha if schedule == "callable" else schedule
    recorder, n = _Recorder(), 5
    _pipe(FirstHittingScheduler(mask_schedule=spec), recorder)(
        batch_size=600, sequence_length=n, mask_token_id=4, time_conditioned=True, use_cache=False,
        generator=torch.Generator().manual_seed(3))
    times = torch.stack(recorder.times, 1).double()  # (600, n)
    assert (times.diff(dim=1) < 0).all() and (times > 0).all() and (times < 1).all()
    cdf = lambda s: 1 - alpha(torch.as_tensor(s, dtype=torch.float64)).numpy()  # noqa: E731
    assert kstest(times.flatten().numpy(), cdf).pvalue > 1e-3


@pytest.mark.parametrize("k", [1, 3])
def test_each_call_unmasks_exactly_k_tokens_and_keeps_given_tokens(k):
    template = torch.tensor([[0, 4, 4, 2, 4, 4, 4, 1, 4, 4], [4, 4, 3, 3, 4, 4, 4, 4, 4, 0]])
    recorder = _Recorder()
    out = _pipe(FirstHittingScheduler(tokens_per_step=k), recorder)(
        tokens=template, mask_token_id=4, generator=torch.Generator().manual_seed(4))
    counts = torch.stack(recorder.masked + [torch.zeros(2, dtype=torch.long)], 1)  # masks before each call
    unmasked = -counts.diff(dim=1)
    remaining = counts[:, :-1]
    assert torch.equal(unmasked, torch.minimum(remaining, torch.tensor(k)))  # k, fewer only at the very end
    assert out.num_model_calls == math.ceil(7 / k)
    given = template != 4
    assert (out.sequences != 4).all() and torch.equal(out.sequences[given], template[given])


def test_denoiser_with_logits_at_positions_only_gives_the_same_samples():
    """TinyMaskedTransformer computes its output head at the chosen positions only; the pipeline's gather
    from full logits must give the same tokens for the same seed."""
    model = TinyMaskedTransformer(vocab_size=97, max_length=16, seed=1)

    class FullLogits(torch.nn.Module):
        def forward(self, tokens):
            return model(tokens)

    runs = [_pipe(FirstHittingScheduler(tokens_per_step=2), d)(
        batch_size=3, sequence_length=12, mask_token_id=97, generator=torch.Generator().manual_seed(7))
        for d in (model, FullLogits())]
    assert torch.equal(runs[0].sequences, runs[1].sequences) and (runs[0].sequences < 97).all()


# -------------------------------------------------------------------------------- categorical sampling
def test_gumbel_sampling_matches_categorical_frequencies():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03], dtype=torch.float64)
    draws = gumbel_categorical(torch.log(probs).expand(20000, 5), torch.Generator().manual_seed(4))
    assert chisquare(torch.bincount(draws, minlength=5).numpy(), probs.numpy() * 20000).pvalue > 1e-3


def test_float32_gumbel_loses_the_tail_that_float64_keeps():
    """A head token and 2^15 tail tokens of probability 2^-25 each (< 2^-24), as in one MDLM step with many
    steps. Expected tail draws in 24,000 draws: 23.4. float64 must agree (Poisson, two-sided false-alarm
    1e-3); float32 uniforms cap the Gumbel noise near 16.6, so the tail is drawn about 7x less often
    (expected 3.4) and must fall below Poisson's 1e-3 quantile (<= 10; false alarm 6e-4)."""
    tail, draws, log_p = 2**15, 24000, -25 * math.log(2)
    logits = torch.cat([torch.zeros(1), torch.full((tail,), log_p)]).double()
    expected = draws * tail * math.exp(log_p) / (1 + tail * math.exp(log_p))
    hits = {}
    for dtype in (torch.float64, torch.float32):
        g, n = torch.Generator().manual_seed(11), 0
        for _ in range(draws // 400):
            n += int((gumbel_categorical(logits.expand(400, -1), g, dtype) > 0).sum())
        hits[dtype] = n
    p64 = 2 * min(poisson.cdf(hits[torch.float64], expected), poisson.sf(hits[torch.float64] - 1, expected))
    assert p64 > 1e-3, hits
    assert poisson.cdf(hits[torch.float32], expected) < 1e-3, hits


def test_filters_keep_the_documented_classes():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.3, 0.25]], dtype=torch.float64))
    top2 = filter_logits(logits, top_k=2).exp()
    assert torch.allclose(top2, torch.tensor([[0, 0.4 / 0.7, 0.3 / 0.7, 0]], dtype=torch.float64))
    nucleus = filter_logits(logits, top_p=0.65).exp()  # 0.4 < 0.65 <= 0.4 + 0.3: two classes
    assert torch.allclose(nucleus, top2)
    three = filter_logits(logits, top_p=0.71).exp()  # 0.7 < 0.71: a third class
    assert torch.allclose(three, torch.tensor([[0, 0.4, 0.3, 0.25]], dtype=torch.float64) / 0.95)
    hot = filter_logits(logits, temperature=2.0).exp()
    ref = torch.tensor([0.05, 0.4, 0.3, 0.25], dtype=torch.float64).sqrt()
    assert torch.allclose(hot, ref / ref.sum())
    assert torch.equal(filter_logits(logits, temperature=0.0).exp(), torch.tensor([[0.0, 1, 0, 0]]).double())


def test_greedy_first_hitting_takes_the_most_likely_token():
    """temperature 0: each call's new token is the argmax of the exact conditional at its position given the
    sequence the model saw; top_k=1 is the same sampler."""
    recording_hmm, seen = _recording(HMM)
    out = _pipe(FirstHittingScheduler(temperature=0.0), recording_hmm)(
        batch_size=4, sequence_length=5, mask_token_id=MASK, generator=torch.Generator().manual_seed(2))
    states = seen + [out.sequences]
    for before, after in zip(states[:-1], states[1:]):
        rows, cols = torch.nonzero(before != after, as_tuple=True)
        assert torch.equal(rows, torch.arange(4))  # one new token per sequence and call
        assert torch.equal(after[rows, cols], HMM(before).argmax(-1)[rows, cols])
    top1 = _pipe(FirstHittingScheduler(top_k=1))(batch_size=4, sequence_length=5,
                                                 generator=torch.Generator().manual_seed(2))
    assert torch.equal(out.sequences, top1.sequences)


# ------------------------------------------------------------------------------------- bad input
def test_bad_input_gives_clear_errors():
    pipe = _pipe(FirstHittingScheduler())
    with pytest.raises(ValueError, match="no mask token"):
        pipe(tokens=torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        _pipe(FirstHittingScheduler(), lambda x: torch.zeros(*x.shape, 2))(tokens=torch.tensor([[2, 3, 3]]),
                                                                            mask_token_id=3)
    with pytest.raises(ValueError, match="model output must be logits"):
        _pipe(FirstHittingScheduler(), lambda x: torch.zeros(1, 3))(sequence_length=3, mask_token_id=3)
    with pytest.raises(ValueError, match="tokens_per_step=4 is larger than the 3 masked"):
        _pipe(FirstHittingScheduler(tokens_per_step=4))(sequence_length=3)
    with pytest.raises(ValueError, match="valid choices"):
        FirstHittingScheduler(mask_schedule="sigmoid")
    with pytest.raises(ValueError, match="exponent > 0"):
        MDLMAncestralScheduler(mask_schedule="polynomial", schedule_exponent=-1.0)
    with pytest.raises(ValueError, match="alpha\\(1\\) = 0"):
        get_mask_schedule(lambda t: 1 - t / 2)
    with pytest.raises(ValueError, match="non-increasing"):
        get_mask_schedule(lambda t: (1 - t) * (1 + 0.5 * torch.sin(20 * t)))
    with pytest.raises(ValueError, match="top_p"):
        FirstHittingScheduler(top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        MDLMAncestralScheduler(temperature=-1.0)
    with pytest.raises(ValueError, match="sampling dtype"):
        FirstHittingScheduler(sampling_dtype="float16")
    with pytest.raises(ValueError, match="time-agnostic"):
        pipe(sequence_length=3, time_conditioned=True)
    with pytest.raises(ValueError, match="output_type"):
        pipe(sequence_length=3, output_type="pil")
    with pytest.raises(ValueError, match="mask token id"):
        _pipe(FirstHittingScheduler(), lambda x: torch.zeros(*x.shape, 2))(sequence_length=3)


def test_scheduler_config_round_trip(tmp_path):
    scheduler = FirstHittingScheduler(mask_schedule="polynomial", schedule_exponent=3.0, tokens_per_step=2,
                                      top_p=0.9, sampling_dtype="float32")
    scheduler.save_pretrained(tmp_path)
    again = FirstHittingScheduler.from_pretrained(tmp_path)
    assert again.config.tokens_per_step == 2 and again.mask_schedule.name == "polynomial(3)"
    assert again.sampling_dtype == torch.float32
    custom = FirstHittingScheduler(mask_schedule=lambda t: 1 - t**3)
    assert custom.config.mask_schedule == "custom"
    with pytest.raises(ValueError, match="custom mask schedule"):
        FirstHittingScheduler.from_config(custom.config)
    assert FirstHittingScheduler.from_config(custom.config, mask_schedule="cosine").mask_schedule.name == "cosine"


# ------------------------------------------------------------------------- LLaDA2Pipeline drop-in
class _LLaDAModel(torch.nn.Module):
    """The LLaDA2 model interface (input_ids, attention_mask, position_ids) -> .logits around a denoiser."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser, self.calls = denoiser, 0

    @property
    def device(self):  # what diffusers pipelines read (transformers models have it)
        return torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        from types import SimpleNamespace

        self.calls += 1
        return SimpleNamespace(logits=self.denoiser(input_ids))


def _local_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"a": 0, "b": 1, "c": 2, "[MASK]": 3, "[EOS]": 4, "[UNK]": 5, "[PAD]": 6}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, mask_token="[MASK]", eos_token="[EOS]", unk_token="[UNK]",
                                   pad_token="[PAD]")


def test_llada2_pipeline_with_first_hitting_samples_the_exact_hmm_continuation():
    """LLaDA2Pipeline (semi-autoregressive blocks) with the exact HMM as its model: with as many steps as
    block tokens, the First-Hitting scheduler unmasks one uniformly chosen token per call, so the
    continuation follows the HMM's exact conditional given the prompt (chi-square, false-alarm 1e-3)."""
    from diffusers import LLaDA2Pipeline

    model = _LLaDAModel(HMM)
    pipe = LLaDA2Pipeline(model=model, scheduler=FirstHittingScheduler(block_length=2))
    pipe.set_progress_bar_config(disable=True)
    prompt = (2, 0)
    per_step = []
    out = pipe(input_ids=torch.tensor([prompt] * 3000), gen_length=4, block_length=2, num_inference_steps=2,
               temperature=1.0, mask_token_id=MASK, output_type="seq", generator=torch.Generator().manual_seed(8),
               callback_on_step_end=lambda p, i, t, kw: per_step.append(kw["transfer_index"].sum(1)) or {},
               callback_on_step_end_tensor_inputs=["transfer_index"])
    assert model.calls == 4  # one call per generated token, no editing pass
    assert all(torch.equal(n, torch.ones(3000, dtype=torch.long)) for n in per_step)
    assert (out.sequences != MASK).all() and out.sequences.shape == (3000, 4)
    assert _exact_chisquare_pvalue(out.sequences, 4, prefix=prompt) > 1e-3


def test_llada2_pipeline_runs_with_a_local_tokenizer_and_tiny_model():
    from diffusers import LLaDA2Pipeline

    tokenizer = _local_tokenizer()
    model = _LLaDAModel(TinyMaskedTransformer(vocab_size=7, max_length=32, seed=3))
    pipe = LLaDA2Pipeline(model=model, scheduler=FirstHittingScheduler(tokens_per_step=1), tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=["a b", "c a"], gen_length=8, block_length=4, num_inference_steps=2, temperature=0.7,
               eos_early_stop=False, generator=torch.Generator().manual_seed(9))
    assert model.calls == 6  # blocks of 4 over prompt (2) + 8 new tokens: 3 blocks x 2 calls
    assert out.sequences.shape == (2, 8) and not (out.sequences == tokenizer.mask_token_id).any()
    assert len(out.texts) == 2 and all(isinstance(t, str) for t in out.texts)
