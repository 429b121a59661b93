"""THE letterbox (the seed's pad-to-square-then-resize, or pad to a multiple of 16) and its exact inverse.

Training, export checks, the runtime, the benchmarks and the C++ consumer all prepare pixels
with these functions (C++ mirrors ``letterbox_geometry`` line by line), so a model never sees
pixels prepared two different ways.
"""
from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from .errors import UnetDeployError
from .meta import DIVISOR, MIN_SIZE, PAD_MODES, ModelMeta


# An image whose every channel spans at most this many 8-bit levels is flat (all black, one colour):
# int8 calibrated or gated on such images learns and measures nothing about real ones.
FLAT_LEVELS = 8


@dataclass(frozen=True)
class LetterboxTransform:
    """Where the original image sits inside the network input.

    ``src_hw`` original (H, W); ``dst_hw`` network input (H, W); ``new_hw`` size of the resized
    image inside it; ``offset`` its (top, left) corner. The rest is padding.
    """

    src_hw: tuple[int, int]
    dst_hw: tuple[int, int]
    new_hw: tuple[int, int]
    offset: tuple[int, int]

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """Map (x, y) points in network pixels (corner convention) to original pixels."""
        xy = np.asarray(xy, dtype=np.float64)
        sx = self.src_hw[1] / self.new_hw[1]
        sy = self.src_hw[0] / self.new_hw[0]
        return (xy - (self.offset[1], self.offset[0])) * (sx, sy)


def letterbox_geometry(
    src_hw: Sequence[int], size: int | Sequence[int], pad: str = "top-left"
) -> LetterboxTransform:
    """Compute the letterbox of an ``src_hw`` image into ``size`` without touching pixels.

    Scale ``s = min(H'/H, W'/W)``; the resized size is ``floor(H*s + 0.5)`` (at least 1) so
    C++ and Python round alike; ``pad="top-left"`` puts it at (0, 0) like the seed,
    ``"center"`` splits the padding (the extra pixel goes bottom/right). ``"rect"`` resizes
    alike but pads (bottom/right) only up to the next multiple of ``DIVISOR`` (at least
    ``MIN_SIZE``): the network input is then smaller than ``size``, e.g. 1920x1080 into 256
    gives 144x256 (H x W).
    """
    h, w = int(src_hw[0]), int(src_hw[1])
    dh, dw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise UnetDeployError(f"image of size {h}x{w} is empty")
    if pad not in PAD_MODES:
        raise UnetDeployError(f"letterbox pad {pad!r} must be one of {PAD_MODES}")
    s = min(dh / h, dw / w)
    nh = min(dh, max(1, int(math.floor(h * s + 0.5))))
    nw = min(dw, max(1, int(math.floor(w * s + 0.5))))
    top, left = ((dh - nh) // 2, (dw - nw) // 2) if pad == "center" else (0, 0)
    if pad == "rect":  # nh <= dh, and dh is a multiple of DIVISOR >= MIN_SIZE: never larger than size
        dh, dw = (max(MIN_SIZE, -(-v // DIVISOR) * DIVISOR) for v in (nh, nw))
    return LetterboxTransform((h, w), (dh, dw), (nh, nw), (top, left))


def letterbox(
    image: np.ndarray,
    size: int | Sequence[int],
    pad: str = "top-left",
    fill: int | float = 0,
    interpolation: int | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, LetterboxTransform]:
    """Resize ``image`` to fit ``size`` (H, W) keeping its aspect ratio and pad the rest with ``fill``.

    Works on any HxW or HxWxC array (images and masks alike). ``interpolation=None`` resamples
    as the seed did (PIL's antialiased bicubic, see ``resize_image``); pass ``cv2.INTER_NEAREST_EXACT``
    for class masks. ``fill`` is in 8-bit levels: a 16-bit image is padded with ``fill * 257``.
    ``threads``: threads the resize may use (``resize_image``). Returns the padded image and the
    transform that ``unletterbox_mask`` undoes.
    """
    t = letterbox_geometry(image.shape[:2], size, pad)
    (nh, nw), (dh, dw), (top, left) = t.new_hw, t.dst_hw, t.offset
    if (nh, nw) != t.src_hw:
        image = resize_image(image, (nh, nw), interpolation, threads)
    if (nh, nw) != (dh, dw):
        if image.dtype == np.uint16:
            fill = fill * 257
        channels = 1 if image.ndim == 2 else image.shape[2]
        value = (fill,) * min(channels, 4) if channels <= 4 else fill
        squeezed = image.ndim == 3 and image.shape[2] == 1
        image = cv2.copyMakeBorder(
            image, top, dh - nh - top, left, dw - nw - left, cv2.BORDER_CONSTANT, value=value
        )
        if squeezed:
            image = image[:, :, None]
    return np.ascontiguousarray(image), t


def resize_image(
    image: np.ndarray, hw: tuple[int, int], interpolation: int | None = None, threads: int = 1
) -> np.ndarray:
    """Resize to ``hw`` (H, W) the one way this project does (letterbox, tiles, training).

    By default images go through PIL's antialiased bicubic, the seed's own resize
    (``reducing_gap=3`` box-reduces large factors first: 2.6x faster on 1080p, 0.19 grey levels
    from the exact result): 8-bit gray/3-channel images as they are (bit for bit PIL's, on up to
    ``threads`` threads: ``_pil_bicubic_u8``), 16-bit ones channel by channel in PIL's float mode
    (same filter, no intermediate rounding), so one scene at two bit depths gives network inputs
    within 1.1 8-bit levels (the 8-bit path rounds between its two passes). Other images use
    OpenCV's area (shrink) or bilinear (enlarge) filter.

    Args:
        image: HxW or HxWxC pixels.
        hw: output (H, W).
        interpolation: an OpenCV ``INTER_*`` flag instead of PIL's bicubic (e.g. for class masks).
        threads: threads an 8-bit PIL resize may use (1: this thread only).
    """
    nh, nw = hw
    if interpolation is None and image.dtype in (np.uint8, np.uint16) and (image.ndim == 2 or image.shape[2] == 3):
        from PIL import Image

        def pil_resize(plane: np.ndarray) -> np.ndarray:
            return np.asarray(Image.fromarray(plane).resize((nw, nh), Image.BICUBIC, reducing_gap=3.0))

        if image.dtype == np.uint8:
            return _pil_bicubic_u8(image, (nh, nw), threads)
        planes = [image] if image.ndim == 2 else [image[:, :, c] for c in range(image.shape[2])]
        out = [np.clip(np.rint(pil_resize(p.astype(np.float32))), 0, 65535).astype(np.uint16) for p in planes]
        return out[0] if image.ndim == 2 else np.dstack(out)
    if interpolation is None:
        interpolation = cv2.INTER_AREA if nh < image.shape[0] else cv2.INTER_LINEAR
    squeezed = image.ndim == 3 and image.shape[2] == 1
    image = cv2.resize(image, (nw, nh), interpolation=interpolation)
    return image[:, :, None] if squeezed else image  # OpenCV drops a single channel axis


def _pil_bicubic_u8(image: np.ndarray, hw: tuple[int, int], threads: int = 1) -> np.ndarray:
    """PIL's ``resize(BICUBIC, reducing_gap=3)`` of an 8-bit gray/3-channel image, bit for bit.

    PIL first box-reduces by ``factor`` (blocks of pixels), then resamples in two passes:
    horizontal (each row alone) into 8 bits, then vertical (each column alone). With ``threads``
    > 1 on a large image the reduce and horizontal pass run on bands of rows, the vertical pass on
    bands of columns, one PIL call per band with the whole image's coefficients (same box, same
    input size): no band needs its neighbours' pixels and the bytes are PIL's (1080p on 2 cores:
    ``benchmarks/results/prepost_paths.md``). A 2x2 reduce of even sizes is OpenCV's INTER_AREA
    halving, the same ``(a + b + c + d + 2) >> 2`` per pixel, reading the frame in place instead
    of copying it into PIL (1080p: 5.4 -> 3.4 ms on one thread).
    """
    from PIL import Image

    (nh, nw), (h, w) = hw, image.shape[:2]
    fx, fy = int(w / nw / 3.0) or 1, int(h / nh / 3.0) or 1  # PIL's own reducing_gap rule
    halve = (fx, fy) == (2, 2) and not h % 2 and not w % 2
    box = (0.0, 0.0, w / fx, h / fy)  # where the image lies in reduced pixels (PIL's box after reduce)

    def reduced(rows: np.ndarray) -> np.ndarray:
        if halve:
            return cv2.resize(rows, (w // 2, rows.shape[0] // 2), interpolation=cv2.INTER_AREA)
        if (fx, fy) != (1, 1):
            return np.asarray(Image.fromarray(rows).reduce((fx, fy)))
        return rows

    bands = max(1, min(int(threads), h * w // (fx * fy * BAND_MIN_PIXELS), -(-h // fy), nw))
    if bands == 1:
        if not halve:
            return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC, reducing_gap=3.0))
        return np.asarray(Image.fromarray(reduced(image)).resize((nw, nh), Image.BICUBIC, box=box))

    def horizontal(y0: int, y1: int) -> np.ndarray:  # source rows y0:y1 (multiples of fy) -> nw columns
        part = Image.fromarray(reduced(image[y0:y1]))
        return np.asarray(part.resize((nw, part.height), Image.BICUBIC, box=(0.0, 0.0, box[2], part.height)))

    rows = np.concatenate(_in_bands(horizontal, _edges(-(-h // fy), bands, fy, h)))

    def vertical(x0: int, x1: int) -> np.ndarray:  # columns x0:x1 -> nh rows
        part = Image.fromarray(np.ascontiguousarray(rows[:, x0:x1]))
        return np.asarray(part.resize((x1 - x0, nh), Image.BICUBIC, box=(0.0, 0.0, x1 - x0, box[3])))

    return np.concatenate(_in_bands(vertical, _edges(nw, bands)), axis=1)


# A resize is split in bands only where each band has at least this many source pixels (after the
# reduce): below it handing a band to another thread costs more than it saves.
BAND_MIN_PIXELS = 1 << 16


def _edges(n: int, bands: int, step: int = 1, end: int | None = None) -> list[int]:
    """``bands + 1`` split points of ``n`` units of ``step`` pixels (the last point ``end``, default ``n * step``)."""
    return [i * n // bands * step for i in range(bands)] + [n * step if end is None else end]


def _in_bands(work: Callable[[int, int], np.ndarray], edges: Sequence[int]) -> list[np.ndarray]:
    """``work(start, stop)`` for each pair of consecutive ``edges``: the first on this thread, the
    others on the band pool (PIL and OpenCV release the GIL while they compute); results in order."""
    spans = list(zip(edges[:-1], edges[1:]))
    pending = [_band_pool(len(spans) - 1).submit(work, a, b) for a, b in spans[1:]]
    first = work(*spans[0])
    return [first, *(p.result() for p in pending)]


@functools.lru_cache(maxsize=None)
def _band_pool(workers: int) -> ThreadPoolExecutor:
    """The threads that take the bands beyond the caller's own (one pool per band count, made on first use)."""
    return ThreadPoolExecutor(workers, thread_name_prefix="unet-deploy-band")


def unletterbox_mask(mask: np.ndarray, transform: LetterboxTransform) -> np.ndarray:
    """Map a network-resolution class map back to the original image size.

    Nearest neighbour with pixel centres aligned, in float64 so C++ can repeat it exactly:
    original row ``y`` takes network row ``top + min(floor((y + 0.5) * new_h / H), new_h - 1)``
    (columns alike); no shift, no off-by-one, padding dropped.
    """
    if mask.shape[:2] != tuple(transform.dst_hw):
        raise ValueError(f"mask is {mask.shape[:2]}, expected network size {transform.dst_hw}")
    rows, cols = network_indices(transform)
    first = int(rows[0])  # columns first, on the rows taken only: gathers on the small map, rows copied whole
    return np.take(np.take(mask[first : int(rows[-1]) + 1], cols, axis=1), rows - first, axis=0)


def network_indices(transform: LetterboxTransform) -> tuple[np.ndarray, np.ndarray]:
    """The network row taken by each original row and the network column taken by each original
    column (``unletterbox_mask``'s rule); both non-decreasing."""
    (h, w), (nh, nw), (top, left) = transform.src_hw, transform.new_hw, transform.offset
    rows = top + np.minimum(((np.arange(h) + 0.5) * nh / h).astype(np.intp), nh - 1)
    cols = left + np.minimum(((np.arange(w) + 0.5) * nw / w).astype(np.intp), nw - 1)
    return rows, cols


def to_model_color(image: np.ndarray, color: str = "RGB") -> np.ndarray:
    """Convert an image as OpenCV reads it (gray, BGR, BGRA; 8 or 16 bit) to HxWxC in ``color`` order."""
    check_image(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        if color == "GRAY":
            return image[:, :, None]
        return np.repeat(image[:, :, None], 3, axis=2)
    codes = {
        (3, "RGB"): cv2.COLOR_BGR2RGB, (3, "GRAY"): cv2.COLOR_BGR2GRAY,
        (4, "RGB"): cv2.COLOR_BGRA2RGB, (4, "BGR"): cv2.COLOR_BGRA2BGR, (4, "GRAY"): cv2.COLOR_BGRA2GRAY,
    }  # fmt: skip
    code = codes.get((image.shape[2], color))
    if code is None:  # BGR in, BGR wanted
        return image
    out = cv2.cvtColor(image, code)
    return out[:, :, None] if out.ndim == 2 else out


def normalize(image: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """HxWxC 8/16-bit pixels -> float32 CxHxW as ``(pixel / scale - mean) / std``.

    16-bit pixels are first brought to the 8-bit range (divided by 257).
    """
    depth = 257.0 if image.dtype == np.uint16 else 1.0
    x = image.astype(np.float32)
    x *= np.float32(1.0 / (meta.scale * depth))
    mean, std = np.asarray(meta.mean, np.float32), np.asarray(meta.std, np.float32)
    if mean.any() or (std != 1).any():
        x -= mean
        x /= std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def check_image(image: object) -> np.ndarray:
    """Return ``image`` if it is an image as OpenCV reads it (HxW, HxWx1/3/4; uint8/uint16; not empty).

    Otherwise raise ``UnetDeployError`` in one line: the narrow set of failures a caller (the
    runtime's batch loop) turns into that image's error without hiding bugs.
    """
    if not isinstance(image, np.ndarray):
        raise UnetDeployError(f"image is a {type(image).__name__}, not a numpy array as cv2.imread returns")
    if image.dtype not in (np.uint8, np.uint16):
        raise UnetDeployError(
            f"image dtype {image.dtype} is not supported; pass 8- or 16-bit pixels as OpenCV reads them"
        )
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise UnetDeployError(f"image of shape {image.shape} is not gray, BGR or BGRA (HxW or HxWx1/3/4)")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise UnetDeployError(f"image of shape {image.shape} is empty")
    return image


def preprocess(image: np.ndarray, meta: ModelMeta, threads: int = 1) -> tuple[np.ndarray, LetterboxTransform]:
    """One image as OpenCV reads it -> (float32 CxHxW network input, letterbox transform).

    With ``letterbox.pad == "rect"`` the network input's H and W depend on the image's aspect ratio.
    The colour conversion runs on the letterboxed image, not the frame. ``threads``: threads the
    resize may use (``resize_image``; the runtime passes its own thread count).
    """
    check_image(image)
    if image.ndim == 3 and image.shape[2] == 4:
        image = to_model_color(image, "BGR")  # drop alpha before resizing: less to resize
    boxed, t = letterbox(image, meta.input_size, meta.pad, meta.letterbox.get("fill", 0), threads=threads)
    return normalize(to_model_color(boxed, meta.color), meta), t


def preprocess_batch(
    images: Sequence[np.ndarray], meta: ModelMeta
) -> tuple[np.ndarray, list[LetterboxTransform]]:
    """Several images -> (float32 NxCxHxW, transforms); with ``"rect"`` they must share one input size."""
    pairs = [preprocess(im, meta) for im in images]
    shapes = sorted({p[0].shape for p in pairs})
    if len(shapes) > 1:
        raise UnetDeployError(f"rect letterbox gives different input sizes {shapes}; batch images of one size")
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def is_flat(image: np.ndarray) -> bool:
    """True when every channel of ``image`` spans at most ``FLAT_LEVELS`` 8-bit levels (16-bit scaled down)."""
    levels = FLAT_LEVELS * (257 if image.dtype == np.uint16 else 1)
    pixels = image[::2, ::2].reshape(-1, image.shape[2] if image.ndim == 3 else 1)
    return bool(pixels.size == 0 or (pixels.max(0).astype(np.float64) - pixels.min(0)).max() <= levels)


def check_varied(images: Sequence[np.ndarray], source: str | Path, what: str) -> None:
    """Refuse a calibration or validation set of which more than half the images are flat
    (``is_flat``): the gate would pass on what it cannot tell apart. ``what`` names the set."""
    flat = sum(is_flat(im) for im in images)
    if images and 2 * flat > len(images):
        raise UnetDeployError(
            f"{source}: {flat} of {len(images)} {what} images are flat (one colour, e.g. all black); int8 "
            "calibrated or gated on them says nothing about real images: pass representative images"
        )
