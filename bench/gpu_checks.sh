#!/usr/bin/env bash
# The accelerator measurements the open issues ask for, as one command sized for a 10-minute call
# on one NVIDIA GPU (H100 / H200), most important first; each writes its own JSON into OUTDIR, so
# whatever finished comes back even if a later one runs out of time.
#
#   bash bench/gpu_checks.sh OUTDIR            # on the GPU machine
#   SMOKE=1 bash bench/gpu_checks.sh /tmp/x    # the same plumbing, tiny sizes, on any machine
# If cuDNN attention fails on the first step, the later steps use XLA attention.
#
# 1. BERT-base train step, seq 128, batch 256, bf16, cuDNN attention   (target >= 50% MFU)
# 2. BERT-base train step, seq 512, batch 64, bf16, cuDNN attention    (target >= 45% MFU)
# 3. the same as 2 with informask_online (K = 16) masking              (target <= 10% over 2)
# 4. the masking benchmark on the GPU, without the CPU peers
#
# The device image has JAX with CUDA, flax, optax, orbax and torch but not ml_collections: where it
# is missing, its wheel is installed from .whl/ (made here with
#   pip download --no-deps --only-binary=:all: -d .whl ml_collections
# and carried along), else the script stops with that instruction.
set -uo pipefail
usage="usage: bash bench/gpu_checks.sh OUTDIR (SMOKE=1 for tiny sizes; PYTHON=... for the interpreter)"
case "${1:-}" in
  -h|--help) echo "$usage"; sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  -*|"") echo "$usage" >&2; exit 2 ;;
esac
out=$1
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

if ! "$py" -c "import ml_collections" 2>/dev/null; then
  if ! ls .whl/ml_collections-*.whl >/dev/null 2>&1; then
    echo "ml_collections is not installed and .whl/ has no wheel of it: run" \
         "'pip download --no-deps --only-binary=:all: -d .whl ml_collections' and carry .whl" >&2
    exit 2
  fi
  "$py" -m pip install -q --no-index --no-deps --target /tmp/gpu_checks_site .whl/ml_collections-*.whl \
    || exit 2
  export PYTHONPATH=/tmp/gpu_checks_site${PYTHONPATH:+:$PYTHONPATH}
fi

if [[ "${SMOKE:-0}" == 1 ]]; then
  step=(--sizes tiny --dtype float32 --repeats 2 --peers '') attention=xla
  b128=(--batch 8 --seq_len 128) b512=(--batch 2 --seq_len 512) sizes=32x128
else
  step=(--sizes base --dtype bfloat16 --scan_layers --repeats 20 --peers '') attention=cudnn
  b128=(--batch 256 --seq_len 128) b512=(--batch 64 --seq_len 512) sizes=32x128,32x512,256x512
fi
attention=${ATTENTION:-$attention}  # ATTENTION=cudnn SMOKE=1 exercises the fallback on a CPU.

log="$out/log.txt"  # One log for all: a device call returns at most 8 files.
nvidia-smi -L 2>/dev/null | tee "$log"
"$py" -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee -a "$log"

run() {  # run SECONDS NAME ARGS...: one measurement, its output appended to the log
  local seconds=$1 name=$2
  shift 2
  echo "== $name" | tee -a "$log"
  timeout "$seconds" "$py" "$@" 2>&1 | tee -a "$log"
  echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$log"
}
run 150 train_step_128 bench/train_step.py "${step[@]}" --attention "$attention" "${b128[@]}" \
  --masking informask --out "$out/train_step_128.json"
if [[ ! -s "$out/train_step_128.json" && "$attention" == cudnn ]]; then
  attention=xla  # cuDNN's fused attention refused this setup (see the log): XLA's from here on.
  echo "== cuDNN attention failed; the other steps use --attention xla" | tee -a "$log"
fi
run 150 train_step_512 bench/train_step.py "${step[@]}" --attention "$attention" "${b512[@]}" \
  --masking informask --out "$out/train_step_512.json"
run 140 online_512 bench/train_step.py "${step[@]}" --attention "$attention" "${b512[@]}" \
  --masking informask_online --out "$out/online_512.json"
run 110 masking bench/masking.py --no-peers --sizes "$sizes" --out "$out/masking.json"
