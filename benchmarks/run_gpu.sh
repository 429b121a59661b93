#!/usr/bin/env bash
# The GPU benchmark in one call from a bare checkout: results go to $OUT when set (the device tool), else benchmarks/results.
cd "$(dirname "$0")/.." && PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 exec python3 benchmarks/run_gpu.py --out "${OUT:-benchmarks/results}" "$@"
