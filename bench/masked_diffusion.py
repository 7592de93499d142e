"""First-Hitting Sampler vs MDLM ancestral sampling: quality, wall-clock and the float32 temperature drop.

    python bench/masked_diffusion.py            # all three parts, resumable (bench/results/masked_*.jsonl)
    python bench/masked_diffusion.py --part speed --repeats 1

- quality: exact HMM (8 states, vocabulary 256, length 128): mean exact log-likelihood per token and unigram
  entropy of the samples, against exact ancestral samples of the HMM itself;
- speed: TinyMaskedTransformer (random weights, d 64, 2 layers) for vocabularies 256 / 50,257 and lengths
  128 / 1024, one sequence, FHS (k = 1) vs MDLM with 1000 steps (MDLM's sampling setting), cached and
  uncached; where 1000 MDLM steps take too long on this CPU the run uses 100 steps and the table says so;
- entropy: exact log-likelihood per token and unigram entropy of samples of a long-tailed HMM (vocabulary
  1024) against the MDLM step count, float32 vs float64 sampling (FHS as the exact reference).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from report import masked_entropy_table, masked_quality_table, masked_speed_table
from results_io import line_count, say_if_cached

from diffusers_ext.masked import FirstHittingScheduler, MaskedDiffusionPipeline, MDLMAncestralScheduler
from diffusers_ext.models.hmm import HiddenMarkovModel
from diffusers_ext.models.tiny_masked_transformer import TinyMaskedTransformer
from diffusers_ext.results_log import append_row, read_rows

RESULTS = Path(__file__).resolve().parent / "results"


def hmm_model():
    return HiddenMarkovModel.random(num_states=8, vocab_size=256, seed=0, concentration=0.3)


def unigram_entropy(tokens: np.ndarray, vocab: int) -> float:
    p = np.bincount(tokens.ravel(), minlength=vocab) / tokens.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def make_scheduler(name: str, steps: int | None, dtype: str = "float64"):
    if name.startswith("fhs"):
        return FirstHittingScheduler(tokens_per_step=int(name.split("k")[-1]) if "k" in name else 1,
                                     sampling_dtype=dtype)
    return MDLMAncestralScheduler(num_inference_steps=steps, sampling_dtype=dtype)


def run(pipe_denoiser, name, steps, batch, length, seed, dtype="float64", mask_token_id=None):
    pipe = MaskedDiffusionPipeline(pipe_denoiser, make_scheduler(name, steps, dtype))
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    out = pipe(batch_size=batch, sequence_length=length, use_cache=name != "mdlm-uncached",
               mask_token_id=mask_token_id, generator=torch.Generator().manual_seed(seed))
    return out, time.perf_counter() - start


def quality(args):
    path = RESULTS / "masked_quality.jsonl"
    done = {(r["sampler"], r["steps"]) for r in read_rows(path)}
    hmm, L, B = hmm_model(), 128, args.batch
    configs = [("data", None), ("fhs", None), ("fhs-k4", None), ("mdlm", 128), ("mdlm", 1000)]
    for name, steps in configs:
        if (name, steps) in done:
            continue
        if name == "data":  # the reference: 2000 exact samples (standard error 0.0015)
            tokens, seconds, calls = hmm.sample(2000, L, np.random.default_rng(1)), 0.0, 0
        else:
            out, seconds = run(hmm, name, steps, B, L, seed=0)
            tokens, calls = out.sequences.numpy(), out.num_model_calls
        ll = hmm.log_likelihood(tokens) / L
        append_row(path, {"sampler": name, "steps": steps, "length": L, "batch": len(tokens), "vocab": hmm.vocab_size,
                          "loglik_per_token": float(ll.mean()), "loglik_se": float(ll.std() / np.sqrt(len(ll))),
                          "unigram_entropy": unigram_entropy(tokens, hmm.vocab_size), "model_calls": calls,
                          "seconds": seconds})
        print(name, steps, f"ll/token {ll.mean():.4f}", flush=True)


def speed(args):
    path = RESULTS / "masked_speed.jsonl"
    done = {(r["sampler"], r["vocab"], r["length"]) for r in read_rows(path)}
    for vocab in (256, 50257):
        model = TinyMaskedTransformer(vocab_size=vocab, max_length=1024, seed=0)
        for length in (128, 1024):
            heavy = vocab * length > 2**24  # 1000 MDLM steps would take over half an hour on 2 cores
            steps = 100 if heavy else 1000
            for name in ("fhs", "fhs-full-logits", "mdlm-cached", "mdlm-uncached"):
                if (name, vocab, length) in done:
                    continue
                denoiser = (lambda x, m=model: m(x)) if name == "fhs-full-logits" else model
                repeats = 1 if (heavy or (vocab > 256 and name.startswith("mdlm"))) else args.repeats
                with torch.no_grad():  # warm-up (first-call allocations), not timed
                    run(denoiser, "fhs", None, 1, 8, seed=0, mask_token_id=model.mask_id)
                times, calls = [], None
                for r in range(repeats):
                    with torch.no_grad():
                        out, seconds = run(denoiser, "fhs" if name.startswith("fhs") else name, steps, 1, length,
                                           seed=r, mask_token_id=model.mask_id)
                    times.append(seconds)
                    calls = out.num_model_calls
                append_row(path, {"sampler": name, "vocab": vocab, "length": length,
                                  "steps": None if name.startswith("fhs") else steps, "model_calls": calls,
                                  "seconds_median": statistics.median(times), "repeats": repeats,
                                  "threads": torch.get_num_threads(), "processor": platform.processor()})
                print(name, vocab, length, f"{statistics.median(times):.2f}s", calls, flush=True)


def entropy(args):
    path = RESULTS / "masked_entropy.jsonl"
    done = {(r["sampler"], r["steps"], r["dtype"]) for r in read_rows(path)}
    # a longer-tailed HMM (vocabulary 1024, Dirichlet 0.1 emissions): 4.5% of the emission mass lies below
    # the float32 Gumbel limit e^-16.6 x N at N = 10,000 steps
    hmm, L, B = HiddenMarkovModel.random(num_states=8, vocab_size=1024, seed=0, concentration=0.1), 64, 32
    configs = [("data", None)] + [("fhs", None)] + [("mdlm", n) for n in (100, 1000, 10000)]
    for name, steps in configs:
        for dtype in ("exact",) if name == "data" else ("float64", "float32"):
            if (name, steps, dtype) in done:
                continue
            if name == "data":  # the reference: 2000 exact samples of the HMM
                tokens, seconds = hmm.sample(2000, L, np.random.default_rng(1)), 0.0
            else:
                out, seconds = run(hmm, name, steps, B, L, seed=1, dtype=dtype)
                tokens = out.sequences.numpy()
            ll = hmm.log_likelihood(tokens) / L
            append_row(path, {"sampler": name, "steps": steps, "dtype": dtype, "length": L, "batch": len(tokens),
                              "unigram_entropy": unigram_entropy(tokens, hmm.vocab_size),
                              "loglik_per_token": float(ll.mean()), "loglik_se": float(ll.std() / np.sqrt(len(ll))),
                              "seconds": seconds})
            print(name, steps, dtype, f"H {unigram_entropy(tokens, hmm.vocab_size):.3f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["quality", "speed", "entropy", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    tables = {quality: masked_quality_table, entropy: masked_entropy_table, speed: masked_speed_table}
    for part, table in tables.items():
        if args.part in ("all", part.__name__):
            path = RESULTS / f"masked_{part.__name__}.jsonl"
            before = {path: line_count(path)}
            part(args)
            print(table(read_rows(path)))
            say_if_cached([path], before)


if __name__ == "__main__":
    main()
