#!/usr/bin/env bash
# The GPU measurements of the search, for the device tool, in two calls that
# each fit its 10-minute limit:
#   bash experiments/gpu_bench.sh "$OUT" bench   # ~8 min: bench_search on the DARTS net
#   bash experiments/gpu_bench.sh "$OUT" e2e     # ~4 min: compile cache + real CIFAR-10 search
# "bench": batch 64 with both depthwise forms, bfloat16, active fractions 0.5
# and 0.25, batch 96 and 256. "e2e": a cold and a warm compilation cache, and a
# 2-epoch search end to end from data/cifar10_jpeg/train.zip (carried, git-ignored).
# PRESET=tiny CHANNELS=4 LAYERS=3 MAX_STEPS=3 bash experiments/gpu_bench.sh /tmp/out all
# is a quick dry run of the same script on a CPU.
set -uo pipefail
out=${1:-experiments/results}
part=${2:-all}
preset=${PRESET:-darts}
mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1
bench() { timeout "$1" python3 -m experiments.bench_search --preset "$preset" "${@:2}"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  python3 -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())"
} | tee "$out/device.txt"
if [ "$part" = bench ] || [ "$part" = all ]; then
  # Each call is bounded, so one slow compile cannot eat the whole lease.
  bench 200 --batch 64 --depthwise shifts conv --out "$out/bench_gpu.jsonl"
  bench 100 --batch 64 --dtype bfloat16 --out "$out/bench_gpu.jsonl"
  bench 100 --batch 64 --active-fraction 0.5 0.25 --out "$out/bench_gpu.jsonl"
  bench 100 --batch 96 256 --out "$out/bench_gpu.jsonl"
fi
if [ "$part" = e2e ] || [ "$part" = all ]; then
  cache=/tmp/xnas_jax_cache
  bench 100 --batch 64 --compilation-cache "$cache" --steps 5 --repeats 1 --out "$out/bench_gpu_cold_cache.jsonl"
  bench 60 --batch 64 --compilation-cache "$cache" --steps 5 --repeats 1 --out "$out/bench_gpu_warm_cache.jsonl"
  if [ -f data/cifar10_jpeg/train.zip ]; then
    start=$(date +%s)
    timeout 240 python3 -m xnas_jax.search --dataset image_folder \
        --data-dir data/cifar10_jpeg/train.zip --flip --crop-padding 4 \
        --channels "${CHANNELS:-16}" --layers "${LAYERS:-8}" --epochs 2 --batch-size 64 \
        ${MAX_STEPS:+--max-steps-per-epoch "$MAX_STEPS"} --out-dir /tmp/search_e2e \
        --no-progress --compilation-cache "$cache" 2>&1 | tee "$out/search_e2e.log"
    end=$(date +%s)
    cp /tmp/search_e2e/log.jsonl "$out/search_e2e_log.jsonl" 2>/dev/null
    echo "{\"e2e_seconds\": $((end - start)), \"epochs\": 2}" > "$out/search_e2e.json"
  else
    echo "data/cifar10_jpeg/train.zip not found: carry it for the end-to-end search" >&2
  fi
fi
