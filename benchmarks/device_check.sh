#!/usr/bin/env bash
# The GPU checks in one go (issue 15): ≤ 8 minutes on one H100/H200, one JSON.
#
#   bash benchmarks/device_check.sh               # on the device: writes benchmarks/results/device.json
#   bash benchmarks/device_check.sh --cpu-smoke   # the same pieces at tiny sizes on the CPU (tests)
#   DEVICE_CHECK_OUT=/tmp/d.json bash benchmarks/device_check.sh --cpu-smoke
#
# Pieces (benchmarks/device_check.py, one process each, so JAX's and torch's GPU memory pools
# never meet), each under its own time limit, in this order:
#   engine    Monte Carlo engine at 4096², r ∈ {64, 256}: fraction of the roofline (noise draws
#             + Gram flops at the measured GEMM rate)                              ≤ 120 s
#   bnb       bitsandbytes CUDA 4-bit vs our quantizer, parity-test shapes (the CPU
#             kernel's wrong shapes first; stops starting cases after 70 s)         ≤  90 s
#   finetune  one DialoGPT-medium-shaped bf16 step per arm: step time, peak memory  ≤ 130 s
#   validate  `quantbounds validate --scale full` wall time, in the time left of the 8 minutes
#             (reported as a lower bound if it does not finish)
# A piece that fails or times out is recorded as such; the others still run. The JSON is
# written atomically at the end (collect).
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SMOKE=""
if [[ "${1:-}" == "--cpu-smoke" ]]; then
    SMOKE="--cpu-smoke"
    export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
fi
OUT=${DEVICE_CHECK_OUT:-$ROOT/benchmarks/results/device.json}
PARTS=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")
WORK=${DEVICE_CHECK_WORK:-$PARTS/work}
TOTAL_S=${DEVICE_CHECK_TOTAL_S:-470}      # the whole script, seconds (8 min = 480)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX takes what it needs, not 75 % of the GPU
PY=${PYTHON:-python}
START=$(date +%s)

run_part() {   # run_part NAME LIMIT_S [extra args]
    local name=$1 limit=$2
    shift 2
    local t0
    t0=$(date +%s)
    echo "device_check: $name (≤ ${limit} s)" >&2
    timeout --signal=TERM --kill-after=10 "$limit" \
        "$PY" "$ROOT/benchmarks/device_check.py" "$name" $SMOKE --out "$PARTS/$name.json" \
        --work "$WORK" "$@" >"$PARTS/$name.log" 2>&1
    echo $? >"$PARTS/$name.rc"
    echo $(( $(date +%s) - t0 )) >"$PARTS/$name.wall"
    echo "device_check: $name rc=$(cat "$PARTS/$name.rc")" >&2
}

if [[ -z "$SMOKE" ]]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >&2 || echo "device_check: no nvidia-smi" >&2
fi
run_part engine 120
run_part bnb 90 --budget-s 70
run_part finetune 130
LEFT=$(( TOTAL_S - ($(date +%s) - START) - 15 ))
(( LEFT < 30 )) && LEFT=30
run_part validate $(( LEFT + 20 )) --budget-s "$LEFT"
"$PY" "$ROOT/benchmarks/device_check.py" collect $SMOKE --parts "$PARTS" --out "$OUT"
rc=$?
echo "device_check: wrote $OUT in $(( $(date +%s) - START )) s (parts in $PARTS)" >&2
exit $rc
