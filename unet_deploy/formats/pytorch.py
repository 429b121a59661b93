"""The ``checkpoint`` format's row: our training checkpoint (and a seed ``unet.pth``), run eagerly, not exported.

Named ``pytorch`` (the format's title) so that ``unet_deploy.checkpoint``, which reads and
writes the file itself, is the only module called ``checkpoint``.
"""
from __future__ import annotations

from .spec import Format

FORMAT = Format(
    name="checkpoint", title="PyTorch checkpoint", suffixes=(".pt", ".pth"), backend="checkpoint",
    backend_class="unet_deploy.runtime.torch_backends:CheckpointBackend", exporter=None,
    precisions=("fp32", "bf16", "fp16"), devices=("cpu", "cuda"), needs_torch=True, requires=("torch",),
    options=frozenset(), aliases=("torch", "pytorch", "eager"),
    note="unet-train checkpoint or seed unet.pth, run eagerly (bf16/fp16 cast on request)",
)  # fmt: skip
