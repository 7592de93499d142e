"""GMM endpoint RMSE at NFE 3-20: our solvers and diffusers' built-ins (the registry's "gmm" set) in one run.

    python bench/gmm_accuracy.py   ->  bench/results/gmm_accuracy.json (then bench/report.py updates README)

Floats are written to 6 significant digits; the file is left alone when the numbers did not change.
"""

from pathlib import Path

from results_io import write_json

from diffusers_ext.eval.gmm_accuracy import gmm_accuracy, markdown_table

if __name__ == "__main__":
    result = gmm_accuracy(num_samples=512)
    write_json(Path(__file__).resolve().parent / "results" / "gmm_accuracy.json", result)
    print(markdown_table(result))
