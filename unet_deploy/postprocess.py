"""Turning logits into answers: argmax, mapping back, contours, overlays (numpy/OpenCV only).

The region contract (the C++ consumer reproduces it pixel for pixel): a region is one
8-connected component of one class > 0 in the ORIGINAL-size mask, found with
``cv2.connectedComponentsWithStats(mask == c, connectivity=8)``; ``area`` is its pixel count
(holes are not counted), ``bbox`` its ``[x, y, w, h]`` and ``contour`` its outer border from
``cv2.findContours(RETR_EXTERNAL, CHAIN_APPROX_SIMPLE)`` as ``[[x, y], ...]``. Components
with ``area < min_area`` are dropped. Regions are sorted by (class_id, bbox y, bbox x), ties
(possible only for interlocking shapes) by the x of the component's first pixel in its top row.

A region's ``score`` is the mean, over its original pixels, of the probability of its class
(softmax over the channels; a one-channel head: the sigmoid) from the logits that made the
mask, each original pixel taking the probability at the network pixel it was mapped from
(``preprocess.network_indices``; tiled: the blended logits, divided by the blend's weight sum).
Regions with ``score < min_score`` are dropped after ``min_area``.
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
    score: float | None = None  # mean probability of its class over its pixels (None: no logits)

    def to_dict(self) -> dict[str, Any]:
        """The region as the report JSON writes it (``score`` only where it is known)."""
        out = {
            "class_id": self.class_id,
            "class_name": self.class_name,
            "area": self.area,
            "bbox": list(self.bbox),
            "contour": self.contour.tolist(),
        }
        if self.score is not None:
            out["score"] = round(float(self.score), 6)
        return out


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


def class_probabilities(logits: np.ndarray) -> np.ndarray:
    """Per-class probabilities (float32) of logits ``(N, C, H, W)`` or ``(C, H, W)``: the softmax over
    the channels. A one-channel (sigmoid) head gives two channels ``[1 - p, p]``, so channel ``c``
    is always the probability of class id ``c``.

    Args:
        logits: raw network output, as ``argmax`` takes it.
    """
    logits = np.asarray(logits, np.float32)
    axis = logits.ndim - 3
    if logits.shape[axis] == 1:
        p = _sigmoid(logits)
        return np.concatenate([1.0 - p, p], axis=axis)
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def uncertainty(logits: np.ndarray, transform: LetterboxTransform | None = None) -> float | None:
    """How unsure the model is about one image: the mean, over its pixels, of the normalised entropy
    ``-sum_k p_k log p_k / log K`` of the class probabilities (``class_probabilities``; K classes,
    2 for a sigmoid head). 0 when every pixel is certain, 1 when every pixel's probabilities are
    uniform. Entropy, not one minus the top-2 margin: it sees all K classes (a pixel split three
    ways counts as more uncertain than one split two ways) and every pixel contributes smoothly.
    Computed on the network-size map (the letterbox's image area only, padding left out), so it
    costs one pass over the logits; ``None`` for non-finite logits.

    Args:
        logits: ``(C, H, W)`` logits of one image.
        transform: its letterbox (``preprocess``), to leave the padding out; ``None``: every pixel.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise UnetDeployError(f"logits of shape {list(logits.shape)} are not (C, H, W)")
    if transform is not None:
        (top, left), (nh, nw) = transform.offset, transform.new_hw
        logits = logits[:, top : top + nh, left : left + nw]
    p = class_probabilities(logits)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = p * np.log(p)
    plogp[p == 0] = 0.0  # the limit of p log p; NaN logits stay NaN
    value = float(-plogp.sum(axis=0).mean() / np.log(p.shape[0])) if p.size else 0.0
    return min(max(value, 0.0), 1.0) if np.isfinite(value) else None


def top_probability(logits: np.ndarray, class_map: np.ndarray | None = None) -> np.ndarray:
    """float32 ``H x W`` probability of the predicted class (``argmax``'s) at each pixel of ``(C, H, W)`` logits.

    Equal to ``class_probabilities(logits).max(0)``, computed as ``1 / sum_k exp(l_k - max_k l)``
    (sigmoid head: ``sigmoid(|l|)``). With ``class_map`` (``argmax(logits)``) it is computed only
    at the pixels of classes > 0 and is 0 elsewhere: what region scores need, at a fraction of the cost.

    Args:
        logits: ``(C, H, W)`` logits of one image.
        class_map: its class ids, to restrict the work to the pixels of classes > 0.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise UnetDeployError(f"logits of shape {list(logits.shape)} are not (C, H, W)")
    if class_map is None:
        return _top_probability(logits)
    out = np.zeros(logits.shape[1:], np.float32)
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(class_map > 0).view(np.uint8))
    ys, xs = np.nonzero(class_map[y : y + h, x : x + w])
    if len(ys):
        ys += y
        xs += x
        out[ys, xs] = _top_probability(logits[:, ys, xs][:, :, None])[:, 0]
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-np.asarray(x, np.float32)))).astype(np.float32)


def _top_probability(logits: np.ndarray) -> np.ndarray:
    """``(C, h, w)`` -> ``(h, w)`` probability of the largest logit."""
    logits = np.asarray(logits, np.float32)
    if logits.shape[0] == 1:
        return _sigmoid(np.abs(logits[0]))
    top = logits.max(axis=0)
    total = np.zeros(top.shape, np.float32)
    for c in range(logits.shape[0]):
        total += np.exp(logits[c] - top)
    return 1.0 / total


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
    mask: np.ndarray,
    class_names: Sequence[str],
    min_area: int = 0,
    boxes: dict[int, Box] | None = None,
    confidence: np.ndarray | None = None,
    transform: LetterboxTransform | None = None,
    min_score: float = 0.0,
) -> list[Region]:
    """All regions of every class > 0 in ``mask`` (HxW class ids), by the contract in this module's docstring.

    A class id with no name in ``class_names`` is reported as ``class_<id>``. Same answer as
    running ``connectedComponentsWithStats`` and ``findContours`` per component, much faster:
    per class it works on the class's bounding box only, takes all outer borders from one
    ``findContours(RETR_CCOMP)`` (borders of holes skipped) and counts each component's pixels
    with an 8-connected ``floodFill`` from its border's first pixel (no labelling pass).

    Args:
        mask: HxW class ids at the original size.
        class_names: names by class id.
        min_area: smaller regions (pixels) are dropped.
        boxes: ``class_boxes``: only these classes, each searched inside its box only.
        confidence: ``top_probability`` of the logits that made ``mask`` (network size): each
            region gets its ``score``; without it scores are ``None``.
        transform: the letterbox ``mask`` was mapped back through from ``confidence``'s size
            (``None``: ``confidence`` has the mask's size).
        min_score: regions whose score is below it are dropped (needs ``confidence``).
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW class ids, got shape {mask.shape}")
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if boxes is None:
        everywhere = (0, 0, mask.shape[1], mask.shape[0])
        boxes = {c: everywhere for c in range(1, int(mask.max()) + 1 if mask.size else 1)}
    scorer = None if confidence is None else _Scorer(confidence, mask.shape, transform)
    keyed: list[tuple[tuple[int, int, int, int], Region]] = []
    for c in sorted(boxes):
        keyed.extend(_class_regions(mask, c, _class_name(class_names, c), min_area, boxes[c], scorer))
    keyed.sort(key=lambda kr: kr[0])
    return [r for _, r in keyed if min_score <= 0 or r.score is None or r.score >= min_score]


class _Scorer:
    """Mean probability of a region's class over its original pixels, from the network-size
    ``confidence`` map. A region of a mask mapped back by nearest neighbour is made of whole
    blocks (the original pixels that share one network pixel): one sample per block, weighted
    by the block's pixel count, gives the per-pixel mean at the cost of the network's pixels."""

    def __init__(self, confidence: np.ndarray, shape: tuple[int, ...], transform: LetterboxTransform | None) -> None:
        self.confidence = np.asarray(confidence, np.float32)
        if transform is None:
            if self.confidence.shape != tuple(shape):
                raise ValueError(f"confidence {self.confidence.shape} and mask {tuple(shape)} differ in size")
            self.rows = self.cols = None
            return
        if self.confidence.shape != tuple(transform.dst_hw) or tuple(shape) != tuple(transform.src_hw):
            raise ValueError(f"confidence {self.confidence.shape} / mask {tuple(shape)} do not fit {transform}")
        self.rows, self.cols = (_Blocks(index) for index in network_indices(transform))

    def __call__(self, component: np.ndarray, x: int, y: int, area: int) -> float:
        """``component``: h x w 0/1 pixels of the region inside its box at (x, y) (original pixels)."""
        h, w = component.shape
        if self.rows is None or self.cols is None:
            p = self.confidence[y : y + h, x : x + w]
            return float(p[component.view(bool)].sum(dtype=np.float64) / area)
        net_r, first_r, n_r = self.rows.within(y, h)
        net_c, first_c, n_c = self.cols.within(x, w)
        p = self.confidence[net_r[:, None], net_c] * component[first_r[:, None], first_c]
        return float((p @ n_c) @ n_r / area)


class _Blocks:
    """The runs of a non-decreasing index (original pixel -> network pixel along one axis)."""

    def __init__(self, index: np.ndarray) -> None:
        first = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
        self.net, self.first = index[first], first
        self.count = np.diff(np.r_[first, len(index)]).astype(np.float64)

    def within(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(network index, first position relative to ``start``, pixel count) of the runs in ``[start, start + length)``."""
        i0, i1 = np.searchsorted(self.first, (start, start + length))
        return self.net[i0:i1], self.first[i0:i1] - start, self.count[i0:i1]


def _class_name(class_names: Sequence[str], c: int) -> str:
    return class_names[c] if c < len(class_names) else f"class_{c}"


def _class_regions(mask: np.ndarray, c: int, name: str, min_area: int, box: Box,
                   scorer: _Scorer | None = None) -> list[tuple[tuple, Region]]:  # fmt: skip
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
        if scorer is None:
            area = cv2.floodFill(binary[y : y + h, x : x + w], None, (fx - x, fy - y), 0, flags=8)[0]
        else:  # the fill's mask is the component, for its score
            filled = np.zeros((h + 2, w + 2), np.uint8)
            flags = 8 | cv2.FLOODFILL_MASK_ONLY | (1 << 8)
            area = cv2.floodFill(binary[y : y + h, x : x + w], filled, (fx - x, fy - y), 0, flags=flags)[0]
        if area < min_area:
            continue
        score = None if scorer is None else scorer(filled[1:-1, 1:-1], x + x0, y + y0, int(area))
        contour += (x0, y0)
        region = Region(c, name, int(area), [x + x0, y + y0, w, h], contour, score)
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
