"""What the runtime's stages hand on, and the last stage itself.

``Segmenter.preprocess`` makes a ``Prepared`` (an image ready for the network),
``Segmenter.infer_items`` an ``Inferred`` (its logits, or its mask when tiles or the device
made it), and ``finish`` (``Segmenter.postprocess``) the ``Result``. Streams, serving and the
benchmark call these same stages: there is one pipeline.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from ..postprocess import (CONTOUR_COLOR, Region, argmax, class_boxes, find_regions, overlay, to_original,
                           top_probability, uncertainty)
from ..preprocess import LetterboxTransform

ImageLike = Union[str, Path, np.ndarray]
ARRAY_NAME = "<array>"  # ``Result.file`` for an image passed as an array


@dataclass
class Result:
    """The answer for one image: ``mask`` (HxW uint8 class ids at the original size), ``regions``,
    ``timings`` (ms per stage), or ``error`` (one line) when the image could not be processed."""

    file: str
    mask: np.ndarray | None = None
    regions: list[Region] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    image: np.ndarray | None = field(default=None, repr=False)  # as read, for overlay()
    error: str | None = None
    uncertainty: float | None = None  # postprocess.uncertainty: 0 sure .. 1 uniform (None: tiled)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def size(self) -> tuple[int, int]:
        """Original (height, width)."""
        if self.mask is None:
            raise ValueError(f"{self.file}: no mask ({self.error})")
        return int(self.mask.shape[0]), int(self.mask.shape[1])

    def class_areas(self) -> dict[str, int]:
        """Total region area per class name (classes > 0 that have regions)."""
        areas: dict[str, int] = {}
        for r in self.regions:
            areas[r.class_name] = areas.get(r.class_name, 0) + r.area
        return areas

    def overlay(
        self, alpha: float = 0.5, contour_color: tuple[int, int, int] | None = CONTOUR_COLOR, thickness: int = 2
    ) -> np.ndarray:
        """The image (8-bit BGR) with classes filled in VOC colours and region contours in green."""
        if self.mask is None or self.image is None:
            raise ValueError(f"{self.file}: nothing to draw ({self.error or 'image not kept'})")
        return overlay(self.image, self.mask, self.regions, alpha, contour_color=contour_color, thickness=thickness)

    def to_dict(self) -> dict[str, Any]:
        """The per-image object of the report JSON (the shape the C++ consumer prints too)."""
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {
            "file": self.file,
            "size": list(self.size),
            "regions": [r.to_dict() for r in self.regions],
            "timings": dict(self.timings),
            **({} if self.uncertainty is None else {"uncertainty": round(self.uncertainty, 6)}),
        }


def elapsed_ms(t0: float) -> float:
    """Milliseconds since ``t0`` (a ``time.perf_counter()`` value): how every stage is timed."""
    return (time.perf_counter() - t0) * 1000.0


@dataclass
class Prepared:
    """One image after ``Segmenter.preprocess``: the image as read, and where it goes.

    ``x`` is the float32 ``(C, H, W)`` network input of the host letterbox, ``None`` when the
    network input is made later (tiles, or the device pipeline); ``transform`` maps it back;
    ``timings`` holds the ``preprocess`` ms so far.
    """

    file: str
    image: np.ndarray | None = field(default=None, repr=False)
    x: np.ndarray | None = field(default=None, repr=False)
    transform: LetterboxTransform | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Inferred:
    """One image after inference: network-size ``logits`` ``(K, h, w)``, and the original-size ``mask``
    (with the network-size ``class_map`` it came from) where tiles or the device pipeline made it
    already; ``ms`` is this image's share of the inference time. Tiles: ``confidence``, the
    probability of the predicted class on the scaled image (``tiling.tiled_prediction``), and
    ``confidence_transform`` mapping it to the original size (``None``: same size)."""

    logits: np.ndarray | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)
    class_map: np.ndarray | None = field(default=None, repr=False)
    ms: float = 0.0
    confidence: np.ndarray | None = field(default=None, repr=False)
    confidence_transform: LetterboxTransform | None = None


def finish(item: Prepared, out: Inferred, classes: Sequence[str], min_area: int = 0, min_score: float = 0.0) -> Result:
    """The last stage: argmax and the exact mapping back (unless ``out`` has the mask), regions with
    their scores (from the logits, or the tiles' ``confidence``), timings.

    Args:
        item: the prepared image (its transform maps network pixels back).
        out: its inference output.
        classes: class names (class 0 first).
        min_area: regions of fewer original pixels are dropped.
        min_score: regions whose score is lower are dropped.
    """
    t0 = time.perf_counter()
    mask, class_map = out.mask, out.class_map
    if mask is None:
        if out.logits is None or item.transform is None:
            raise ValueError("finish needs the logits of a letterboxed image, or its mask")
        class_map = argmax(out.logits)
        mask = to_original(class_map, item.transform)
    boxes = class_boxes(class_map, item.transform) if class_map is not None and item.transform is not None else None
    confidence, back = out.confidence, out.confidence_transform
    if confidence is None and out.logits is not None and class_map is not None:
        confidence, back = top_probability(out.logits, class_map), item.transform
    regions = find_regions(mask, classes, min_area, boxes, confidence, back, min_score)
    unsure = uncertainty(out.logits, item.transform) if out.logits is not None and item.transform is not None else None
    timings = {**item.timings, "inference": out.ms, "postprocess": elapsed_ms(t0)}
    return Result(item.file, mask, regions, {k: round(v, 3) for k, v in timings.items()}, list(classes), item.image,
                  uncertainty=unsure)
