"""Predictions as labelme JSON pre-annotations: the model proposes, a person corrects in labelme.

A class mask becomes the shapes labelme paints back into the same mask (``rasterize`` draws
as labelme does: later shapes over earlier ones):

* ``"polygon"``: one polygon per region (label = class name, ``description`` = ``"score 0.97"``
  when the region has a score), its outer border simplified by ``cv2.approxPolyDP`` with
  ``POLYGON_EPSILON`` px. Holes are kept: each background area enclosed by a region is a
  polygon labelled ``_background_`` (labelme's own background name, which ``unet-deploy
  labelme`` reads as class 0). Shapes are written largest enclosed area first, so anything
  inside a hole is painted after the hole. Where two regions cross diagonally at one corner, a
  fill can still reach into the other region: such areas get a patch polygon at the end (every
  vertex; with simplification only areas of ``PATCH_MIN_AREA`` pixels or more). Unsimplified
  (``epsilon=0``) the shapes then paint back every pixel. When the simplified ones paint back
  less than ``MIN_AGREEMENT`` of an image, that image's are simplified with half the tolerance,
  then not at all, so no image loses more than 0.2% of its pixels. Measured on labelme's photos
  (tests/test_prelabel.py): at 1 px, worst image 99.86%, 13 points per shape (15 unsimplified).
* ``"mask"``: one labelme ``mask`` shape per region (its bounding-box crop as a base64 PNG,
  points = the box's inclusive corners, as labelme's ``shapes_to_label`` expects): lossless.

Files are labelme 5.x's format (``version``, ``flags``, ``shapes``, ``imagePath`` relative to
the JSON, ``imageData: null``, ``imageHeight``, ``imageWidth``), written atomically and never
over an existing file: a person's annotation is never replaced by a guess.
"""
from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from ..errors import UnetDeployError
from ..fileio import atomic_write_new, quote
from .classes import BACKGROUND, IGNORE_LABEL

LABELME_VERSION = "5.5.0"  # the labelme 5.x file format these JSONs follow
SHAPE_KINDS = ("polygon", "mask")
POLYGON_EPSILON = 1.0  # px: approxPolyDP tolerance of the outer borders
MIN_AGREEMENT = 0.998  # an image whose simplified polygons paint back less than this gets exact ones
PATCH_ROUNDS = 3  # at most this many rounds of patches over wrongly painted pixels
PATCH_MIN_AREA = 16  # simplified polygons: patch only wrong areas this large (not the slivers of simplification)


def labels_txt(class_names: Sequence[str]) -> str:
    """labelme's ``labels.txt`` for a model's classes: ``__ignore__``, ``_background_``, then classes 1.."""
    return "\n".join([IGNORE_LABEL, BACKGROUND, *class_names[1:]]) + "\n"


def _component(mask: np.ndarray, region: Any) -> np.ndarray:
    """The region's own pixels (bool) inside its bbox: its 8-connected component, not other
    components of the class that reach into the box."""
    x, y, w, h = region.bbox
    binary = (mask[y : y + h, x : x + w] == region.class_id).astype(np.uint8)
    filled = np.zeros((h + 2, w + 2), np.uint8)
    fx, fy = (int(v) for v in region.contour[0])
    cv2.floodFill(binary, filled, (fx - x, fy - y), 1, flags=8 | cv2.FLOODFILL_MASK_ONLY | (1 << 8))
    return filled[1:-1, 1:-1].astype(bool)


def _description(region: Any) -> str:
    score = getattr(region, "score", None)
    return "" if score is None else f"score {float(score):.3f}"


def _shape(label: str, points: list, shape_type: str, description: str = "", mask: str | None = None) -> dict:
    """One shape with every key labelme 5.x writes."""
    return {"label": label, "points": points, "group_id": None, "description": description,
            "shape_type": shape_type, "flags": {}, "mask": mask}  # fmt: skip


def _polygon_points(contour: np.ndarray, epsilon: float) -> list[list[int]]:
    pts = contour.reshape(-1, 2)
    if epsilon > 0 and len(pts) > 3:
        pts = cv2.approxPolyDP(pts.reshape(-1, 1, 2).astype(np.int32), epsilon, True).reshape(-1, 2)
    pts = pts.tolist()
    while len(pts) < 3:  # a 1- or 2-pixel region: labelme needs 3 points, PIL draws the same pixels
        pts.append(pts[-1])
    return pts


def mask_shapes(
    mask: np.ndarray, regions: Sequence[Any], kind: str = "polygon", epsilon: float = POLYGON_EPSILON
) -> list[dict]:
    """labelme shapes for ``regions`` (``postprocess.Region``s of ``mask``, HxW class ids).

    Args:
        mask: the class mask the regions were found in (original size).
        regions: its regions (class_id, class_name, bbox, contour; ``score`` when present).
        kind: ``"polygon"`` or ``"mask"`` (see the module docstring).
        epsilon: polygon simplification tolerance in px (0: every border vertex).
    """
    if kind not in SHAPE_KINDS:
        raise UnetDeployError(f"labelme shape kind {quote(kind)} is unknown; use one of {', '.join(SHAPE_KINDS)}")
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if kind == "mask":
        return [_mask_shape(r, _component(mask, r)) for r in regions]
    from .classes import class_ids
    from .rasterize import shapes_to_mask

    ids = class_ids([BACKGROUND] + sorted({r.class_name for r in regions}))
    lut = np.zeros(256, np.uint8)  # class id -> the id its name gets in ``ids``
    names = {0: BACKGROUND}
    for r in regions:
        lut[r.class_id], names[r.class_id] = ids[r.class_name], r.class_name
    for eps in (epsilon, epsilon / 2, 0.0) if epsilon > 0 else (0.0,):  # finer until the pixels agree
        shapes, target = _polygon_shapes(mask, regions, eps)
        for _ in range(PATCH_ROUNDS):  # paint back what the fills covered wrongly, on top
            painted, _ = shapes_to_mask(shapes, mask.shape, ids)
            patches = _patches(painted != lut[target], target, names, 1 if eps == 0 else PATCH_MIN_AREA)
            if not patches:
                break
            shapes += patches
        if eps == 0 or not shapes:
            break
        painted, _ = shapes_to_mask(shapes, mask.shape, ids)
        if float((painted == lut[target]).mean()) >= MIN_AGREEMENT:
            break
    return shapes


def _patches(wrong: np.ndarray, target: np.ndarray, names: dict[int, str], min_area: int) -> list[dict]:
    """Polygons (every vertex) over the wrongly painted pixels, per class, for areas of at least
    ``min_area`` pixels: where two classes' regions cross diagonally at one corner, one region's
    fill reaches into the other, whatever the order."""
    out = []
    for c in np.unique(target[wrong]):
        binary = (wrong & (target == c)).view(np.uint8)
        contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        for contour, (_, _, _, parent) in zip(contours, hierarchy[0] if hierarchy is not None else []):
            x, y, w, h = cv2.boundingRect(contour)
            if parent < 0 and int(binary[y : y + h, x : x + w].sum()) >= min_area:
                out.append(_shape(names[int(c)], _polygon_points(contour, 0.0), "polygon"))
    return out


def _polygon_shapes(mask: np.ndarray, regions: Sequence[Any], epsilon: float) -> tuple[list[dict], np.ndarray]:
    """The polygon shapes and the class mask they stand for (the regions' own pixels)."""
    target = np.zeros_like(mask)  # what the shapes must paint: the regions' own pixels
    for r in regions:
        x, y, w, h = r.bbox
        target[y : y + h, x : x + w][_component(mask, r)] = r.class_id
    fills = np.zeros_like(mask)
    for r in regions:  # one at a time: drawn together, nested contours would cancel out (even-odd)
        cv2.drawContours(fills, [r.contour.reshape(-1, 1, 2).astype(np.int32)], -1, 1, cv2.FILLED)
    # (enclosed area, pixel count, shape): larger areas first, so what lies in a hole comes after it
    items = [(cv2.contourArea(r.contour.reshape(-1, 1, 2).astype(np.int32)), r.area,
              _shape(r.class_name, _polygon_points(r.contour, epsilon), "polygon", _description(r)))
             for r in regions]  # fmt: skip
    holes = ((target == 0) & (fills > 0)).view(np.uint8)
    contours, hierarchy = cv2.findContours(holes, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0] if hierarchy is not None else []):
        if parent < 0:
            items.append((cv2.contourArea(contour), 0, _shape(BACKGROUND, _polygon_points(contour, epsilon), "polygon")))
    items.sort(key=lambda item: (-item[0], -item[1]))
    return [shape for _, _, shape in items], target


def _mask_shape(region: Any, component: np.ndarray) -> dict:
    from PIL import Image

    x, y, w, h = region.bbox
    buffer = io.BytesIO()
    Image.fromarray(component).save(buffer, format="PNG")  # mode "1": labelme's img_arr_to_b64 of a bool array
    points = [[x, y], [x + w - 1, y + h - 1]]
    return _shape(region.class_name, points, "mask", _description(region), base64.b64encode(buffer.getvalue()).decode())


def labelme_document(shapes: list[dict], image_path: str, size_hw: tuple[int, int]) -> dict[str, Any]:
    """The labelme 5.x JSON object of one image (``image_path`` as it is to be written: relative to the JSON)."""
    return {"version": LABELME_VERSION, "flags": {}, "shapes": shapes, "imagePath": image_path,
            "imageData": None, "imageHeight": int(size_hw[0]), "imageWidth": int(size_hw[1])}  # fmt: skip


def write_prelabel(
    json_path: str | Path, image_path: str | Path, mask: np.ndarray, regions: Sequence[Any],
    kind: str = "polygon", epsilon: float = POLYGON_EPSILON,
) -> Path | None:  # fmt: skip
    """Write the pre-annotation of one image; ``None`` (nothing written) when ``json_path`` exists.

    Args:
        json_path: where the JSON goes; an existing file there is never replaced.
        image_path: the image it annotates (stored relative to the JSON's folder).
        mask, regions, kind, epsilon: as ``mask_shapes``.
    """
    json_path = Path(json_path)
    if json_path.exists():
        return None
    rel = os.path.relpath(Path(image_path).resolve(), json_path.parent.resolve()).replace(os.sep, "/")
    doc = labelme_document(mask_shapes(mask, regions, kind, epsilon), rel, mask.shape[:2])
    text = json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    return json_path if atomic_write_new(json_path, text.encode("utf-8")) else None


def kept_line(json_path: str | Path) -> str:
    """The one line for an image whose JSON already exists."""
    return (f"{quote(json_path)}: exists, kept (an annotation is never overwritten); "
            "delete it to pre-annotate this image again")  # fmt: skip
