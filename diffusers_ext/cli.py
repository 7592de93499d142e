"""Command line: ``diffusers-ext demo`` (also ``python -m diffusers_ext demo``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .registry import describe_short_names, named_set


def _demo(args) -> int:
    from .eval.gmm_accuracy import DEFAULT_NFES, gmm_accuracy, markdown_table, save
    from .eval.sweep import plot, run_sweep, summarize, summary_table
    from .optional import require_extra

    if not args.gmm_only:  # before the GMM part, not minutes later
        require_extra("eval", "the demo's digits FID sweep and plot (--gmm-only skips them)")
    nfes = tuple(int(n) for n in args.nfe.split(",")) if args.nfe else DEFAULT_NFES
    os.makedirs(args.out, exist_ok=True)
    result = gmm_accuracy(nfes=nfes, num_samples=args.samples)
    path = os.path.join(args.out, "gmm_accuracy.json")
    save(result, path)
    print("\nGMM: endpoint error against the exact ODE solution (lower is better):\n")
    print(markdown_table(result))
    if not args.gmm_only:
        jsonl = os.path.join(args.out, "digits_sweep.jsonl")
        rows = run_sweep("digits", list(named_set("demo")), [n for n in nfes if n >= 5], guidances=[1.0, 3.0],
                         seeds=[0], num_samples=args.digits_samples, out=jsonl,
                         cache_dir=os.path.join(args.out, "stats-cache"))
        summary = summarize(rows)
        plot(summary, os.path.join(args.out, "digits_sweep.png"), "digits-cnn FID")
        print("\nDigits model: digits-cnn FID against the train split (lower is better):\n")
        print(summary_table(summary))
    print(f"\nwritten: {args.out}/")
    return 0


def _scheduler_specs(args) -> list[str]:
    """``--scheduler`` (repeatable, one spec each) and ``--schedulers`` (comma list), or the default list."""
    from .registry import split_specs

    specs = list(args.scheduler or []) + (split_specs(args.schedulers) if args.schedulers else [])
    return specs or list(named_set("sweep"))


def _sweep(args) -> int:
    from pathlib import Path

    from .eval.sweep import _distributed, default_out, metric_label, plot, run_sweep, summarize, summary_table
    from .optional import require_extra

    require_extra("eval", "sweeps (FID and the plot)")  # before the sweep runs, not after it
    out = args.out or default_out(args.model)
    rows = run_sweep(args.model, _scheduler_specs(args), [int(n) for n in args.nfe.split(",") if n.strip()],
                     guidances=[float(g) for g in args.guidance.split(",")],
                     seeds=[int(s) for s in args.seeds.split(",")], num_samples=args.samples, out=out,
                     cache_dir=args.cache_dir, reference=args.reference, extractor=args.extractor)
    if _distributed()[0] != 0:
        return 0
    summary, label = summarize(rows), metric_label(rows)
    print(f"{args.model}: {label} (lower is better)\n")
    print(summary_table(summary))
    png = Path(out).with_suffix(".png")
    plot(summary, png, label)
    print(f"results: {out}  plot: {png}")
    return 0


def _fid(args) -> int:
    from .eval.fid import fid, kid_and_precision_recall

    result = fid(args.input1, args.input2, extractor=args.extractor, inception_weights=args.inception_weights,
                 cache_dir=args.cache_dir)
    if args.kid_prc:
        extra = kid_and_precision_recall(args.input1, args.input2, args.extractor, args.inception_weights)
        unbiased = extra.pop("kid_mean")  # the squared MMD is >= 0; its unbiased estimate can fall below
        result.update(kid_mean=max(unbiased, 0.0), kid_unbiased_estimate=unbiased, **extra)
    print(json.dumps(result))
    return 0


def _train_digits(args) -> int:
    from pathlib import Path

    from .models.digits import classifier, train
    from .optional import require

    require("sklearn.datasets", "train-digits (the digits data)")  # before the output folder is created
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    epochs = args.classifier_epochs if args.classifier_epochs is not None else train.classifier_epochs_for(args.steps)
    if epochs < 1:
        raise ValueError(f"--classifier-epochs must be >= 1, got {epochs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train.train_digits_unet(out, steps=args.steps, seed=args.seed)
    _, accuracy = classifier.train_classifier(out / "classifier.safetensors", epochs=epochs, seed=args.seed)
    print(json.dumps({"out": str(out), "classifier_epochs": epochs, "classifier_test_accuracy": accuracy}))
    return 0


GMM_SAMPLE_SHAPE = (2, 4, 4)  # the GMM model of calibrate-dc and tune: a 32-dimensional mixture


def _load_model(name: str, command: str):
    """The model a command runs on: the exact GMM as a callable (x, t) -> output, or a pipeline (the embedded
    digits model or a local pipeline folder)."""
    from .eval.sweep import MODELS, load_pipeline_folder

    if name == "gmm":
        from .models import GaussianMixtureDenoiser
        from .sampling import model_fn

        return model_fn(GaussianMixtureDenoiser())
    if name == "digits":
        from .models.digits import load_pipeline

        return load_pipeline()
    if name in MODELS:
        raise SystemExit(f"{command} supports digits, gmm or a pipeline folder, not {name}")
    return load_pipeline_folder(name)


def _calibrate_dc(args) -> int:
    from .eval.sweep import default_out, model_identity
    from .registry import from_config, make_scheduler, parse_spec
    from .search import calibrate_dc_grid, fit_cpr

    nfes = [int(n) for n in args.nfe.split(",") if n.strip()]
    guidances = [float(g) for g in args.guidance.split(",") if g.strip()]
    parse_spec(args.scheduler)  # a bad name or option fails before the model loads
    kwargs = {"num_samples": args.samples, "reference_steps": args.reference_steps, "iterations": args.iterations,
              "seed": args.seed}
    if args.model == "gmm" and guidances != [1.0]:
        raise SystemExit("the gmm model is unconditional: use --guidance 1")
    model = _load_model(args.model, "calibrate-dc")
    if args.model == "gmm":
        kwargs["sample_shape"], kwargs["scheduler"] = GMM_SAMPLE_SHAPE, make_scheduler(args.scheduler)
    else:
        kwargs["scheduler"] = from_config(args.scheduler, model.scheduler.config)
        if args.prompt:
            kwargs["conditioning"] = [args.prompt[i % len(args.prompt)] for i in range(args.samples)]
    model_key = model_identity(args.model)  # name or resolved path, and a fingerprint of the weights
    out = args.out or default_out(args.model, "dc_calibration")
    calibrations = calibrate_dc_grid(model, nfes, guidances, out=out, model_key=model_key, **kwargs)
    for (n, g), cal in calibrations.items():
        gain = 1.0 - sum(cal.loss_calibrated) / max(sum(cal.loss_at_one), 1e-30)
        print(json.dumps({"nfe": n, "guidance": g, "ratios": [round(r, 4) for r in cal.ratios],
                          "loss_reduction": round(gain, 4)}))
    if args.cpr_out:
        cpr = fit_cpr(calibrations)
        with open(args.cpr_out, "w") as f:
            json.dump(cpr.to_config(), f, indent=1)
        print(json.dumps({"cpr": args.cpr_out, "fit_rmse": cpr.fit_rmse, "configs": len(calibrations)}))
    return 0


def _tune(args) -> int:
    from .eval.sweep import model_identity
    from .optional import require
    from .registry import make_scheduler
    from .tuning import tune

    require("matplotlib", purpose="tune's plot")  # before any work
    kwargs = {"num_calibration": args.samples, "num_validation": args.samples, "seed": args.seed,
              "reference_steps": args.reference_steps, "refine": not args.no_refine,
              "search_schedules": args.search}
    if args.model == "gmm" and (args.guidance != 1.0 or args.prompt):
        raise SystemExit("the gmm model is unconditional: no --guidance or --prompt")
    model = _load_model(args.model, "tune")
    if args.model == "gmm":
        kwargs.update(sample_shape=GMM_SAMPLE_SHAPE, scheduler_config=make_scheduler("dpm++2m").config)
    else:
        kwargs.update(guidance_scale=args.guidance, prompts=args.prompt or None)
    out = Path(args.out)
    result = tune(model, args.nfe, out=out / "tune.jsonl", model_key=model_identity(args.model), **kwargs)
    result.save(out)
    print(result.table())
    print(json.dumps({"chosen": result.chosen, "scheduler": str(out / "scheduler"), "table": str(out / "tune.md"),
                      "plot": str(out / "tune.png"), "model_evaluations": result.model_calls,
                      "search_kept": result.search_kept,
                      "seconds": round(result.seconds, 1)}))
    return 0


def _search(args) -> int:
    import torch

    from .eval.sweep import default_out
    from .schedulers import USFScheduler
    from .search import DigitsFIDObjective, EndpointObjective, s3_search

    objective_name = args.objective or ("fid" if args.model == "digits" else "endpoint")
    if args.model == "gmm":
        from .models import GaussianMixtureDenoiser
        from .sampling import model_fn

        if objective_name != "endpoint":
            raise SystemExit("the gmm model's objective is the endpoint error (--objective endpoint)")
        model = model_fn(GaussianMixtureDenoiser())
        noise, held_out = (torch.randn(args.samples, *GMM_SAMPLE_SHAPE, generator=torch.Generator().manual_seed(s))
                           for s in (args.seed, args.seed + 1))
        objective, validation = EndpointObjective(model, noise), EndpointObjective(model, held_out)
        config = None
    elif args.model == "digits":
        if objective_name == "fid":
            objective = DigitsFIDObjective(args.samples, args.guidance, args.seed, cache_dir=args.cache_dir)
            validation = DigitsFIDObjective(args.samples, args.guidance, args.seed + 1, cache_dir=args.cache_dir)
            config = objective.config
        else:
            from .models.digits import load_pipeline
            from .search import pipeline_denoiser

            pipe = load_pipeline()
            adapter = pipeline_denoiser(pipe, args.samples, args.guidance)
            noise, held_out = (torch.randn(args.samples, *adapter.sample_shape,
                                           generator=torch.Generator().manual_seed(s))
                               for s in (args.seed, args.seed + 1))
            config = dict(pipe.scheduler.config)
            objective = EndpointObjective(adapter.model, noise, scheduler_config=config)
            validation = EndpointObjective(adapter.model, held_out, scheduler_config=config)
    else:
        raise SystemExit(f"Unknown model {args.model!r}; valid choices: digits, gmm")
    noise_schedule = USFScheduler.from_config(config or {}).noise_schedule
    out = args.out or default_out(args.model, "usf_schedule", "json")
    result = s3_search(objective, noise_schedule, args.nfe, args.budget, predictor=not args.plain,
                       archive=args.archive or default_out(args.model, "s3_archive"), seed=args.seed,
                       validation=validation, finalists=args.finalists)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result.best, f, indent=1)
    print(json.dumps({"nfe": args.nfe, "objective": objective_name, "hand_designed_best": result.seed_best_value,
                      "searched": result.best_value, "held_out": result.validation_value,
                      "hand_designed_best_held_out": result.seed_best_validation_value,
                      "model_evaluations": result.evaluations,
                      "schedules_evaluated": len(result.archive), "schedule": out}))
    return 0


def _quantize(args) -> int:
    from .models.digits import load_pipeline
    from .quant import quantize_pipeline, save_quantized, save_quantized_pipeline
    from .registry import from_config

    if args.model != "digits":
        raise SystemExit(f"--model {args.model!r}: only the embedded 'digits' model is supported by the CLI; "
                         "use diffusers_ext.quant.quantize on any torch model from Python")
    folder = args.pipeline_out
    if folder and os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise ValueError(f"--pipeline-out {folder} exists and is not an empty folder: choose a new folder")
    pipe = load_pipeline()
    pipe.scheduler = from_config(args.scheduler, pipe.scheduler.config)
    weights = tuple(w.strip() for w in args.weights.split(",")) if "," in args.weights else args.weights
    result = quantize_pipeline(pipe, weights, None if args.activations == "none" else args.activations,
                               args.rounding, iterations=args.iterations, num_inference_steps=args.nfe,
                               guidance_scale=args.guidance, num_samples=args.samples, seed=args.seed,
                               keep_8bit=tuple(args.keep_8bit), timestep_groups=args.timestep_groups,
                               weight_group_size=args.group_size)
    if folder:
        save_quantized_pipeline(pipe, folder)
    out = save_quantized(pipe.unet, args.out)
    print(json.dumps({"weights": args.weights, "activations": args.activations, "rounding": args.rounding,
                      "keep_8bit": args.keep_8bit, "timestep_groups": args.timestep_groups,
                      "group_size": args.group_size, "held_out_relative_mse": result["relative_mse"],
                      "float32_bytes": result["float32_bytes"],
                      "resident_bytes": result["resident_bytes"], "file_bytes": os.path.getsize(out),
                      "out": str(out), "pipeline_out": args.pipeline_out}))
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == "":
            return action.help
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    from . import __version__
    from .optional import MissingDependency
    from .results_log import ResultsFileBusy

    parser = argparse.ArgumentParser(prog="diffusers-ext", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter, **kw)

    demo = command("demo", "GMM accuracy and a digits FID sweep: ours against diffusers' built-ins")
    demo.add_argument("--nfe", default="", help="comma-separated NFEs (default 3,4,5,6,8,10,15,20)")
    demo.add_argument("--samples", type=int, default=256, help="number of noise samples")
    demo.add_argument("--out", default="results", help="output folder (JSON, JSONL, PNG)")
    demo.add_argument("--digits-samples", type=int, default=500, help="digits samples per sweep cell")
    demo.add_argument("--gmm-only", action="store_true", help="skip the digits sweep")
    demo.set_defaults(func=_demo)
    sweep = command("sweep", "schedulers x NFE x guidance x seeds; resumable JSONL results, table, plot",
                    epilog=f"Scheduler specs: NAME[:key=value,key=value...] where NAME is a short name, one of our "
                    f"scheduler classes (e.g. DPMSolverPPScheduler) or diffusers:ClassName. Short names: "
                    f"{describe_short_names()}. Example: --scheduler dpm++2m --scheduler "
                    f"'DPMSolverPPScheduler:solver_order=3,third_order_taylor=true'.")
    sweep.add_argument("--model", default="digits", help="digits, gmm, or a local diffusers pipeline folder")
    sweep.add_argument("--reference", default=None, help="real images (PNG folder or statistics file) for FID: "
                       "required for a pipeline folder; digits: the train split unless given")
    sweep.add_argument("--extractor", default="digits-cnn", help="FID features (digits and pipeline folders): "
                       "digits-cnn or inception-v3-compat")
    sweep.add_argument("--scheduler", action="append", default=None, metavar="SPEC",
                       help="one scheduler spec, options included (repeatable); see the list below; default: "
                       + ",".join(named_set("sweep")))
    sweep.add_argument("--schedulers", default=None, metavar="SPEC,SPEC",
                       help="comma-separated specs; an item key=value continues the previous spec's options")
    sweep.add_argument("--nfe", default="5,10,20", help="comma-separated NFEs")
    sweep.add_argument("--guidance", default="1", help="comma-separated guidance scales")
    sweep.add_argument("--seeds", default="0", help="comma-separated seeds")
    sweep.add_argument("--samples", type=int, default=500, help="samples per cell")
    sweep.add_argument("--out", default=None, help="JSONL results (default results/sweep_<model>.jsonl; the plot "
                       "next to it)")
    sweep.add_argument("--cache-dir", default="results/stats-cache", help="reference statistics cache")
    sweep.set_defaults(func=_sweep)
    fid = command("fid", "FID between two PNG folders (or a folder and a statistics file)")
    fid.add_argument("input1")
    fid.add_argument("input2")
    fid.add_argument("--extractor", default="digits-cnn", help="digits-cnn or inception-v3-compat")
    fid.add_argument("--inception-weights", default=None, help="path to torch-fidelity's Inception weights")
    fid.add_argument("--cache-dir", default=None, help="cache statistics here (keyed by data and weights hash)")
    fid.add_argument("--kid-prc", action="store_true", help="also KID and precision/recall (two image inputs); "
                     "kid_mean is max(0, kid_unbiased_estimate), as the squared MMD is never below 0")
    fid.set_defaults(func=_fid)
    train = command("train-digits", "train the embedded digits UNet and classifier (seeded)")
    train.add_argument("--out", default="digits-weights", help="output folder (pipeline + classifier.safetensors)")
    train.add_argument("--steps", type=int, default=8000, help="UNet training steps")
    train.add_argument("--classifier-epochs", type=int, default=None,
                       help="classifier epochs (default: in proportion to --steps, 60 at 8000)")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=_train_digits)
    cal = command("calibrate-dc", "DC-Solver ratios per (NFE, guidance); resumable JSONL; CPR fit")
    cal.add_argument("--model", default="digits", help="digits, gmm, or a local diffusers pipeline folder")
    cal.add_argument("--scheduler", default="DCSolverScheduler",
                     help="DCSolverScheduler, UniPCScheduler or DPMSolverPPScheduler (predictor-only), with options")
    cal.add_argument("--nfe", default="5", help="comma-separated NFEs")
    cal.add_argument("--guidance", default="1", help="comma-separated guidance scales")
    cal.add_argument("--prompt", action="append", default=[], help="prompt (repeatable; cycled over the samples)")
    cal.add_argument("--samples", type=int, default=10, help="calibration noises (and labels or prompts)")
    cal.add_argument("--reference-steps", type=int, default=200, help="steps of the reference solve")
    cal.add_argument("--iterations", type=int, default=20, help="AdamW iterations per step")
    cal.add_argument("--seed", type=int, default=0, help="seed of the calibration noises")
    cal.add_argument("--out", default=None, help="JSONL, one line per (NFE, guidance) (default "
                     "results/dc_calibration_<model>.jsonl)")
    cal.add_argument("--cpr-out", default=None, help="fit a CPR to the grid and write its config (JSON) here")
    cal.set_defaults(func=_calibrate_dc)
    tune_cmd = command("tune", "the catalogue's best scheduler for a model at one NFE, checked on held-out noise; "
                       "writes the scheduler config folder, a table and a plot; resumable")
    tune_cmd.add_argument("--model", default="digits", help="digits, gmm, or a local diffusers pipeline folder")
    tune_cmd.add_argument("--nfe", type=int, required=True, help="model calls per sample")
    tune_cmd.add_argument("--guidance", type=float, default=1.0, help="guidance scale (pipelines)")
    tune_cmd.add_argument("--prompt", action="append", default=[], help="prompt (repeatable; cycled over samples)")
    tune_cmd.add_argument("--samples", type=int, default=16, help="calibration noises, and as many held-out ones")
    tune_cmd.add_argument("--reference-steps", type=int, default=200, help="steps of the reference solve")
    tune_cmd.add_argument("--no-refine", action="store_true", help="skip stage 2 (DC ratios for the winner)")
    tune_cmd.add_argument("--search", type=int, default=0, metavar="N",
                          help="after stage 2: an S^3 search of N schedules seeded with the winner (default 0: off; "
                               "N <= 18 tries only the seed population)")
    tune_cmd.add_argument("--seed", type=int, default=0)
    tune_cmd.add_argument("--out", required=True, help="output folder: scheduler/, tune.md, tune.png, tune.jsonl")
    tune_cmd.set_defaults(func=_tune)
    search = command("search", "S^3 search of a USF solver schedule for one NFE; resumable archive")
    search.add_argument("--model", default="digits", help="digits or gmm")
    search.add_argument("--nfe", type=int, default=5)
    search.add_argument("--budget", type=int, default=300000, help="model evaluations (samples x calls)")
    search.add_argument("--objective", default=None, help="fid (digits) or endpoint (default: fid for digits)")
    search.add_argument("--samples", type=int, default=300, help="samples (or calibration noises) per evaluation")
    search.add_argument("--guidance", type=float, default=1.0)
    search.add_argument("--plain", action="store_true", help="plain evolution (no ranking predictor)")
    search.add_argument("--finalists", type=int, default=8, help="best schedules re-scored on held-out noise "
                        "(seed + 1; with the best hand-designed one); the best there is the result")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--archive", default=None, help="evaluated schedules (JSONL; resumes; default "
                        "results/s3_archive_<model>.jsonl)")
    search.add_argument("--out", default=None,
                        help="the best schedule (JSON; default results/usf_schedule_<model>.json)")
    search.add_argument("--cache-dir", default="results/stats-cache", help="reference statistics cache")
    search.set_defaults(func=_search)
    quant = command("quantize", "quantize the digits UNet (FP8/FP4/INT weights and activations), calibrated along "
                    "the sampling trajectory; packed safetensors")
    quant.add_argument("--model", default="digits", help="digits (Python API: any torch model)")
    quant.add_argument("--weights", default="fp8_e4m3", help="weight format (fp8_e4m3, fp4_e2m1, int8, int4, ...), "
                       "or several separated by commas to choose per layer (fp4_e2m1,fp4_e3m0,fp4_e1m2)")
    quant.add_argument("--activations", default="fp8_e4m3", help="activation format, or none")
    quant.add_argument("--rounding", default="nearest", choices=("nearest", "learned", "block"),
                       help="round to nearest, learned per layer, or learned per block (BRECQ)")
    quant.add_argument("--keep-8bit", nargs="*", default=[], metavar="LAYER",
                       help="layers kept at 8-bit weights: first, last or layer names")
    quant.add_argument("--timestep-groups", type=int, default=1, help="input scales per group of timesteps")
    quant.add_argument("--group-size", type=int, default=None,
                       help="one weight scale per at most this many input weights, groups evened out "
                       "(default: one per output channel)")
    quant.add_argument("--iterations", type=int, default=300, help="learned rounding: Adam steps per layer")
    quant.add_argument("--scheduler", default="dpm++2m", help="scheduler of the calibration trajectory")
    quant.add_argument("--nfe", type=int, default=10, help="steps of the calibration trajectory")
    quant.add_argument("--guidance", type=float, default=1.0, help="guidance scale of the calibration trajectory")
    quant.add_argument("--samples", type=int, default=64, help="calibration samples")
    quant.add_argument("--seed", type=int, default=0)
    quant.add_argument("--out", default="results/digits_quantized.safetensors")
    quant.add_argument("--pipeline-out", default=None, help="also write the whole quantized pipeline to this new "
                       "folder (diffusers_ext.quant.load_quantized_pipeline reloads it)")
    quant.set_defaults(func=_quantize)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, ResultsFileBusy, MissingDependency) as err:  # the message, no traceback
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted; finished results are saved, rerun the same command to "
              "resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
