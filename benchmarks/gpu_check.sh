#!/usr/bin/env bash
# The GPU checks, in one script that fits in about 8 minutes on one GPU. Run it whenever a GPU is
# at hand (never from CI or the tests); every step writes its JSON under $OUT and one step's
# failure does not stop the others.
#
#   bash benchmarks/gpu_check.sh                 # OUT defaults to runs/bench/gpu-check
#   OUT=/tmp/out SUPERNET=runs/.../supernet.pt DATA=runs/bench/shapes-480-80-192-s0 bash benchmarks/gpu_check.sh
#
# 1. picodet-s training throughput at 320 with AMP (img/s, peak memory)
# 2. the supernet's step overhead against the same static subnets, on the GPU
# 3. candidates per minute with 2 and 4 Ray workers sharing the GPU (0.25 GPU each)
# 4. candidate scores on the GPU within 0.002 mAP of the CPU's (needs a trained SUPERNET and its DATA;
#    skipped without them)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench/gpu-check}
PY=${PY:-python}
mkdir -p "$OUT"
status=0
step() {  # step NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s)"
    local t0=$SECONDS
    if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then
        echo "   done in $((SECONDS - t0)) s: $OUT/$name.log"
    else
        echo "   FAILED or timed out after $((SECONDS - t0)) s: $OUT/$name.log"; tail -5 "$OUT/$name.log"; status=1
    fi
}

$PY -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)" | tee "$OUT/gpu.txt" \
    || { echo "no usable GPU"; exit 1; }

step train_throughput 120 $PY benchmarks/train_throughput.py --device cuda --amp bf16 --sizes 320 --batch 128 \
    --steps 20 --warmup 5 --out "$OUT/train_throughput.json"
step supernet_overhead 120 $PY benchmarks/supernet_overhead.py --device cuda --no-memory --batch 32 \
    --spaces picodet_s_joint --repeats 10 --out "$OUT/supernet_overhead.json"
step evolve_throughput 150 $PY benchmarks/evolve_throughput.py --device cuda --gpus-per-worker 0.25 --workers 2 4 \
    --candidates 24 --calib-images 64 --val-images 64 --out "$OUT/evolve_throughput.json"
if [[ -n "${SUPERNET:-}" && -n "${DATA:-}" ]]; then
    step gpu_score_parity 120 $PY benchmarks/gpu_score_parity.py --supernet "$SUPERNET" --data "$DATA" --device cuda \
        --run-dir "$OUT/parity" --out "$OUT/gpu_score_parity.json"
else
    echo "== gpu_score_parity skipped: set SUPERNET and DATA (a trained supernet.pt and its data set)"
fi
grep -h "img/s\|ratio\|candidates_per_minute\|largest |mAP" "$OUT"/*.log 2>/dev/null | head -40
exit $status
