"""A Triton model repository (``<stem>.triton/``): the row; ``unet_deploy.serve.repository`` writes and serves it.

The folder holds one Python-backend model, ``unet``, that runs ``Segmenter`` on a parity-checked
ONNX export beside it (``unet_deploy.serve.repository.write``, this row's exporter):
``unet-deploy serve`` or any Triton with the Python backend loads it. It has no in-process
runtime backend, so ``Segmenter``, ``--format all`` and ``unet-bench`` leave it out; the ONNX
file inside is what they would run.
"""
from __future__ import annotations

from .spec import Format

FORMAT = Format(
    name="triton", title="Triton", suffixes=(".triton",), backend="triton", backend_class=None,
    exporter="unet_deploy.serve.repository:write", precisions=("fp32",), devices=("cpu",), needs_torch=False,
    requires=("torch", "onnx", "onnxscript"), options=frozenset(), folder=True,
    note="a Triton model repository folder (Python backend around the ONNX model); unet-deploy serve runs it",
)  # fmt: skip
