"""The lean runtime: ``Segmenter`` runs an exported model on images; torch only for torch backends.

    from unet_deploy.runtime import Segmenter
    seg = Segmenter("model.onnx", device="auto")
    res = seg("part.png")        # res.mask, res.regions, res.overlay(), res.timings, res.to_dict()

Which backend reads which file is the format registry's (``unet_deploy.formats``).
"""
from __future__ import annotations

from ..postprocess import Region
from .base import Backend, backend_class, backend_names
from .segmenter import Result, Segmenter

__all__ = ["Backend", "Region", "Result", "Segmenter", "backend_class", "backend_names"]
