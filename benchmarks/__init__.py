"""The benchmarks: the search step's compile and step time, memory and kernels
(:mod:`benchmarks.bench_search`, :mod:`benchmarks.compile_cost`, ``gpu_bench.sh``),
bfloat16 against float32 (:mod:`benchmarks.bfloat16_search`) and the training
recipes' cost (:mod:`benchmarks.recipe_runs`).  Each is ``python -m benchmarks.<name>``
with the command line of :mod:`experiments`; results go to ``experiments/results/``
(BENCHMARKS.md)."""
