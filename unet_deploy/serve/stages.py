"""What the Triton Python models do with tensors: decode requests, pack answers, split the pipeline.

Plain numpy/OpenCV and our runtime, no Triton import, so the same code runs inside the
server's Python-backend stub and in-process in tests. The single-model layout calls
``Segmenter.predict_batch`` between ``request_images`` (``fileio.decode_image``: the one image
reader, EXIF orientation included) and ``pack_results``; the ensemble
layout cuts the same pipeline around the network: ``prepare`` (decode + THE letterbox) and
``finish`` (argmax, exact un-letterbox, regions).
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from ..errors import UnetDeployError
from ..fileio import decode_image
from ..meta import ModelMeta
from ..preprocess import LetterboxTransform, preprocess
from ..runtime import result as result_stage
from ..runtime.result import ARRAY_NAME, Inferred, Prepared, Result

TRANSFORM_WIDTH = 8  # src_hw, dst_hw, new_hw, offset as int32: how "transform" travels pre -> post


def request_images(encoded: np.ndarray | None, raw: np.ndarray | None) -> list[np.ndarray]:
    """One request's images from its ``image`` (bytes, shape [n, 1]) or ``raw`` (uint8 [n, H, W, C]) input."""
    if (encoded is None) == (raw is None):
        raise UnetDeployError("a request needs exactly one of the inputs 'image' (encoded bytes) and 'raw' (uint8 HxWxC)")
    if raw is not None:
        if raw.dtype != np.uint8 or raw.ndim != 4 or raw.shape[3] not in (1, 3, 4):
            raise UnetDeployError(f"input 'raw' has shape {list(raw.shape)} {raw.dtype}; send uint8 [n, H, W, 1|3|4] (BGR order)")
        return [im[:, :, 0] if im.shape[2] == 1 else im for im in raw]
    return [decode_image(bytes(b), f"image {i}") for i, b in enumerate(np.asarray(encoded, dtype=object).reshape(-1))]


def pack_results(results: Sequence[Result]) -> tuple[np.ndarray, np.ndarray]:
    """One request's results -> (``mask`` uint8 [n, H, W], ``regions`` JSON bytes [n, 1]).

    A request's masks travel as one tensor, so its images must share one size (send images of
    different sizes as separate requests; Triton batches them all the same)."""
    for r in results:
        if r.error is not None:
            raise UnetDeployError(r.error)
    sizes = sorted({r.size for r in results})
    if len(sizes) > 1:
        raise UnetDeployError(f"one request held images of sizes {sizes}; send images of different sizes as separate requests")
    masks = np.stack([r.mask for r in results])
    regions = np.array([[json.dumps(r.to_dict()).encode()] for r in results], dtype=object)
    return masks, regions


def prepare(images: Sequence[np.ndarray], meta: ModelMeta) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble pre step: images -> (float32 [n, C, h, w] network input, int32 [n, 8] transforms)."""
    pairs = [preprocess(im, meta) for im in images]
    x = np.stack([p[0] for p in pairs]).astype(np.float32, copy=False)
    t = np.array([[*p[1].src_hw, *p[1].dst_hw, *p[1].new_hw, *p[1].offset] for p in pairs], np.int32)
    return x, t


def finish(logits: np.ndarray, transforms: np.ndarray, meta: ModelMeta, min_area: int = 0,
           min_score: float = 0.0) -> list[Result]:  # fmt: skip
    """Ensemble post step: logits [n, K, h, w] and ``prepare``'s transforms -> one ``Result`` per image
    (the Segmenter's own last stage, ``runtime.result.finish``)."""
    meta.check_num_outputs(int(logits.shape[1]), "the network model's output")
    results = []
    for one, t in zip(logits, np.asarray(transforms, np.int64)):
        v = [int(a) for a in t]
        transform = LetterboxTransform((v[0], v[1]), (v[2], v[3]), (v[4], v[5]), (v[6], v[7]))
        result = result_stage.finish(Prepared(ARRAY_NAME, transform=transform), Inferred(one), meta.classes, min_area,
                                     min_score)  # fmt: skip
        result.timings = {}
        results.append(result)
    return results
