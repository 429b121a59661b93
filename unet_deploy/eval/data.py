"""What `unet-deploy eval` scores against: the labelled images of DATA and the classes matched by name.

DATA is a dataset written by `unet-deploy labelme` (``JPEGImages/``, ``SegmentationClass/``,
``class_names.txt``) or a labelme folder, converted on the fly into a temporary dataset by the
same code (``data.labelme.convert_folder``). A file that cannot be used (no mask, an unreadable
mask, a mask of another size than its image) is one ``Problem``; the others are still scored.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.classes import CLASS_NAMES_FILE, IGNORE_ID, read_class_names
from ..data.palette import read_mask
from ..errors import UnetDeployError
from ..fileio import IMAGE_SUFFIXES, quote

IMAGES_DIR, MASKS_DIR = "JPEGImages", "SegmentationClass"  # data.dataset's layout (that module needs torch)


@dataclass
class Sample:
    """One labelled image: its file and its mask file (``stem`` names both); ``file`` is what reports
    name (the image, or the labelme JSON it was converted from)."""

    stem: str
    image: Path
    mask: Path
    file: str = ""

    def __post_init__(self) -> None:
        self.file = self.file or str(self.image)


@dataclass
class EvalData:
    """The images of DATA with masks, its class names, and the files that cannot be scored."""

    source: str
    classes: list[str]
    samples: list[Sample]
    problems: list[str] = field(default_factory=list)  # one line each: file, what is wrong, the fix
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def read_truth(self, sample: Sample, hw: tuple[int, int]) -> np.ndarray:
        """The class-id mask of ``sample``, checked against its image's ``hw``; raises one line."""
        mask = read_mask(sample.mask)
        if mask.shape[:2] != tuple(hw):
            raise UnetDeployError(
                f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {sample.image.name} is "
                f"{hw[1]}x{hw[0]}; write the mask at the image's size (re-run `unet-deploy labelme`)"
            )
        bad = mask[(mask >= len(self.classes)) & (mask != IGNORE_ID)]
        if bad.size:
            raise UnetDeployError(
                f"{sample.mask}: class id {int(bad.max())} but {CLASS_NAMES_FILE} names {len(self.classes)} classes; "
                f"add its name to {CLASS_NAMES_FILE} or fix the mask"
            )
        return mask

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def load_data(path: str | Path) -> EvalData:
    """The labelled images of ``path`` (a VOC dataset or a labelme folder); one-line error if there are none.

    Args:
        path: a folder written by `unet-deploy labelme`, or a folder of labelme JSON files.
    """
    root = Path(path)
    if not root.is_dir():
        raise UnetDeployError(f"{quote(root)}: no such folder; pass a dataset from `unet-deploy labelme` or a labelme folder")
    if (root / IMAGES_DIR).is_dir():
        return _voc(root, str(root))
    from ..data.labelme import convert_folder, find_json_files, unique_stems

    jsons = find_json_files(root)
    if not jsons:
        raise UnetDeployError(
            f"{root}: neither a dataset ({IMAGES_DIR}/, {MASKS_DIR}/, {CLASS_NAMES_FILE}) nor labelme JSON files; "
            f"pass the folder `unet-deploy labelme` wrote or the one labelme saved into"
        )
    tmp = tempfile.TemporaryDirectory(prefix="unet-eval-")
    summary = convert_folder(root, Path(tmp.name) / "voc", progress=False)
    data = _voc(Path(tmp.name) / "voc", str(root), required=False)
    data._tmp = tmp
    by_stem = {stem: str(path) for path, stem in unique_stems(root, jsons).items()}
    for s in data.samples:
        s.file = by_stem.get(s.stem, s.file)
    data.problems += [f"{p}: {m}" if str(p) not in m else m for p, m in summary.failed]
    if not data.samples:
        data.close()
        raise UnetDeployError(f"{root}: no labelme file could be converted ({len(summary.failed)} failed); "
                              f"fix the files named above, or convert with `unet-deploy labelme` to see why")  # fmt: skip
    return data


def _voc(root: Path, source: str, required: bool = True) -> EvalData:
    classes = read_class_names(root)
    masks = root / MASKS_DIR
    images = sorted(p for p in (root / IMAGES_DIR).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not masks.is_dir() or not any((masks / f"{p.stem}.png").is_file() for p in images):
        if required:
            raise UnetDeployError(
                f"{root}: no masks ({MASKS_DIR}/<name>.png) for its {len(images)} image(s); eval needs labelled "
                f"images: convert labelme annotations with `unet-deploy labelme SRC {root}`"
            )
    samples, problems = [], []
    for image in images:
        mask = masks / f"{image.stem}.png"
        if mask.is_file():
            samples.append(Sample(image.stem, image, mask))
        else:
            problems.append(f"{image}: no mask {MASKS_DIR}/{image.stem}.png; label the image or remove it from DATA")
    return EvalData(source, classes, samples, problems)


def match_classes(data_classes: Sequence[str], model_classes: Sequence[str], model: str,
                  classes: list[str]) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """Match ``model_classes`` to DATA's by name; id 0, the background, always matches. Returns the
    ``lut`` from the model's ids to eval ids (ids in ``classes``: DATA's, then the extra classes of
    the models) and notes on what differs.

    A model class DATA lacks is appended to ``classes`` (in place: its pixels are false positives);
    a DATA class the model lacks stays (its defects are all missed). No class > 0 in common is a
    one-line error.
    """
    common = set(model_classes[1:]) & set(data_classes[1:])
    if not common:
        raise UnetDeployError(
            f"{model}: its classes {list(model_classes[1:])} share none with DATA's {list(data_classes[1:])}; "
            f"evaluate on data labelled with the model's class names"
        )
    lut = np.zeros(256, np.uint8)
    lut[IGNORE_ID] = IGNORE_ID
    for i, name in enumerate(model_classes):
        if i > 0:
            if name not in classes:
                classes.append(name)
            lut[i] = classes.index(name)
    notes = []
    missing = [c for c in data_classes[1:] if c not in model_classes]
    extra = [c for c in model_classes[1:] if c not in data_classes]
    if missing:
        notes.append(f"{model}: DATA's class(es) {', '.join(missing)} unknown to the model: their defects count as missed")
    if extra:
        notes.append(f"{model}: class(es) {', '.join(extra)} not in DATA: every prediction of them is a false alarm")
    return lut, notes
