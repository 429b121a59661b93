"""labelme JSON to class-id masks and a VOC-style dataset, rasterized pixel for pixel as labelme draws.

labelme (v3 to v5+) stores shapes as point lists; its own converter draws them with
PIL.ImageDraw, and so does ``rasterize`` (without depending on labelme). Label
``__ignore__`` is written as 255. The image comes from ``imageData`` when embedded, else
from ``imagePath`` relative to the JSON (Windows separators allowed), with its EXIF
orientation applied as labelme applies it (``unet_deploy.fileio.decode_image``). Class names: ``classes``.
This module converts one file or a whole folder; it re-exports the names of the others.

Python use::

    names = read_labels_file("labels.txt")            # ['_background_', 'car', ...]
    image, mask = labelme_to_mask("a.json", class_ids(names))
    summary = convert_folder("annotated/", "dataset/", labels_file="labels.txt")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import UnetDeployError
from ..fileio import IMAGE_SUFFIXES, apply_orientation, atomic_write_bytes, atomic_write_text, fit_stem, quote, write_image
from .classes import (BACKGROUND, BACKGROUND_NAMES, CLASS_NAMES_FILE, IGNORE_ID, IGNORE_LABEL, class_ids,
                      parse_classes, read_class_names, read_labels_file)
from .labelme_files import LabelmeImage, glob_escape, load_labelme_image, read_image_oriented, read_labelme_json
from .outputs import check_output_folder
from .palette import save_palette_png
from .rasterize import LINE_WIDTH, POINT_RADIUS, SHAPE_TYPES, draw_shape, shape_label, shape_to_mask, shapes_to_mask

__all__ = [
    "BACKGROUND", "BACKGROUND_NAMES", "CLASS_NAMES_FILE", "IGNORE_ID", "IGNORE_LABEL", "LINE_WIDTH", "POINT_RADIUS",
    "SHAPE_TYPES", "ConvertSummary", "LabelmeImage", "apply_orientation", "class_ids", "convert_folder",
    "discover_labels", "draw_shape", "find_json_files", "labelme_to_mask",
    "load_labelme_image", "parse_classes", "read_class_names", "read_image_oriented", "read_labelme_json",
    "read_labels_file", "shape_to_mask", "shapes_to_mask", "unique_stems",
]  # fmt: skip


def labelme_to_mask(
    json_path: str | Path, class_ids: dict[str, int], skip_unknown: bool = False, allow_outside: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Read a labelme JSON and return ``(image, mask)``.

    ``image`` is the annotated image as OpenCV reads it (BGR, gray or BGRA; 8 or 16
    bit), EXIF-oriented. ``mask`` is an HxW uint8 array of class ids from
    ``class_ids`` (see ``class_ids()``), 255 under ``__ignore__``. Raises
    ``UnetDeployError`` (one line naming the file) for broken files and unknown labels, and
    for an ``imagePath`` outside the JSON's folder unless ``allow_outside``.
    """
    image, mask, _, _ = _convert_one(Path(json_path), class_ids, skip_unknown, None, allow_outside)
    return image.image, mask


def _convert_one(
    json_path: Path, ids: dict[str, int], skip_unknown: bool, root: Path | None = None, allow_outside: bool = False
) -> tuple[LabelmeImage, np.ndarray, int, dict[str, Any]]:
    data = read_labelme_json(json_path)
    loaded = load_labelme_image(json_path, data, root, allow_outside)
    mask, skipped = shapes_to_mask(data["shapes"], loaded.image.shape[:2], ids, skip_unknown, str(json_path))
    return loaded, mask, skipped, data


def discover_labels(json_paths: Iterable[str | Path]) -> list[str]:
    """Return background plus the sorted labels used in ``json_paths``, checked as ``--classes`` is
    (at most 255 classes). Unreadable files and files with a bad label are skipped here: the
    conversion reports them, one line each."""
    labels: set[str] = set()
    for p in json_paths:
        try:
            data = read_labelme_json(p)
            found = {shape_label(s, quote(p)) for s in data["shapes"] if isinstance(s, dict)}
        except UnetDeployError:
            continue
        labels.update(found)
    labels -= {IGNORE_LABEL, *BACKGROUND_NAMES, ""}
    return parse_classes([BACKGROUND] + sorted(labels), "labels found in the JSON files")


@dataclass
class ConvertSummary:
    """What ``convert_folder`` did: written stems, failures (file, one-line reason), class names."""

    out: Path
    class_names: list[str]
    labels_source: str
    converted: list[str] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    not_labelme: list[Path] = field(default_factory=list)
    skipped_shapes: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


def find_json_files(src: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """All ``*.json`` under ``src`` (or ``src`` itself), sorted, leaving out anything under ``exclude``."""
    src = Path(src)
    if src.is_file():
        return [src]
    ex = Path(exclude).resolve() if exclude is not None else None
    found = []
    for p in sorted(src.rglob("*")):
        if p.suffix.lower() != ".json" or not p.is_file():
            continue
        if ex is not None and (p.resolve() == ex or ex in p.resolve().parents):
            continue
        found.append(p)
    return found


def unique_stems(src: Path, paths: list[Path]) -> dict[Path, str]:
    """Map each path to a unique output stem: its sub-path below ``src`` joined with '_'.

    ``a/b c/x.json`` becomes ``a_b c_x``; on a clash (case-insensitive) ``_2``, ``_3``... is added.
    """
    out: dict[Path, str] = {}
    used: set[str] = set()
    for p in paths:
        rel = p.relative_to(src) if src.is_dir() else Path(p.name)
        stem = "_".join(rel.with_suffix("").parts)
        if not stem.strip(".") or stem.startswith("."):  # "..json", ".x.json": no empty, dot or hidden names
            stem = "_" + stem
        stem = fit_stem(stem)  # a/<200 chars>/<200 chars>.json: a legal path, too long as one name
        name, n = stem, 1
        while name.lower() in used:
            n += 1
            name = f"{stem}_{n}"
        used.add(name.lower())
        out[p] = name
    return out


def convert_folder(
    src: str | Path,
    out: str | Path,
    classes: Sequence[str] | str | None = None,
    labels_file: str | Path | None = None,
    viz: bool = False,
    skip_unknown: bool = False,
    progress: bool = True,
    allow_outside: bool = False,
) -> ConvertSummary:
    """Convert every labelme JSON under ``src`` into a VOC-style dataset in ``out``.

    Writes ``out/JPEGImages/<stem>.<ext>`` (the image, copied unchanged, EXIF tag included), ``out/SegmentationClass/<stem>.png`` (palette PNG, pixel = class id),
    ``out/class_names.txt`` and, with ``viz``, ``out/SegmentationClassVisualization/<stem>.jpg``.
    Classes come from ``labels_file`` (labelme's labels.txt), else ``classes``, else
    ``src/labels.txt`` when present, else every label found (sorted). Nested files get
    stems joined from their sub-path with '_'. A broken file is recorded in
    ``summary.failed`` and the others are still converted. An ``imagePath`` that leaves ``src``
    is refused (that file fails) unless ``allow_outside``.
    """
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if not src.exists():
        raise UnetDeployError(f"{quote(src)}: no such file or folder; pass the folder labelme saved into")
    if labels_file is not None and classes is not None:
        raise UnetDeployError("--labels and --classes both given; pass only one")
    jsons = find_json_files(src, exclude=out)
    if not jsons:
        raise UnetDeployError(f"{quote(src)}: no labelme .json files found; pass the folder labelme saved into")
    root = src if src.is_dir() else src.parent
    if labels_file is not None:
        names, how = read_labels_file(labels_file), str(labels_file)
    elif classes is not None:
        names, how = parse_classes(classes), "--classes"
    elif (root / "labels.txt").is_file():
        names, how = read_labels_file(root / "labels.txt"), str(root / "labels.txt")
    else:
        names, how = discover_labels(jsons), "labels found in the JSON files"
    check_output_folder(out, [out / "JPEGImages", out / "SegmentationClass"]
                        + ([out / "SegmentationClassVisualization"] if viz else []), [out / CLASS_NAMES_FILE])
    _check_existing(out, names)
    atomic_write_text(out / CLASS_NAMES_FILE, "\n".join(names) + "\n")

    ids = class_ids(names)
    summary = ConvertSummary(out=out, class_names=names, labels_source=how)
    stems = unique_stems(src, jsons)
    for path in tqdm(jsons, desc="labelme", unit="file", disable=not progress, dynamic_ncols=True):
        try:
            loaded, mask, skipped, _ = _convert_one(path, ids, skip_unknown, root, allow_outside)
        except UnetDeployError as e:
            if "not a labelme file" in e.message:
                summary.not_labelme.append(path)
            else:
                summary.failed.append((path, e.message))
            continue
        stem = stems[path]
        _write_image(out / "JPEGImages", stem, loaded)
        save_palette_png(out / "SegmentationClass" / f"{stem}.png", mask)
        if viz:
            write_image(out / "SegmentationClassVisualization" / f"{stem}.jpg", _viz(loaded.image, mask))
        summary.converted.append(stem)
        summary.skipped_shapes += skipped
    return summary


def _check_existing(out: Path, names: list[str]) -> None:
    old = out / CLASS_NAMES_FILE
    if old.is_file():
        prev = [ln.strip() for ln in old.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if prev != names:
            shown = ", ".join(prev[:6]) + (", ..." if len(prev) > 6 else "")
            raise UnetDeployError(
                f"{quote(old)}: this dataset has other classes ({shown}); choose a new OUT folder or delete it"
            )


def _write_image(folder: Path, stem: str, loaded: LabelmeImage) -> Path:
    suffix = loaded.suffix if loaded.suffix in IMAGE_SUFFIXES else ".png"
    target = folder / f"{stem}{suffix}"
    for old in folder.glob(f"{glob_escape(stem)}.*"):  # a rerun with another format: keep one image per stem
        if old.stem == stem and old.suffix.lower() in IMAGE_SUFFIXES and old != target:  # not part.1.png for part
            old.unlink()
    if suffix != loaded.suffix:
        return write_image(target, loaded.image)
    return atomic_write_bytes(target, loaded.raw)


def _viz(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from ..postprocess import overlay

    return overlay(image, mask, regions=[], alpha=0.5)
