"""Regenerate the README's result tables from bench/results/*.json (between <!-- name:start/end --> markers)."""

import json
import re
from pathlib import Path

from diffusers_ext.eval.gmm_accuracy import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def step_cost_table(result: dict) -> str:
    """The step-cost table; rows with ``threads`` (medians and min-max over runs) or the older single medians."""
    m, rows = result["machine"], result["rows"]
    latent = "x".join(map(str, result["shape"]))
    if "threads" not in rows[0]:
        return _step_cost_table_single(result, m, latent)
    lines = [f"Machine: {m.get('gpu') or m['processor'] or m['platform']}, {m.get('cpus', '?')} CPUs, torch "
             f"{m['torch']}; latent {latent}, {result['steps']} steps; median (min-max) of {rows[0]['runs']} runs, "
             "each run the median step past the warm-up, diffusers and ours alternating.", "",
             "| scheduler | dtype | threads | diffusers ms/step | ours ms/step | speedup | diffusers MB/step "
             "| ours MB/step | rel. difference |", "|---|---|---|---|---|---|---|---|---|"]

    def cell(r, key, fmt):
        return f"{r[key]:{fmt}} ({r[key + '_min']:{fmt}}-{r[key + '_max']:{fmt}})"

    for r in rows:
        lines.append(f"| {r['scheduler']} | {r['dtype']} | {r['threads']} | {cell(r, 'diffusers_step_ms', '.3f')} | "
                     f"{cell(r, 'ours_step_ms', '.3f')} | **{r['speedup']:.2f}x** ({r['speedup_min']:.2f}-"
                     f"{r['speedup_max']:.2f}) | {r['diffusers_mb_per_step']:.1f} | {r['ours_mb_per_step']:.1f} | "
                     f"{r['relative_difference']:.1e} |")
    return "\n".join(lines)


def _step_cost_table_single(result: dict, m: dict, latent: str) -> str:
    lines = [f"Machine: {m.get('gpu') or m['processor'] or m['platform']}, {m['threads']} threads, torch "
             f"{m['torch']}; latent {latent}, median over runs.", "",
             "| scheduler | dtype | diffusers ms/step | ours ms/step | speedup | diffusers MB/step | ours MB/step "
             "| rel. difference |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['scheduler']} | {r['dtype']} | {r['diffusers_step_ms']:.3f} | {r['ours_step_ms']:.3f} | "
                     f"**{r['speedup']:.2f}x** | {r['diffusers_mb_per_step']:.1f} | {r['ours_mb_per_step']:.1f} | "
                     f"{r['relative_difference']:.1e} |")
    return "\n".join(lines)


def tune_gmm_table(result: dict) -> str:
    """Tuned vs diffusers at its best per (model, NFE): held-out median per-sample error (min-max of the seed
    medians), flips and the ratio."""
    s = result["settings"]
    lines = [f"Held-out: {len(s['held_out_seeds'])} seeds x {s['per_seed']} noises against the exact ODE endpoint; "
             f"tune used {s['calibration']} calibration + {s['calibration']} validation noises of seed 0.", "",
             "| model | NFE | tuned (chosen by `tune`) | median (seed range) | flips | diffusers best (on the test) | "
             "median (seed range) | flips | ratio | preset few-step (DEIS / DPM++ / UniPC): ratio | "
             "ours default dpm++2m |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(r):
        return f"{r['median']:.3g} ({min(r['seed_medians']):.3g}-{max(r['seed_medians']):.3g})"

    for model, rows in result["models"].items():
        for nfe, row in rows.items():
            t, b = row["tuned"], row["diffusers best"]
            presets = row.get("ratio preset / diffusers best", {})
            preset = " / ".join(f"{presets[k]:.2f}x" for k in sorted(presets)) or "-"
            lines.append(f"| {model} | {nfe} | {t['scheduler']} | {cell(t)} | {t['flips']} | {b['scheduler']} | "
                         f"{cell(b)} | {b['flips']} | **{row['ratio tuned / diffusers best']:.2f}x** | {preset} | "
                         f"{row['ours default (dpm++2m)']['median']:.3g} |")
    return "\n".join(lines)


def tune_search_table(plain: dict, searched: dict) -> str:
    """tune without and with its S^3 stage (``--search``) per (model, NFE): held-out median per-sample error, flips
    and RMSE, whether the search's schedule was kept, and the ratio of the medians to diffusers' best."""
    n = searched["settings"]["search"]
    lines = [f"| model | NFE | tune | median / flips / RMSE | tune --search {n} | median / flips / RMSE | "
             "S^3 schedule kept | ratio to diffusers best: without / with |", "|---|---|---|---|---|---|---|---|"]

    def cell(r):  # None: most samples diverged
        return " / ".join("-" if r[k] is None else f"{r[k]:.3g}" for k in ("median", "flips", "rmse"))

    for model, rows in searched["models"].items():
        for nfe, row in rows.items():
            before = plain["models"][model][nfe]
            a, b = before["tuned"], row["tuned"]
            lines.append(f"| {model} | {nfe} | {a['scheduler']} | {cell(a)} | {b['scheduler']} | {cell(b)} | "
                         f"{'yes' if b.get('search_kept') else 'no'} | {before['ratio tuned / diffusers best']:.2f}x / "
                         f"**{row['ratio tuned / diffusers best']:.2f}x** |")
    return "\n".join(lines)


def tune_digits_table(result: dict) -> str:
    """Tuned vs diffusers at its best per NFE on digits: digits-cnn FID mean ± std over the held-out seeds, the
    ratio, tune's cost, and the issue's goals."""
    s, c, goals = result["settings"], result["converged"], result["goals"]
    lines = [f"digits-cnn FID against the train split, {s['samples']} samples per cell, guidance {s['guidance']:g}, "
             f"held-out seeds {', '.join(map(str, s['seeds']))} (mean ± std); tune used {s['calibration']} calibration "
             f"+ {s['calibration']} validation noises of seed 0. Converged reference ({c['scheduler'].split(':')[-1]}, "
             f"{c['steps']} steps): {c['mean']:.3g} ± {c['std']:.2g}. diffusers best: the lowest mean FID of "
             f"{len(s['diffusers_options'])} options ({', '.join(s['diffusers_options'])}).", "",
             "| NFE | tuned (chosen by `tune`) | FID | diffusers best (on the test) | FID | ratio | beyond the spread "
             "| ours default dpm++2m | tune: model calls per noise, seconds |", "|---|---|---|---|---|---|---|---|---|"]

    def fid(r):
        return f"{r['mean']:.3g} ± {r['std']:.2g}"

    for nfe, row in result["nfes"].items():
        b = row["diffusers best"]
        if "tuned" not in row:
            lines.append(f"| {nfe} | not tuned (time) | | {b['scheduler']} | {fid(b)} | | | "
                         f"{fid(row['ours default (dpm++2m)'])} | |")
            continue
        t = row["tuned"]
        refine = "" if t["refine"] else " (no DC stage)"
        lines.append(f"| {nfe} | {t['scheduler']}{refine} | {fid(t)} | {b['scheduler']} | {fid(b)} | "
                     f"**{row['ratio tuned / diffusers best']:.2f}x** | "
                     f"{'yes' if row['tuned beats diffusers best beyond the seed spread'] else 'no'} | "
                     f"{fid(row['ours default (dpm++2m)'])} | {t['tune_cost']['model_calls_per_noise']}, "
                     f"{t['tune_cost']['seconds']:.0f} |")
    def answer(v):
        return ("yes" if v else "no") if isinstance(v, bool) else ", ".join(map(str, v)) or "none"

    lines += ["", "Goals: " + "; ".join(f"({k.split(':')[0]}) {k.split(': ', 1)[1]}: {answer(v)}"
                                         for k, v in goals.items()) + "."]
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
    """bench/quantization.py's rows (later rows of a config, the run-time fill-ins, add to its first), grouped by
    weight bits: ours and the anchors side by side; a library that fails on this model or CPU says why."""
    from diffusers_ext.models.digits import make_unet
    from diffusers_ext.quant import quantizable_layers

    merged = {}
    for r in rows:
        merged.setdefault(r["config"], {}).update(r)
    weights = sum(m.weight.numel() for m in quantizable_layers(make_unet()).values())
    lines = [f"Quantized layers hold {weights:,} weights ({weights * 4 / 1024:.0f} KiB in float32). Resident: bytes of "
             "every parameter and buffer of the quantized UNet at run time (tensor subclasses by their inner "
             "tensors); CPU ms: median per UNet call on batch 64, one thread, next to fp32 in the same run.", "",
             "| model | library | W bits | rel. output MSE vs fp32 | digits FID (seeds 1-3) | file KiB "
             "| resident KiB (x fp32) | CPU ms per call (x fp32) | learned rounding kept |",
             "|---|---|---|---|---|---|---|---|---|"]

    def bits(r):
        return r.get("weight_bits") or (32 if r["config"] == "fp32" else int(re.match(r"W(\d+)", r["config"])[1]))

    for r in sorted(merged.values(), key=lambda r: -bits(r)):  # stable: file order within equal bits
        head = f"| {r['config']} | {r.get('library', 'diffusers_ext')} | {bits(r)} |"
        if "error" in r:
            lines.append(f"{head} - | not run on this CPU: {r['error']} | - | - | - | - |")
            continue
        report = r.get("report") or {}
        kept = f"{report['learned_rounding_kept']} of {report['layers']}" if "learned_rounding_kept" in report else "-"
        resident = (f"{r['resident_bytes'] / 1024:.0f} ({r['resident_bytes'] / r['float32_bytes']:.2f}x)"
                    if "resident_bytes" in r else "-")
        cpu = f"{r['cpu_ms']:.1f} ({r['cpu_ms'] / r['fp32_cpu_ms']:.2f}x)" if "cpu_ms" in r else "-"
        lines.append(f"{head} {r['relative_mse']:.2e} | {r['fid_mean']:.2f} ± {r['fid_std']:.2f} | "
                     f"{r['file_bytes'] / 1024:.0f} | {resident} | {cpu} | "
                     f"{kept if 'learned' in r['config'] else '-'} |")
    return "\n".join(lines)


GPU_GROUPS = ("correctness", "step_time", "cuda_graph", "compile", "fp8", "fhs")  # bench/gpu_check.py


def _gpu_correctness(r: dict) -> list[str]:
    kernel, theirs = r["triton_vs_torch"], r["vs_diffusers"]
    dtypes = dict.fromkeys(x["dtype"] for x in kernel)
    worst = {d: max(x["relative"] for x in kernel if x["dtype"] == d) for d in dtypes}
    return [f"- **Triton vs torch path** ({len(dict.fromkeys(x['family'] for x in kernel))} families, "
            f"{r['steps']} steps, the same inputs at every step): {sum(x['passed'] for x in kernel)} of {len(kernel)} "
            "within tolerance; worst max |diff| / max |value|: " + ", ".join(f"{d} {v:.1e}" for d, v in worst.items())
            + ".",
            "- **Loops equal diffusers'** (fp32, relative L2): "
            + ", ".join(f"{x['scheduler']} {x['relative_difference']:.1e}" for x in theirs)
            + f" ({sum(x['passed'] for x in theirs)} of {len(theirs)} below {theirs[0]['tolerance']:.0e})."]


def _gpu_step_time(r: dict) -> list[str]:
    lines = ["", "| latent | dtype | scheduler | diffusers ms/step | ours ms/step | speedup | ours MB/step "
             "| ours on the device ms | copy of those bytes ms | ours / copy | rel. difference |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['latent']} {'x'.join(map(str, x['shape']))} | {x['dtype']} | {x['scheduler']} | "
                     f"{x['diffusers_step_ms']:.3f} | {x['ours_step_ms']:.3f} | **{x['speedup']:.2f}x** | "
                     f"{x['ours_mb_per_step']:.1f} | {x['ours_device_step_ms']:.4f} | {x['copy_device_ms']:.4f} | "
                     f"{x['ours_vs_copy']:.2f} | {x['relative_difference']:.1e} |")
    goals = r["goals"]
    met = sum(x["speedup"] >= goals["speedup_at_least"] for x in r["rows"])
    near = sum(x["ours_vs_copy"] <= goals["ours_vs_copy_at_most"] for x in r["rows"])
    return [f"- **Step time**: ms/step with CUDA events after a sync (what a pipeline waits), medians; on the "
            f"device: {r['device_timing']}. {met} of {len(r['rows'])} rows at least {goals['speedup_at_least']:g}x "
            f"faster than diffusers; {near} within {goals['ours_vs_copy_at_most']:g}x of a device copy moving the same "
            "bytes.", *lines, ""]


def _gpu_cuda_graph(r: dict) -> list[str]:
    lines = []
    for x in r["rows"]:
        graphs = r.get("graph", "")
        if "ours_graph_captured" in x:
            ours = f"{x['ours_graph_loop_ms']:.2f} ms" if x["ours_graph_captured"] else x["ours_graph_error"]
            theirs = f"captured, {x['diffusers_graph_loop_ms']:.2f} ms" if x["diffusers_graph_captured"] \
                else f"not capturable ({x['diffusers_graph_error']})"
            graphs = f"in one CUDA graph: ours {ours}, diffusers {theirs}"
        lines.append(f"- **Sampling loop**, {x['scheduler']}, {x['steps']} steps, {'x'.join(map(str, x['shape']))} "
                     f"{x['dtype']}: eager ours {x['ours_eager_loop_ms']:.2f} ms, diffusers "
                     f"{x['diffusers_eager_loop_ms']:.2f} ms; host syncs per loop ours {x['ours_host_syncs_per_loop']} "
                     f"({x['ours_host_syncs_with_begin_index']} after set_begin_index(0)), diffusers "
                     f"{x['diffusers_host_syncs_per_loop']}; {graphs}.")
    return lines


def _gpu_compile(r: dict) -> list[str]:
    return [f"- **torch.compile(step, fullgraph=True)** ({x['backend']}), {x['scheduler']} {x['dtype']}: "
            f"{x['compiles_first_run']} compilations in the first run, {x['compiles_two_runs']} after two; "
            f"{x['compiled_step_ms']:.3f} ms/step compiled, {x['eager_step_ms']:.3f} eager (first run "
            f"{x['first_run_s']:.1f} s; rel. difference {x['relative_difference']:.1e})." for x in r["rows"]]


def _gpu_fp8(r: dict) -> list[str]:
    rows = r["rows"]
    lines = [f"- **FP8 W8A8 Linear** ({rows[0]['path']}; times: {r['timing']}):", "",
             "| features | tokens | FP8 rel. error | bf16 rel. error | bf16 ms | FP8 GEMM ms | W8A8 layer ms "
             "| GEMM speedup | layer speedup |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {x['features']} | {x['tokens']} | {x['fp8_relative_error']:.1e} | {x['bf16_relative_error']:.1e} | "
              f"{x['bf16_ms']:.3f} | {x['fp8_gemm_ms']:.3f} | {x['w8a8_layer_ms']:.3f} | {x['gemm_speedup']:.2f}x | "
              f"{x['layer_speedup']:.2f}x |" for x in rows]
    return [*lines, ""]


def _gpu_fhs(r: dict) -> list[str]:
    rows = {x["sampler"]: x for x in r["rows"]}
    fhs, cached, uncached = rows["fhs"], rows["mdlm-cached"], rows["mdlm-uncached"]
    return [f"- **First-Hitting vs MDLM**, vocabulary {fhs['vocab']:,}, length {fhs['length']}: FHS "
            f"{fhs['seconds_median']:.2f} s ({fhs['model_calls']} calls); MDLM {cached['steps']} steps cached "
            f"{cached['seconds_median']:.2f} s ({cached['model_calls']} calls), uncached "
            f"{uncached['seconds_median']:.2f} s: **{r['speedup_vs_mdlm_cached']:.1f}x** / "
            f"**{r['speedup_vs_mdlm_uncached']:.1f}x**."]


def gpu_check_block(results: Path, device: str = "cuda") -> str | None:
    """The step-cost-cuda block from ``bench/results/gpu_<group>_<device>.json`` (None if there are none)."""
    loaded = {g: json.loads(p.read_text()) for g in GPU_GROUPS if (p := results / f"gpu_{g}_{device}.json").exists()}
    if not loaded:
        return None
    first = next(iter(loaded.values()))
    m = first["machine"]
    lines = [f"Machine: {m.get('gpu') or m['processor'] or m['platform']}, torch {m['torch']}, CUDA {m['cuda']} "
             "(`python bench/gpu_check.py`)."]
    if first["dry_run"]:
        lines.append("**Dry run on the CPU** (tiny sizes, Triton interpreter): a check of the script, not a "
                     "measurement.")
    lines.append("")
    renderers = {"correctness": _gpu_correctness, "step_time": _gpu_step_time, "cuda_graph": _gpu_cuda_graph,
                 "compile": _gpu_compile, "fp8": _gpu_fp8, "fhs": _gpu_fhs}
    for group, result in loaded.items():
        if "error" in result:
            lines.append(f"- {group}: failed (see bench/results/gpu_{group}_{device}.json).")
        elif "skipped" in result:
            lines.append(f"- {group}: skipped, {result['skipped']}.")
        else:
            lines += renderers[group](result)
    return "\n".join(lines).rstrip()


def fill_cuda_block(readme: Path, results: Path, device: str = "cuda") -> bool:
    """Write the gpu_check results into ``readme``'s step-cost-cuda block (in place); False if none exist."""
    block = gpu_check_block(results, device)
    if block is None:
        return False
    text = readme.read_text()
    if "<!-- step-cost-cuda:start -->" not in text or "<!-- step-cost-cuda:end -->" not in text:
        raise ValueError(f"{readme} has no <!-- step-cost-cuda:start/end --> markers")
    readme.write_text(replace(text, "step-cost-cuda", block))
    return True


def replace(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def quant_peak_table(result: dict) -> str:
    """bench/quant_peak_memory.py's rows: peak memory of one pipeline call per UNet and batch, against fp32."""
    fp32 = {r["batch"]: r["peak_bytes"] for r in result["rows"] if r["config"] == "fp32"}
    lines = ["| UNet | batch | UNet resident KiB | call's allocations KiB | peak KiB (x fp32) |",
             "|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=lambda r: r["batch"]):  # stable: file order within a batch
        lines.append(f"| {r['config']} | {r['batch']} | {r['unet_resident_bytes'] / 1024:.0f} | "
                     f"{r['call_peak_bytes'] / 1024:.0f} | {r['peak_bytes'] / 1024:.0f} "
                     f"({r['peak_bytes'] / fp32[r['batch']]:.2f}x) |")
    return "\n".join(lines)


def main():
    readme = ROOT / "README.md"
    text = readme.read_text()
    results = ROOT / "bench" / "results"
    for name in ("gmm_accuracy", "dc_dualfast_gmm", "usf_gmm"):  # GMM: held-out median, flips, RMSE
        if (results / f"{name}.json").exists():
            result = json.loads((results / f"{name}.json").read_text())
            text = replace(text, name.replace("_", "-"), markdown_table(result))
    if (results / "tune_gmm.json").exists():
        text = replace(text, "tune-gmm", tune_gmm_table(json.loads((results / "tune_gmm.json").read_text())))
    if (results / "tune_gmm.json").exists() and (results / "tune_gmm_search.json").exists():
        text = replace(text, "tune-search", tune_search_table(*(json.loads((results / f"{n}.json").read_text())
                                                               for n in ("tune_gmm", "tune_gmm_search"))))
    if (results / "tune_digits.json").exists():
        text = replace(text, "tune-digits", tune_digits_table(json.loads((results / "tune_digits.json").read_text())))
    for name in ("sweep_digits", "dc_dualfast_digits", "usf_digits"):  # digits FID with diffusers' best per NFE
        if (results / f"{name}.jsonl").exists():
            from results_io import best_table, cell_rows

            text = replace(text, name.replace("_", "-"), best_table(cell_rows(results / f"{name}.jsonl")))
    from diffusers_ext.results_log import read_rows

    for name, table in (("masked_quality", masked_quality_table), ("masked_speed", masked_speed_table),
                        ("masked_entropy", masked_entropy_table)):
        if (results / f"{name}.jsonl").exists():
            text = replace(text, name.replace("_", "-"), table(read_rows(results / f"{name}.jsonl")))
    if (results / "quantization_digits.jsonl").exists():
        rows = read_rows(results / "quantization_digits.jsonl")
        text = replace(text, "quantization-digits", quantization_table(rows))
    if (results / "quant_peak_memory.json").exists():
        text = replace(text, "quant-peak-memory", quant_peak_table(json.loads((results / "quant_peak_memory.json")
                                                                            .read_text())))
    for device in ("cpu", "cuda"):
        path = results / f"step_cost_{device}.json"
        if path.exists():
            text = replace(text, f"step-cost-{device}", step_cost_table(json.loads(path.read_text())))
    if text != readme.read_text():  # an unchanged README keeps its bytes and time stamp
        readme.write_text(text)
    fill_cuda_block(readme, results)  # bench/gpu_check.py's results, where a GPU run wrote them


if __name__ == "__main__":
    main()
