"""Resumable sweeps: schedulers x NFE x guidance x seeds on a model, one JSONL line per finished cell.

Re-running the same command skips the cells already in the JSONL file, so an interrupted sweep loses at
most the cell in flight. Metrics: ``gmm`` -> RMSE to the exact ODE endpoint; ``digits`` -> digits-cnn FID
against the digits train split.

Scheduler specs: a short name (``dpm++2m``, ``unipc``, ...), one of our classes (``DPMSolverPPScheduler``)
or ``diffusers:ClassName``, each optionally followed by ``:key=value,key=value`` config options.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..results_log import append_row, read_rows
from .gmm_accuracy import make_scheduler

SHORT_NAMES = {
    "dpm++2m": ("DPMSolverPPScheduler", {}),
    "dpm++3m": ("DPMSolverPPScheduler", {"solver_order": 3}),
    "dpm++3s": ("DPMSolverPPScheduler", {"solver_order": 3, "singlestep": True}),
    "unipc": ("UniPCScheduler", {}),
    "unipc3": ("UniPCScheduler", {"solver_order": 3}),
    "deis": ("DEISScheduler", {}),
    "ipndm": ("DEISScheduler", {"solver_type": "ipndm", "solver_order": 4}),
}
MODELS = ("digits", "gmm")


@dataclass(frozen=True)
class Cell:
    scheduler: str
    nfe: int
    guidance: float
    seed: int

    def key(self) -> str:
        return json.dumps([self.scheduler, self.nfe, self.guidance, self.seed])


def parse_scheduler(spec: str) -> tuple[str, dict]:
    """``name[:k=v,...]`` -> (class path, config overrides); raises ValueError naming the valid names."""
    if spec.startswith("diffusers:"):
        parts = spec.split(":", 2)
        head, options = "diffusers:" + parts[1], parts[2] if len(parts) > 2 else ""
    else:
        head, _, options = spec.partition(":")
    if head in SHORT_NAMES:
        path, overrides = SHORT_NAMES[head][0], dict(SHORT_NAMES[head][1])
    else:
        path, overrides = head, {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    try:
        make_scheduler(path, overrides)
    except ValueError as err:
        raise ValueError(f"Unknown scheduler {spec!r}: use one of {', '.join(SHORT_NAMES)}, one of our scheduler "
                         f"classes, or diffusers:ClassName ({err})") from None
    return path, overrides


def load_done(path: Path) -> dict[str, dict]:
    """Finished cells of a JSONL results file (a torn last line from a killed run is ignored)."""
    return {Cell(r["scheduler"], r["nfe"], r["guidance"], r["seed"]).key(): r for r in read_rows(path)}


class GMMMetric:
    name = "rmse"

    def __init__(self, num_samples: int):
        from ..models.gmm import GaussianMixtureDenoiser

        self.model = GaussianMixtureDenoiser()
        self.num_samples = num_samples
        self._refs = {}

    def __call__(self, scheduler, cell: Cell) -> float:
        from .gmm_accuracy import sample_with

        g = torch.Generator().manual_seed(cell.seed)
        noise = torch.randn(self.num_samples, 2, 4, 4, generator=g, dtype=torch.float64)
        if cell.seed not in self._refs:
            self._refs[cell.seed] = self.model.ode_endpoint(noise, t_start=999.0)
        out = sample_with(scheduler, self.model, noise.float(), cell.nfe).double()
        return float((out - self._refs[cell.seed]).pow(2).mean().sqrt())


def _distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group (gloo on CPU) under torchrun / accelerate launch."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


class DigitsMetric:
    """digits-cnn FID of one cell. Under several processes each rank samples a share of the cell's noises
    (all drawn from the cell's seed, so the samples do not depend on the process count), extracts their
    features, and rank 0 gathers them in sample order before computing the statistics."""

    name = "fid"

    def __init__(self, num_samples: int, cache_dir):
        from ..models.digits import load_digits, load_pipeline, to_uint8
        from .fid import statistics

        self.pipe = load_pipeline()
        self.num_samples = num_samples
        train, _ = load_digits("train")
        self.reference = statistics(to_uint8(train), cache_dir=cache_dir)

    def __call__(self, scheduler, cell: Cell) -> float:
        from torch_fidelity.metric_fid import fid_features_to_statistics

        from ..models.digits import NUM_CLASSES
        from .fid import extract_features, fid_statistics_to_metric

        rank, world = _distributed()
        self.pipe.scheduler = scheduler
        labels = torch.arange(self.num_samples) % NUM_CLASSES
        noise = torch.randn(self.num_samples, 1, 8, 8, generator=torch.Generator().manual_seed(cell.seed))
        mine = torch.arange(rank, self.num_samples, world)
        images = self.pipe(class_labels=labels[mine], latents=noise[mine], num_inference_steps=cell.nfe,
                           guidance_scale=cell.guidance, generator=torch.Generator().manual_seed(cell.seed + rank),
                           output_type="uint8").images
        feats = torch.from_numpy(extract_features(images.cpu()))
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


def run_sweep(model: str, schedulers: list[str], nfes: list[int], guidances=(1.0,), seeds=(0,), num_samples: int = 500,
              out: str | Path = "results/sweep.jsonl", cache_dir=None, progress: bool = True, reference=None,
              extractor: str = "digits-cnn", factories: dict | None = None) -> list[dict]:
    """Run every missing cell, appending to ``out``; returns all rows (old and new) of this sweep.

    ``model``: "digits", "gmm", or a local diffusers pipeline folder (then ``reference``, a PNG folder or a
    statistics file, is required). ``factories``: extra schedulers by name, each a callable ``cell -> scheduler``
    (for schedulers whose config depends on the cell, e.g. DC ratios calibrated per NFE and guidance)."""
    is_folder = model not in MODELS
    if is_folder and not (Path(model) / "model_index.json").is_file():
        raise ValueError(f"Unknown model {model!r}; valid choices: {', '.join(MODELS)}, or a local diffusers "
                         f"pipeline folder (with model_index.json)")
    if is_folder and reference is None:
        raise ValueError("A pipeline folder needs --reference: a folder of real PNG images or a statistics file")
    nfes = [int(n) for n in nfes]
    if not nfes or min(nfes) < 1:
        raise ValueError(f"NFE list must be non-empty and positive, got {nfes}")
    factories = dict(factories or {})
    schedulers = list(schedulers) + [name for name in factories if name not in schedulers]
    if not schedulers:
        raise ValueError("at least one scheduler is needed")
    specs = {s: parse_scheduler(s) for s in schedulers if s not in factories}  # checked before any work starts
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cells = [Cell(s, n, float(g), int(seed)) for s in schedulers for g in guidances for n in nfes for seed in seeds]
    done = load_done(out)
    todo = [c for c in cells if c.key() not in done]
    rank = _distributed()[0]
    metric = PipelineMetric(model, reference, extractor, num_samples, cache_dir) if is_folder and todo else None
    for cell in tqdm(todo, desc=f"sweep {model}", disable=not progress or rank != 0):
        if metric is None:
            metric = GMMMetric(num_samples) if model == "gmm" else DigitsMetric(num_samples, cache_dir)
        if cell.scheduler in factories:
            scheduler = factories[cell.scheduler](cell)
        else:
            path, overrides = specs[cell.scheduler]
            if overrides.get("dc_cpr") is not None and overrides.get("dc_guidance_scale") is None:
                overrides = {**overrides, "dc_guidance_scale": cell.guidance}  # CPR ratios for the cell's guidance
            scheduler = make_scheduler(path, overrides)
        value = metric(scheduler, cell)
        row = {**asdict(cell), "model": model, "metric": metric.name,
               "value": value if math.isfinite(value) else None, "num_samples": num_samples}
        if rank == 0:  # one writer; every rank computed the same gathered value
            append_row(out, row)
        done[cell.key()] = row
    return [done[c.key()] for c in cells]


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


def plot(summary: list[dict], path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    guidances = sorted({r["guidance"] for r in summary})
    fig, axes = plt.subplots(1, len(guidances), figsize=(5.5 * len(guidances), 4), squeeze=False)
    for ax, g in zip(axes[0], guidances):
        for s in dict.fromkeys(r["scheduler"] for r in summary):
            pts = sorted((r["nfe"], r["mean"], r["std"]) for r in summary if r["scheduler"] == s and r["guidance"] == g)
            if pts:
                n, m, e = zip(*pts)
                ax.errorbar(n, m, yerr=e, marker="o", capsize=2, label=s)
        ax.set_xlabel("NFE (model calls)")
        ax.set_ylabel(metric)
        ax.set_yscale("log")
        ax.set_title(f"guidance {g:g}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
