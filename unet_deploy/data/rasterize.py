"""labelme shapes to class-id masks, pixel for pixel as labelme draws them with PIL.ImageDraw.

* polygon (and oriented_rectangle): ``polygon`` filled *and* outlined;
* rectangle: ``rectangle`` through the two corners, filled and outlined;
* circle: an ellipse of radius |centre - rim point| around the centre;
* line, linestrip: a line 10 px wide (linestrip joints rounded, as labelme 5.x+);
* point: a disc of radius 5;
* mask: the shape's base64 PNG pasted at its rounded top-left corner.

Later shapes paint over earlier ones; shapes are clipped to the image as PIL clips them.
Coordinates far outside the image (beyond PIL's int32) are clipped first: a polygon to a
rectangle around the image (the same pixels inside it), a circle much larger than the image
is filled arithmetically (PIL would take minutes).
"""
from __future__ import annotations

import base64
import io
import math
from typing import Any, Sequence

import numpy as np

from ..errors import UnetDeployError
from ..fileio import quote
from .classes import check_name

LINE_WIDTH = 10
POINT_RADIUS = 5
SHAPE_TYPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point", "mask", "oriented_rectangle")


def _points(shape: dict[str, Any], where: str) -> list[tuple[float, float]]:
    pts = shape.get("points")
    ok = isinstance(pts, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
        for p in pts
    )
    if not ok:
        raise UnetDeployError(f"{where}: 'points' is not a list of [x, y] numbers; fix the shape in labelme")
    try:
        xy = [(float(x), float(y)) for x, y in pts]
    except OverflowError:
        raise UnetDeployError(f"{where}: a coordinate is too large for a number; fix the shape in labelme") from None
    if not all(math.isfinite(v) for p in xy for v in p):
        raise UnetDeployError(f"{where}: a point is NaN or infinite; fix the shape in labelme")
    return xy


# PIL draws in int32: shapes reaching beyond _FAR are clipped to the image grown by _MARGIN first.
_FAR = float(1 << 24)
_MARGIN = 4 * LINE_WIDTH


def _clip_polygon(xy: list[tuple[float, float]], w: int, h: int) -> list[tuple[float, float]]:
    """Sutherland-Hodgman: ``xy`` clipped to the image grown by ``_MARGIN`` (same pixels inside the image)."""
    lo_x, lo_y, hi_x, hi_y = -_MARGIN, -_MARGIN, w + _MARGIN, h + _MARGIN
    edges = [(0, lo_x, True), (0, hi_x, False), (1, lo_y, True), (1, hi_y, False)]
    for axis, bound, keep_above in edges:
        inside = (lambda p: p[axis] >= bound) if keep_above else (lambda p: p[axis] <= bound)
        out: list[tuple[float, float]] = []
        for i, cur in enumerate(xy):
            prev = xy[i - 1]
            if inside(cur) != inside(prev):
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cut = [prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])]
                cut[axis] = bound
                out.append((cut[0], cut[1]))
            if inside(cur):
                out.append(cur)
        xy = out
        if not xy:
            break
    return xy


def _far(xy: list[tuple[float, float]]) -> bool:
    return any(abs(v) > _FAR for p in xy for v in p)


def _fill_circle(canvas: Any, cx: float, cy: float, r: float, value: int) -> None:
    from PIL import Image

    w, h = canvas.size
    ys, xs = np.mgrid[0:h, 0:w]
    inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    region = np.array(canvas)
    region[inside] = value
    canvas.paste(Image.fromarray(region), (0, 0))


_MIN_POINTS = {"circle": 2, "rectangle": 2, "line": 2, "linestrip": 2, "point": 1, "mask": 2,
               "polygon": 3, "oriented_rectangle": 3}  # fmt: skip


def draw_shape(canvas: Any, shape: dict[str, Any], value: int, where: str = "shape") -> None:
    """Paint one labelme ``shape`` with ``value`` onto the PIL ``canvas`` (mode 'L'), as labelme draws it."""
    from PIL import ImageDraw

    shape_type = shape.get("shape_type") or "polygon"
    if not isinstance(shape_type, str) or shape_type not in SHAPE_TYPES:
        raise UnetDeployError(
            f"{where}: shape_type {quote(shape_type)} is unknown; use one of {', '.join(SHAPE_TYPES)}"
        )
    xy = _points(shape, where)
    need = _MIN_POINTS[shape_type]
    if len(xy) < need:
        raise UnetDeployError(f"{where}: a {shape_type} needs at least {need} points, got {len(xy)}; fix it in labelme")
    if shape_type == "mask":
        _paste_mask(canvas, shape, xy, value, where)
        return
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    if shape_type == "circle":
        (cx, cy), (px, py) = xy[:2]
        r = math.hypot(cx - px, cy - py)
        if r > 2 * (w + h) or _far([(cx - r, cy - r), (cx + r, cy + r)]):
            _fill_circle(canvas, cx, cy, r, value)
        else:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value, outline=value)
    elif shape_type == "rectangle":
        (x0, y0), (x1, y1) = xy[:2]
        box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
        if _far(xy[:2]):  # clipping a rectangle's corners keeps the pixels inside the image
            box = [min(max(v, -_MARGIN), lim + _MARGIN) for v, lim in zip(box, (w, h, w, h))]
        draw.rectangle(box, fill=value, outline=value)
    elif shape_type in ("line", "linestrip"):
        line = xy[:2] if shape_type == "line" else xy
        if _far(line):  # each segment as the thin polygon it covers, clipped
            for a, b in zip(line, line[1:]):
                _thick_segment(canvas, a, b, value)
        else:
            draw.line(line, fill=value, width=LINE_WIDTH, joint="curve" if shape_type == "linestrip" else None)
    elif shape_type == "point":
        cx, cy = xy[0]
        r = POINT_RADIUS
        if not _far([(cx, cy)]):
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value, outline=value)
    else:  # polygon, oriented_rectangle
        if _far(xy):
            xy = _clip_polygon(xy, w, h)
        if len(xy) >= 2:
            draw.polygon(xy, fill=value, outline=value)


def _thick_segment(canvas: Any, a: tuple[float, float], b: tuple[float, float], value: int) -> None:
    from PIL import ImageDraw

    length = math.hypot(b[0] - a[0], b[1] - a[1])
    if length == 0:
        return
    nx, ny = -(b[1] - a[1]) / length * LINE_WIDTH / 2, (b[0] - a[0]) / length * LINE_WIDTH / 2
    quad = [(a[0] + nx, a[1] + ny), (b[0] + nx, b[1] + ny), (b[0] - nx, b[1] - ny), (a[0] - nx, a[1] - ny)]
    quad = _clip_polygon(quad, *canvas.size)
    if len(quad) >= 2:
        ImageDraw.Draw(canvas).polygon(quad, fill=value)


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

    source = quote(source)
    if any(not isinstance(s, dict) for s in shapes):
        raise UnetDeployError(f"{source}: a shape is not a JSON object; re-save the file in labelme")
    labels = [shape_label(s, source) for s in shapes]
    unknown = sorted({label for label in labels if label not in class_ids})
    if unknown and not skip_unknown:
        raise UnetDeployError(
            f"{source}: unknown label{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)} "
            "(not in the class list); add to --labels/--classes or pass --skip-unknown"
        )
    h, w = size_hw
    canvas = Image.new("L", (w, h), 0)
    skipped = 0
    for i, (shape, label) in enumerate(zip(shapes, labels)):
        if label not in class_ids:
            skipped += 1
            continue
        draw_shape(canvas, shape, class_ids[label], where=f"{source}: shape {i} ({label!r})")
    return np.array(canvas, dtype=np.uint8), skipped


def shape_label(shape: dict[str, Any], source: str = "shape") -> str:
    """The label of a shape as a class name (labelme files may hold numbers); a missing label, or
    one with a line break, a control character or edge spaces, raises one line naming ``source``."""
    label = shape.get("label")
    if isinstance(label, (int, float)) and not isinstance(label, bool):
        label = str(label)
    if not isinstance(label, str):
        raise UnetDeployError(f"{source}: a shape has label {quote(label)}, not a text; name it in labelme")
    return check_name(label, source) if label else label


def shape_to_mask(shape: dict[str, Any], size_hw: tuple[int, int]) -> np.ndarray:
    """Return the HxW boolean mask of one labelme ``shape`` (what labelme's ``shape_to_mask`` gives)."""
    from PIL import Image

    canvas = Image.new("L", (size_hw[1], size_hw[0]), 0)
    draw_shape(canvas, shape, 1)
    return np.array(canvas, dtype=bool)
