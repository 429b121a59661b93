"""Synthetic inspection images (textured metal or fabric, uneven light) with defects, as labelme JSON.

Each image shows a brushed-metal or woven-fabric surface under a random light
gradient, with up to five defects of three classes:

* ``scratch``: a bright, silvery curved stroke 8-14 px wide (at 256 px);
* ``spot``: a dark rust-brown round blob;
* ``dent``: a larger ellipse shaded bright on one side and dark on the other, with a shadowed rim.

Every defect is written as a labelme ``polygon`` and its pixels are painted inside
exactly that polygon as labelme rasterizes it, so converting the JSON gives back the
mask the generator drew. The same ``seed`` gives the same files.

By default defect sizes scale with the image (``min(W, H) / 256``). ``defect_size=(lo, hi)``
instead draws each defect's size "across" (scratch width, spot diameter, dent short axis)
log-uniformly in ``[lo, hi]`` pixels, whatever the frame size, and ``defects=(m, n)`` puts
``m..n`` defects on each image: ``PRESETS["hires"]`` is 2448x2048 frames with 15-35 defects
4-40 px across, the small-defects-on-large-frames case that tiled inference is for.

    generate("data/raw", count=200, size=(256, 256), seed=0)   # then: unet-deploy labelme data/raw data/voc
    generate("data/hires", count=40, seed=0, **PRESETS["hires"])
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UnetDeployError
from ..fileio import atomic_write_text, write_image
from .classes import BACKGROUND, IGNORE_LABEL
from .rasterize import draw_shape

CLASSES = ["background", "scratch", "spot", "dent"]
LABELME_VERSION = "5.7.0"
_JPEG_QUALITY = 95
#: named settings of ``sample``/``generate`` (``unet-deploy synth --preset NAME``)
PRESETS: dict[str, dict[str, Any]] = {
    "hires": {"size": (2448, 2048), "defect_size": (4.0, 40.0), "defects": (15, 35)},
}


@dataclass
class Sample:
    """One synthetic image: ``image`` (HxWx3 BGR uint8), ``mask`` (HxW class ids), labelme ``shapes``."""

    image: np.ndarray
    mask: np.ndarray
    shapes: list[dict[str, Any]]


def labels_txt() -> str:
    """The ``labels.txt`` for the synthetic classes, in labelme's convention (``__ignore__`` first)."""
    return "\n".join([IGNORE_LABEL, BACKGROUND, *CLASSES[1:]]) + "\n"


def sample(
    seed: int,
    index: int,
    size: tuple[int, int] = (256, 256),
    defect_size: tuple[float, float] | None = None,
    defects: tuple[int, int] | None = None,
) -> Sample:
    """Make synthetic image number ``index`` of the set made with ``seed``; ``size`` is (W, H).

    ``defect_size`` (lo, hi): each defect's size across in pixels, log-uniform (default: scaled
    with the image); ``defects`` (m, n): defects per image, uniform (default: 0-5, mostly 2-4).
    Depends only on (seed, index, size, defect_size, defects), so any image can be remade alone.
    """
    _check(size, defect_size, defects)
    w, h = size
    rng = np.random.default_rng([seed, index])
    base = _surface(rng, w, h)
    scale = min(w, h) / 256.0
    from PIL import Image

    canvas = Image.new("L", (w, h), 0)
    image = base.copy()
    shapes: list[dict[str, Any]] = []
    occupied = np.zeros((h, w), bool)
    if defects is None:
        n_defects = int(rng.choice([0, 1, 2, 3, 4, 5], p=[0.05, 0.15, 0.25, 0.25, 0.2, 0.1]))
    else:
        n_defects = int(rng.integers(defects[0], defects[1] + 1))
    min_area, gap = 12, int(3 * scale) + 2
    if defect_size is not None:
        min_area, gap = max(3, int(0.5 * defect_size[0] ** 2)), 6
    for _ in range(n_defects):
        class_id = int(rng.integers(1, len(CLASSES)))
        across = None if defect_size is None else float(np.exp(rng.uniform(*np.log(defect_size))))
        for _attempt in range(12):  # find a free place
            points = _POLYGONS[class_id](rng, w, h, scale, across)
            points = [[round(float(x), 2), round(float(y), 2)] for x, y in points]
            shape = {"label": CLASSES[class_id], "points": points, "group_id": None, "description": "",
                     "shape_type": "polygon", "flags": {}, "mask": None}
            win = _window(np.asarray(points), w, h, gap)  # work on the defect's neighbourhood only
            one = Image.new("L", (win[1].stop - win[1].start, win[0].stop - win[0].start), 0)
            local = dict(shape, points=[[x - win[1].start, y - win[0].start] for x, y in points])
            draw_shape(one, local, 1)
            region = np.array(one, dtype=bool)
            if region.sum() >= min_area and not (region & occupied[win]).any():
                break
        else:
            continue
        occupied[win] |= _grow(region, gap)
        _PAINTERS[class_id](rng, image[win], region, base[win])
        draw_shape(canvas, shape, class_id)
        shapes.append(shape)
    image = _light_and_noise(rng, image)
    return Sample(image=image, mask=np.array(canvas, dtype=np.uint8), shapes=shapes)


def _check(size: tuple[int, int], defect_size: tuple[float, float] | None, defects: tuple[int, int] | None) -> None:
    w, h = size
    if w < 32 or h < 32:
        raise UnetDeployError(f"--size {w} {h}: synthetic images need at least 32x32 pixels; pass a larger size")
    if defect_size is not None and not 1 <= defect_size[0] <= defect_size[1] <= min(w, h) / 4:
        raise UnetDeployError(
            f"--defect-size {defect_size[0]:g} {defect_size[1]:g}: need 1 <= MIN <= MAX <= {min(w, h) / 4:g} "
            "(a quarter of the shorter side)"
        )
    if defects is not None and not 0 <= defects[0] <= defects[1]:
        raise UnetDeployError(f"--defects {defects[0]} {defects[1]}: need 0 <= MIN <= MAX")


def generate(out_dir: str | Path, count: int, size: tuple[int, int] = (256, 256), seed: int = 0,
             progress: bool = True, defect_size: tuple[float, float] | None = None,
             defects: tuple[int, int] | None = None) -> list[Path]:
    """Write ``count`` synthetic images with their labelme JSONs and a ``labels.txt`` into ``out_dir``.

    Files are ``synth_0000.jpg`` + ``synth_0000.json`` and so on; ``size`` is (W, H);
    ``defect_size`` and ``defects`` as in ``sample``. Returns the image paths. Deterministic:
    the same arguments give the same files.
    """
    from tqdm import tqdm

    if count < 1:
        raise UnetDeployError(f"--count {count}: make at least one image")
    _check(size, defect_size, defects)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "labels.txt", labels_txt())
    paths = []
    digits = max(4, len(str(count - 1)))
    for i in tqdm(range(count), desc="synth", unit="image", disable=not progress, dynamic_ncols=True):
        s = sample(seed, i, size, defect_size, defects)
        stem = f"synth_{i:0{digits}d}"
        image_path = write_image(out / f"{stem}.jpg", s.image, _jpeg_params())
        data = {"version": LABELME_VERSION, "flags": {}, "shapes": s.shapes, "imagePath": image_path.name,
                "imageData": None, "imageHeight": int(s.image.shape[0]), "imageWidth": int(s.image.shape[1])}
        atomic_write_text(out / f"{stem}.json", json.dumps(data, indent=1))
        paths.append(image_path)
    return paths


def _jpeg_params() -> list[int]:
    import cv2

    return [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]


# ---------------------------------------------------------------- surfaces


def _surface(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A brushed-metal or woven-fabric texture, HxWx3 float32 in 0..255 (before light and noise)."""
    import cv2

    if rng.random() < 0.5:  # brushed metal: streaks along one direction
        level = rng.uniform(105, 160)
        noise = rng.standard_normal((h, w), dtype=np.float32)
        k = int(rng.integers(15, 41))
        streak = cv2.blur(noise, (k, 1) if rng.random() < 0.5 else (1, k))
        streak *= rng.uniform(10, 18) / (streak.std() + 1e-6)
        gray = level + streak
        tint = np.array([1.0 + rng.uniform(0, 0.06), 1.0 + rng.uniform(-0.02, 0.03), 1.0], np.float32)
        img = gray[:, :, None] * tint
    else:  # woven fabric: two crossing sine waves, coloured
        period = rng.uniform(5, 9)
        xx = np.arange(w, dtype=np.float32)[None, :]
        yy = np.arange(h, dtype=np.float32)[:, None]
        angle = rng.uniform(0, math.pi)
        u = xx * math.cos(angle) + yy * math.sin(angle)
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        weave = np.sin(2 * math.pi * u / period) * np.sin(2 * math.pi * v / period)
        fuzz = cv2.GaussianBlur(rng.standard_normal((h, w), dtype=np.float32), (0, 0), 1.0)
        gray = 1.0 + 0.08 * weave + 0.05 * fuzz
        color = rng.uniform([90, 90, 90], [175, 170, 165]).astype(np.float32)  # BGR
        if color[2] > color[0] + 10:  # no rust-brown cloth: a brown surface would be a spot everywhere
            color = color[[2, 1, 0]]
        img = gray[:, :, None] * color
    return img.astype(np.float32)


def _light_and_noise(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Uneven light (a tilted plane and a soft spot light), then sensor noise; returns uint8 BGR."""
    h, w = image.shape[:2]
    x = np.arange(w, dtype=np.float32)[None, :]
    y = np.arange(h, dtype=np.float32)[:, None]
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    radius = rng.uniform(0.4, 0.9) * max(w, h)
    spot = np.exp(-((x - cx) ** 2) / (2 * radius**2)) * np.exp(-((y - cy) ** 2) / (2 * radius**2))
    light = (1.0 + gx * (x / w - 0.5) + gy * (y / h - 0.5) + rng.uniform(0.0, 0.25) * spot) * rng.uniform(0.8, 1.15)
    noise = rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(rng.uniform(2, 5))
    out = image * light[:, :, None].astype(np.float32) + noise + np.float32(0.5)
    return np.clip(out, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- defect outlines (polygons)


def _scratch_polygon(rng: np.random.Generator, w: int, h: int, scale: float, across: float | None) -> np.ndarray:
    """A curved stroke: a quadratic Bezier centre line, offset both ways by half its width
    (``across``; then 6-20 widths long, at least 24 px, at most 0.6 of the shorter side)."""
    if across is None:
        length = rng.uniform(0.3, 0.6) * min(w, h)
        width = max(rng.uniform(8, 14) * scale, 4.0)
    else:
        length, width = min(max(rng.uniform(6, 20) * across, 24.0), 0.6 * min(w, h)), across
    angle = rng.uniform(0, math.pi)
    d = np.array([math.cos(angle), math.sin(angle)])
    n = np.array([-d[1], d[0]])
    centre = rng.uniform([0.15 * w, 0.15 * h], [0.85 * w, 0.85 * h])
    p0, p2 = centre - d * length / 2, centre + d * length / 2
    p1 = centre + n * rng.uniform(-0.3, 0.3) * length
    t = np.linspace(0, 1, 18)[:, None]
    line = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    tangent = np.gradient(line, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    half = width / 2 * (0.75 + 0.25 * np.sin(np.pi * t))  # a little thinner at the ends
    return np.concatenate([line + normal * half, (line - normal * half)[::-1]])


def _blob(rng: np.random.Generator, w: int, h: int, rx: float, ry: float, wobble: float, n: int) -> np.ndarray:
    cx = rng.uniform(rx + 2, w - rx - 2) if w > 2 * rx + 4 else w / 2
    cy = rng.uniform(ry + 2, h - ry - 2) if h > 2 * ry + 4 else h / 2
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
    phase = rng.uniform(0, 2 * math.pi, 3)
    r = 1 + wobble * (np.sin(2 * theta + phase[0]) + 0.5 * np.sin(3 * theta + phase[1])) / 1.5
    rot = phase[2]
    x, y = rx * r * np.cos(theta), ry * r * np.sin(theta)
    return np.stack([cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot)], 1)


def _spot_polygon(rng: np.random.Generator, w: int, h: int, scale: float, across: float | None) -> np.ndarray:
    r = max(rng.uniform(8, 16) * scale, 3.0) if across is None else across / 2
    return _blob(rng, w, h, r, r * rng.uniform(0.8, 1.0), 0.12, 20)


def _dent_polygon(rng: np.random.Generator, w: int, h: int, scale: float, across: float | None) -> np.ndarray:
    if across is None:
        rx = max(rng.uniform(18, 32) * scale, 6.0)
        return _blob(rng, w, h, rx, rx * rng.uniform(0.55, 0.9), 0.04, 28)
    ry = across / 2
    return _blob(rng, w, h, ry / rng.uniform(0.55, 0.9), ry, 0.04, 28)


# ---------------------------------------------------------------- defect looks (painted inside the polygon)


def _paint_scratch(rng: np.random.Generator, image: np.ndarray, region: np.ndarray, base: np.ndarray) -> None:
    level = rng.uniform(225, 250)
    image[region] = 0.15 * image[region] + 0.85 * np.array([level, level, level * 0.98], np.float32)


def _paint_spot(rng: np.random.Generator, image: np.ndarray, region: np.ndarray, base: np.ndarray) -> None:
    rust = np.array([rng.uniform(15, 35), rng.uniform(35, 60), rng.uniform(70, 105)], np.float32)  # BGR
    image[region] = 0.15 * image[region] + 0.85 * rust


def _paint_dent(rng: np.random.Generator, image: np.ndarray, region: np.ndarray, base: np.ndarray) -> None:
    ys, xs = np.nonzero(region)
    cx, cy = xs.mean(), ys.mean()
    extent = max(xs.max() - xs.min(), ys.max() - ys.min()) / 2 + 1
    angle = rng.uniform(0, 2 * math.pi)
    ramp = ((xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)) / extent  # -1..1 across the dent
    flat = image[region].mean(axis=0)  # the texture is pressed flat ...
    image[region] = 0.9 * flat[None, :] + rng.uniform(65, 85) * ramp[:, None]  # ... and lit from one side,
    rim = region & _grow(~region, max(2, round(extent / 12)))  # with a shadowed rim where the sheet bends
    image[rim] *= 0.55


_POLYGONS = {1: _scratch_polygon, 2: _spot_polygon, 3: _dent_polygon}
_PAINTERS = {1: _paint_scratch, 2: _paint_spot, 3: _paint_dent}


def _window(points: np.ndarray, w: int, h: int, gap: int) -> tuple[slice, slice]:
    """Rows and columns around a polygon, wide enough for its occupancy ring (``gap``) and a dent's rim."""
    x0, y0 = np.floor(points.min(0)).astype(int)
    x1, y1 = np.ceil(points.max(0)).astype(int)
    margin = gap + 4 + max(x1 - x0, y1 - y0) // 12
    return (slice(max(0, y0 - margin), min(h, y1 + margin + 1)), slice(max(0, x0 - margin), min(w, x1 + margin + 1)))


def _grow(region: np.ndarray, px: int) -> np.ndarray:
    import cv2

    return cv2.dilate(region.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)
