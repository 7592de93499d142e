"""Regenerate the README's result tables from bench/results/*.json (between <!-- name:start/end --> markers)."""

import json
import re
from pathlib import Path

from diffusers_ext.eval.gmm_accuracy import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def step_cost_table(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m.get('gpu') or m['processor'] or m['platform']}, {m['threads']} threads, torch "
             f"{m['torch']}; latent {'x'.join(map(str, result['shape']))}, median over runs.", "",
             "| scheduler | dtype | diffusers ms/step | ours ms/step | speedup | diffusers MB/step | ours MB/step "
             "| rel. difference |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['scheduler']} | {r['dtype']} | {r['diffusers_step_ms']:.3f} | {r['ours_step_ms']:.3f} | "
                     f"**{r['speedup']:.2f}x** | {r['diffusers_mb_per_step']:.1f} | {r['ours_mb_per_step']:.1f} | "
                     f"{r['relative_difference']:.1e} |")
    return "\n".join(lines)


def masked_quality_table(rows: list[dict]) -> str:
    names = {"data": "HMM ancestral samples (truth)", "fhs": "First-Hitting", "fhs-k4": "First-Hitting, 4 tokens/call",
             "mdlm": "MDLM"}
    lines = ["| sampler | steps | model calls | log-lik / token | unigram entropy (nats) | seconds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {names.get(r['sampler'], r['sampler'])} | {r['steps'] or '-'} | {r['model_calls']} | "
                     f"{r['loglik_per_token']:.3f} ± {r['loglik_se']:.3f} | {r['unigram_entropy']:.3f} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines)


def masked_speed_table(rows: list[dict]) -> str:
    lines = ["| vocab | length | FHS s (calls) | FHS full logits s | MDLM cached s (calls) | MDLM uncached s (calls) "
             "| MDLM steps | speedup vs cached | vs uncached |", "|---|---|---|---|---|---|---|---|---|"]
    cells = {}
    for r in rows:
        cells.setdefault((r["vocab"], r["length"]), {})[r["sampler"]] = r
    for (vocab, length), c in sorted(cells.items()):
        if not {"fhs", "mdlm-cached", "mdlm-uncached"} <= set(c):
            continue
        fhs, cached, uncached = c["fhs"], c["mdlm-cached"], c["mdlm-uncached"]
        full = c.get("fhs-full-logits")
        full_s = f"{full['seconds_median']:.2f}" if full else "-"
        lines.append(f"| {vocab} | {length} | {fhs['seconds_median']:.2f} ({fhs['model_calls']}) | {full_s} | "
                     f"{cached['seconds_median']:.2f} ({cached['model_calls']}) | "
                     f"{uncached['seconds_median']:.2f} ({uncached['model_calls']}) | {cached['steps']} | "
                     f"**{cached['seconds_median'] / fhs['seconds_median']:.1f}x** | "
                     f"**{uncached['seconds_median'] / fhs['seconds_median']:.1f}x** |")
    return "\n".join(lines)


def masked_entropy_table(rows: list[dict]) -> str:
    lines = ["| sampler | steps | float64: log-lik / token | float32: log-lik / token | float64: unigram entropy "
             "| float32: unigram entropy |", "|---|---|---|---|---|---|"]
    cells = {}
    for r in rows:
        if r["sampler"] == "data":
            lines.insert(0, f"Exact HMM samples ({r['batch']} sequences): log-lik / token "
                            f"{r['loglik_per_token']:.3f} ± {r['loglik_se']:.3f}.\n")
            continue
        cells.setdefault((r["sampler"], r["steps"] or 0), {})[r["dtype"]] = r
    for (sampler, steps), c in sorted(cells.items()):
        if set(c) != {"float64", "float32"}:
            continue
        a, b = c["float64"], c["float32"]
        lines.append(f"| {'First-Hitting' if sampler == 'fhs' else 'MDLM'} | {steps or '-'} | "
                     f"{a['loglik_per_token']:.3f} ± {a['loglik_se']:.3f} | {b['loglik_per_token']:.3f} ± "
                     f"{b['loglik_se']:.3f} | {a['unigram_entropy']:.3f} | {b['unigram_entropy']:.3f} |")
    return "\n".join(lines)


def quantization_table(rows: list[dict]) -> str:
    from diffusers_ext.models.digits import make_unet
    from diffusers_ext.quant import get_format, quantizable_layers

    weights = sum(m.weight.numel() for m in quantizable_layers(make_unet()).values())
    lines = [f"Quantized layers hold {weights:,} weights ({weights * 4 / 1024:.0f} KiB in float32); the rest of the "
             "model (biases, norms, embeddings) and the per-channel scales stay float32 in the file.", "",
             "| model | rel. output MSE vs fp32 | digits FID (seeds 1-3) | weight codes KiB | file KiB "
             "| learned rounding kept |", "|---|---|---|---|---|---|"]
    for r in rows:
        spec = r["config"]
        bits = 32 if spec == "fp32" else get_format("int4" if "INT4" in spec else "int8" if "INT8" in spec
                                                     else "fp4_e2m1" if "FP4" in spec else "fp8_e4m3").bits
        report = r.get("report") or {}
        kept = f"{report['learned_rounding_kept']} of {report['layers']}" if "learned_rounding_kept" in report else "-"
        if "learned" not in spec:
            kept = "-"
        lines.append(f"| {spec} | {r['relative_mse']:.2e} | {r['fid_mean']:.2f} ± {r['fid_std']:.2f} | "
                     f"{weights * bits / 8 / 1024:.0f} | {r['file_bytes'] / 1024:.0f} | {kept} |")
    return "\n".join(lines)


def replace(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main():
    readme = ROOT / "README.md"
    text = readme.read_text()
    results = ROOT / "bench" / "results"
    if (results / "gmm_accuracy.json").exists():
        text = replace(text, "gmm-accuracy", markdown_table(json.loads((results / "gmm_accuracy.json").read_text())))
    if (results / "sweep_digits.jsonl").exists():
        from diffusers_ext.eval.sweep import load_done, summarize, summary_table

        rows = list(load_done(results / "sweep_digits.jsonl").values())
        text = replace(text, "sweep-digits", summary_table(summarize(rows)))
    for name in ("dc_dualfast_gmm", "dc_dualfast_digits", "usf_gmm", "usf_digits"):
        path = results / f"{name}.jsonl"
        if path.exists():
            from diffusers_ext.eval.sweep import load_done, summarize, summary_table

            text = replace(text, name.replace("_", "-"), summary_table(summarize(list(load_done(path).values()))))
    from diffusers_ext.results_log import read_rows

    for name, table in (("masked_quality", masked_quality_table), ("masked_speed", masked_speed_table),
                        ("masked_entropy", masked_entropy_table)):
        if (results / f"{name}.jsonl").exists():
            text = replace(text, name.replace("_", "-"), table(read_rows(results / f"{name}.jsonl")))
    if (results / "quantization_digits.jsonl").exists():
        rows = read_rows(results / "quantization_digits.jsonl")
        text = replace(text, "quantization-digits", quantization_table(rows))
    for device in ("cpu", "cuda"):
        path = results / f"step_cost_{device}.json"
        if path.exists():
            text = replace(text, f"step-cost-{device}", step_cost_table(json.loads(path.read_text())))
    readme.write_text(text)


if __name__ == "__main__":
    main()
