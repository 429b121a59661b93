"""A Triton model repository (``<stem>.triton/``): the row and the export; ``unet_deploy.serve`` writes and serves it.

The folder holds one Python-backend model, ``unet``, that runs ``Segmenter`` on a parity-checked
ONNX export beside it (``unet_deploy.serve.repository``): ``unet-deploy serve`` or any Triton
with the Python backend loads it. It has no in-process runtime backend, so ``Segmenter``,
``--format all`` and ``unet-bench`` leave it out; the ONNX file inside is what they would run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..meta import ModelMeta
from . import Format
from ._common import ExportOptions

FORMAT = Format(
    name="triton", title="Triton", suffixes=(".triton",), backend="triton", backend_class=None, exporter=__name__,
    precisions=("fp32",), devices=("cpu",), needs_torch=False, requires=("torch", "onnx", "onnxscript"),
    options=frozenset(), folder=True,
    note="a Triton model repository folder (Python backend around the ONNX model); unet-deploy serve runs it",
)  # fmt: skip


def export(model: Any, example: Any, path: Path, meta: ModelMeta, opts: ExportOptions) -> ModelMeta:
    """The repository folder ``path`` around a parity-checked ONNX export of ``model``."""
    from ..serve.repository import export as export_repository

    return export_repository(model, example, path, meta, opts)
