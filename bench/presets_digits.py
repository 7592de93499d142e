"""The few-step presets on the embedded digits model, against diffusers at its best, NFE 5-20 (issue 14).

digits-cnn FID against the train split, 500 samples per cell, guidance 1, held-out seeds 1-3 (resumable cells
in ``presets_digits.jsonl``). "diffusers best" per NFE is the lowest mean FID of the registry's 18
``diffusers-best`` options, picked on these seeds.

    python bench/presets_digits.py      # prints the table, writes presets_digits.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_json  # noqa: E402

from diffusers_ext.eval.sweep import run_sweep  # noqa: E402
from diffusers_ext.models.digits import load_pipeline  # noqa: E402
from diffusers_ext.registry import named_set  # noqa: E402
from diffusers_ext.schedulers import DEISScheduler, DPMSolverPPScheduler, UniPCScheduler  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NFES, SEEDS, SAMPLES = [5, 8, 10, 15, 20], [1, 2, 3], 500
PRESETS = {f"preset few-step ({cls.__name__})": cls for cls in (DEISScheduler, DPMSolverPPScheduler, UniPCScheduler)}


def main():
    config = load_pipeline().scheduler.config
    factories = {label: (lambda cell, cls=cls: cls.from_config(config, preset="few-step"))
                 for label, cls in PRESETS.items()}
    baselines = named_set("diffusers-best")
    rows = run_sweep("digits", list(baselines.values()), NFES, [1.0], SEEDS, SAMPLES,
                     RESULTS / "presets_digits.jsonl", cache_dir="results/stats-cache", factories=factories)
    label_of = {spec: label for label, spec in baselines.items()} | {p: p for p in PRESETS}
    fid: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        fid.setdefault((label_of[r["scheduler"]], r["nfe"]), []).append(r["value"])
    summary = {}
    for nfe in NFES:
        stats = {label: (float(np.mean(v)), float(np.std(v, ddof=1))) for (label, n), v in fid.items() if n == nfe}
        best = min((k for k in stats if k.startswith("diffusers")), key=lambda k: stats[k][0])
        summary[str(nfe)] = {"diffusers best": {"scheduler": best, "mean": stats[best][0], "std": stats[best][1]},
                             **{p: {"mean": stats[p][0], "std": stats[p][1],
                                    "ratio": stats[p][0] / stats[best][0]} for p in PRESETS}}
        print(f"NFE {nfe}: {best} {stats[best][0]:.3g} ± {stats[best][1]:.2g}; " + "; ".join(
            f"{p.split('(')[1][:-1]} {stats[p][0]:.3g} ± {stats[p][1]:.2g} (x{stats[p][0] / stats[best][0]:.2f})"
            for p in PRESETS), flush=True)
    write_json(RESULTS / "presets_digits.json", {"nfes": NFES, "seeds": SEEDS, "samples": SAMPLES,
                                                  "summary": summary})


if __name__ == "__main__":
    main()
