"""The lean runtime: ``Segmenter`` runs an exported model on images; torch only for torch backends.

    from unet_deploy.runtime import Segmenter
    seg = Segmenter("model.onnx", device="auto")
    res = seg("part.png")        # res.mask, res.regions, res.overlay(), res.timings, res.to_dict()
"""
from __future__ import annotations

from ..postprocess import Region
from .base import BACKENDS, Backend, BackendSpec
from .segmenter import Result, Segmenter

__all__ = ["BACKENDS", "Backend", "BackendSpec", "Region", "Result", "Segmenter"]
