#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md ("GPU check") in one run, printed at the end and written to
# OUT/summary.md:
#   1. the full keep-only map of a random-weight llava-1.5-7b (31 cut layers x 144 windows of 2x2) in
#      bf16, the prompt laid out as the original LLaVA template (34 text tokens after BOS before the
#      image): seconds per sample, against the naive procedure (one cut forward per variant) in the
#      same process, the engine's FLOP rate against the measured matmul rate, and the one-pass
#      gradient estimate of the same rows (`horizon bench --gradient`);
#   2. bf16 (and f32) logits on the device against f32 logits on the CPU, on the LLaVA and Qwen2.5-VL
#      fixture checkpoints (`horizon forward --save-logits`);
#   3. pruned prefill latencies of the llava-1.5-7b config against the unpruned prefill
#      (`horizon bench --prune`).
#
# Usage, from the repository root:  bench/gpu_check.sh [DEVICE [OUT]]
#   DEVICE  cuda (default), cuda:N, or cpu: a dry run with tiny sizes (the llava-tiny fixture
#           config instead of llava-1.5-7b) that runs every step end to end in about a minute.
#   OUT     output folder (default out/gpu-check-DEVICE).
# Needs the release binary (`cargo build --release -p horizon-cli`, or HORIZON=path) and a Python
# with torch 2.11.0 (PYTHON, default python3; CUDA 13 wheels for a GPU): the binary loads that
# torch's libtorch, so the machine needs no Rust. Each step has a time limit; on one H100 the whole
# run is meant to take well under 8 minutes.
set -euo pipefail

DEVICE=${1:-cuda}
OUT=${2:-out/gpu-check-${DEVICE/:/}}
HORIZON=${HORIZON:-target/release/horizon}
PYTHON=${PYTHON:-python3}
REPORT="$PYTHON -W ignore::UserWarning bench/gpu_check_report.py"

[[ -x $HORIZON ]] || { echo "gpu_check: $HORIZON not found (cargo build --release -p horizon-cli, or set HORIZON)" >&2; exit 1; }
[[ -d fixtures/llava ]] || { echo "gpu_check: run from the repository root" >&2; exit 1; }
# The binary's RUNPATH names the build machine's venv; this machine's torch provides libtorch.
TORCH_LIB=$("$PYTHON" -W ignore::UserWarning -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

case $DEVICE in
  cpu)
    # Dry run: every command as on the GPU, on the fixture's tiny LLaVA config.
    MAP_CONFIG=fixtures/llava/models/llava-tiny
    MAP_LAYERS=all
    NAIVE=8
    PRUNE_SPECS=(fastv@2:50% divprune@0:18 random@0:18 pooling@0:9 divprune@0:18,random@2:9 vtw@2:0)
    REPS=3
    LIMIT_S=120
    ;;
  cuda | cuda:*)
    MAP_CONFIG=llava-1.5-7b
    MAP_LAYERS=1-31
    NAIVE=128
    # The specs of the CPU table of BENCHMARKS.md ("Pruned prefill against the unpruned prefill").
    PRUNE_SPECS=(fastv@2:50% divprune@0:288 random@0:288 pooling@0:144 divprune@0:288,random@4:144 vtw@4:0)
    REPS=20
    LIMIT_S=300
    ;;
  *)
    echo "gpu_check: DEVICE must be cuda, cuda:N or cpu, not '$DEVICE'" >&2
    exit 1
    ;;
esac

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.jsonl "$OUT"/*.safetensors "$OUT"/summary.md
START=$SECONDS
step() { echo "== [$((SECONDS - START)) s] $*" >&2; }

step "environment"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -n), $(nproc) CPUs"
  echo "device: $DEVICE"
  echo "torch: $("$PYTHON" -W ignore::UserWarning -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())')"
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/gpu: /'
  fi
  echo "horizon: $HORIZON ($(stat -c %s "$HORIZON") bytes)"
} | tee "$OUT/environment.txt"

step "1. keep-only map: $MAP_CONFIG, layers $MAP_LAYERS, bf16 on $DEVICE, $NAIVE naive variants"
timeout "$LIMIT_S" "$HORIZON" bench --config "$MAP_CONFIG" --device "$DEVICE" --dtype bf16 \
  --layers "$MAP_LAYERS" --window 2 --text-tokens 48 --text-before 34 --reps 3 \
  --naive-variants "$NAIVE" --gradient --json "$OUT/map.json" \
  2>&1 | tee "$OUT/map.log"

step "2. logits on $DEVICE against f32 on the CPU"
PROMPT="What is in the picture?"
for model in fixtures/llava/models/llava-tiny fixtures/qwen2_5_vl/models/qwen-tiny; do
  name=$(basename "$model")
  for image in square nonsquare; do
    img=$(dirname "$(dirname "$model")")/images/$image.png
    ref="$OUT/$name-$image-cpu-f32.safetensors"
    timeout 120 "$HORIZON" forward --model "$model" --image "$img" --prompt "$PROMPT" \
      --device cpu --dtype f32 --save-logits "$ref"
    for dtype in bf16 f32; do
      [[ $DEVICE == cpu && $dtype == f32 ]] && continue # the reference itself
      run="$OUT/$name-$image-${DEVICE/:/}-$dtype.safetensors"
      timeout 120 "$HORIZON" forward --model "$model" --image "$img" --prompt "$PROMPT" \
        --device "$DEVICE" --dtype "$dtype" --save-logits "$run"
      $REPORT logits "$ref" "$run" "$name, $image.png, $dtype on $DEVICE" >> "$OUT/logits.jsonl"
    done
  done
done

step "3. pruned prefill: $MAP_CONFIG, bf16 on $DEVICE, $REPS rounds"
prune_args=()
for spec in "${PRUNE_SPECS[@]}"; do prune_args+=(--prune "$spec"); done
timeout "$LIMIT_S" "$HORIZON" bench --config "$MAP_CONFIG" --device "$DEVICE" --dtype bf16 \
  --reps "$REPS" "${prune_args[@]}" --json "$OUT/prune.json" 2>&1 | tee "$OUT/prune.log"

step "summary ($OUT/summary.md)"
$REPORT summary "$OUT"
step "done"
