"""Writing bench results so that a rerun with the same numbers leaves the tracked files untouched.

Floats are rounded to ``SIGNIFICANT`` significant digits before writing (last-digit noise from thread
scheduling or summation order disappears), and a file whose text would not change is not rewritten.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

SIGNIFICANT = 6


def rounded(value, digits: int = SIGNIFICANT):
    """``value`` with every finite float (in dicts, lists and tuples too) rounded to ``digits`` significant
    digits; tuples become lists, as JSON writes them."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def write_json(path: str | os.PathLike, data, digits: int | None = SIGNIFICANT) -> bool:
    """Write ``data`` as indented JSON (floats rounded to ``digits`` significant digits; ``None`` keeps them
    exact) unless ``path`` already holds exactly that text. Returns whether the file was written; the write
    goes through a temporary file, so a crash never leaves a half-written result."""
    path = Path(path)
    text = json.dumps(data if digits is None else rounded(data, digits), indent=1) + "\n"
    if path.is_file() and path.read_text() == text:
        print(f"unchanged: {path}")
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    print(f"written: {path}")
    return True


def line_count(path: str | os.PathLike) -> int:
    """Lines in a JSONL results file (0 if it does not exist yet)."""
    path = Path(path)
    return len(path.read_text().splitlines()) if path.is_file() else 0


def say_if_cached(paths, before: dict) -> None:
    """Print that every result was read from the cache when none of the JSONL ``paths`` grew since
    ``before`` (``{path: line_count(path)}`` taken at the start of the run)."""
    if all(line_count(p) == before[p] for p in paths):
        print("all results cached (nothing recomputed): " + ", ".join(str(p) for p in paths))


TUNE_LINES = (("tuned", "o-"), ("diffusers best", "s--"), ("ours default (dpm++2m)", "^:"))


def plot_tune_lines(ax, rows: dict, center, band) -> list[int]:
    """The tuned / diffusers-best / our-default lines of a tune benchmark against NFE on a log axis, with a band:
    ``rows[str(nfe)][label]`` is a result, ``center(result)`` its value, ``band(result)`` its (low, high).
    Returns the NFEs."""
    nfes = [int(n) for n in rows]
    for label, style in TUNE_LINES:
        xs = [n for n in nfes if label in rows[str(n)]]
        ax.plot(xs, [center(rows[str(n)][label]) for n in xs], style, label=label)
        low, high = zip(*(band(rows[str(n)][label]) for n in xs))
        ax.fill_between(xs, low, high, alpha=0.2)
    ax.set_yscale("log")
    return nfes


def save_figure(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)



def reuse_rows(sources, out, keep) -> int:
    """Append to the JSONL ``out`` every row of the JSONL ``sources`` that ``keep(row)`` accepts and whose ``key``
    ``out`` lacks: sweep cells another benchmark already computed (a row's key hashes everything that sets its
    value, so ``run_sweep`` then reuses it). Returns how many rows were copied."""
    from diffusers_ext.results_log import append_row, read_rows

    have = {r.get("key") for r in read_rows(out)}
    copied = 0
    for source in sources:
        for row in read_rows(source):
            if "key" in row and row["key"] not in have and keep(row):
                append_row(out, row)
                have.add(row["key"])
                copied += 1
    if copied:
        print(f"{out}: reused {copied} cells of " + ", ".join(Path(s).name for s in sources))
    return copied


def cell_filter(specs, nfes, guidances, seeds, samples):
    """``keep`` for ``reuse_rows``: the rows of these scheduler specs, NFEs, guidances, seeds and sample count."""
    specs, nfes, guidances, seeds = set(specs), set(nfes), {float(g) for g in guidances}, set(seeds)
    return lambda r: (r["scheduler"] in specs and r["nfe"] in nfes and r["guidance"] in guidances
                      and r["seed"] in seeds and r["num_samples"] == samples)


def diffusers_best_rows(summary: list[dict]) -> list[dict]:
    """Per (guidance, NFE) of a sweep summary (``eval.sweep.summarize``), the row of the registry's ``diffusers-best``
    option with the lowest mean, relabelled ``gmm_accuracy.BEST`` with the option's label under ``"option"``; only
    where all the options were measured on all the seeds the options have (a cell still running is left out; the
    pick is made on the test seeds themselves, which favours diffusers)."""
    from diffusers_ext.eval.gmm_accuracy import BEST
    from diffusers_ext.registry import named_set

    label = {spec: name for name, spec in named_set("diffusers-best").items()}
    seeds = max((r["seeds"] for r in summary if r["scheduler"] in label), default=0)
    cells: dict[tuple, list[dict]] = {}
    for r in summary:
        if r["scheduler"] in label and r["seeds"] == seeds:
            cells.setdefault((r["guidance"], r["nfe"]), []).append(r)
    best = [min(rs, key=lambda r: r["mean"]) for _, rs in sorted(cells.items()) if len(rs) == len(label)]
    return [{**r, "scheduler": BEST.format(n=len(label)), "option": label[r["scheduler"]]} for r in best]


def cell_rows(path) -> list[dict]:
    """The rows of a sweep JSONL file, one per cell (scheduler label, NFE, guidance, seed), the last written winning:
    rows from before resume keys existed (an earlier run of the script) count unless a keyed row redid the cell."""
    from diffusers_ext.results_log import read_rows

    cells = {}
    for r in read_rows(path):
        cell = (r["scheduler"], r["nfe"], r["guidance"], r["seed"])
        if "key" in r or cell not in cells:
            cells[cell] = r
    return list(cells.values())


GMM_SEEDS = (1, 2, 3, 4, 5)  # the GMM tables' held-out seeds (calibrations and searches used seed 0)


def gmm_solvers(specs, factories: dict | None = None) -> dict:
    """``eval.gmm_accuracy`` solvers from sweep-style specs and factories (``cell -> scheduler``, called with a
    guidance-1 cell of each NFE)."""
    from diffusers_ext.eval.sweep import Cell
    from diffusers_ext.registry import parse_spec

    solvers = {spec: parse_spec(spec) for spec in specs}
    for name, make in (factories or {}).items():
        solvers[name] = lambda nfe, make=make, name=name: make(Cell(name, nfe, 1.0, 0))
    return solvers


def plot_gmm(result: dict, path) -> None:
    """``eval.sweep.plot`` of a ``gmm_accuracy`` result: median per-sample error against NFE, bars the std of the
    seed medians; with baselines, diffusers' best per NFE as one line."""
    import numpy as np

    from diffusers_ext.eval.gmm_accuracy import best_rows
    from diffusers_ext.eval.sweep import plot

    rows = result["rows"] + best_rows(result)
    plot([{"scheduler": r["scheduler"], "guidance": 1.0, "nfe": r["nfe"], "mean": r["median"],
           "std": float(np.std([np.inf if m is None else m for m in r["seed_medians"]]))} for r in rows],
         path, f"median per-sample error (held-out seeds {', '.join(map(str, result['seeds']))})")


OTHER_SWEEPS = ("tune_digits.jsonl", "presets_digits.jsonl", "sweep_digits.jsonl", "dc_dualfast_digits.jsonl",
                "usf_digits.jsonl")  # digits FID cells at 500 samples that the benchmarks share by key


def add_diffusers_best(nfes, guidances, sweep: dict, png) -> str:
    """Digits FID of diffusers' 18 options (the registry's ``diffusers-best`` set) at ``nfes`` x ``guidances`` into
    ``sweep["out"]`` (``run_sweep`` keywords: out, seeds, num_samples, cache_dir): cells another benchmark computed
    are copied first, and options whose cells the file already holds (rows from before resume keys) are not rerun.
    Plots the other rows and diffusers' best per NFE to ``png``; returns ``best_table`` of the file."""
    from diffusers_ext.eval.sweep import plot, run_sweep, summarize
    from diffusers_ext.registry import named_set

    out, seeds, samples = Path(sweep["out"]), sweep["seeds"], sweep["num_samples"]
    options = list(named_set("diffusers-best").values())
    reuse_rows([out.parent / name for name in OTHER_SWEEPS if name != out.name], out,
               cell_filter(options, nfes, guidances, seeds, samples))
    have = {(r["scheduler"], r["nfe"], r["guidance"], r["seed"]) for r in cell_rows(out)}
    todo = [s for s in options if any((s, n, float(g), seed) not in have for n in nfes for g in guidances
                                      for seed in seeds)]
    if todo:
        run_sweep("digits", todo, nfes, guidances, **sweep)
    rows = [r for r in cell_rows(out) if r["seed"] in seeds and r["num_samples"] == samples]
    summary = summarize(rows)
    plot([r for r in summary if r["scheduler"] not in options] + diffusers_best_rows(summary), png, "digits-cnn FID")
    return best_table(rows)


def best_table(rows: list[dict]) -> str:
    """The mean ± std table of sweep ``rows``: every scheduler that is not one of diffusers' 18 options, diffusers'
    best per NFE and guidance (where all 18 were measured on every seed) with the option below it, then the 18
    options in a collapsed block."""
    from diffusers_ext.eval.sweep import summarize, summary_table
    from diffusers_ext.registry import named_set

    label = {spec: name for name, spec in named_set("diffusers-best").items()}
    summary = summarize(rows)
    seeds = max((r["seeds"] for r in summary if r["scheduler"] in label), default=0)  # a running cell is left out
    summary = [r for r in summary if r["scheduler"] not in label or r["seeds"] == seeds]
    best = diffusers_best_rows(summary)
    nfes = sorted({r["nfe"] for r in summary})
    lines = summary_table([r for r in summary if r["scheduler"] not in label] + best).splitlines()
    for g in sorted({r["guidance"] for r in best}):
        option = {r["nfe"]: r["option"].removeprefix("diffusers ") for r in best if r["guidance"] == g}
        at = next(i for i, line in enumerate(lines) if line.startswith(f"| {best[0]['scheduler']} | {g:g} |"))
        lines.insert(at + 1, f"| ↳ option | {g:g} | " + " | ".join(option.get(n, "") for n in nfes) + " |")
    options = [{**r, "scheduler": label[r["scheduler"]]} for r in summary if r["scheduler"] in label]
    if options:
        lines += ["", f"<details><summary>diffusers' {len(label)} options</summary>", "", summary_table(options), "",
                  "</details>"]
    return "\n".join(lines)
