"""What a benchmark runs on: the source image, and the model under test (a checkpoint exported on demand, or one file).

Every case loads through the runtime's ``Segmenter`` (its backend choice, its re-batching);
reduced precision goes through its public ``precision=`` option, and an exportable format is
exported at that precision first (``unet_deploy.export.export_model``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from .. import formats
from ..errors import UnetDeployError
from ..fileio import read_image
from ..meta import ModelMeta, check_size
from .cases import CHECKPOINT, SEED, Case
from .measure import Runner
from .seed import load_seed

DEFAULT_SOURCE_SIZE = (1920, 1080)  # width, height: a full-HD camera frame


def source_image(width: int = 1920, height: int = 1080, seed: int = 0) -> np.ndarray:
    """A synthetic inspection photo (BGR uint8, ``width`` x ``height``) from ``data.synthetic``.

    Realistic content matters: the letterbox resamples real texture, and a model trained on
    such images finds a handful of regions rather than noise. Deterministic for a given ``seed``.
    """
    from ..data.synthetic import sample

    return sample(seed, 0, (width, height)).image


def load_source(image: str | Path | None, size: Sequence[int] = DEFAULT_SOURCE_SIZE) -> tuple[np.ndarray, str]:
    """The benchmark input: ``image`` read and resized to ``size`` (W, H), or ``source_image(*size)``.

    Returns the BGR image and a short description for the report.
    """
    w, h = (int(v) for v in size)
    if image is None:
        return source_image(w, h), f"synthetic {w}x{h}"
    img = read_image(image, cv2.IMREAD_COLOR)
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    return img, f"{Path(image).name} resized to {w}x{h}"


@dataclass
class ModelSource:
    """What the benchmark was given: a checkpoint (exports made on demand) or one exported file."""

    path: Path
    meta: ModelMeta
    format: str  # the registry format of ``path``
    checkpoint: Path | None = None  # set when the input is a checkpoint
    workdir: Path | None = None
    _exported: dict[tuple[str, str, str], Path] = field(default_factory=dict)
    export_ms: dict[str, float] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        """The runtime backend of the input file."""
        return formats.get(self.format).backend

    def artefact(self, case: Case) -> Path:
        """The file ``case`` runs: the input itself, or an export made now into ``workdir``."""
        if self.checkpoint is None or case.fmt == CHECKPOINT:
            return self.path
        # An AOTI package is compiled for one device; reduced precision is exported where it runs.
        device = case.device if case.fmt == "aoti" or case.precision != "fp32" else "cpu"
        key = (case.fmt, device, case.precision)
        if key not in self._exported:
            t0 = time.perf_counter()
            out = self.workdir / f"{case.fmt}-{device}-{case.precision}"
            self._exported[key] = export(self.checkpoint, case.fmt, out, self.meta, device, case.precision)
            self.export_ms[" ".join(key)] = (time.perf_counter() - t0) * 1000
        return self._exported[key]

    def runner(self, case: Case, threads: int | None = None, tiling: dict[str, float] | None = None) -> Any:
        """Load ``case``: the seed pipeline, or a ``Segmenter`` at the case's precision (tiled with ``tiling``,
        else letterboxed as ``self.meta`` says)."""
        if case.backend == SEED:
            return load_seed(self.checkpoint, self.meta, case.device, threads)
        from ..runtime import Segmenter

        path = self.artefact(case)
        ours = path != self.path  # an export made here; the input file itself needs the user's opt-in
        seg = Segmenter(path, device=case.device, backend=formats.get(case.fmt).backend, threads=threads,
                        input_size=self.meta.input_size, precision=case.precision, letterbox=self.meta.pad,
                        tiling=tiling if tiling is not None else False, trust_code=ours)  # fmt: skip
        return Runner(seg, path)


def export(checkpoint: Path, fmt: str, out_dir: Path, meta: ModelMeta, device: str, precision: str) -> Path:
    """Export ``checkpoint`` to ``fmt`` as deployed: height and width fixed at ``meta.input_size``
    where the format can fix them (the runtime always letterboxes to it), batch dynamic."""
    from ..export import export_model

    static = "dynamic" in formats.get(fmt).options
    result = export_model(checkpoint, fmt, out_dir=out_dir, img_size=meta.input_size, dynamic=not static,
                          precision=precision, device=device, check=False, verbose=False)  # fmt: skip
    return Path(result[fmt])


def open_model(path: Path, img_size: Sequence[int] | None, workdir: Path) -> ModelSource:
    """Read the metadata of a checkpoint or an exported model; ``img_size`` overrides a checkpoint's."""
    if not path.is_file():
        raise UnetDeployError(f"{path}: file not found; pass a checkpoint (.pt) or an exported model")
    fmt = formats.for_path(path)
    if fmt.name == CHECKPOINT:
        from ..checkpoint import load_checkpoint

        _, meta = load_checkpoint(path)
        if img_size is not None:
            meta.input_size = check_size(img_size, "--img-size")
        return ModelSource(path, meta, fmt.name, checkpoint=path, workdir=workdir)
    from ..runtime import Segmenter

    meta = Segmenter(path, device="auto").meta
    if img_size is not None and check_size(img_size, "--img-size") != tuple(meta.input_size):
        raise UnetDeployError(
            f"{path}: exported for {meta.input_size[0]}x{meta.input_size[1]} input, not "
            f"{img_size[0]}x{img_size[1]}; drop --img-size or benchmark the checkpoint instead"
        )
    return ModelSource(path, meta, fmt.name, workdir=workdir)
