"""The seed baseline: the seed article's own way of predicting, on the same weights, timed like ours.

PIL: paste onto a black square of the longer side, ``resize`` to the input size (PIL's default
bicubic, ``keep_image_size_open_rgb``), ToTensor-style ``/255`` CHW float, eager fp32 forward
under ``no_grad``, ``torch.argmax``, ``cv2.resize`` (nearest) of the mask back to the square and
a crop, and ``cv2.findContours`` per class; one image at a time. The timer starts at the decoded
PIL image, as ours starts at the decoded OpenCV array.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from ..meta import ModelMeta
from .machine import sync
from .measure import STAGES, Stages, stage_times


class SeedRunner:
    """The seed's prediction with a ``Runner``'s interface (see the module docstring); PIL images are made untimed."""

    def __init__(self, model: Any, meta: ModelMeta, device: str, artefact: Path | None = None) -> None:
        self.model, self.meta, self.device, self.artefact = model, meta, device, artefact
        self._pil: dict[int, Any] = {}

    def prepare(self, images: Sequence[np.ndarray]) -> None:
        from PIL import Image

        for im in images:
            if id(im) not in self._pil:
                self._pil[id(im)] = Image.fromarray(cv2.cvtColor(im, cv2.COLOR_BGR2RGB))

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[Stages, list[np.ndarray]]:
        self.prepare(images)
        total: Stages = dict.fromkeys(STAGES, 0.0)
        masks = []
        for im in images:
            stages, mask = seed_predict(self.model, self._pil[id(im)], self.meta, self.device)
            for k, v in stages.items():
                total[k] += v
            masks.append(mask)
        return total, masks


def seed_predict(model: Any, img: Any, meta: ModelMeta, device: str) -> tuple[Stages, np.ndarray]:
    """One PIL image through the seed's pipeline; returns stage ms and the original-size mask."""
    import torch
    from PIL import Image

    t0 = time.perf_counter()
    temp = max(img.size)  # keep_image_size_open_rgb: paste top-left on a black square, resize
    square = Image.new("RGB", (temp, temp))
    square.paste(img, (0, 0))
    square = square.resize((meta.input_size[1], meta.input_size[0]))
    x = torch.from_numpy(np.array(square)).permute(2, 0, 1).float().div(255.0).unsqueeze(0)  # ToTensor
    t1 = time.perf_counter()
    with torch.no_grad():
        out = model(x.to(device))
        sync(device)
    t2 = time.perf_counter()
    mask = torch.argmax(out, dim=1)[0].to(torch.uint8).cpu().numpy()
    w, h = img.size
    mask = cv2.resize(mask, (temp, temp), interpolation=cv2.INTER_NEAREST)[:h, :w]
    for c in range(1, meta.num_classes):
        cv2.findContours((mask == c).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    t3 = time.perf_counter()
    return stage_times(t0, t1, t2, t3), mask


def load_seed(checkpoint: Path, meta: ModelMeta, device: str, threads: int | None = None) -> SeedRunner:
    """The seed runner on ``checkpoint``'s weights (eager, fp32) on ``device``."""
    import torch

    from ..checkpoint import load_checkpoint

    if threads:
        torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint, device=device)
    return SeedRunner(model, meta, device, checkpoint)
