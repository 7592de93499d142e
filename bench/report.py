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
    for device in ("cpu", "cuda"):
        path = results / f"step_cost_{device}.json"
        if path.exists():
            text = replace(text, f"step-cost-{device}", step_cost_table(json.loads(path.read_text())))
    readme.write_text(text)


if __name__ == "__main__":
    main()
