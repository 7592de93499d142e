"""Step cost: time per scheduler ``step`` and bytes moved, ours against diffusers, on the same tensors.

A 16x4x64x64 latent, fp32 and bf16, 20-step runs with fixed random model outputs (no model call), so only
the scheduler is measured. Bytes moved: every aten op a step dispatches is intercepted and the bytes of its
full-size tensor inputs and outputs are summed, views and allocations excluded
(the same counter for both). Times are medians over runs.
Outputs are compared: ours must equal diffusers' to 1e-5 relative (fp32).

    python bench/step_cost.py [--device cuda] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler
from torch.utils._python_dispatch import TorchDispatchMode

from diffusers_ext import DPMSolverPPScheduler, UniPCScheduler

PAIRS = {
    "DPM-Solver++ 2M": (DPMSolverMultistepScheduler, DPMSolverPPScheduler, {}),
    "DPM-Solver++ 3M": (DPMSolverMultistepScheduler, DPMSolverPPScheduler, {"solver_order": 3}),
    "UniPC bh2 (2)": (UniPCMultistepScheduler, UniPCScheduler, {}),
}
SHAPE = (16, 4, 64, 64)
STEPS = 20


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


def run(scheduler, outputs, x, count=False):
    scheduler.set_timesteps(STEPS, device=x.device)
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x0 = torch.randn(SHAPE, generator=g).to(device, dtype)
        outputs = [torch.randn(SHAPE, generator=g).to(device, dtype) for _ in range(STEPS)]
        for name, (theirs_cls, ours_cls, kw) in PAIRS.items():
            result = {}
            for label, cls in (("diffusers", theirs_cls), ("ours", ours_cls)):
                per_step = []
                for _ in range(args.repeats):
                    final, times, _ = run(cls(**kw), outputs, x0)
                    per_step.append(statistics.median(times[2:]))  # past the warm-up steps
                _, _, counter = run(cls(**kw), outputs, x0, count=True)
                result[label] = {"final": final, "step_ms": 1e3 * statistics.median(per_step),
                                 "mb_per_step": counter.bytes / STEPS / 2**20, "ops_per_step": counter.ops / STEPS}
            a, b = result["diffusers"]["final"].float(), result["ours"]["final"].float()
            rel = float((a - b).norm() / a.norm())
            row = {"scheduler": name, "dtype": str(dtype).replace("torch.", ""), "device": str(device),
                   "relative_difference": rel}
            for label in ("diffusers", "ours"):
                row.update({f"{label}_{k}": v for k, v in result[label].items() if k != "final"})
            row["speedup"] = row["diffusers_step_ms"] / row["ours_step_ms"]
            row["bytes_ratio"] = row["diffusers_mb_per_step"] / row["ours_mb_per_step"]
            rows.append(row)
            print(f"{name:16s} {row['dtype']:8s} diffusers {row['diffusers_step_ms']:7.3f} ms "
                  f"{row['diffusers_mb_per_step']:6.1f} MB | ours {row['ours_step_ms']:7.3f} ms "
                  f"{row['ours_mb_per_step']:6.1f} MB | speedup {row['speedup']:.2f}x bytes {row['bytes_ratio']:.2f}x "
                  f"| rel diff {rel:.1e}")
    machine = {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(),
               "torch": torch.__version__}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    out = Path(args.out or f"bench/results/step_cost_{device.type}.json")
    out.write_text(json.dumps({"benchmark": "step_cost", "shape": SHAPE, "steps": STEPS, "machine": machine,
                               "rows": rows}, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
