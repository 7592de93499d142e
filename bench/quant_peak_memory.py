"""Peak memory of one digits pipeline call with the fp32 UNet and with quantized ones (issue 15, item 3).

    python bench/quant_peak_memory.py     # bench/results/quant_peak_memory.json; README table via report.py

Peak = resident bytes of every torch component of the pipeline + the peak of torch's allocations during the
call above them (``diffusers_ext.quant.pipeline_peak_memory``: decoded weights, activations, latents), after
one warm-up call; DPM-Solver++ 2M, 10 steps, batch 1 and 64. Memory does not depend on the rounding, so the
quantized UNets use round-to-nearest with 8 calibration samples (the layers and formats of the FID rows).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffusers_ext import DPMSolverPPScheduler
from diffusers_ext.models.digits import load_pipeline
from diffusers_ext.quant import pipeline_peak_memory, quantize_pipeline, resident_weight_bytes

OUT = Path(__file__).resolve().parent / "results" / "quant_peak_memory.json"
NFE, BATCHES = 10, (1, 64)
ROWS = {  # name: (weights, activations, quantize_pipeline keyword arguments), None for fp32
    "fp32": None,
    "W8A8 FP8 (e4m3)": ("fp8_e4m3", "fp8_e4m3", {}),
    "W4A8 FP4 (e2m1)": ("fp4_e2m1", "fp8_e4m3", {}),
    "W4 FP4 (e2m1), weight-only": ("fp4_e2m1", None, {}),
    "W4A8 FP4 (e2m1), first/last 8-bit, a scale per 32 weights": (
        "fp4_e2m1", "fp8_e4m3", {"keep_8bit": ("first", "last"), "weight_group_size": 32}),
}


def measure(name: str) -> list[dict]:
    pipe = load_pipeline(DPMSolverPPScheduler)
    pipe.set_progress_bar_config(disable=True)
    if ROWS[name] is not None:
        weights, activations, options = ROWS[name]
        quantize_pipeline(pipe, weights, activations, num_inference_steps=NFE, num_samples=8, progress=False,
                          **options)
    rows = []
    for batch in BATCHES:
        def run(batch=batch):
            return pipe(class_labels=torch.arange(batch) % 10, num_inference_steps=NFE, output_type="pt",
                        generator=torch.Generator().manual_seed(0))

        run()  # warm-up: lazily created state is not the call's
        rows.append({"config": name, "batch": batch, "unet_resident_bytes": resident_weight_bytes(pipe.unet),
                     **pipeline_peak_memory(pipe, run)})
    return rows


def main():
    torch.set_num_threads(1)
    rows = [row for name in ROWS for row in measure(name)]
    OUT.write_text(json.dumps({"nfe": NFE, "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    from report import quant_peak_table

    print(quant_peak_table(json.loads(OUT.read_text())))


if __name__ == "__main__":
    main()
