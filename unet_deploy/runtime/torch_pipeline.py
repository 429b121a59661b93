"""The whole letterbox pipeline on a torch device: uint8 frames in, original-size masks out.

For the torch backends (checkpoint, TorchScript, AOTInductor) on CUDA, and on the CPU for
tests: a uint8 frame goes up once (through pinned memory on CUDA); THE letterbox resize,
padding, colour order, normalisation, the network, the argmax and the exact mapping back
all run on the device; only the uint8 mask and the small network-size logits (for region
scores) come back. Fixed shapes are captured as one CUDA graph (frames up to masks).

The resize is Pillow's ``resize(BICUBIC, reducing_gap=3)`` of ``preprocess.resize_image``, bit for
bit: Pillow's box ``reduce`` (sums, then its fixed-point division), then its two separable
bicubic passes with its own 22-bit fixed-point coefficients and rounding between the passes,
each pass one matrix product in float64, which holds these integer sums exactly.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np

from ..meta import ModelMeta
from ..preprocess import LetterboxTransform, letterbox_geometry, network_indices

PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2
REDUCING_GAP = 3.0  # preprocess.resize_image's reducing_gap
MAX_GRAPHS = 8  # captured shapes kept per pipeline (oldest dropped)


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic filter (a = -0.5)."""
    a, x = -0.5, np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@lru_cache(maxsize=64)
def pil_bicubic_matrix(in_size: int, out_size: int, in1: float | None = None) -> np.ndarray:
    """Pillow's 8-bit bicubic coefficients as an ``(out_size, in_size)`` matrix of integers (float64).

    ``in1`` is the right edge of Pillow's source box (default ``in_size``). Row ``i`` applied to
    a line of pixels gives the fixed-point sum before Pillow's rounding (``resample_8bpc``).
    """
    in1 = float(in_size if in1 is None else in1)
    scale = in1 / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    out = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        w = _bicubic((np.arange(xmin, xmax) - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0:
            w = w / total
        fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << PRECISION_BITS)), np.trunc(0.5 + w * (1 << PRECISION_BITS)))
        out[i, xmin:xmax] = fixed
    return out


def reduce_factors(src_hw: Sequence[int], new_hw: Sequence[int]) -> tuple[int, int]:
    """Pillow's ``reducing_gap`` rule: the box-reduce factor (y, x) applied before the bicubic pass."""
    fy = int(src_hw[0] / new_hw[0] / REDUCING_GAP) or 1
    fx = int(src_hw[1] / new_hw[1] / REDUCING_GAP) or 1
    return fy, fx


def _reduce_multiplier(count: int) -> float:
    """Pillow's ``division_UINT32(count, 8)``: float32 ``2**32 / (256 * count)`` truncated."""
    return float(int(np.float32(2.0**32) / np.float32(256 * count)))


@dataclass
class DeviceOutput:
    """One image's answer from the device: original-size ``mask``, network-size ``class_map`` and ``logits``."""

    mask: np.ndarray
    class_map: np.ndarray
    logits: np.ndarray
    transform: LetterboxTransform


class _Shape:
    """Everything one (batch, frame shape) needs, made once: buffers, constants, its CUDA graph."""

    def __init__(self, torch: Any, device: Any, key: tuple, t: LetterboxTransform, meta: ModelMeta, pin: bool) -> None:
        n, h, w, _ = key
        (nh, nw), (dh, dw) = t.new_hw, t.dst_hw
        self.t, self.graph = t, None
        self.host_in = torch.empty(key, dtype=torch.uint8, pin_memory=pin)
        self.dev_in = torch.empty(key, dtype=torch.uint8, device=device)
        shapes = {"mask": ((n, h, w), torch.uint8), "class_map": ((n, dh, dw), torch.uint8),
                  "logits": ((n, meta.num_outputs, dh, dw), torch.float32)}  # fmt: skip
        self.out = {k: torch.empty(s, dtype=d, device=device) for k, (s, d) in shapes.items()}
        self.host_out = {k: torch.empty(s, dtype=d, pin_memory=pin) for k, (s, d) in shapes.items()}

        def put(a: np.ndarray, dtype: Any = torch.float64) -> Any:
            return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)

        rows, cols = network_indices(t)
        self.rows, self.cols = put(rows, torch.long), put(cols, torch.long)
        self.resize = (nh, nw) != (h, w)
        self.fy, self.fx = reduce_factors((h, w), (nh, nw)) if self.resize else (1, 1)
        rh, rw, box_h, box_w = h, w, float(h), float(w)
        self.amend = self.mult = None
        if self.fy > 1 or self.fx > 1:
            rh, rw = -(-h // self.fy), -(-w // self.fx)
            counts = np.outer(np.minimum(self.fy, h - self.fy * np.arange(rh)), np.minimum(self.fx, w - self.fx * np.arange(rw)))
            self.amend = put((counts // 2)[None, :, :, None])
            self.mult = put(np.vectorize(_reduce_multiplier)(counts)[None, :, :, None])
            box_h, box_w = h / self.fy, w / self.fx
        # Pillow skips a pass that changes nothing (same size, whole box)
        self.kw = put(pil_bicubic_matrix(rw, nw, box_w)) if self.resize and (nw, box_w) != (rw, float(rw)) else None
        self.kh = put(pil_bicubic_matrix(rh, nh, box_h)) if self.resize and (nh, box_h) != (rh, float(rh)) else None
        mean, std = np.asarray(meta.mean, np.float32), np.asarray(meta.std, np.float32)
        self.mean = put(mean, torch.float32) if mean.any() or (std != 1).any() else None
        self.std = put(std, torch.float32)


class TorchPipeline:
    """Frames -> masks on ``device`` around ``run`` (network input float32 NCHW -> logits).

    ``graphs`` captures each (batch, frame shape) once as a CUDA graph (CUDA only). Frames must
    be 8-bit gray, BGR or BGRA (``supports``); the Segmenter sends others through the host path.
    One call at a time (a lock): the captured buffers are shared.
    """

    def __init__(self, run: Callable[[Any], Any], meta: ModelMeta, device: Any, graphs: bool = True) -> None:
        import torch

        self.torch, self.run, self.meta, self.device = torch, run, meta, torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.graphs = graphs and self.cuda
        self._shapes: dict[tuple, _Shape] = {}
        self._eager: set[tuple] = set()  # shapes whose capture failed
        self._lock = threading.Lock()
        self._scale = float(np.float32(1.0 / meta.scale))  # preprocess.normalize's float32 factor
        self._fill = float(meta.letterbox.get("fill", 0))

    def supports(self, image: np.ndarray) -> bool:
        """8-bit gray/BGR/BGRA frames for an RGB or BGR model (16-bit and GRAY models stay on the host)."""
        return (image.dtype == np.uint8 and self.meta.color in ("RGB", "BGR")
                and (image.ndim == 2 or image.shape[2] in (1, 3, 4)))  # fmt: skip

    def __call__(self, images: Sequence[np.ndarray]) -> list[DeviceOutput]:
        """``images`` (all of one shape) through the device pipeline as one batch."""
        first = images[0]
        key = (len(images), first.shape[0], first.shape[1], 1 if first.ndim == 2 else first.shape[2])
        with self._lock:
            shape = self._shape(key)
            staged = shape.host_in.numpy()
            for i, im in enumerate(images):  # straight into the pinned batch: no stacked copy
                staged[i] = im if im.ndim == 3 else im[:, :, None]
            shape.dev_in.copy_(shape.host_in, non_blocking=True)
            if self.graphs and key not in self._eager:
                self._replay(key, shape)
            else:
                self._compute(shape)
            for name, buf in shape.out.items():
                shape.host_out[name].copy_(buf, non_blocking=True)
            if self.cuda:
                self.torch.cuda.current_stream(self.device).synchronize()
            mask, maps, logits = (shape.host_out[n].numpy().copy() for n in ("mask", "class_map", "logits"))
        return [DeviceOutput(mask[i], maps[i], logits[i], shape.t) for i in range(len(images))]

    def _shape(self, key: tuple) -> _Shape:
        shape = self._shapes.get(key)
        if shape is None:
            if len(self._shapes) >= MAX_GRAPHS:
                self._shapes.pop(next(iter(self._shapes)))
            t = letterbox_geometry(key[1:3], self.meta.input_size, self.meta.pad)
            shape = self._shapes[key] = _Shape(self.torch, self.device, key, t, self.meta, self.cuda)
        return shape

    def _replay(self, key: tuple, shape: _Shape) -> None:
        torch = self.torch
        if shape.graph is None:
            try:
                stream = torch.cuda.Stream(self.device)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    for _ in range(2):  # warm-up: cuDNN picks its kernels, lazy set-up happens here
                        self._compute(shape)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._compute(shape)
                shape.graph = graph
            except Exception:  # a runner that cannot be captured (e.g. an AOTI package) runs eagerly
                self._eager.add(key)
                torch.cuda.synchronize(self.device)
                self._compute(shape)
                return
        shape.graph.replay()

    # -- the arithmetic (no host transfers: graph-safe) --------------------------------------
    def _compute(self, shape: _Shape) -> None:
        torch = self.torch
        with torch.inference_mode():
            logits = self.run(self._network_input(shape)).float()
            shape.out["logits"].copy_(logits)
            if logits.shape[1] == 1:
                class_map = (logits[:, 0] > 0).to(torch.uint8)
            else:
                class_map = logits.argmax(dim=1).to(torch.uint8)
            shape.out["class_map"].copy_(class_map)
            shape.out["mask"].copy_(class_map.index_select(1, shape.rows).index_select(2, shape.cols))

    def _network_input(self, shape: _Shape) -> Any:
        """THE letterbox of ``preprocess.preprocess`` on the device: float32 NCHW network input."""
        torch = self.torch
        frames, t = shape.dev_in, shape.t
        pixels = frames[..., :3] if frames.shape[3] == 4 else frames  # BGRA: alpha dropped, as on the host
        resized = self._resize(pixels, shape)  # N, nh, nw, C: integer levels
        if resized.shape[3] == 1:
            resized = resized.expand(-1, -1, -1, 3)
        elif self.meta.color == "RGB":
            resized = resized.flip(3)
        (nh, nw), (dh, dw), (top, left) = t.new_hw, t.dst_hw, t.offset
        x = torch.full((frames.shape[0], dh, dw, 3), self._fill, dtype=torch.float32, device=self.device)
        x[:, top : top + nh, left : left + nw] = resized
        x = x * self._scale
        if shape.mean is not None:
            x = (x - shape.mean) / shape.std
        return x.permute(0, 3, 1, 2).contiguous()

    def _resize(self, pixels: Any, shape: _Shape) -> Any:
        """Pillow's ``resize((nw, nh), BICUBIC, reducing_gap=3)`` of uint8 NHWC frames, exactly."""
        torch = self.torch
        if not shape.resize:
            return pixels.float()
        if shape.mult is not None:  # Image.reduce: block sums (exact in float32), then (sum + count // 2) * m >> 24
            sums = torch.nn.functional.avg_pool2d(pixels.permute(0, 3, 1, 2).float(), (shape.fy, shape.fx),
                                                  (shape.fy, shape.fx), ceil_mode=True, divisor_override=1)  # fmt: skip
            x = torch.floor((sums.permute(0, 2, 3, 1).double() + shape.amend) * shape.mult / 2.0**24)
        else:
            x = pixels.to(torch.float64)
        if shape.kw is not None:
            x = _fixed_round(torch.einsum("nhwc,vw->nhvc", x, shape.kw), torch)
        if shape.kh is not None:
            x = _fixed_round(torch.einsum("nhwc,vh->nvwc", x, shape.kh), torch)
        return x.float()


def _fixed_round(sums: Any, torch: Any) -> Any:
    """Pillow's ``clip8``: ``(sum + 2**21) >> 22`` clamped to 0..255."""
    half = float(1 << (PRECISION_BITS - 1))
    return torch.clamp(torch.floor((sums + half) / float(1 << PRECISION_BITS)), 0.0, 255.0)
