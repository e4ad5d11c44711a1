#!/usr/bin/env bash
# Everything measured on a GPU machine, in one command:
#
#   scripts/gpu_benchmark.sh [OUT_DIR]        (default: results/gpu-<date>)
#
# 1. the machine: nvidia-smi, CPU, torch;
# 2. precision: float16 and bfloat16 against float32 on the GPU (and bfloat16 on the
#    CPU), label agreement over 221 image/text pairs and the largest probability gap
#    (scripts/precision_agreement.py; fails the run if agreement < MIN_AGREEMENT when
#    the weights are real);
# 3. for each instance count in INSTANCES: ModelScope's pipeline on the same GPU, the
#    engine without a server at several batch sizes, and a real tritonserver driven by
#    perf_analyzer over gRPC with real JPEG files at rising concurrency
#    (scripts/benchmark.py: ratios, p50/p99, cold start, peak RSS, GPU memory per
#    instance, a PNG plot);
# 4. OUT_DIR/SUMMARY.md gathering it all (paste into docs/benchmarks.md).
#
# Weights: OFA_VE_MODEL_DIR (the real ModelScope model directory; the targets are about
# it) or, where it is unset, a random-weight demo checkpoint (speed is the same; its
# near-tie answers make the precision numbers meaningless).
#
# Knobs (environment): PYTHON (default .venv/bin/python, created by scripts/setup.sh),
# DTYPE (float16), INSTANCES ("1 2 4"), MAX_BATCH (64), PREFERRED (16,32,64),
# QUEUE_DELAY_US (2000), PREPROCESS_THREADS (4), CONCURRENCY (1,8,32,64,128,256),
# ENGINE_BATCHES (1,8,32,64,128), MEASUREMENT_MS (5000), MIN_AGREEMENT (0.995),
# QUICK=1 (a few seconds per step: checks the script, measures nothing).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-results/gpu-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

python="${PYTHON:-$root/.venv/bin/python}"
if [[ ! -x "$python" ]]; then
  scripts/setup.sh --profile dev
  python="$root/.venv/bin/python"
fi
export PYTHONUNBUFFERED=1

dtype="${DTYPE:-float16}"
instances="${INSTANCES:-1 2 4}"
max_batch="${MAX_BATCH:-64}"
preferred="${PREFERRED:-16,32,64}"
queue_delay="${QUEUE_DELAY_US:-2000}"
preprocess_threads="${PREPROCESS_THREADS:-4}"
concurrency="${CONCURRENCY:-1,8,32,64,128,256}"
engine_batches="${ENGINE_BATCHES:-1,8,32,64,128}"
measurement_ms="${MEASUREMENT_MS:-5000}"
min_agreement="${MIN_AGREEMENT:-0.995}"
ms_seconds=30
engine_seconds=10
rounds=3
extra=()
precision_extra=()
if [[ "${QUICK:-0}" == 1 ]]; then
  precision_extra=(--max-pairs 8)
  instances="${INSTANCES:-1}"
  concurrency="${CONCURRENCY:-1,2}"
  engine_batches="${ENGINE_BATCHES:-1,2}"
  ms_seconds=2
  engine_seconds=2
  rounds=1
  extra=(--request-count 4)
fi

device=cuda
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  if [[ "${QUICK:-0}" != 1 ]]; then
    echo "gpu_benchmark: torch sees no CUDA GPU here ($("$python" -c 'import torch; print(torch.__version__)'))." >&2
    echo "  Run it on a machine with an NVIDIA GPU and a driver new enough for this torch." >&2
    exit 1
  fi
  device=cpu  # QUICK=1 on a machine without a GPU: exercise the script only
  dtype="${DTYPE:-float32}"
fi

model_dir="${OFA_VE_MODEL_DIR:-}"
if [[ -z "$model_dir" ]]; then
  model_dir="$root/.cache/demo-checkpoint"
  echo "gpu_benchmark: OFA_VE_MODEL_DIR is unset: using a RANDOM-WEIGHT demo checkpoint ($model_dir)"
  "$python" scripts/make_demo_checkpoint.py --out "$model_dir" --seed 0 >/dev/null
  min_agreement=0  # near-tie random answers: report agreement, do not judge it
fi

{
  echo "# GPU benchmark, $(date -Iseconds)"
  echo
  echo "- command: \`scripts/gpu_benchmark.sh $*\` (DTYPE=$dtype INSTANCES=\"$instances\" MAX_BATCH=$max_batch PREFERRED=$preferred QUEUE_DELAY_US=$queue_delay PREPROCESS_THREADS=$preprocess_threads CONCURRENCY=$concurrency)"
  echo "- model: $model_dir"
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- torch: $("$python" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"
  echo
  echo '```'
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  else
    echo "(no nvidia-smi on this machine)"
  fi
  echo '```'
} >"$out/SUMMARY.md"

echo "== precision agreement"
devices="$device"
[[ "$device" == cuda ]] && devices="cuda,cpu"
set +e
"$python" scripts/precision_agreement.py --model-dir "$model_dir" --devices "$devices" \
  --json "$out/precision.json" --min-agreement "$min_agreement" "${precision_extra[@]}" 2>&1 |
  tee "$out/precision.log"
precision_status=${PIPESTATUS[0]}
set -e
{
  echo
  echo "## Precision (float32 reference on the same device, TF32 off)"
  echo
  echo '```'
  grep -v '^W[0-9]' "$out/precision.log"
  echo '```'
} >>"$out/SUMMARY.md"

for n in $instances; do
  echo "== $n instance(s)"
  "$python" scripts/benchmark.py --model-dir "$model_dir" --device "$device" --dtype "$dtype" \
    --out-dir "$out/instances-$n" --plot "$out/instances-$n/benchmark.png" --formats jpeg \
    --rounds "$rounds" --modelscope-seconds "$ms_seconds" --engine-batch-sizes "$engine_batches" \
    --engine-seconds "$engine_seconds" --concurrency "$concurrency" \
    --measurement-ms "$measurement_ms" --instances "$n" --max-batch-size "$max_batch" \
    --preferred "$preferred" --queue-delay-us "$queue_delay" \
    --param "dtype=$dtype" --param "preprocess_threads=$preprocess_threads" \
    --param "engine_batch_size=0" --param "warmup_batch_sizes=1,$max_batch" "${extra[@]}"
  {
    echo
    echo "## $n instance(s) per GPU"
    echo
    cat "$out/instances-$n/benchmark.md"
  } >>"$out/SUMMARY.md"
done

echo
echo "gpu_benchmark: results in $out (SUMMARY.md, precision.json, instances-*/)"
if [[ $precision_status -ne 0 ]]; then
  echo "gpu_benchmark: precision agreement below $min_agreement (see precision.log)" >&2
  exit 1
fi
