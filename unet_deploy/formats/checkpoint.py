"""Our training checkpoint (and a seed ``unet.pth``) as a format: run eagerly by the runtime, not exported.

The file format itself, its writer and its metadata reader are ``unet_deploy.checkpoint``.
"""
from __future__ import annotations

from . import Format

FORMAT = Format(
    name="checkpoint", title="PyTorch checkpoint", suffixes=(".pt", ".pth"), backend="checkpoint",
    backend_class="unet_deploy.runtime.torch_backends:CheckpointBackend", exporter=None,
    precisions=("fp32", "bf16", "fp16"), devices=("cpu", "cuda"), needs_torch=True, requires=("torch",),
    options=frozenset(), aliases=("torch", "pytorch", "eager"),
    note="unet-train checkpoint or seed unet.pth, run eagerly (bf16/fp16 cast on request)",
)  # fmt: skip
