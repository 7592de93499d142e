"""Step cost: time per scheduler ``step`` and bytes moved, ours against diffusers, on the same tensors.

A 16x4x64x64 latent, fp32 and bf16, 20-step runs with fixed random model outputs (no model call), so only
the scheduler is measured. Bytes moved: every aten op a step dispatches is intercepted and the bytes of its
full-size tensor inputs and outputs are summed, views and allocations excluded
(the same counter for both). Each run's time is its median step past the warm-up; a cell runs diffusers and
ours alternately ``--repeats`` times at each of ``--threads`` (torch.set_num_threads) and reports the median
and min-max of the runs, the speedup as the median of the per-run ratios. Outputs are compared: ours must
equal diffusers' to 1e-5 relative (fp32).

A rerun with the same settings on the same machine prints the stored table (``--force`` measures again).

    python bench/step_cost.py [--device cuda] [--repeats 5] [--threads 1,2] [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler
from torch.utils._python_dispatch import TorchDispatchMode

from diffusers_ext import DPMSolverPPScheduler, UniPCScheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench modules
from report import step_cost_table  # noqa: E402
from results_io import write_json  # noqa: E402

PAIRS = {
    "DPM-Solver++ 2M": (DPMSolverMultistepScheduler, DPMSolverPPScheduler, {}),
    "DPM-Solver++ 3M": (DPMSolverMultistepScheduler, DPMSolverPPScheduler, {"solver_order": 3}),
    "UniPC bh2 (2)": (UniPCMultistepScheduler, UniPCScheduler, {}),
}
SHAPE = (16, 4, 64, 64)
STEPS = 20
WARMUP = 2  # steps left out of each run's median (first-call allocations, lower-order start)


class ByteCounter(TorchDispatchMode):
    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.bytes, self.ops = numel, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        if any(r.alias_info is not None and not r.alias_info.is_write for r in returns) or \
                func.__name__.startswith(("empty", "new_empty")):
            return out  # views and allocations move no data
        flat = list(args) + list((kwargs or {}).values()) + (list(out) if isinstance(out, (tuple, list)) else [out])
        moved = sum(t.numel() * t.element_size() for t in flat
                    if isinstance(t, torch.Tensor) and t.numel() >= self.numel)
        if moved:
            self.ops += 1
            self.bytes += moved
        return out


def run(scheduler, outputs, x, steps=STEPS, count=False):
    scheduler.set_timesteps(steps, device=x.device)
    counter = ByteCounter(x.numel()) if count else None
    times = []
    for t, out in zip(scheduler.timesteps, outputs):
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if counter:
            with counter:
                x = scheduler.step(out, t, x).prev_sample
        else:
            x = scheduler.step(out, t, x).prev_sample
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return x, times, counter


def parse_ints(text: str, name: str, minimum: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(f"{name} must be comma-separated integers >= {minimum}, got {text!r}")
    return values


def measure(settings: dict, device: torch.device) -> list[dict]:
    """One row per scheduler, dtype and thread count: per-run step times (each the median step of one loop past
    the warm-up steps), diffusers' and ours interleaved run by run; medians and min-max over the runs."""
    shape, steps = tuple(settings["shape"]), settings["steps"]
    g = torch.Generator().manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x0 = torch.randn(shape, generator=g).to(device, dtype)
        outputs = [torch.randn(shape, generator=g).to(device, dtype) for _ in range(steps)]
        for name, (theirs_cls, ours_cls, kw) in PAIRS.items():
            classes = {"diffusers": theirs_cls, "ours": ours_cls}
            common = {"scheduler": name, "dtype": str(dtype).replace("torch.", ""), "device": str(device)}
            finals, counted = {}, {}
            for label, cls in classes.items():
                finals[label], _, counter = run(cls(**kw), outputs, x0, steps, count=True)
                counted[f"{label}_mb_per_step"] = counter.bytes / steps / 2**20
                counted[f"{label}_ops_per_step"] = counter.ops / steps
            a, b = finals["diffusers"].float(), finals["ours"].float()
            common["relative_difference"] = float((a - b).norm() / a.norm())
            for threads in settings["threads"]:
                torch.set_num_threads(threads)
                runs = {label: [] for label in classes}
                for _ in range(settings["repeats"]):
                    for label, cls in classes.items():
                        _, times, _ = run(cls(**kw), outputs, x0, steps)
                        runs[label].append(1e3 * statistics.median(times[WARMUP:]))
                row = {**common, "threads": threads, "runs": settings["repeats"], **counted}
                for label, ms in runs.items():
                    row.update(spread(f"{label}_step_ms", ms))
                row.update(spread("speedup", [d / o for d, o in zip(runs["diffusers"], runs["ours"])]))
                row["bytes_ratio"] = row["diffusers_mb_per_step"] / row["ours_mb_per_step"]
                rows.append(row)
    return rows


def spread(key: str, values: list[float]) -> dict:
    return {key: statistics.median(values), f"{key}_min": min(values), f"{key}_max": max(values)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=lambda s: parse_ints(s, "--repeats", 1)[0], default=5,
                        help="timed runs per cell (median and min-max reported)")
    parser.add_argument("--threads", type=lambda s: parse_ints(s, "--threads", 1), default=[1, 2],
                        help="torch thread counts, comma-separated")
    parser.add_argument("--shape", type=lambda s: parse_ints(s, "--shape", 1), default=list(SHAPE))
    parser.add_argument("--steps", type=lambda s: parse_ints(s, "--steps", WARMUP + 1)[0], default=STEPS)
    parser.add_argument("--out", default=None, help="default bench/results/step_cost_<device>.json")
    parser.add_argument("--force", action="store_true", help="measure again even if --out holds these settings")
    args = parser.parse_args()
    device = torch.device(args.device)
    settings = {"shape": args.shape, "steps": args.steps, "repeats": args.repeats, "threads": args.threads}
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
               "torch": torch.__version__}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"step_cost_{device.type}.json")
    old = json.loads(out.read_text()) if out.is_file() else {}
    if not args.force and old.get("settings") == settings and old.get("machine") == machine:
        print(f"cached: {out} holds these settings on this machine (--force to measure again)")
        result = old
    else:
        result = {"benchmark": "step_cost", "shape": args.shape, "steps": args.steps, "settings": settings,
                  "machine": machine, "rows": measure(settings, device)}
        write_json(out, result)
    print(step_cost_table(result))


if __name__ == "__main__":
    main()
