"""Resumable sweeps: schedulers x NFE x guidance x seeds on a model, one JSONL line per finished cell.

Re-running the same command skips the cells already in the JSONL file, so an interrupted sweep loses at most
the cell in flight. A row is reused only when its ``key`` (a hash of everything that changes its value: model
and a fingerprint of its weight files, metric, samples, extractor and its weights, reference and a fingerprint
of its files, the scheduler's full config, NFE, guidance, seed) matches, and the file is locked while a sweep
writes it (under several processes by rank 0, which tells every rank whether it got the lock). Metrics:
``gmm`` -> RMSE to the exact ODE endpoint; ``digits`` -> FID (digits-cnn features by default) against the
digits train split.

Schedulers are named by specs (``diffusers_ext.registry``): a short name (``dpm++2m``, ``unipc``, ...), one of our
classes (``DPMSolverPPScheduler``) or ``diffusers:ClassName``, each optionally followed by ``:key=value,...``
config options.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..registry import make_scheduler, parse_spec
from ..results_log import ResultsFileBusy, append_row, exclusive, fingerprint, identity, read_rows, scheduler_identity

MODELS = ("digits", "gmm")


@dataclass(frozen=True)
class Cell:
    scheduler: str
    nfe: int
    guidance: float
    seed: int

    def key(self) -> str:
        return json.dumps([self.scheduler, self.nfe, self.guidance, self.seed])


def load_done(path: Path) -> dict[str, dict]:
    """Rows of a JSONL results file by their identity ``key`` (a torn last line from a killed run is ignored;
    rows written before keys existed are listed by their cell and never match a cell's key)."""
    done = {}
    for r in read_rows(path):
        if "key" in r:
            done[r["key"]] = r
        elif {"scheduler", "nfe", "guidance", "seed"} <= r.keys():
            done[Cell(r["scheduler"], r["nfe"], r["guidance"], r["seed"]).key()] = r
    return done


def default_out(model: str, kind: str = "sweep", ext: str = "jsonl") -> str:
    """``results/<kind>_<model>.<ext>``, e.g. ``results/sweep_gmm.jsonl`` (a pipeline folder by its name)."""
    name = model if model in MODELS else Path(model).resolve().name
    return f"results/{kind}_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.{ext}"


@functools.lru_cache(maxsize=16)
def _gmm_reference(seed: int, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The noises of a seed and their exact ODE endpoints (cached: the ODE solve dominates a small cell)."""
    from ..models.gmm import GaussianMixtureDenoiser

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(num_samples, 2, 4, 4, generator=g, dtype=torch.float64)
    return noise, GaussianMixtureDenoiser().ode_endpoint(noise, t_start=999.0)


class GMMMetric:
    name = "rmse"

    def __init__(self, num_samples: int):
        from ..models.gmm import GaussianMixtureDenoiser

        self.model = GaussianMixtureDenoiser()
        self.num_samples = num_samples

    def __call__(self, scheduler, cell: Cell) -> float:
        from .gmm_accuracy import sample_with

        noise, reference = _gmm_reference(cell.seed, self.num_samples)
        out = sample_with(scheduler, self.model, noise.float(), cell.nfe).double()
        return float((out - reference).pow(2).mean().sqrt())


def _distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group (gloo on CPU) under torchrun / accelerate launch."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())  # NCCL: one each
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


@contextlib.contextmanager
def _locked_rows(out: Path, world: int):
    """Hold ``out``'s lock (rank 0, the one writer) for the block and yield its rows by key. Under several
    processes rank 0 first broadcasts the outcome, so every rank either gets the same rows or raises the same
    error (``ResultsFileBusy`` if another process writes the file) before any collective work starts."""
    if world == 1:
        with exclusive(out):
            yield load_done(out)
        return
    import torch.distributed as dist

    with contextlib.ExitStack() as stack:
        message: list = [None]
        failure = None
        if dist.get_rank() == 0:
            try:
                stack.enter_context(exclusive(out))
                message[0] = ("ok", load_done(out))
            except Exception as err:  # noqa: BLE001 - every rank must learn of it, or the others hang
                failure = err
                message[0] = (type(err).__name__, str(err))
        dist.broadcast_object_list(message, src=0)
        status, payload = message[0]
        if failure is not None:
            raise failure
        if status == "ResultsFileBusy":
            raise ResultsFileBusy(payload)
        if status != "ok":
            raise RuntimeError(f"rank 0 could not open the results file {out}: {status}: {payload}")
        yield payload


class DigitsMetric:
    """FID of one cell (features of ``extractor``; reference: the digits train split unless given). Under
    several processes each rank samples a share of the cell's noises (all drawn from the cell's seed, so the
    samples do not depend on the process count), extracts their features, and rank 0
    gathers them in sample order before computing the statistics."""

    name = "fid"

    def __init__(self, num_samples: int, cache_dir, extractor: str = "digits-cnn", reference=None):
        from ..models.digits import load_digits, load_pipeline, to_uint8
        from .fid import statistics

        self.pipe = load_pipeline()
        self.num_samples, self.extractor = num_samples, extractor
        if reference is None:
            reference = to_uint8(load_digits("train")[0])
        self.reference = statistics(reference, extractor, cache_dir=cache_dir)

    def __call__(self, scheduler, cell: Cell) -> float:
        from ..models.digits import NUM_CLASSES
        from .fid import extract_features, fid_features_to_statistics, fid_statistics_to_metric

        rank, world = _distributed()
        self.pipe.scheduler = scheduler
        labels = torch.arange(self.num_samples) % NUM_CLASSES
        noise = torch.randn(self.num_samples, 1, 8, 8, generator=torch.Generator().manual_seed(cell.seed))
        mine = torch.arange(rank, self.num_samples, world)
        images = self.pipe(class_labels=labels[mine], latents=noise[mine], num_inference_steps=cell.nfe,
                           guidance_scale=cell.guidance, generator=torch.Generator().manual_seed(cell.seed + rank),
                           output_type="uint8").images
        feats = torch.from_numpy(extract_features(images.cpu(), self.extractor))
        if world > 1:
            import torch.distributed as dist

            shards = [None] * world
            dist.all_gather_object(shards, (mine, feats))
            feats = torch.empty(self.num_samples, feats.shape[1], dtype=feats.dtype)
            for idx, part in shards:
                feats[idx] = part
        stats = fid_features_to_statistics(feats)
        return fid_statistics_to_metric(stats, self.reference, False)["frechet_inception_distance"]


class PipelineMetric:
    """FID of a local diffusers pipeline folder (unconditional: called with ``batch_size``) against
    reference images (a PNG folder or a statistics file)."""

    name = "fid"

    def __init__(self, folder, reference, extractor: str, num_samples: int, cache_dir):
        from .fid import statistics

        self.pipe, self.num_samples, self.extractor = load_pipeline_folder(folder), num_samples, extractor
        self.reference = statistics(reference, extractor, cache_dir=cache_dir)

    def __call__(self, scheduler, cell: Cell) -> float:
        import inspect

        from .fid import fid_statistics_to_metric, statistics

        self.pipe.scheduler = scheduler
        kwargs = {"batch_size": self.num_samples, "num_inference_steps": cell.nfe,
                  "generator": torch.Generator().manual_seed(cell.seed), "output_type": "np"}
        if "guidance_scale" in inspect.signature(self.pipe.__call__).parameters:
            kwargs["guidance_scale"] = cell.guidance
        images = self.pipe(**kwargs).images
        uint8 = torch.from_numpy((images * 255).round().clip(0, 255).astype("uint8")).permute(0, 3, 1, 2)
        stats = statistics(uint8, self.extractor)
        return fid_statistics_to_metric(stats, self.reference, False)["frechet_inception_distance"]


def load_pipeline_folder(folder):
    """A local diffusers pipeline folder, loaded without network access (clear error if it does not load)."""
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any loading failure is reported the same way
        raise ValueError(f"The pipeline folder {folder} does not load: {type(err).__name__}: {err}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def model_identity(model: str) -> dict:
    """A model's name (a pipeline folder by its resolved path) and a fingerprint of its weights (the shipped
    digits files by content; a folder's files as ``results_log.fingerprint``), as resume keys name it."""
    if model == "gmm":  # closed form, defined by the code
        return {"model": "gmm"}
    if model == "digits":
        from ..models import digits

        return {"model": "digits", "model_fingerprint": fingerprint(digits.WEIGHTS_DIR, content=True)}
    return {"model": str(Path(model).resolve()), "model_fingerprint": fingerprint(model)}


def _reference_identity(reference) -> dict:
    if not isinstance(reference, (str, os.PathLike)):
        return {"reference": reference, "reference_fingerprint": None}  # None (the train split) or a tensor
    if not Path(reference).exists():
        raise FileNotFoundError(f"--reference {reference} does not exist: give a folder of PNG images or a "
                                "statistics file")
    return {"reference": str(Path(reference).resolve()), "reference_fingerprint": fingerprint(reference)}


def sweep_context(model: str, num_samples: int, extractor: str, reference) -> dict:
    """Everything besides the cell and its scheduler that changes a row's value (part of every row's key): the
    model and its weights, metric, samples, extractor (and its weights), reference (and its files)."""
    if model == "gmm":
        return {**model_identity(model), "metric": "rmse", "num_samples": num_samples, "extractor": None,
                "reference": None}
    from .fid import extractor_fingerprint

    return {**model_identity(model), "metric": "fid", "num_samples": num_samples, "extractor": extractor,
            "extractor_fingerprint": extractor_fingerprint(extractor), **_reference_identity(reference)}


def metric_label(rows: list[dict]) -> str:
    """What the rows' values are, e.g. ``digits-cnn FID`` or ``RMSE to the exact ODE endpoint``."""
    labels = {"RMSE to the exact ODE endpoint" if r["metric"] == "rmse" else f"{r.get('extractor') or 'digits-cnn'} "
              f"FID" for r in rows}
    return " / ".join(sorted(labels)) or "metric"


def run_sweep(model: str, schedulers: list[str], nfes: list[int], guidances=(1.0,), seeds=(0,), num_samples: int = 500,
              out: str | Path | None = None, cache_dir=None, progress: bool = True, reference=None,
              extractor: str = "digits-cnn", factories: dict | None = None) -> list[dict]:
    """Run every missing cell, appending to ``out``; returns all rows (old and new) of this sweep.

    ``model``: "digits", "gmm", or a local diffusers pipeline folder (then ``reference``, a PNG folder or a
    statistics file, is required; for digits it replaces the train split). ``extractor``: FID features (digits
    and pipeline folders). ``out``: default ``results/sweep_<model>.jsonl``. ``factories``: extra schedulers by
    name, each a callable ``cell -> scheduler`` (for schedulers whose config depends on the cell, e.g. DC ratios
    calibrated per NFE and guidance).

    A row is reused only if its ``key`` matches: a hash of ``sweep_context`` (the model, metric, sample count,
    extractor, reference, with fingerprints of the files behind each), the scheduler's class and full config,
    NFE, guidance and seed. The file is locked for the whole run (``ResultsFileBusy`` if another process writes
    it; on every rank of a distributed run)."""
    from .fid import EXTRACTORS

    is_folder = model not in MODELS
    if is_folder and not (Path(model) / "model_index.json").is_file():
        raise ValueError(f"Unknown model {model!r}; valid choices: {', '.join(MODELS)}, or a local diffusers "
                         f"pipeline folder (with model_index.json)")
    if is_folder and reference is None:
        raise ValueError("A pipeline folder needs --reference: a folder of real PNG images or a statistics file")
    if model == "gmm" and reference is not None:
        raise ValueError("the gmm model's metric is the RMSE to the exact ODE endpoint: it takes no --reference")
    if model != "gmm" and extractor not in EXTRACTORS:
        raise ValueError(f"Unknown extractor {extractor!r}; valid choices: {', '.join(EXTRACTORS)}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    nfes = [int(n) for n in nfes]
    if not nfes or min(nfes) < 1:
        raise ValueError(f"NFE list must be non-empty and positive, got {nfes}")
    factories = dict(factories or {})
    schedulers = list(schedulers) + [name for name in factories if name not in schedulers]
    if not schedulers:
        raise ValueError("at least one scheduler is needed")
    specs = {s: parse_spec(s) for s in schedulers if s not in factories}  # checked before any work starts
    context = sweep_context(model, num_samples, extractor, reference)

    def build(cell: Cell):
        if cell.scheduler in factories:
            return factories[cell.scheduler](cell)
        options = specs[cell.scheduler][1]
        if options.get("dc_cpr") is not None and options.get("dc_guidance_scale") is None:
            return make_scheduler(cell.scheduler, dc_guidance_scale=cell.guidance)  # CPR ratios for the guidance
        return make_scheduler(cell.scheduler)

    cells = [Cell(s, n, float(g), int(seed)) for s in schedulers for g in guidances for n in nfes for seed in seeds]
    plan = []
    for cell in cells:
        scheduler = build(cell)
        sid = scheduler_identity(scheduler)
        key = identity({**context, "scheduler": sid, "nfe": cell.nfe, "guidance": cell.guidance, "seed": cell.seed})
        plan.append((cell, scheduler, sid, key))
    out = Path(out if out is not None else default_out(model))
    rank, world = _distributed()
    with _locked_rows(out, world) as done:  # one writer: rank 0
        todo = [p for p in plan if p[3] not in done]
        metric = None
        if todo:
            metric = GMMMetric(num_samples) if model == "gmm" else DigitsMetric(
                num_samples, cache_dir, extractor, reference) if model == "digits" else PipelineMetric(
                model, reference, extractor, num_samples, cache_dir)
        for cell, scheduler, sid, key in tqdm(todo, desc=f"sweep {model}", disable=not progress or rank != 0):
            if key in done:  # another label of the same scheduler config, computed a moment ago
                continue
            value = metric(scheduler, cell)
            row = {**asdict(cell), **context, "value": value if math.isfinite(value) else None,
                   "scheduler_class": sid["class"], "scheduler_config": sid["config"], "key": key}
            if rank == 0:  # every rank computed the same gathered value
                append_row(out, row)
            done[key] = row
    return [{**done[key], **asdict(cell)} for cell, _, _, key in plan]


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (scheduler, guidance, NFE)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["scheduler"], r["guidance"], r["nfe"]), []).append(r["value"])
    summary = []
    for (s, g, n), values in groups.items():
        v = torch.tensor([x if x is not None else float("nan") for x in values], dtype=torch.float64)
        summary.append({"scheduler": s, "guidance": g, "nfe": n, "mean": float(v.mean()),
                        "std": float(v.std()) if len(v) > 1 else 0.0, "seeds": len(v)})
    return summary


def summary_table(summary: list[dict]) -> str:
    nfes = sorted({r["nfe"] for r in summary})
    lines = ["| scheduler | guidance | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|---|" + "---|" * len(nfes)]
    for s, g in dict.fromkeys((r["scheduler"], r["guidance"]) for r in summary):
        cells = {r["nfe"]: r for r in summary if r["scheduler"] == s and r["guidance"] == g}
        text = [f"{cells[n]['mean']:.3g} ± {cells[n]['std']:.2g}" if n in cells else "" for n in nfes]
        lines.append(f"| {s} | {g:g} | " + " | ".join(text) + " |")
    return "\n".join(lines)


LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def line_style(i: int) -> dict:
    """Colour, line style and marker of the i-th line: 140 distinct combinations (10 colours x 7 markers x 4
    styles), so lines past the tenth colour stay distinguishable."""
    return {"color": f"C{i % 10}", "linestyle": LINE_STYLES[i % len(LINE_STYLES)], "marker": MARKERS[i % len(MARKERS)]}


def plot(summary: list[dict], path, metric: str):
    """One panel per guidance scale: mean +- std over seeds against NFE (integer ticks); returns the figure."""
    from ..optional import require

    matplotlib = require("matplotlib", "plots (diffusers_ext.eval.sweep.plot)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    guidances = sorted({r["guidance"] for r in summary})
    names = list(dict.fromkeys(r["scheduler"] for r in summary))
    fig, axes = plt.subplots(1, len(guidances), figsize=(5.5 * len(guidances), 4), squeeze=False)
    for ax, g in zip(axes[0], guidances):
        for i, s in enumerate(names):
            pts = sorted((r["nfe"], r["mean"], r["std"]) for r in summary if r["scheduler"] == s and r["guidance"] == g)
            if pts:
                n, m, e = zip(*pts)
                ax.errorbar(n, m, yerr=e, capsize=2, label=s, **line_style(i))
        nfes = sorted({r["nfe"] for r in summary if r["guidance"] == g})
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.set_xlabel("NFE (model calls)")
        ax.set_ylabel(metric)
        ax.set_yscale("log")
        ax.set_title(f"guidance {g:g}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig
