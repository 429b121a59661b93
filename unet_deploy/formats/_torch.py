"""Torch helpers of the formats and the torch backends: reduced precision and torch.export's dynamic shapes.

``reduced_precision(model, "bf16")`` is the one way this project runs a torch model in fp16
or bf16 (export, the checkpoint and TorchScript backends, the OpenVINO gate's emulation and
bench all call it). torch is imported inside the functions.
"""
from __future__ import annotations

import copy
from typing import Any

from ..meta import DIVISOR, MIN_SIZE

MAX_BATCH = 65535  # the largest batch a dynamic-batch export accepts
# Precision name -> torch dtype name.
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_dtype(precision: str) -> Any:
    """The torch dtype of ``"fp32" | "fp16" | "bf16"``."""
    import torch

    return getattr(torch, DTYPES[precision])


def reduced_precision(model: Any, precision: str, channels_last: bool | None = None) -> Any:
    """A copy of ``model`` that computes in ``precision`` but takes float32 input and returns float32 logits.

    The weights are cast (``model`` itself is left as it is); inputs are cast on the way in,
    logits back to float32 on the way out, so the copy is a drop-in replacement for eager
    inference, ``torch.jit.script`` and ``torch.export``. ``channels_last`` (default: for
    bf16) also moves weights and inputs to oneDNN's fast bf16 layout. ``"fp32"`` returns
    ``model`` unchanged. On a CPU without native bf16 (``unet_deploy.cpu.has_native_bf16``)
    bf16 is emulated and several times slower than fp32.
    """
    import torch

    if precision == "fp32":
        return model
    dtype = torch_dtype(precision)
    layout = precision == "bf16" if channels_last is None else channels_last

    class ReducedPrecision(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.model = inner
            self.channels_last = layout
            # the dtype probe lives where the weights do (and moves with them): ``type_as`` then
            # casts the input without moving it to another device
            where = next(inner.parameters(), torch.zeros(())).device
            self.register_buffer("probe", torch.zeros((), dtype=dtype, device=where), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.type_as(self.probe)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).float()

    inner = copy.deepcopy(model).to(dtype)
    if layout:
        inner = inner.to(memory_format=torch.channels_last)
    return ReducedPrecision(inner.eval()).eval()


def dynamic_shapes(dynamic: bool) -> tuple[dict[int, Any]]:
    """``torch.export`` dynamic shapes of the single input: batch always, H and W as multiples of 16.

    ``dynamic=False`` fixes height and width at the example's size; the batch stays dynamic.
    """
    from torch.export import Dim

    # CUDA kernels (the reflect pad's grid) guard the batch at <= 65535: say so, or export on CUDA fails
    batch = Dim("batch", min=1, max=MAX_BATCH)
    if not dynamic:
        return ({0: batch},)
    height = Dim("height_16", min=MIN_SIZE // DIVISOR)
    width = Dim("width_16", min=MIN_SIZE // DIVISOR)
    return ({0: batch, 2: DIVISOR * height, 3: DIVISOR * width},)
