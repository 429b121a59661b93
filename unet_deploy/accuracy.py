"""The accuracy gate of reduced-precision exports: pixel agreement with fp32 and mIoU drop on a validation set.

Every bf16 or int8 export is measured here before a file is written: each validation image
goes through THE runtime pipeline (``preprocess`` letterbox, inference, argmax, mapping back
to the original size) once with the fp32 model and once with the candidate. The gate
reports the share of original-size pixels whose class agrees with fp32, and, where
ground-truth masks exist, the mIoU of both and its drop in points. Below the thresholds
(default: agreement >= 99.0% and drop <= 1.0 point) the export is refused. numpy/OpenCV only.

A validation set is a folder: the VOC-style dataset that ``unet-deploy labelme`` writes
(``JPEGImages/`` + ``SegmentationClass/``), or a plain folder of images (agreement only).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import metrics
from .errors import UnetDeployError
from .fileio import IMAGE_SUFFIXES, read_image
from .meta import ModelMeta
from .postprocess import argmax
from .preprocess import check_varied, preprocess, unletterbox_mask

DEFAULT_MIN_AGREEMENT = 99.0  # percent of original-size pixels whose class equals fp32's
DEFAULT_MAX_MIOU_DROP = 1.0  # mIoU points (percent) the candidate may lose against fp32
VAL_EVERY = 5  # without an ImageSets split, every 5th image (sorted by name) is held back

Predict = Callable[[np.ndarray], np.ndarray]  # float32 NCHW batch -> logits NCHW


@dataclass
class Sample:
    """One validation/calibration image as OpenCV reads it, with its class-id mask if there is one."""

    name: str
    image: np.ndarray
    mask: np.ndarray | None = None


def dataset_images(root: str | Path) -> list[Path]:
    """The images of ``root``: ``root/JPEGImages/*`` for a VOC-style dataset, else ``root/*`` (sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise UnetDeployError(f"{root}: image folder not found; pass a dataset folder (JPEGImages/) or a folder of images")
    folder = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UnetDeployError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found; pass a folder with images")
    return files


def split_dataset(root: str | Path, hold_back: bool = True) -> tuple[list[Path], list[Path]]:
    """``(train, val)`` image paths of a dataset folder.

    ``ImageSets/Segmentation/val.txt`` (and ``train.txt``, else the rest) when the dataset has
    them, as VOC does; otherwise every ``VAL_EVERY``-th image sorted by name is held back for
    validation and the others are training images (calibration draws from those), or, with
    ``hold_back=False`` (validation comes from elsewhere), all images are training images.
    """
    root = Path(root)
    files = dataset_images(root)
    sets = root / "ImageSets" / "Segmentation"
    if (sets / "val.txt").is_file():
        val_stems = set((sets / "val.txt").read_text().split())
        train_file = sets / "train.txt"
        train_stems = set(train_file.read_text().split()) if train_file.is_file() else None
        val = [p for p in files if p.stem in val_stems]
        train = [p for p in files if p.stem not in val_stems and (train_stems is None or p.stem in train_stems)]
    elif not hold_back:
        train, val = files, []
    else:
        val = files[VAL_EVERY - 1 :: VAL_EVERY]
        held = set(val)
        train = [p for p in files if p not in held]
    return train, val


def _mask_path(image_path: Path) -> Path | None:
    """``.../JPEGImages/x.jpg`` -> ``.../SegmentationClass/x.png`` if it exists."""
    if image_path.parent.name != "JPEGImages":
        return None
    mask = image_path.parent.parent / "SegmentationClass" / f"{image_path.stem}.png"
    return mask if mask.is_file() else None


def spread(paths: Sequence[Path], count: int | None) -> list[Path]:
    """Up to ``count`` of ``paths``, evenly spread over the list (deterministic); all if ``count`` is None or 0."""
    paths = list(paths)
    if not count or count >= len(paths):
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, count).round().astype(int)]


def load_samples(paths: Sequence[Path], limit: int | None = None, what: str = "validation") -> list[Sample]:
    """Read up to ``limit`` images (evenly spread over ``paths``) and their masks, if any; a set of
    mostly flat images is refused (``check_varied``; ``what`` names the set in that error)."""
    from .data.palette import read_mask

    samples = []
    for p in spread(paths, limit):
        image = read_image(p)
        mask_file = _mask_path(p)
        mask = read_mask(mask_file) if mask_file else None
        if mask is not None and mask.shape != image.shape[:2]:
            raise UnetDeployError(f"{mask_file}: mask is {mask.shape} but its image is {image.shape[:2]}; re-create the dataset")
        samples.append(Sample(p.name, image, mask))
    check_varied([s.image for s in samples], Path(paths[0]).parent if paths else "", what)
    return samples


def predict_class_map(predict: Predict, image: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """The original-size class map of ``image`` through the runtime pipeline with ``predict``."""
    x, t = preprocess(image, meta)
    return unletterbox_mask(argmax(predict(x[None]))[0], t)


@dataclass
class GateResult:
    """What the gate measured (percentages and mIoU points) and whether the candidate passed."""

    precision: str
    images: int
    agreement: float
    worst_agreement: float
    worst_image: str
    miou_fp32: float | None
    miou: float | None
    miou_drop: float | None
    min_agreement: float
    max_miou_drop: float
    passed: bool
    source: str = ""
    foreground: float | None = None  # percent of pixels fp32 calls a class other than background

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, rounded for the sidecar and the IR's rt_info."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def line(self) -> str:
        """One line for the export log or an error message."""
        if self.miou is None:
            iou = "mIoU not measured (no ground-truth masks)"
        else:
            iou = f"mIoU {self.miou_fp32:.2f} -> {self.miou:.2f} (drop {self.miou_drop:.2f} points, max {self.max_miou_drop:g})"
        fg = "" if self.foreground is None else f", fp32 finds non-background in {self.foreground:.2f}% of the pixels"
        return (
            f"{self.precision} vs fp32 on {self.images} images of {self.source}: agreement "
            f"{self.agreement:.2f}% (min {self.min_agreement:g}%, worst image {self.worst_image} "
            f"{self.worst_agreement:.2f}%), {iou}{fg}"
        )


def check_thresholds(min_agreement: float, max_miou_drop: float) -> None:
    """Raise if the thresholds are outside what can be measured (0..100% and >= 0 points)."""
    if not 0.0 <= min_agreement <= 100.0:
        raise UnetDeployError(f"--min-agreement {min_agreement} must be a percentage between 0 and 100")
    if max_miou_drop < 0.0:
        raise UnetDeployError(f"--max-miou-drop {max_miou_drop} must be >= 0 mIoU points")


def evaluate(
    reference: Predict,
    candidate: Predict,
    samples: Sequence[Sample],
    meta: ModelMeta,
    *,
    precision: str,
    source: str = "",
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_miou_drop: float = DEFAULT_MAX_MIOU_DROP,
) -> GateResult:
    """Compare ``candidate`` with the fp32 ``reference`` on ``samples``; nothing is raised here.

    Agreement counts every original-size pixel; mIoU (against the masks, ignore id 255
    skipped) is measured when every sample has a mask. ``passed`` applies the thresholds.
    """
    from tqdm import tqdm

    check_thresholds(min_agreement, max_miou_drop)
    if not samples:
        raise UnetDeployError(f"{source or 'validation set'}: no validation images; pass --val DATA")
    comparison = metrics.MaskComparison(meta.num_classes)
    foreground = total = 0
    for s in tqdm(samples, desc=f"accuracy gate ({precision})", unit="img", leave=False, disable=None):
        ref = predict_class_map(reference, s.image, meta)
        comparison.add(ref, predict_class_map(candidate, s.image, meta), s.mask, s.name)
        foreground, total = foreground + int(np.count_nonzero(ref)), total + ref.size
    c = comparison.result()
    passed = c.agreement >= min_agreement and (c.miou_drop is None or c.miou_drop <= max_miou_drop)
    return GateResult(
        precision, c.images, c.agreement, c.worst_agreement, c.worst_image, c.miou_reference, c.miou, c.miou_drop,
        float(min_agreement), float(max_miou_drop), passed, source, 100.0 * foreground / max(1, total),
    )  # fmt: skip


class GateRefused(UnetDeployError):
    """The accuracy gate refused a reduced-precision export (``--precision auto`` then tries the next one)."""

    def __init__(self, message: str, result: GateResult) -> None:
        super().__init__(message)
        self.result = result


def enforce(result: GateResult, target: str | Path) -> None:
    """Raise the one-line refusal (``GateRefused``) for ``target`` when ``result`` did not pass."""
    if result.passed:
        return
    raise GateRefused(
        f"{target}: {result.precision} export refused by the accuracy gate: {result.line()}; "
        "calibrate on more representative training images (--calib), or accept the loss "
        "explicitly with --min-agreement/--max-miou-drop",
        result,
    )
