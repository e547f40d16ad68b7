#!/usr/bin/env bash
# The GPU measurements of the search for the device tool, in two calls sized
# from the H200 session's figures (per configuration of the DARTS net: ~25 s
# to build and trace, ~85 s to compile with all 7 experts, ~30 s with 2, then
# the steps at ~250 ms each in float32 at batch 64):
#   bash benchmarks/gpu_bench.sh "$OUT" bench   # 7 configs of ~2 min; stops at 540 s
#   bash benchmarks/gpu_bench.sh "$OUT" e2e     # ~5 min
#   bash benchmarks/gpu_bench.sh "$OUT" conv    # ~3 min, if device time is left
#   bash benchmarks/gpu_bench.sh "$OUT" graphs  # ~3 min, if device time is left
#   bash benchmarks/gpu_bench.sh "$OUT" autotune  # ~3 min, if device time is left
# "bench" runs bench_search, one configuration after another, most wanted
# first: batch 64, batch 64 with --single-trace (compile time against step
# time), batch 256 (memory; and if its step costs little more than
# batch 64's, the step is bound by kernel launches: compare
# executed_instructions / step_ms), bfloat16, active fraction 0.5, batch 96;
# finally a compilation-cache load of the first program.
# "e2e" runs a CIFAR-10 search end to end from train.zip in $XNAS_DATA_DIR,
# default data/cifar10_jpeg (git-ignored, carried): data loading, compile,
# EPOCHS epochs of 390 steps, checkpoints.  "conv" times the
# grouped-convolution depthwise form at batch 64; "graphs" batch 64 with XLA
# capturing while loops too in CUDA graphs (if the step is bound by launches,
# this is the flag-only remedy to try); "autotune"
# batch 64 compiled without XLA's autotuning (its share of the compile time).
# Every part has its own timeout and writes under $OUT as it goes.  A dry run
# on a CPU:
#   PRESET=tiny CHANNELS=4 LAYERS=3 MAX_STEPS=3 STEPS=2 SHORT_STEPS=1 REPEATS=1 \
#     bash benchmarks/gpu_bench.sh /tmp/out all
set -uo pipefail
out=${1:-experiments/results/gpu}
part=${2:-all}
preset=${PRESET:-darts}
data=${XNAS_DATA_DIR:-data/cifar10_jpeg}
mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1
cache=/tmp/xnas_jax_cache
s="steps=${STEPS:-30},repeats=${REPEATS:-3}"
short="steps=${SHORT_STEPS:-10},repeats=${REPEATS:-3}"  # the slower configurations
bench() {
  timeout "$1" python3 -m benchmarks.bench_search --preset "$preset" \
      --compilation-cache "$cache" --out "$out/bench_gpu.jsonl" "${@:2}" 2>&1 \
      | grep -v cuda_timer | tail -n 20
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  nproc; python3 -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())"
} | tee "$out/device.txt"

if [ "$part" = bench ] || [ "$part" = all ]; then
  bench "${BENCH_TIMEOUT:-540}" --cache-hit --config "batch=64,$s" \
      --config "batch=64,single_trace=1,$s" --config "batch=256,$short" \
      --config "batch=64,dtype=bfloat16,$s" --config "batch=64,active_fraction=0.5,$s" \
      --config "batch=96,$short" --config "batch=64,seeds=4,$short"
fi

if [ "$part" = e2e ] || [ "$part" = all ]; then
  if [ -f "$data/train.zip" ]; then
    rm -rf /tmp/search_e2e
    start=$(date +%s.%N)
    timeout "${E2E_TIMEOUT:-300}" python3 -m xnas_jax.search --dataset image_folder \
        --data-dir "$data/train.zip" --flip --crop-padding 4 \
        --channels "${CHANNELS:-16}" --layers "${LAYERS:-8}" --epochs "${EPOCHS:-1}" \
        --batch-size 64 ${MAX_STEPS:+--max-steps-per-epoch "$MAX_STEPS"} \
        --out-dir /tmp/search_e2e --no-progress --compilation-cache "$cache" \
        > "$out/search_e2e.log" 2>&1
    status=$?
    end=$(date +%s.%N)
    tail -n 5 "$out/search_e2e.log"
    cp /tmp/search_e2e/log.jsonl "$out/search_e2e_log.jsonl" 2>/dev/null
    python3 - "$start" "$end" "$status" "$out" <<'PY'
import json, sys
start, end, status, out = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
try:
    epochs = [json.loads(line) for line in open(f"{out}/search_e2e_log.jsonl")]
except OSError:
    epochs = []
record = {"e2e_seconds": round(end - start, 1), "exit_status": status,
          "epochs_done": len(epochs), "epoch_seconds": [e.get("seconds") for e in epochs],
          "compile_seconds_total": epochs[-1].get("compile_seconds_total") if epochs else None}
print(json.dumps(record))
json.dump(record, open(f"{out}/search_e2e.json", "w"), indent=1)
PY
  else
    echo "$data/train.zip not found: carry it (or set XNAS_DATA_DIR) for the end-to-end search" >&2
  fi
fi

if [ "$part" = conv ]; then  # if device time is left: the grouped-convolution form
  bench "${CONV_TIMEOUT:-200}" --config "batch=64,depthwise=conv,$short"
fi

if [ "$part" = graphs ]; then  # if device time is left: whole loops as CUDA graphs
  XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL,WHILE,CONDITIONAL" \
      bench "${GRAPHS_TIMEOUT:-200}" --config "batch=64,$s"
fi

if [ "$part" = autotune ]; then  # if device time is left: compile without autotuning
  # How much of the GPU compile is autotuning of matmuls and convolutions
  # (each shape tried with several kernels), and what its choices buy per step.
  XLA_FLAGS="--xla_gpu_autotune_level=0" bench "${AUTOTUNE_TIMEOUT:-200}" --config "batch=64,$s"
fi
