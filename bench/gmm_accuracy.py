"""GMM endpoint error at NFE 3-20: our solvers and diffusers' built-ins on their default grids (the registry's "gmm"
set: the drop-in comparison), and diffusers at its best (the 18 options of the "diffusers-best" set, the best per
NFE), over held-out seeds 1-5 x 256 noises: median per-sample error, flips and RMSE.

    python bench/gmm_accuracy.py   ->  bench/results/gmm_accuracy.json (then bench/report.py updates README)

Floats are written to 6 significant digits; the file is left alone when the numbers did not change.
"""

from pathlib import Path

from results_io import GMM_SEEDS, write_json

from diffusers_ext.eval.gmm_accuracy import gmm_accuracy, markdown_table
from diffusers_ext.registry import named_set

if __name__ == "__main__":
    result = gmm_accuracy(num_samples=256, seeds=GMM_SEEDS, baselines=named_set("diffusers-best"))
    write_json(Path(__file__).resolve().parent / "results" / "gmm_accuracy.json", result)
    print(markdown_table(result))
