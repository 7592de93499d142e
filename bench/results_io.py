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

