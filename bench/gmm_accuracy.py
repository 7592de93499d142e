"""GMM endpoint RMSE at NFE 3-20: our solvers and diffusers' built-ins in one run.

    python bench/gmm_accuracy.py   ->  bench/results/gmm_accuracy.json (then bench/report.py updates README)
"""

from diffusers_ext.eval.gmm_accuracy import gmm_accuracy, markdown_table, save

if __name__ == "__main__":
    result = gmm_accuracy(num_samples=512)
    save(result, "bench/results/gmm_accuracy.json")
    print(markdown_table(result))
