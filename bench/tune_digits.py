"""Tuned vs diffusers at its best on the embedded digits model, digits-cnn FID per NFE (issue 14's digits goals).

For each NFE: ``diffusers_ext.tune`` chooses a scheduler for the digits pipeline on its own calibration /
validation noises (seed 0; its per-candidate rows go to ``tune_digits.tune.jsonl``, so it resumes). Then
digits-cnn FID against the train split (``eval.sweep.run_sweep``, resumable cells in ``tune_digits.jsonl``) on
held-out seeds (1, 2, 3: never seed 0) of: the tuned scheduler, every option of the registry's
``diffusers-best`` set, our default dpm++2m, and a converged reference (diffusers' DPM-Solver++ 2M at 50 steps).
"diffusers best" at an NFE is the option with the lowest mean FID over the seeds (chosen on the test seeds
themselves, which favours diffusers). Goals: (a) tuned at NFE 4 below diffusers' best at NFE 10, (b) tuned at
NFE 5 within 1.25x of the converged FID, (c) tuned beats diffusers' best beyond the seed spread
(mean + std < mean - std) at each NFE.

    python bench/tune_digits.py            # writes bench/results/tune_digits.json and tune_digits.png

``--stage tuned`` / ``--stage baselines`` run the tuned or the untuned FID cells alone (separate JSONL files, so
both can run at once); ``--tune-nfes``, ``--refine-nfes`` and ``--options`` shrink the run (the README's command
names what the committed results used). Tune's records (``tune_digits.tuned.jsonl``) keep the chosen scheduler, so
a rerun does not recompute the DC stage; the model calls of a run that resumed tune's candidates count only
the calls made in that run, and never the DC calibration's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import plot_tune_lines, save_figure, write_json  # noqa: E402

from diffusers_ext.eval.sweep import model_identity, run_sweep  # noqa: E402
from diffusers_ext.models.digits import load_pipeline  # noqa: E402
from diffusers_ext.registry import from_config, named_set  # noqa: E402
from diffusers_ext.results_log import append_row, identity, read_rows, scheduler_identity  # noqa: E402
from diffusers_ext.tuning import tune  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONVERGED = ("diffusers:DPMSolverMultistepScheduler", 50)  # the converged reference: spec, steps
DEFAULT = "dpm++2m"


def stats(rows: list[dict], label: str, nfe: int) -> dict:
    """Mean and sample std over seeds of one scheduler's FID cells at one NFE."""
    values = [r["value"] for r in rows if r["scheduler"] == label and r["nfe"] == nfe]
    v = np.array([np.nan if x is None else x for x in values], dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "seeds": values}


def beyond_spread(a: dict, b: dict) -> bool:
    """``a`` below ``b`` with the one-std bands (over seeds) apart."""
    return a["mean"] + a["std"] < b["mean"] - b["std"]


def tuned_schedulers(pipe, args, path: Path, tune_rows: Path) -> dict:
    """``tune`` at every NFE (its candidate rows in ``tune_rows``); each result (the chosen scheduler's class and
    config, cost, table) is appended to ``path`` and reused by the next run with the same settings, since tune
    recomputes its DC refinement stage."""
    done = {r["key"]: r for r in read_rows(path)}
    records = {}
    for nfe in args.tune_nfes:
        refine = args.refine_nfes is None or nfe in args.refine_nfes
        settings = {"nfe": nfe, "guidance": args.guidance, "calibration": args.calibration, "seed": 0,
                    "refine": refine, "model": model_identity("digits")}
        if args.search:  # only when on, so the records of runs without the search keep their keys
            settings["search_schedules"] = args.search
        key = identity(settings)
        if key not in done:
            result = tune(pipe, nfe, guidance_scale=args.guidance, num_calibration=args.calibration,
                          num_validation=args.calibration, seed=0, refine=refine, out=tune_rows,
                          search_schedules=args.search, progress=False)
            done[key] = {"key": key, **settings, "chosen": result.chosen, **scheduler_identity(result.scheduler),
                         "model_calls": result.model_calls, "seconds": result.seconds, "table": result.table()}
            append_row(path, done[key])
        r = records[nfe] = done[key]
        print(f"NFE {nfe}: tuned {r['chosen']} ({r['model_calls']} model calls, {r['seconds']:.0f} s)", flush=True)
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nfes", type=int, nargs="+", default=[4, 5, 6, 8, 10])
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="held-out FID seeds (never 0)")
    parser.add_argument("--samples", type=int, default=500, help="samples per FID cell")
    parser.add_argument("--calibration", type=int, default=16, help="tune's calibration and validation noises")
    parser.add_argument("--tune-nfes", type=int, nargs="*", default=None,
                        help="NFEs at which to tune (default: all of --nfes; the others get only untuned cells)")
    parser.add_argument("--refine-nfes", type=int, nargs="*", default=None,
                        help="NFEs at which tune runs its DC refinement stage (default: all)")
    parser.add_argument("--search", type=int, default=0,
                        help="tune's S^3 stage: schedules to search from the winner (default 0: off)")
    parser.add_argument("--options", nargs="*", default=None,
                        help="labels of the diffusers-best set to measure (default: all 18)")
    parser.add_argument("--stage", choices=["tuned", "baselines", "all"], default="all",
                        help="tune and the tuned FID cells, the untuned FID cells, or everything and the summary")
    parser.add_argument("--out", default=str(RESULTS / "tune_digits.json"))
    args = parser.parse_args()
    args.tune_nfes = args.nfes if args.tune_nfes is None else args.tune_nfes
    if not set(args.tune_nfes) <= set(args.nfes):
        raise ValueError(f"--tune-nfes {args.tune_nfes} must be a subset of --nfes {args.nfes}")
    if 0 in args.seeds:
        raise ValueError("seed 0 holds tune's calibration noises; held-out seeds must not include it")
    baselines = named_set("diffusers-best")
    unknown = sorted(set(args.options or []) - set(baselines))
    if unknown:
        raise ValueError(f"unknown diffusers-best labels {unknown}; valid: {list(baselines)}")
    baselines = {k: v for k, v in baselines.items() if args.options is None or k in args.options}
    out = Path(args.out)
    cells, tuned_cells, tuned_path = (out.with_suffix(x) for x in (".jsonl", ".tuned_fid.jsonl", ".tuned.jsonl"))
    common = dict(guidances=[args.guidance], seeds=args.seeds, num_samples=args.samples,
                  cache_dir=RESULTS / "stats-cache")
    start = time.perf_counter()
    if args.stage in ("tuned", "all"):
        records = tuned_schedulers(load_pipeline(), args, tuned_path, out.with_suffix(".tune.jsonl"))
        rows = run_sweep("digits", [], args.tune_nfes, factories={"tuned": lambda cell: rebuild(records[cell.nfe])},
                         out=tuned_cells, **common)
    if args.stage in ("baselines", "all"):  # the converged reference and our default first, then diffusers'
        untuned = run_sweep("digits", [CONVERGED[0]], [CONVERGED[1]], out=cells, **common)
        untuned += run_sweep("digits", [DEFAULT, *baselines.values()], args.nfes, out=cells, **common)
    print(f"FID cells: {time.perf_counter() - start:.0f} s", flush=True)
    if args.stage != "all":
        return
    rows += untuned
    converged = stats(rows, CONVERGED[0], CONVERGED[1])  # before the labels: its spec is one of diffusers' options
    label_of = {spec: label for label, spec in baselines.items()}
    for r in rows:
        r["scheduler"] = label_of.get(r["scheduler"], r["scheduler"])
    per_nfe = {}
    for nfe in args.nfes:
        row = {label: stats(rows, label, nfe) for label in baselines} | {
            "ours default (dpm++2m)": stats(rows, DEFAULT, nfe)}
        best = min(baselines, key=lambda k: row[k]["mean"])
        row["diffusers best"] = {"scheduler": best, **row[best]}
        per_nfe[str(nfe)] = row
        print(f"NFE {nfe}: {best} {row[best]['mean']:.3f} ± {row[best]['std']:.3f}")
        if nfe not in records:
            continue
        rec = records[nfe]
        row["tuned"] = {"scheduler": rec["chosen"], **stats(rows, "tuned", nfe), "refine": rec["refine"],
                        "tune_cost": {"model_calls": rec["model_calls"], "seconds": rec["seconds"],
                                      "model_calls_per_noise": rec["model_calls"] // (2 * args.calibration)},
                        "class": rec["class"], "config": rec["config"]}
        row["ratio tuned / diffusers best"] = row["tuned"]["mean"] / row[best]["mean"]
        row["tuned beats diffusers best beyond the seed spread"] = beyond_spread(row["tuned"], row[best])
        print(f"NFE {nfe}: tuned {row['tuned']['mean']:.3f} ± {row['tuned']['std']:.3f}: "
              f"x{row['ratio tuned / diffusers best']:.2f}")
    goals = {}
    if {"4", "10"} <= per_nfe.keys() and "tuned" in per_nfe["4"]:
        goals["a: tuned at NFE 4 below diffusers best at NFE 10"] = \
            per_nfe["4"]["tuned"]["mean"] < per_nfe["10"]["diffusers best"]["mean"]
    if "tuned" in per_nfe.get("5", {}):
        goals["b: tuned at NFE 5 within 1.25x of the converged FID"] = \
            per_nfe["5"]["tuned"]["mean"] <= 1.25 * converged["mean"]
    goals["c: NFEs where tuned beats diffusers best beyond the seed spread"] = \
        [int(n) for n, r in per_nfe.items() if r.get("tuned beats diffusers best beyond the seed spread")]
    print(goals)
    results = {"settings": vars(args) | {"tune_seed": 0, "fid_cells": cells.name, "tuned": tuned_path.name,
                                         "tune_rows": out.with_suffix(".tune.jsonl").name,
                                         "diffusers_options": list(baselines), "extractor": "digits-cnn",
                                         "reference": "digits train split"},
               "converged": {"scheduler": CONVERGED[0], "steps": CONVERGED[1], **converged},
               "nfes": per_nfe, "goals": goals}
    write_json(out, results)
    plot(results, out.with_suffix(".png"))


def rebuild(record: dict):
    """The tuned scheduler from its stored class and config."""
    return from_config(record["class"], record["config"])


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    nfes = plot_tune_lines(ax, results["nfes"], lambda r: r["mean"],
                           lambda r: (r["mean"] - r["std"], r["mean"] + r["std"]))
    c = results["converged"]
    ax.axhline(c["mean"], color="k", lw=0.8, label=f"diffusers DPM++ 2M, {c['steps']} steps")
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.set_xlabel("NFE (model calls)")
    ax.set_ylabel("digits-cnn FID (held-out seeds, mean ± std)")
    ax.set_title(f"digits, guidance {results['settings']['guidance']:g}: tune vs diffusers best")
    ax.legend(fontsize=8)
    save_figure(fig, path)

if __name__ == "__main__":
    main()
