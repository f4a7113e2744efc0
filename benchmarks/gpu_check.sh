#!/usr/bin/env bash
# Everything psparse needs a GPU for, in one go, sized for one short GPU lease (about 8
# minutes of the 15 a lent machine gives; each step has its own time limit so the later ones
# always get their turn):
#   1. tests/gpu: numerics of the triton backend in bf16/fp16/fp32 (limit 210 s);
#   2. `psparse check` through the command line with compiled Triton kernels (limit 45 s);
#   3. benchmarks/attention.py --gpu --quick: TFLOP/s against FlexAttention and SDPA at 16K
#      tokens, and the time to first result (limit 220 s);
#   4. benchmarks/decode.py --quick on CUDA with the compiled decode kernel (limit 60 s).
# Logs go to $OUT (the device tool's folder that comes back; ./gpu_out elsewhere):
# environment.txt, gpu_tests.log, check.log, benchmark.log, decode.log, summary.txt.
#
# The device image has torch, triton, jinja2, numpy and pytest but not lark, which psparse's
# parser needs: carry it as a wheel.  Once, in the repo root of the session's checkout:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl lark==1.3.1
# then one device call:  command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 600.
# Give the machine back afterwards unless rerunning at once.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# This checkout's package, without installing it (the benchmark's child processes too).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PSPARSE_CACHE_DIR="${PSPARSE_CACHE_DIR:-/tmp/psparse-cache}"

start=$(date +%s)
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$PY" -c 'import sys, torch, triton, lark, jinja2, patterndsl
print("python", sys.version.split()[0], "| torch", torch.__version__, "| triton",
      triton.__version__, "| lark", lark.__version__, "| psparse", patterndsl.__version__,
      "| cuda", torch.cuda.is_available())' 2>&1
} > "$OUT/environment.txt"
cat "$OUT/environment.txt"
if ! "$PY" -c 'import lark, torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device or lark missing (see environment.txt): nothing to check here"
    exit 1
fi

step() {  # step NAME LIMIT_SECONDS LOG COMMAND...: run with a time limit, log, keep its status
    local name=$1 limit=$2 log=$3
    shift 3
    echo "== $name (limit ${limit}s)"
    local t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$log"
    local rc=${PIPESTATUS[0]}
    echo "$name: exit $rc after $(( $(date +%s) - t0 ))s$([ "$rc" = 124 ] && echo ' (time limit)')" \
        | tee -a "$OUT/summary.txt"
    return "$rc"
}

: > "$OUT/summary.txt"
status=0
step "gpu numerics tests" 210 gpu_tests.log \
    "$PY" -m pytest tests/gpu -q -p no:cacheprovider --durations=15 || status=1
step "psparse check (triton)" 45 check.log \
    "$PY" -m patterndsl check "causal & (sink(4) | local(1024))" -n 4096 --backend triton \
    --dtype bf16 --heads 4 --kv-heads 2 --head-dim 128 || status=1
step "benchmark --gpu --quick" 220 benchmark.log \
    "$PY" benchmarks/attention.py --gpu --quick --no-write || status=1
step "decode --quick (triton)" 60 decode.log \
    "$PY" benchmarks/decode.py --quick --device cuda --backend triton || status=1
echo "total: $(( $(date +%s) - start ))s, status $status" | tee -a "$OUT/summary.txt"
exit "$status"
