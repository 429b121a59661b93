#!/usr/bin/env bash
# The GPU checks in one call from a bare checkout (no install): the CUDA tests, then the benchmark.
# Results and logs go to $OUT when set (the device tool), else benchmarks/results.
#   bash benchmarks/run_gpu.sh            # ~7 minutes on an H200: pytest -m cuda (<= 180 s), then run_gpu.py (<= 270 s)
#   bash benchmarks/run_gpu.sh --quick    # ~2 minutes: the quickest CUDA tests and a small benchmark
# The AOTInductor test runs in its own pytest: a crash there (seen once on torch 2.11) keeps the others.
set -u
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 QT_QPA_PLATFORM=offscreen
if [ "${1:-}" = "--quick" ]; then
  runs=("not training and not export and not aoti"); limit=60; bench=(--quick --budget 45)
else
  runs=("not aoti" "aoti"); limit=150; bench=(--budget 270)
fi
for k in "${runs[@]}"; do
  name=$([ "$k" = aoti ] && echo cuda-aoti || echo cuda-tests)
  timeout "$limit" python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py -k "$k" \
    --junitxml="$out/$name.xml" 2>&1 | tee "$out/$name.log" | tail -n 25
  echo "pytest -m cuda -k '$k' exit: ${PIPESTATUS[0]}"
done
timeout 300 python3 benchmarks/run_gpu.py --out "$out" "${bench[@]}" 2>&1 | tee "$out/gpu-bench.log"
