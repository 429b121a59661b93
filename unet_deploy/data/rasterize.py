"""labelme shapes to class-id masks, pixel for pixel as labelme draws them with PIL.ImageDraw.

* polygon (and oriented_rectangle): ``polygon`` filled *and* outlined;
* rectangle: ``rectangle`` through the two corners, filled and outlined;
* circle: an ellipse of radius |centre - rim point| around the centre;
* line, linestrip: a line 10 px wide (linestrip joints rounded, as labelme 5.x+);
* point: a disc of radius 5;
* mask: the shape's base64 PNG pasted at its rounded top-left corner.

Later shapes paint over earlier ones; shapes are clipped to the image as PIL clips them.
"""
from __future__ import annotations

import base64
import io
import math
from typing import Any, Sequence

import numpy as np

from ..errors import UnetDeployError

LINE_WIDTH = 10
POINT_RADIUS = 5
SHAPE_TYPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point", "mask", "oriented_rectangle")


def _points(shape: dict[str, Any], where: str) -> list[tuple[float, float]]:
    pts = shape.get("points")
    try:
        xy = [(float(p[0]), float(p[1])) for p in pts]
    except (TypeError, ValueError, IndexError, KeyError):
        raise UnetDeployError(f"{where}: 'points' is not a list of [x, y] numbers; fix the shape in labelme") from None
    if not all(math.isfinite(v) for p in xy for v in p):
        raise UnetDeployError(f"{where}: a point is NaN or infinite; fix the shape in labelme")
    return xy


_MIN_POINTS = {"circle": 2, "rectangle": 2, "line": 2, "linestrip": 2, "point": 1, "mask": 2,
               "polygon": 3, "oriented_rectangle": 3}  # fmt: skip


def draw_shape(canvas: Any, shape: dict[str, Any], value: int, where: str = "shape") -> None:
    """Paint one labelme ``shape`` with ``value`` onto the PIL ``canvas`` (mode 'L'), as labelme draws it."""
    from PIL import ImageDraw

    shape_type = shape.get("shape_type") or "polygon"
    if shape_type not in SHAPE_TYPES:
        raise UnetDeployError(
            f"{where}: shape_type '{shape_type}' is unknown; use one of {', '.join(SHAPE_TYPES)}"
        )
    xy = _points(shape, where)
    need = _MIN_POINTS[shape_type]
    if len(xy) < need:
        raise UnetDeployError(f"{where}: a {shape_type} needs at least {need} points, got {len(xy)}; fix it in labelme")
    if shape_type == "mask":
        _paste_mask(canvas, shape, xy, value, where)
        return
    draw = ImageDraw.Draw(canvas)
    if shape_type == "circle":
        (cx, cy), (px, py) = xy[:2]
        r = math.hypot(cx - px, cy - py)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value, outline=value)
    elif shape_type == "rectangle":
        (x0, y0), (x1, y1) = xy[:2]
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=value, outline=value)
    elif shape_type == "line":
        draw.line(xy[:2], fill=value, width=LINE_WIDTH)
    elif shape_type == "linestrip":
        draw.line(xy, fill=value, width=LINE_WIDTH, joint="curve")
    elif shape_type == "point":
        cx, cy = xy[0]
        r = POINT_RADIUS
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value, outline=value)
    else:  # polygon, oriented_rectangle
        draw.polygon(xy, fill=value, outline=value)


def _paste_mask(canvas: Any, shape: dict[str, Any], xy: list[tuple[float, float]], value: int, where: str) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(shape.get("mask") or ""))) as img:
            patch = np.array(img)
    except Exception:
        raise UnetDeployError(f"{where}: the mask shape has no readable base64 PNG in 'mask'; redraw it") from None
    if patch.ndim == 3:
        patch = patch[:, :, :3].any(axis=2) if patch.shape[2] >= 3 else patch[:, :, 0]
    patch = patch.astype(bool)
    x0, y0 = (int(round(v)) for v in xy[0])
    w, h = canvas.size
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + patch.shape[0], h), min(x0 + patch.shape[1], w)
    if ys >= ye or xs >= xe:
        return
    sub = patch[ys - y0 : ye - y0, xs - x0 : xe - x0]
    region = np.array(canvas.crop((xs, ys, xe, ye)))
    region[sub] = value
    canvas.paste(Image.fromarray(region), (xs, ys))


def shapes_to_mask(
    shapes: Sequence[dict[str, Any]],
    size_hw: tuple[int, int],
    class_ids: dict[str, int],
    skip_unknown: bool = False,
    source: str = "labelme",
) -> tuple[np.ndarray, int]:
    """Rasterize labelme ``shapes`` into an HxW uint8 class-id mask; return it and the number skipped.

    Shapes are drawn in order, later over earlier. A label missing from ``class_ids``
    raises ``UnetDeployError`` naming ``source`` and every unknown label, unless
    ``skip_unknown`` (then those shapes are left out and counted).
    """
    from PIL import Image

    if any(not isinstance(s, dict) for s in shapes):
        raise UnetDeployError(f"{source}: a shape is not a JSON object; re-save the file in labelme")
    unknown = sorted({shape_label(s) for s in shapes if shape_label(s) not in class_ids})
    if unknown and not skip_unknown:
        raise UnetDeployError(
            f"{source}: unknown label{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)} "
            "(not in the class list); add to --labels/--classes or pass --skip-unknown"
        )
    h, w = size_hw
    canvas = Image.new("L", (w, h), 0)
    skipped = 0
    for i, shape in enumerate(shapes):
        label = shape_label(shape)
        if label not in class_ids:
            skipped += 1
            continue
        draw_shape(canvas, shape, class_ids[label], where=f"{source}: shape {i} ({label!r})")
    return np.array(canvas, dtype=np.uint8), skipped


def shape_label(shape: dict[str, Any]) -> str:
    """The label of a shape as a string (labelme files may hold numbers)."""
    label = shape.get("label")
    return label if isinstance(label, str) else str(label)


def shape_to_mask(shape: dict[str, Any], size_hw: tuple[int, int]) -> np.ndarray:
    """Return the HxW boolean mask of one labelme ``shape`` (what labelme's ``shape_to_mask`` gives)."""
    from PIL import Image

    canvas = Image.new("L", (size_hw[1], size_hw[0]), 0)
    draw_shape(canvas, shape, 1)
    return np.array(canvas, dtype=bool)
