"""The machine a benchmark ran on: CPU/GPU facts for the report, model GFLOPs and the matmul-rate reference.

The CPU model, ISA flags and native bf16 come from ``unet_deploy.cpu`` (the one place that
reads them); this module adds what only a benchmark page needs: memory, GPU, library versions,
torch's kernel capability and the measured matmul GFLOP/s.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

from .. import cpu
from ..meta import ModelMeta

LIMIT_CAVEAT = ("a reference, not a bound - kernels nearer the FMA peak than torch's matmul, or doing fewer "
                "multiplications (Winograd 3x3 convolutions), go under it")


def torch_module() -> Any:
    """``torch`` when it is installed, else ``None`` (the torch-free backends still run)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def cuda_available() -> bool:
    torch = torch_module()
    return bool(torch is not None and torch.cuda.is_available())


def sync(device: str) -> None:
    """Wait for queued CUDA work (no-op on the CPU), so a timer sees it."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def hardware_info() -> dict[str, Any]:
    """The machine, for the report: CPU model, cores, SIMD flags, memory, GPU, library versions, date."""
    facts = cpu.features()
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": facts.model,
        "cores": facts.cores,
        "cpu_flags": list(facts.flags),
        "native_bf16": facts.native_bf16,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        if hasattr(os, "sysconf") else None,
        "gpu": None,
        "versions": {"numpy": np.__version__, "opencv": cv2.__version__},
    }
    torch = torch_module()
    if torch is not None:
        info["versions"]["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = f"{p.name} ({p.total_memory / 2**30:.0f} GiB)"
            info["versions"]["cuda"] = torch.version.cuda
    try:
        import onnxruntime as ort

        info["versions"]["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    return info


def model_gflops(meta: ModelMeta, input_size: Sequence[int] | None = None) -> float:
    """GFLOPs of one forward pass (multiply-add = 2 FLOPs), counted by ``FlopCounterMode`` on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..checkpoint import build_model

    h, w = input_size or meta.input_size
    with torch.device("meta"):
        model = build_model(meta).eval()
        x = torch.empty(1, meta.in_channels, h, w)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def matmul_gflops(dtype: str = "fp32", device: str = "cpu", n: int = 1024, seconds: float = 1.0) -> float:
    """Measured GFLOP/s of an ``n x n`` matrix product in ``dtype`` on ``device`` (the hardware limit)."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if device == "cuda":
        n = max(n, 8192)
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    sync(device)
    a @ b  # warm-up
    sync(device)
    count, t0 = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return 2.0 * n**3 * count / elapsed / 1e9


def matmul_rates(devices: Iterable[str] = ("cpu",), log: Callable[[str], None] = lambda s: None) -> dict[str, dict[str, float]]:
    """Measured matmul GFLOP/s per device and precision (fp32, bf16; fp16 on CUDA).

    bf16 on a CPU without it in hardware is emulated (~100x slower): measured on small matrices.
    """
    rates: dict[str, dict[str, float]] = {}
    for device in devices:
        rates[device] = {}
        for precision in ("fp32", "bf16") if device == "cpu" else ("fp32", "bf16", "fp16"):
            slow = device == "cpu" and precision == "bf16" and not cpu.has_native_bf16()
            rates[device][precision] = matmul_gflops(precision, device, n=256 if slow else 1024)
            log(f"matmul {device} {precision}: {rates[device][precision]:.3g} GFLOP/s")
    return rates


def hardware_limit(gflops: float, rates: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Inference time at each measured matmul rate of ``matmul_rates`` (model ``gflops`` over the rate).

    See ``LIMIT_CAVEAT``: this is not the fastest possible time.
    """
    out: dict[str, Any] = {"model_gflops": gflops}
    for device, per in rates.items():
        for precision, rate in per.items():
            out[f"{device}_{precision}"] = {"matmul_gflops": rate, "min_inference_ms": 1000.0 * gflops / rate}
    return out
