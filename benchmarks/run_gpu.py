"""The standard GPU benchmark, made to run in ONE call on a lent GPU machine: results/<gpu>.md/.json.

The same driver and models as ``run_cpu.py`` with the CUDA cases (eager fp32/fp16/bf16,
TorchScript fp32/fp16, ONNX Runtime CUDA when onnxruntime-gpu is installed, AOTInductor
compiled for CUDA) next to the seed pipeline on the GPU, plus the main CPU cases of that
machine's processor (bf16 where it has AMX). Works from a bare checkout: no install needed
(``run_gpu.sh`` sets PYTHONPATH), only torch, onnxruntime, opencv, pillow and click.

    bash benchmarks/run_gpu.sh                       # writes into $OUT (the device tool) or results/
    python benchmarks/run_gpu.py --budget 420 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_cpu import RESULTS, Config, log, machine_slug, run_matrix, write  # noqa: E402

from unet_deploy.bench import Case  # noqa: E402


def _cuda(*rows: tuple[str, str]) -> list[Case]:
    return [Case(backend, precision, "cuda") for backend, precision in rows]


_ALL_CUDA = _cuda(("eager", "fp32"), ("seed", "fp32"), ("eager", "fp16"), ("eager", "bf16"),
                  ("torchscript", "fp32"), ("torchscript", "fp16"),
                  ("onnxruntime", "fp32"), ("aoti", "fp32"))  # fmt: skip
_MAIN_CPU = [Case(backend, precision, "cpu") for backend, precision in
             (("eager", "fp32"), ("seed", "fp32"), ("eager", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"))]

GPU_MATRIX: list[Config] = [
    Config("seed-size UNet, 256x256", 64, 256, _ALL_CUDA + _MAIN_CPU, batches=(1, 4, 16), runs=50, warmup=5,
           share=0.5, acceptance=True),  # fmt: skip
    Config("seed-size UNet, 512x512", 64, 512, _cuda(("eager", "fp32"), ("seed", "fp32"),
           ("eager", "fp16"), ("onnxruntime", "fp32")), batches=(1, 4, 16), runs=30, warmup=3,
           share=0.25),  # fmt: skip
    Config("base-16 UNet, 256x256", 16, 256, _cuda(("eager", "fp32"), ("seed", "fp32"),
           ("eager", "fp16"), ("torchscript", "fp32"), ("onnxruntime", "fp32")),
           batches=(1, 4, 16), runs=50, warmup=5, share=0.25),  # fmt: skip
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=420.0, help="total seconds (default 420: fits one call)")
    parser.add_argument("--checkpoint", type=Path, help="trained seed-size checkpoint (default: found in benchmarks/, runs/)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    parser.add_argument("--name", help="file name stem (default: from the GPU name)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        log("no CUDA device: this script is for a GPU machine (use run_cpu.py here)")
        return 1
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    matrix = run_matrix(GPU_MATRIX, args.budget, ["cpu", "cuda"], args.checkpoint)
    m = matrix["machine"]
    slug = args.name or machine_slug(m, gpu=True)
    title = f"GPU benchmark: {m['gpu']}, host CPU {m['cpu']} ({m['cores']} cores)"
    for path in write(matrix, args.out, slug, title, "bash benchmarks/run_gpu.sh", devices=("cuda", "cpu")):
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
