"""Masked diffusion as a diffusers drop-in: top-level exports, ``compatibles`` with diffusers'
``BlockRefinementScheduler`` (configs written to disk and loaded both ways), its loop-control contract, and
clear errors for bad logits, conflicting mask ids, out-of-vocabulary ids and bad batch sizes."""

import itertools

import numpy as np
import pytest
import torch
from diffusers import BlockRefinementScheduler

import diffusers_ext
from diffusers_ext import masked
from diffusers_ext.masked import FirstHittingScheduler, MaskedDiffusionPipeline, MDLMAncestralScheduler
from diffusers_ext.models.hmm import HiddenMarkovModel
from diffusers_ext.models.tiny_masked_transformer import TinyMaskedTransformer

HMM = HiddenMarkovModel.random(num_states=2, vocab_size=3, seed=0)  # ids 0..2, mask id 3
SCHEDULERS = {"fhs": FirstHittingScheduler, "fhs-greedy": lambda: FirstHittingScheduler(temperature=0.0),
              "fhs-k2": lambda: FirstHittingScheduler(tokens_per_step=2),
              "mdlm": lambda: MDLMAncestralScheduler(num_inference_steps=4)}


def _pipe(denoiser, scheduler=None, tokenizer=None):
    pipe = MaskedDiffusionPipeline(denoiser, scheduler or FirstHittingScheduler(), tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------ exports
def test_masked_classes_are_exported_from_the_top_level_package():
    for name in ("FirstHittingScheduler", "MDLMAncestralScheduler", "MaskedDiffusionPipeline"):
        assert getattr(diffusers_ext, name) is getattr(masked, name) and name in diffusers_ext.__all__
    assert all(hasattr(diffusers_ext, name) for name in diffusers_ext.__all__)


# ----------------------------------------------------------------------------- compatibles and configs
def test_compatibles_list_block_refinement_and_the_masked_schedulers():
    for scheduler in (FirstHittingScheduler(), MDLMAncestralScheduler()):
        assert {FirstHittingScheduler, MDLMAncestralScheduler} <= set(scheduler.compatibles)
    assert BlockRefinementScheduler in FirstHittingScheduler().compatibles
    assert BlockRefinementScheduler not in MDLMAncestralScheduler().compatibles  # it has no block protocol


def test_block_refinement_config_loads_into_first_hitting_and_back(tmp_path):
    """A LLaDA2 scheduler config on disk -> FirstHittingScheduler (block length carried, refinement keys kept
    hidden) -> saved -> BlockRefinementScheduler again with every refinement setting intact."""
    BlockRefinementScheduler(block_length=8, num_inference_steps=4, threshold=0.8, minimal_topk=2).save_pretrained(
        tmp_path / "brs")
    fhs = FirstHittingScheduler.from_pretrained(tmp_path / "brs")
    assert fhs.config.block_length == 8 and fhs.config.tokens_per_step == 1
    fhs.save_pretrained(tmp_path / "fhs")
    back = BlockRefinementScheduler.from_pretrained(tmp_path / "fhs")
    assert (back.config.block_length, back.config.num_inference_steps, back.config.threshold,
            back.config.minimal_topk) == (8, 4, 0.8, 2)


def test_first_hitting_config_loads_into_block_refinement_and_back(tmp_path):
    FirstHittingScheduler(block_length=16, tokens_per_step=2, mask_schedule="cosine", top_p=0.9).save_pretrained(
        tmp_path / "fhs")
    brs = BlockRefinementScheduler.from_pretrained(tmp_path / "fhs")
    assert brs.config.block_length == 16
    brs.save_pretrained(tmp_path / "brs")
    again = FirstHittingScheduler.from_pretrained(tmp_path / "brs")
    assert (again.config.block_length, again.config.tokens_per_step, again.config.top_p) == (16, 2, 0.9)
    assert again.mask_schedule.name == "cosine"


def test_mdlm_and_first_hitting_configs_swap_both_ways(tmp_path):
    MDLMAncestralScheduler(num_inference_steps=64, mask_schedule="cosine").save_pretrained(tmp_path / "mdlm")
    fhs = FirstHittingScheduler.from_pretrained(tmp_path / "mdlm")
    assert fhs.mask_schedule.name == "cosine"
    fhs.save_pretrained(tmp_path / "fhs")
    assert MDLMAncestralScheduler.from_pretrained(tmp_path / "fhs").num_inference_steps == 64


def test_llada2_pipeline_scheduler_swapped_by_from_config():
    from types import SimpleNamespace

    from diffusers import LLaDA2Pipeline

    class Model(torch.nn.Module):
        device = torch.device("cpu")

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return SimpleNamespace(logits=HMM(input_ids))

    pipe = LLaDA2Pipeline(model=Model(), scheduler=BlockRefinementScheduler(block_length=4))
    pipe.scheduler = FirstHittingScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(input_ids=torch.tensor([[0, 1]] * 2), gen_length=6, num_inference_steps=4, temperature=1.0,
               mask_token_id=HMM.mask_id, output_type="seq", generator=torch.Generator().manual_seed(0))
    assert out.sequences.shape == (2, 6) and (out.sequences < 3).all()


# ------------------------------------------------------------------------ check_block_should_continue
def test_check_block_should_continue_matches_block_refinement_without_editing():
    """Same answer as diffusers' BlockRefinementScheduler for every state LLaDA2Pipeline can pass without
    editing, the step bound (step_idx >= num_inference_steps with masks left: stop) included."""
    ours, ref = FirstHittingScheduler(), BlockRefinementScheduler()
    for s in (ours, ref):
        s.set_timesteps(3, block_length=6)
    none = torch.zeros(2, 6, dtype=torch.bool)
    for step_idx, masks, post_steps, finished in itertools.product(
            range(6), (True, False), (0, 1, 20), ([False, False], [True, False], [True, True])):
        args = dict(step_idx=step_idx, masks_remaining=masks, editing_enabled=False, editing_transfer_index=none,
                    post_steps=post_steps, max_post_steps=16, finished=torch.tensor(finished))
        assert ours.check_block_should_continue(**args) == ref.check_block_should_continue(**args), args
    stop = dict(masks_remaining=True, editing_enabled=False, editing_transfer_index=none, post_steps=0,
                max_post_steps=16, finished=torch.tensor([False, False]))
    assert ours.check_block_should_continue(step_idx=2, **stop)
    assert not ours.check_block_should_continue(step_idx=3, **stop)


def test_check_block_should_continue_stops_once_the_block_is_filled():
    """After the step that fills the block: stop (no confirming model call), even before the step bound;
    editing is never enabled by this sampler, so a block without masks always stops."""
    fhs = FirstHittingScheduler()
    fhs.set_timesteps(4, block_length=4)
    block = torch.tensor([[0, 3, 1, 2]])
    fhs.step(HMM(block), 0, block, mask_token_id=3, generator=torch.Generator().manual_seed(0))
    args = dict(step_idx=1, masks_remaining=True, editing_enabled=True,
                editing_transfer_index=torch.ones(1, 4, dtype=torch.bool), post_steps=0, max_post_steps=16,
                finished=torch.tensor([False]))
    assert not fhs.check_block_should_continue(**args)
    assert not fhs.check_block_should_continue(**{**args, "masks_remaining": False})


# ----------------------------------------------------------------------------------- bad logits
def _logits_with(value, mask_finite=False):
    """A denoiser (mask id 3, 4 classes incl. the mask) whose logits at masked positions are ``value``; at
    unmasked positions they are NaN (garbage there must not matter)."""

    def denoiser(tokens):
        out = torch.full((*tokens.shape, 4), float(value))
        if mask_finite:
            out[..., 3] = 0.0
        return torch.where((tokens == 3)[..., None], out, float("nan"))

    return denoiser


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("value, mask_finite, match", [
    ("nan", False, "NaN or \\+inf"), ("inf", False, "NaN or \\+inf"), ("-inf", False, "every logit is -inf"),
    ("-inf", True, "every logit is -inf")])
def test_non_finite_logits_give_a_clear_error(scheduler, value, mask_finite, match):
    with pytest.raises(ValueError, match=match):
        _pipe(_logits_with(value, mask_finite), SCHEDULERS[scheduler]())(
            tokens=torch.tensor([[0, 3, 3, 3]]), mask_token_id=3, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_minus_inf_logits_exclude_tokens_and_garbage_at_unmasked_positions_is_ignored(scheduler):
    """Only token 1 has a finite logit at masked positions (NaN elsewhere): every draw is token 1."""

    def denoiser(tokens):
        out = torch.tensor([float("-inf"), 0.0, float("-inf"), float("-inf")]).expand(*tokens.shape, 4)
        return torch.where((tokens == 3)[..., None], out, float("nan"))

    out = _pipe(denoiser, SCHEDULERS[scheduler]())(tokens=torch.tensor([[0, 3, 3, 3], [3, 2, 3, 3]]),
                                                   mask_token_id=3, use_cache=False,
                                                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.sequences, torch.tensor([[0, 1, 1, 1], [1, 2, 1, 1]]))


def test_nan_logits_under_the_block_refinement_protocol():
    fhs = FirstHittingScheduler()
    fhs.set_timesteps(2, block_length=4)
    with pytest.raises(ValueError, match="NaN"):
        fhs.step(torch.full((1, 4, 5), float("nan")), 0, torch.tensor([[0, 4, 4, 4]]), mask_token_id=4)


# ------------------------------------------------------------------------------------ mask ids
def test_a_mask_id_that_differs_from_the_denoisers_is_refused():
    with pytest.raises(ValueError, match="conflicting mask token ids.*mask_token_id argument.*2.*denoiser.mask_id.*3"):
        _pipe(HMM)(sequence_length=3, mask_token_id=2)
    tokenizer = type("Tok", (), {"mask_token_id": 0})()
    with pytest.raises(ValueError, match="conflicting mask token ids.*tokenizer"):
        _pipe(HMM, tokenizer=tokenizer)(sequence_length=3)
    with pytest.raises(ValueError, match="mask token id must be a non-negative integer"):
        _pipe(lambda x: torch.zeros(*x.shape, 3))(sequence_length=3, mask_token_id=-1)
    agreed = _pipe(HMM)(sequence_length=3, mask_token_id=3, generator=torch.Generator().manual_seed(0))
    assert agreed.sequences.shape == (1, 3) and (agreed.sequences < 3).all()

    def denoiser(tokens):
        return HMM(tokens)

    denoiser.mask_id = torch.tensor(3)  # any integer type counts; the ids are compared as integers
    assert _pipe(denoiser)(sequence_length=2, mask_token_id=np.int64(3)).sequences.shape == (1, 2)
    with pytest.raises(ValueError, match="conflicting"):
        _pipe(denoiser)(sequence_length=2, mask_token_id=np.int64(0))


# --------------------------------------------------------------------------- out-of-vocabulary ids
@pytest.mark.parametrize("where", ["tokens", "prompt_ids"])
@pytest.mark.parametrize("bad_id", [12, -1])
def test_out_of_vocabulary_ids_are_refused_before_the_model_call(where, bad_id):
    model = TinyMaskedTransformer(vocab_size=11, max_length=8)  # ids 0..10, mask id 11
    calls = []

    def denoiser(tokens, positions=None):
        calls.append(1)
        return model(tokens, positions=positions)

    denoiser.vocab_size, denoiser.mask_id, denoiser.accepts_positions = 11, 11, True
    kwargs = ({"tokens": torch.tensor([[bad_id, 11, 11]])} if where == "tokens"
              else {"prompt_ids": torch.tensor([bad_id]), "sequence_length": 3})
    with pytest.raises(ValueError, match=f"token id {bad_id} .*0\\.\\.10 or the mask id 11"):
        _pipe(denoiser)(**kwargs)
    assert not calls


def test_out_of_vocabulary_ids_without_a_declared_vocabulary_are_caught_at_the_first_output():
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        _pipe(lambda x: torch.zeros(*x.shape, 3))(tokens=torch.tensor([[5, 7, 7]]), mask_token_id=7)
    with pytest.raises(ValueError, match="token id -2"):
        _pipe(lambda x: torch.zeros(*x.shape, 3))(tokens=torch.tensor([[-2, 7, 7]]), mask_token_id=7)


def test_non_integer_token_ids_are_refused():
    with pytest.raises(TypeError, match="integer token ids.*float"):
        _pipe(HMM)(tokens=torch.tensor([[1.7, 3.0, 3.0]]))
    with pytest.raises(TypeError, match="integer token ids.*float"):
        _pipe(HMM)(prompt_ids=[0.5], sequence_length=3)
    with pytest.raises(ValueError, match="tokens must be .*\\(batch, length\\)"):
        _pipe(HMM)(tokens=torch.zeros(1, 2, 3, dtype=torch.long))


# --------------------------------------------------------------------------------------- batch size
@pytest.mark.parametrize("value", [0, -2, 1.5, True])
@pytest.mark.parametrize("name", ["batch_size", "sequence_length"])
def test_batch_size_and_length_must_be_positive_integers(name, value):
    kwargs = {"batch_size": 2, "sequence_length": 3, name: value}
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        _pipe(HMM)(**kwargs)
    assert _pipe(HMM)(**{**kwargs, name: np.int64(2)}).sequences.shape == (2, 2 if name == "sequence_length" else 3)


def test_batch_size_with_a_template():
    """A one-row template is repeated batch_size times; a template with another number of rows is refused."""
    out = _pipe(HMM)(tokens=torch.tensor([0, 3, 3]), batch_size=3, generator=torch.Generator().manual_seed(0))
    assert out.sequences.shape == (3, 3) and (out.sequences[:, 0] == 0).all() and (out.sequences < 3).all()
    with pytest.raises(ValueError, match="2 rows but batch_size=3"):
        _pipe(HMM)(tokens=torch.tensor([[0, 3, 3], [3, 3, 1]]), batch_size=3)
    assert _pipe(HMM)(tokens=torch.tensor([[0, 3, 3], [3, 3, 1]])).sequences.shape == (2, 3)


def test_empty_samples_give_clear_errors_in_the_schedulers():
    for scheduler in (FirstHittingScheduler(), MDLMAncestralScheduler()):
        with pytest.raises(ValueError, match="empty"):
            scheduler.begin(torch.zeros(0, 4, dtype=torch.long), 3)
