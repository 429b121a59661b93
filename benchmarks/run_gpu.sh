#!/usr/bin/env bash
# The GPU checks in one call from a bare checkout (no install): the CUDA tests, then the benchmark.
# Results and logs go to $OUT when set (the device tool), else benchmarks/results.
#   bash benchmarks/run_gpu.sh            # ~7 minutes on an H200: pytest -m cuda (<= 180 s), then run_gpu.py (<= 270 s)
#   bash benchmarks/run_gpu.sh --quick    # ~2 minutes: the quickest CUDA tests and a small benchmark
set -u
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 QT_QPA_PLATFORM=offscreen
quick=0; [ "${1:-}" = "--quick" ] && quick=1
if [ $quick = 1 ]; then tests=(-k "not training and not export"); limit=60; bench=(--quick --budget 45)
else tests=(); limit=180; bench=(--budget 270); fi
timeout "$limit" python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py "${tests[@]}" \
  --junitxml="$out/cuda-tests.xml" 2>&1 | tee "$out/cuda-tests.log" | tail -n 25
echo "pytest -m cuda exit: ${PIPESTATUS[0]}"
timeout $((limit == 60 ? 120 : 300)) python3 benchmarks/run_gpu.py --out "$out" "${bench[@]}" 2>&1 | tee "$out/gpu-bench.log"
