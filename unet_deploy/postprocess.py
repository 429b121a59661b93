"""Turning logits into answers: argmax, mapping back, contours, overlays (numpy/OpenCV only).

The region contract (the C++ consumer reproduces it pixel for pixel): a region is one
8-connected component of one class > 0 in the ORIGINAL-size mask, found with
``cv2.connectedComponentsWithStats(mask == c, connectivity=8)``; ``area`` is its pixel count
(holes are not counted), ``bbox`` its ``[x, y, w, h]`` and ``contour`` its outer border from
``cv2.findContours(RETR_EXTERNAL, CHAIN_APPROX_SIMPLE)`` as ``[[x, y], ...]``. Components
with ``area < min_area`` are dropped. Regions are sorted by (class_id, bbox y, bbox x), ties
(possible only for interlocking shapes) by the x of the component's first pixel in its top row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from .errors import UnetDeployError
from .meta import MAX_CLASSES
from .preprocess import LetterboxTransform, network_indices, unletterbox_mask

# Default look: classes filled at 50% and outlined in green, as the seed drew its contours.
CONTOUR_COLOR = (0, 255, 0)


@dataclass
class Region:
    """One connected defect: class, pixel area, box ``[x, y, w, h]`` and outer contour ``(N, 2)`` (x, y)."""

    class_id: int
    class_name: str
    area: int
    bbox: list[int]
    contour: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """The region as the report JSON writes it."""
        return {
            "class_id": self.class_id,
            "class_name": self.class_name,
            "area": self.area,
            "bbox": list(self.bbox),
            "contour": self.contour.tolist(),
        }


def check_finite(logits: np.ndarray, source: str) -> None:
    """Raise the one-line error when ``logits`` hold NaN or inf (broken weights, an fp16 overflow):
    their argmax would be a confident wrong answer. ``source`` (the model file) is named."""
    logits = np.asarray(logits)
    if logits.dtype.kind == "f" and not np.isfinite(logits).all():
        bad = int(logits.size - np.count_nonzero(np.isfinite(logits)))
        raise UnetDeployError(
            f"{source}: the model gave {bad} NaN/inf logit(s) of {logits.size}; its weights (or precision) are "
            "broken: re-export it from a sound checkpoint (export refuses NaN/inf weights)"
        )


def argmax(logits: np.ndarray) -> np.ndarray:
    """Class ids (uint8) from logits ``(N, C, H, W)`` or ``(C, H, W)``.

    One channel is a sigmoid head: class 1 where the logit is > 0 (probability > 0.5).
    Ties go to the lower class id, as ``torch.argmax`` and ``np.argmax`` do. More than
    ``MAX_CLASSES`` (255) channels is refused: their ids would not fit uint8.
    """
    logits = np.asarray(logits)
    if logits.ndim not in (3, 4):
        raise UnetDeployError(f"logits of shape {list(logits.shape)} are not (N, C, H, W) or (C, H, W)")
    axis = logits.ndim - 3
    if logits.shape[axis] > MAX_CLASSES:
        raise UnetDeployError(
            f"logits have {logits.shape[axis]} channels, class ids are uint8: at most {MAX_CLASSES} classes"
        )
    if logits.shape[axis] == 1:
        return (np.take(logits, 0, axis=axis) > 0).astype(np.uint8)
    if logits.shape[axis] == 2:  # twice as fast as argmax, same tie rule
        return (np.take(logits, 1, axis=axis) > np.take(logits, 0, axis=axis)).astype(np.uint8)
    if logits.dtype.kind == "f" and np.isnan(logits).any():  # argmax picks the first NaN
        return np.argmax(logits, axis=axis).astype(np.uint8)
    return _running_argmax(logits, axis)


def _running_argmax(logits: np.ndarray, axis: int) -> np.ndarray:
    """``np.argmax(logits, axis)`` as uint8 for NaN-free logits: a running maximum over the
    channels, a channel winning only where strictly greater (the first maximum wins, as there).
    Whole-plane operations: 8x faster than ``np.argmax`` on (4, 144, 256) float32."""
    def channel(c: int) -> np.ndarray:
        return logits[(slice(None),) * axis + (c,)]

    best = channel(0).copy()
    out = np.zeros(best.shape, np.uint8)
    for c in range(1, logits.shape[axis]):
        np.copyto(out, np.uint8(c), where=channel(c) > best)
        np.maximum(best, channel(c), out=best)
    return out


def to_original(class_map: np.ndarray, transform: LetterboxTransform) -> np.ndarray:
    """Map a network-size class map back to the original image size (the letterbox's exact inverse)."""
    return unletterbox_mask(class_map, transform)


Box = tuple[int, int, int, int]  # x, y, w, h


def class_boxes(class_map: np.ndarray, transform: LetterboxTransform) -> dict[int, Box]:
    """For each class > 0 of a network-size class map, a box (x, y, w, h) in original pixels that
    holds all its pixels once ``to_original`` maps it back (possibly none; a class whose box lies
    in the padding is left out). Found on the small map, so ``find_regions(..., boxes=)`` need
    not scan the whole original mask once per class."""
    rows, cols = network_indices(transform)
    class_map = np.ascontiguousarray(class_map, dtype=np.uint8)
    boxes = {}
    for c in range(1, int(class_map.max()) + 1 if class_map.size else 1):
        x, y, w, h = cv2.boundingRect((class_map == c).view(np.uint8))
        if w == 0:
            continue
        y0, y1 = int(np.searchsorted(rows, y, "left")), int(np.searchsorted(rows, y + h - 1, "right"))
        x0, x1 = int(np.searchsorted(cols, x, "left")), int(np.searchsorted(cols, x + w - 1, "right"))
        if y1 > y0 and x1 > x0:  # else it lies where no original pixel looks (padding, skipped rows)
            boxes[c] = (x0, y0, x1 - x0, y1 - y0)
    return boxes


def find_regions(
    mask: np.ndarray, class_names: Sequence[str], min_area: int = 0, boxes: dict[int, Box] | None = None
) -> list[Region]:
    """All regions of every class > 0 in ``mask`` (HxW class ids), by the contract in this module's docstring.

    A class id with no name in ``class_names`` is reported as ``class_<id>``. Same answer as
    running ``connectedComponentsWithStats`` and ``findContours`` per component, much faster:
    per class it works on the class's bounding box only, takes all outer borders from one
    ``findContours(RETR_CCOMP)`` (borders of holes skipped) and counts each component's pixels
    with an 8-connected ``floodFill`` from its border's first pixel (no labelling pass).
    ``boxes`` (``class_boxes``): only these classes, each searched inside its box only.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW class ids, got shape {mask.shape}")
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if boxes is None:
        everywhere = (0, 0, mask.shape[1], mask.shape[0])
        boxes = {c: everywhere for c in range(1, int(mask.max()) + 1 if mask.size else 1)}
    keyed: list[tuple[tuple[int, int, int, int], Region]] = []
    for c in sorted(boxes):
        keyed.extend(_class_regions(mask, c, _class_name(class_names, c), min_area, boxes[c]))
    keyed.sort(key=lambda kr: kr[0])
    return [r for _, r in keyed]


def _class_name(class_names: Sequence[str], c: int) -> str:
    return class_names[c] if c < len(class_names) else f"class_{c}"


def _class_regions(mask: np.ndarray, c: int, name: str, min_area: int, box: Box) -> list[tuple[tuple, Region]]:
    """Regions of class ``c`` (all inside ``box``) with their sort keys (class, y, x, x of the
    first pixel of the top row)."""
    x0, y0, w0, h0 = box
    binary = (mask[y0 : y0 + h0, x0 : x0 + w0] == c).view(np.uint8)
    if (w0, h0) == mask.shape[::-1]:  # no box given: the class's own (findContours scans all it gets)
        x, y, w0, h0 = cv2.boundingRect(binary)
        if w0 == 0:  # class absent
            return []
        binary, x0, y0 = binary[y : y + h0, x : x + w0], x0 + x, y0 + y
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:  # class absent
        return []
    out = []
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0]):
        if parent >= 0:  # the border of a hole
            continue
        contour = contour.reshape(-1, 2)
        fx, fy = (int(v) for v in contour[0])  # the border starts at the component's first pixel
        x, y, w, h = cv2.boundingRect(contour)  # the component's box
        # count its pixels (holes excluded) by filling it inside its own box (floodFill's cost
        # grows with the array it is given): 5x faster than labelling the class's box
        area = cv2.floodFill(binary[y : y + h, x : x + w], None, (fx - x, fy - y), 0, flags=8)[0]
        if area < min_area:
            continue
        contour += (x0, y0)
        region = Region(c, name, int(area), [x + x0, y + y0, w, h], contour)
        out.append(((c, y + y0, x + x0, fx + x0), region))
    return out


def voc_palette(n: int = 256) -> np.ndarray:
    """Return the PASCAL VOC colour map: an ``(n, 3)`` uint8 array, row i = RGB of class id i.

    Id 0 is black, 1 dark red, 2 dark green, ...; this is the map of VOC, labelme
    (``imgviz.label_colormap``) and most segmentation tools, built by spreading the
    bits of the id over the three channels.
    """
    ids = np.arange(n, dtype=np.int64)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> channel) & 1
            cmap[:, channel] |= bit << (7 - shift)
        ids = ids >> 3
    return cmap.astype(np.uint8)


_VOC_BGR_LUT = voc_palette()[:, ::-1].reshape(256, 1, 3).copy()  # cv2.LUT: 8x faster than indexing


def colorize(mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """HxW class ids -> HxWx3 BGR image in the VOC colours (or ``palette``: K x 3 RGB uint8)."""
    lut = _VOC_BGR_LUT
    if palette is not None:
        lut = np.zeros((256, 1, 3), np.uint8)
        pal = np.asarray(palette, np.uint8)[:256, ::-1]
        lut[: len(pal), 0] = pal
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    return cv2.LUT(cv2.merge([mask, mask, mask]), lut)


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any image as OpenCV reads it (gray, BGR, BGRA; 8 or 16 bit) -> 8-bit BGR for display."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"image dtype {image.dtype} is not 8- or 16-bit")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image.copy()


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    regions: Sequence[Region] | None = None,
    alpha: float = 0.5,
    palette: np.ndarray | None = None,
    contour_color: tuple[int, int, int] | None = CONTOUR_COLOR,
    thickness: int = 2,
) -> np.ndarray:
    """Draw ``mask`` over ``image``: classes > 0 filled in their colour at ``alpha``, region contours on top.

    Returns a new 8-bit BGR image of the original size. Contours are drawn in green like the
    seed's (``contour_color=None``: each in its class colour); ``regions=None`` finds them.
    """
    out = to_bgr8(image)
    if out.shape[:2] != mask.shape[:2]:
        raise ValueError(f"mask {mask.shape[:2]} and image {out.shape[:2]} differ in size")
    x, y, w, h = cv2.boundingRect((mask > 0).view(np.uint8))
    if alpha > 0 and w > 0:  # blend inside the classes' bounding box only
        roi, sub = out[y : y + h, x : x + w], mask[y : y + h, x : x + w]
        blended = cv2.addWeighted(roi, 1.0 - alpha, colorize(sub, palette), alpha, 0.0)
        cv2.copyTo(blended, (sub > 0).view(np.uint8), roi)
    if regions is None:
        regions = find_regions(mask, [])
    if thickness > 0:
        lut = colorize(np.arange(256, dtype=np.uint8)[None], palette)[0]
        for r in regions:
            color = contour_color or tuple(int(v) for v in lut[r.class_id])
            cv2.drawContours(out, [r.contour.reshape(-1, 1, 2)], -1, color, thickness)
    return out
