"""Command line: ``diffusers-ext demo`` (also ``python -m diffusers_ext demo``)."""

from __future__ import annotations

import argparse
import os
import sys


def _demo(args) -> int:
    from .eval.gmm_accuracy import DEFAULT_NFES, gmm_accuracy, markdown_table, save

    nfes = tuple(int(n) for n in args.nfe.split(",")) if args.nfe else DEFAULT_NFES
    result = gmm_accuracy(nfes=nfes, num_samples=args.samples)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gmm_accuracy.json")
    save(result, path)
    print("\nEndpoint RMSE against the exact ODE solution (Gaussian mixture, lower is better):\n")
    print(markdown_table(result))
    print(f"\nwritten: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffusers-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="GMM accuracy benchmark of our solvers against diffusers' built-ins")
    demo.add_argument("--nfe", default="", help="comma-separated NFEs (default 3,4,5,6,8,10,15,20)")
    demo.add_argument("--samples", type=int, default=256, help="number of noise samples")
    demo.add_argument("--out", default="results", help="output folder for the JSON result")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
