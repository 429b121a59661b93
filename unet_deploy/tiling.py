"""Tiled inference at native resolution around any batched predictor (numpy/OpenCV only).

MONAI's ``sliding_window_inference`` cut: one function, ``tiled_class_map``, takes the image,
the ``ModelMeta`` and a predictor callable (float32 ``N x C x th x tw`` -> float32 logits
``N x K x th x tw``), so every backend gets tiling by passing its batched forward. The
contract (ModelMeta ``"tiling": {"scale": s, "overlap": o}``), step by step:

1. **Scale.** The image is resized to ``scaled_size`` = ``floor(H*s + 0.5) x floor(W*s + 0.5)``
   (at least 1, the letterbox's rounding) with the letterbox's own resize; ``s = 1`` is a no-op.
2. **Grid.** Per axis (``tile_starts``): one tile at 0 if the image is no longer than the tile,
   else ``n = ceil((L - T) / stride) + 1`` tiles with ``stride = T - floor(T*o + 0.5)`` (at
   least 1), spread evenly: tile ``i`` starts at ``i * (L - T) // (n - 1)`` (integer division),
   so the first starts at 0, the last ends exactly at the border, and neighbours overlap by at
   least ``o`` of a tile. Tiles never reach past an image that is at least a tile long.
   A 1920x1080 frame with 256x256 tiles and ``o = 0.25`` takes 10 x 6 = 60 tiles (the
   letterbox: 1 network input); an 8000x6000 frame takes 42 x 31 = 1302.
3. **Small images.** An axis shorter than the tile is padded at its end (bottom / right) by
   reflection without repeating the edge pixel (OpenCV's ``BORDER_REFLECT_101``, numpy's
   ``"reflect"``), after colour conversion and normalisation; the padded logits are dropped.
   Reflection continues the image's texture instead of inventing a dark frame, as the UNet's
   own reflect-padded convolutions do.
4. **Weights.** Each tile's logits are multiplied by ``tile_weights``: a separable Gaussian,
   ``g(i) = exp(-((i + 0.5 - T/2) / (T/8))**2 / 2)`` per axis (MONAI's ``mode="gaussian"``,
   ``sigma_scale=0.125``), computed in float64, multiplied, then cast to float32. It is about 1
   at the centre and > 0 everywhere (``exp(-8)`` at an edge, ``exp(-16)`` at a corner), so a
   pixel seen by one tile only (an image border or corner) takes that tile's answer, and
   where tiles overlap the one whose centre is nearer dominates. Edge defects stay found:
   every image pixel lies inside a tile of real image pixels, the border tiles included.
5. **Blend and argmax once.** Weighted logits are summed; no division by the weight sum is
   needed, because a positive factor changes neither the argmax nor the sign of a sigmoid
   logit. ``postprocess.argmax`` then gives class ids (one channel: the sigmoid rule, > 0).
   Region scores (``tiled_prediction``) take the blended logits divided by the weight sum, so
   a pixel's probability is a weighted mean of its tiles' logits, softmaxed once.
6. **Back to the original size** with the letterbox's pixel-centre nearest mapping
   (``postprocess.to_original``); at ``s = 1`` the map is already the original size.

Memory: tiles are taken in raster order and accumulated into a strip of ``th`` rows only;
rows are argmaxed into the output as soon as no later tile touches them, so the float32
accumulator is ``K x th x W'`` (32 MB for 4 classes, 256-px tiles, 8000 px wide), never K
full-size planes. Each tile is predicted once, ``tile_batch`` tiles per predictor call; the
sum's order does not depend on ``tile_batch``, so neither does the answer.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from .errors import UnetDeployError
from .fileio import check_pixel_limit
from .meta import DEFAULT_OVERLAP, ModelMeta, check_tiling
from .postprocess import argmax, to_original, top_probability
from .preprocess import LetterboxTransform, normalize, resize_image, to_model_color

#: float32 ``N x C x th x tw`` network inputs -> float32 ``N x K x th x tw`` logits
Predictor = Callable[[np.ndarray], np.ndarray]
#: Gaussian sigma as a fraction of the tile side (MONAI's ``sigma_scale``)
SIGMA_SCALE = 0.125


def scaled_size(hw: Sequence[int], scale: float) -> tuple[int, int]:
    """The ``(H, W)`` an ``hw`` image is resized to before tiling: ``floor(x * scale + 0.5)``, at least 1."""
    return tuple(max(1, int(math.floor(int(v) * scale + 0.5))) for v in hw)  # type: ignore[return-value]


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one axis of ``length`` pixels (rule 2 of the module docstring)."""
    if length <= tile:
        return [0]
    stride = max(1, tile - int(math.floor(tile * overlap + 0.5)))
    n = -(-(length - tile) // stride) + 1
    return [i * (length - tile) // (n - 1) for i in range(n)]


def tile_grid(
    hw: Sequence[int], tile_hw: Sequence[int], overlap: float = DEFAULT_OVERLAP
) -> tuple[list[int], list[int]]:
    """Tile rows and columns ``(ys, xs)`` covering an ``hw`` (already scaled) image; the tile count is
    ``len(ys) * len(xs)``, in raster order."""
    return tile_starts(int(hw[0]), int(tile_hw[0]), overlap), tile_starts(int(hw[1]), int(tile_hw[1]), overlap)


def tile_weights(tile_hw: Sequence[int]) -> np.ndarray:
    """float32 ``th x tw`` blending weights: the separable Gaussian of rule 4, ~1 at the centre, > 0 everywhere."""
    th, tw = (int(v) for v in tile_hw)

    def axis(t: int) -> np.ndarray:
        d = (np.arange(t, dtype=np.float64) + 0.5 - t / 2.0) / (SIGMA_SCALE * t)
        return np.exp(-0.5 * d * d)

    return np.outer(axis(th), axis(tw)).astype(np.float32)


def tiled_class_map(
    image: np.ndarray,
    meta: ModelMeta,
    predict: Predictor,
    scale: float = 1.0,
    overlap: float = DEFAULT_OVERLAP,
    tile_batch: int = 8,
) -> np.ndarray:
    """HxW uint8 class ids at the original size of ``image``, from overlapping network-size tiles
    blended as the module docstring says (MONAI's ``sliding_window_inference`` cut: any predictor).

    Args:
        image: gray, BGR or BGRA, 8 or 16 bit, as OpenCV reads it.
        meta: the model's ModelMeta: ``input_size`` is the tile size, its colour order and
            normalisation prepare each tile.
        predict: float32 ``(N, C, H, W)`` tiles -> ``(N, K, H, W)`` logits (``Segmenter.infer``, any backend).
        scale: the image is resized by it first (1.0: native pixels).
        overlap: fraction of a tile shared with its neighbour (0 <= overlap <= ``meta.MAX_OVERLAP``).
        tile_batch: at most this many tiles per ``predict`` call.
    """
    return _tiled(image, meta, predict, scale, overlap, tile_batch, False)[0]


def tiled_prediction(
    image: np.ndarray,
    meta: ModelMeta,
    predict: Predictor,
    scale: float = 1.0,
    overlap: float = DEFAULT_OVERLAP,
    tile_batch: int = 8,
) -> tuple[np.ndarray, np.ndarray, LetterboxTransform | None]:
    """``tiled_class_map``'s mask, with what region scores need: the probability of the predicted
    class at each pixel > 0 of the scaled image (``postprocess.top_probability`` of the blended
    logits divided by the weight sum; 0 at class 0), and the transform from that scaled size back
    to the original (``None`` at scale 1). Pass both to ``postprocess.find_regions``.

    Args:
        image, meta, predict, scale, overlap, tile_batch: as ``tiled_class_map``.
    """
    return _tiled(image, meta, predict, scale, overlap, tile_batch, True)


def _tiled(image: np.ndarray, meta: ModelMeta, predict: Predictor, scale: float, overlap: float, tile_batch: int,
           want_confidence: bool) -> tuple[np.ndarray, np.ndarray | None, LetterboxTransform | None]:  # fmt: skip
    checked = check_tiling({"scale": scale, "overlap": overlap})
    scale, overlap = checked["scale"], checked["overlap"]
    if isinstance(tile_batch, bool) or not isinstance(tile_batch, (int, np.integer)) or tile_batch < 1:
        raise UnetDeployError(f"tile_batch {tile_batch!r} must be a positive integer (tiles per predictor call)")
    h, w = image.shape[:2]
    image = _scaled(image, scale)
    sh, sw = image.shape[:2]
    th, tw = meta.input_size
    ys, xs = tile_grid((sh, sw), (th, tw), overlap)
    tiles = [(y, x) for y in ys for x in xs]
    weights = tile_weights((th, tw))
    k = meta.num_outputs
    strip = np.zeros((k, th, sw), np.float32)  # weighted logit sums of rows [top, top + th)
    out = np.empty((sh, sw), np.uint8)
    # scores: the weight sums of the strip and the probability map (calloc: untouched rows cost nothing)
    wsum = np.zeros((1, th, sw), np.float32) if want_confidence else None
    confidence = np.zeros((sh, sw), np.float32) if want_confidence else None
    top = 0
    for first in range(0, len(tiles), int(tile_batch)):
        group = tiles[first : first + int(tile_batch)]
        logits = predict(np.stack([_tile_input(image, y, x, (th, tw), meta) for y, x in group]))
        if getattr(logits, "shape", None) != (len(group), k, th, tw):
            raise UnetDeployError(
                f"the predictor returned logits of shape {getattr(logits, 'shape', type(logits).__name__)} "
                f"for {len(group)} tiles; expected {(len(group), k, th, tw)} (K = the model's {k} outputs)"
            )
        for (y, x), tile_logits in zip(group, logits):
            if y > top:
                _finish_rows(strip, out, top, y, wsum, confidence)
                top = y
            hh, ww = min(th, sh - y), min(tw, sw - x)
            strip[:, :hh, x : x + ww] += tile_logits[:, :hh, :ww] * weights[:hh, :ww]
            if wsum is not None:
                wsum[0, :hh, x : x + ww] += weights[:hh, :ww]
    _finish_rows(strip, out, top, sh, wsum, confidence)
    if (sh, sw) == (h, w):
        return out, confidence, None
    back = LetterboxTransform((h, w), (sh, sw), (sh, sw), (0, 0))
    return to_original(out, back), confidence, back


def _scaled(image: np.ndarray, scale: float) -> np.ndarray:
    """``image`` resized by ``scale`` as tiling resizes it (the letterbox's resize), alpha dropped first."""
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise UnetDeployError(f"image of size {h}x{w} is empty")
    sh, sw = scaled_size((h, w), scale)
    if sh * sw > h * w:  # scale 4 makes 16 times the pixels: the image limit applies to what is made
        check_pixel_limit((sw, sh), f"the {w}x{h} image scaled by {scale:g} for tiling")
    if (sh, sw) == (h, w):
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        image = to_model_color(image, "BGR")  # drop alpha before resizing, as preprocess does
    return resize_image(image, (sh, sw), None)


def tile_inputs(image: np.ndarray, meta: ModelMeta, limit: int | None = None) -> list[np.ndarray]:
    """The float32 ``C x th x tw`` network inputs of ``image``'s tiles, exactly as tiled inference makes them
    (``meta.tiling``'s scale and overlap): calibration data for a model that only ever sees tiles.

    Args:
        image: HxWxC pixels in the file's order (BGR), as ``tiled_class_map`` takes them.
        meta: a model's metadata with ``tiling`` set.
        limit: at most this many tiles, spread evenly over the raster order (None: all).
    """
    tiling = check_tiling(meta.tiling)
    if tiling is None:
        raise UnetDeployError("tile_inputs needs a ModelMeta with tiling (a model trained with --tile-scale)")
    scaled = _scaled(image, tiling["scale"])
    ys, xs = tile_grid(scaled.shape[:2], meta.input_size, tiling["overlap"])
    tiles = [(y, x) for y in ys for x in xs]
    if limit is not None and len(tiles) > limit:
        tiles = [tiles[i * len(tiles) // limit] for i in range(max(1, limit))]
    return [_tile_input(scaled, y, x, tuple(meta.input_size), meta) for y, x in tiles]


def _tile_input(image: np.ndarray, y: int, x: int, tile_hw: tuple[int, int], meta: ModelMeta) -> np.ndarray:
    """float32 ``C x th x tw`` network input of the tile at ``(y, x)``, reflect-padded where the image ends."""
    th, tw = tile_hw
    tile = normalize(to_model_color(image[y : y + th, x : x + tw], meta.color), meta)
    pad_h, pad_w = th - tile.shape[1], tw - tile.shape[2]
    if pad_h or pad_w:
        tile = np.pad(tile, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
    return tile


def _finish_rows(strip: np.ndarray, out: np.ndarray, top: int, end: int, wsum: np.ndarray | None = None,
                 confidence: np.ndarray | None = None) -> None:  # fmt: skip
    """Argmax rows ``[top, end)`` (no later tile touches them) into ``out`` (and, with ``wsum``, the
    probability of the class at their pixels > 0 into ``confidence``), then slide the strip down."""
    n = end - top
    out[top:end] = argmax(strip[:, :n])
    if wsum is not None and confidence is not None:
        ys, xs = np.nonzero(out[top:end])
        if len(ys):
            blended = strip[:, ys, xs] / wsum[:, ys, xs]  # K x P: the blended logits of those pixels
            confidence[top + ys, xs] = top_probability(blended[:, :, None])[:, 0]
        wsum[:, : wsum.shape[1] - n] = wsum[:, n:]
        wsum[:, wsum.shape[1] - n :] = 0.0
    strip[:, : strip.shape[1] - n] = strip[:, n:]
    strip[:, strip.shape[1] - n :] = 0.0
