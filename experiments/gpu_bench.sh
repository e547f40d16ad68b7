#!/usr/bin/env bash
# All GPU measurements of the search in one call (for the device tool), ~8 minutes:
#   - bench_search: the DARTS search net at batch 64/96/256, fp32 and bf16, and
#     step time against the fraction of active experts;
#   - a short real CIFAR-10 search end to end (data from a carried train.zip).
# Usage on the device machine, from the repository root, with data/cifar10_jpeg/train.zip
# carried:  bash experiments/gpu_bench.sh "$OUT"
set -uo pipefail
out=${1:-experiments/results}
mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())" | tee -a "$out/gpu.txt"
cache=/tmp/xnas_jax_cache
python3 -m experiments.bench_search --preset darts --batch 64 --dtype float32 bfloat16 \
    --active-fraction 1.0 0.5 0.25 --out "$out/bench_gpu.jsonl"
python3 -m experiments.bench_search --preset darts --batch 96 256 --dtype float32 bfloat16 \
    --out "$out/bench_gpu.jsonl"
python3 -m experiments.bench_search --preset darts --batch 64 --compilation-cache "$cache" \
    --steps 5 --repeats 1 --out "$out/bench_gpu_cold_cache.jsonl"
python3 -m experiments.bench_search --preset darts --batch 64 --compilation-cache "$cache" \
    --steps 5 --repeats 1 --out "$out/bench_gpu_warm_cache.jsonl"
if [ -f data/cifar10_jpeg/train.zip ]; then
  start=$(date +%s)
  python3 -m xnas_jax.search --dataset image_folder --data-dir data/cifar10_jpeg/train.zip \
      --flip --crop-padding 4 --channels 16 --layers 8 --epochs 2 --batch-size 64 \
      --out-dir /tmp/search_e2e --no-progress --compilation-cache "$cache" 2>&1 | tee "$out/search_e2e.log"
  end=$(date +%s)
  cp /tmp/search_e2e/log.jsonl "$out/search_e2e_log.jsonl"
  echo "{\"e2e_seconds\": $((end - start)), \"epochs\": 2}" > "$out/search_e2e.json"
fi
