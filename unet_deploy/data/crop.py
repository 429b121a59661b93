"""The seed's region-of-interest crop: threshold, outer contours, keep those of a plausible area, crop their box.

For each image: grey image -> binary threshold -> external contours -> keep contours
whose area lies in [min_area, max_area] -> crop each one's bounding box grown by a
margin (clipped to the image). Every crop's box in the source image is recorded in
``OUT/crops.json`` so results on crops map back to the original. When an image has a
labelme JSON beside it (same stem), each crop gets a JSON with the shapes moved into
the crop's coordinates, so the crops can be converted with ``unet-deploy labelme``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UnetDeployError
from ..fileio import IMAGE_SUFFIXES, atomic_write_text, quote, write_image
from .labelme import unique_stems
from .labelme_files import read_image_oriented, read_labelme_json
from .outputs import check_output_folder
from .rasterize import LINE_WIDTH, POINT_RADIUS

CROPS_FILE = "crops.json"


@dataclass(frozen=True)
class CropBox:
    """A crop in source-image pixels: ``x, y`` top-left, ``w, h`` size; ``area`` of the contour it came from."""

    x: int
    y: int
    w: int
    h: int
    area: float

    @property
    def xywh(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


def find_rois(
    image: np.ndarray,
    threshold: int | str = 127,
    min_area: float = 1000.0,
    max_area: float | None = None,
    margin: int = 10,
    invert: bool = False,
) -> list[CropBox]:
    """Return the crop boxes of the objects in ``image`` (as OpenCV reads it), sorted top to bottom.

    Pixels brighter than ``threshold`` (0-255, or ``"otsu"``) are foreground; ``invert``
    makes the darker ones foreground. Each external contour whose ``cv2.contourArea``
    lies in [``min_area``, ``max_area``] gives its bounding box grown by ``margin`` px
    on each side and clipped to the image.
    """
    import cv2

    from ..preprocess import to_model_color

    gray = to_model_color(image, "GRAY")[:, :, 0]
    if gray.dtype == np.uint16:
        gray = (gray >> 8).astype(np.uint8)
    mode = cv2.THRESH_BINARY_INV if invert else cv2.THRESH_BINARY
    if isinstance(threshold, str):
        if threshold.lower() != "otsu":
            raise UnetDeployError(f"--threshold {threshold!r}: pass a grey level 0-255 or 'otsu'")
        _, binary = cv2.threshold(gray, 0, 255, mode | cv2.THRESH_OTSU)
    else:
        _, binary = cv2.threshold(gray, float(threshold), 255, mode)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    h, w = gray.shape
    boxes = []
    for contour in contours:
        area = float(cv2.contourArea(contour))
        if area < min_area or (max_area is not None and area > max_area):
            continue
        x, y, bw, bh = cv2.boundingRect(contour)
        x0, y0 = max(x - margin, 0), max(y - margin, 0)
        x1, y1 = min(x + bw + margin, w), min(y + bh + margin, h)
        boxes.append(CropBox(x0, y0, x1 - x0, y1 - y0, area))
    return sorted(boxes, key=lambda b: (b.y, b.x))


def crop_labelme(data: dict[str, Any], box: CropBox, image_name: str) -> dict[str, Any]:
    """Return a copy of labelme JSON ``data`` for the crop ``box``: points shifted, far-away shapes dropped.

    Shapes that do not reach into the box are left out; the others keep their points
    (moved by ``-box.x, -box.y``), and their parts outside the crop are clipped when
    rasterized. ``imagePath`` becomes ``image_name``; ``imageData`` is dropped.
    """
    shapes = []
    for shape in data.get("shapes", []):
        try:
            pts = np.asarray(shape.get("points") or [], dtype=float).reshape(-1, 2)
        except (AttributeError, TypeError, ValueError, OverflowError):  # not a shape, or points not [x, y] numbers
            raise UnetDeployError(f"{quote(image_name)}: a shape's 'points' is not a list of [x, y] numbers; "
                                  "fix it in labelme") from None
        if pts.size == 0 or not _reaches(shape, pts, box):
            continue
        moved = dict(shape)
        moved["points"] = (pts - [box.x, box.y]).tolist()
        shapes.append(moved)
    out = {k: v for k, v in data.items() if k not in ("shapes", "imagePath", "imageData", "imageHeight", "imageWidth")}
    out.update(shapes=shapes, imagePath=image_name, imageData=None, imageHeight=box.h, imageWidth=box.w)
    return out


def _reaches(shape: dict[str, Any], pts: np.ndarray, box: CropBox) -> bool:
    kind = shape.get("shape_type") or "polygon"
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    if kind == "circle" and len(pts) >= 2:
        r = float(np.hypot(*(pts[1] - pts[0])))
        lo, hi = pts[0] - r, pts[0] + r
    pad = {"point": POINT_RADIUS, "line": LINE_WIDTH, "linestrip": LINE_WIDTH}.get(kind, 1)
    return bool(lo[0] - pad < box.x + box.w and hi[0] + pad >= box.x and lo[1] - pad < box.y + box.h
                and hi[1] + pad >= box.y)


@dataclass
class CropSummary:
    """What ``crop_folder`` did: crops written, images without any ROI, failures (file, reason)."""

    out: Path
    crops: list[dict[str, Any]]
    no_roi: list[str]
    failed: list[tuple[Path, str]]


def crop_folder(
    src: str | Path,
    out: str | Path,
    threshold: int | str = 127,
    min_area: float = 1000.0,
    max_area: float | None = None,
    margin: int = 10,
    invert: bool = False,
    progress: bool = True,
) -> CropSummary:
    """Crop every image under ``src`` (see ``find_rois``) into ``out``; write ``out/crops.json``.

    Crop ``k`` of ``<stem>`` is written as ``out/<stem>_<k>.<ext>``; nested folders are
    joined into the stem with '_'. ``crops.json`` lists, per crop, its file, its source
    image and its ``box`` [x, y, w, h] in the source image. A labelme JSON beside an
    image is cropped along with it. Unreadable images are recorded, not fatal.
    """
    from tqdm import tqdm

    if max_area is not None and max_area < min_area:
        raise UnetDeployError(f"--max-area {max_area:g} is below --min-area {min_area:g}; raise it or drop it")
    src, out = Path(src), Path(out)
    images = _find_images(src, exclude=out)
    if not images:
        raise UnetDeployError(f"{src}: no images found ({', '.join(IMAGE_SUFFIXES)}); pass a folder of images")
    check_output_folder(out, files=[out / CROPS_FILE])
    summary = CropSummary(out=out, crops=[], no_roi=[], failed=[])
    stems = unique_stems(src, images)
    for path in tqdm(images, desc="crop", unit="image", disable=not progress, dynamic_ncols=True):
        try:
            image = read_image_oriented(path)
            annotation = path.with_suffix(".json")
            data = read_labelme_json(annotation) if annotation.is_file() else None
            boxes = find_rois(image, threshold, min_area, max_area, margin, invert)
            names = [f"{stems[path]}_{k}{path.suffix.lower()}" for k in range(len(boxes))]
            docs = [crop_labelme(data, box, name) for box, name in zip(boxes, names)] if data is not None else []
        except UnetDeployError as e:
            summary.failed.append((path, e.message))
            continue
        if not boxes:
            summary.no_roi.append(str(path))
        for k, (box, name) in enumerate(zip(boxes, names)):
            write_image(out / name, image[box.y : box.y + box.h, box.x : box.x + box.w])
            record = {"file": name, "source": str(path), "box": box.xywh, "contour_area": box.area}
            if data is not None:
                json_name = Path(name).with_suffix(".json").name
                atomic_write_text(out / json_name, json.dumps(docs[k], ensure_ascii=False, indent=2))
                record["labelme"] = json_name
            summary.crops.append(record)
    params = {"threshold": threshold, "min_area": min_area, "max_area": max_area, "margin": margin,
              "invert": invert}
    atomic_write_text(out / CROPS_FILE, json.dumps(
        {"source": str(src), "params": params, "crops": summary.crops, "no_roi": summary.no_roi,
         "failed": [{"file": str(p), "error": m} for p, m in summary.failed]}, ensure_ascii=False, indent=2))
    return summary


def _find_images(src: Path, exclude: Path) -> list[Path]:
    if src.is_file():
        return [src]
    ex = exclude.resolve()
    return [p for p in sorted(src.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            and ex not in p.resolve().parents]


def boxes_from_crops_file(path: str | Path) -> dict[str, list[int]]:
    """Read ``crops.json`` and map each crop file name to its box [x, y, w, h] in the source image."""
    path = Path(path)
    try:
        records: Sequence[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["crops"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UnetDeployError(f"{path}: not a crops.json written by `unet-deploy crop` ({e})") from None
    return {r["file"]: r["box"] for r in records}
