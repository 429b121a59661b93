"""One round of the labelling loop where the truth is known: select, pre-label, "correct", retrain, score.

The demo (``unet_deploy.demo``) and ``benchmarks/labelling_loop.py`` run it on synthetic images
whose labelme JSONs stand in for the person: a pool folder holds the images only (so `select`
sees them as unlabelled); the truth JSONs sit in another folder. "Correcting" a pre-annotation
means replacing it with the truth; the share of its pixels that already agreed with the truth
is the labelling work the pre-annotation saved.

    pool = hide_labels("truth/", "pool/")
    picks = select_to_folder(Segmenter("run1/best.pt"), ["pool/"], "to_label", count=16).picks
    saved = correct([p.image for p in picks], "to_label", "truth/", classes)
    merge_labelme_folders(["labelled/", "to_label/"], "round2/")   # then convert and train --init run1/best.pt
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data.classes import IGNORE_ID, class_ids
from .errors import UnetDeployError
from .fileio import IMAGE_SUFFIXES, atomic_write_text, quote


def split_off(folder: str | Path, other: str | Path, count: int) -> Path:
    """Move the last ``count`` labelme JSONs of ``folder`` with their images into ``other`` (made;
    ``labels.txt`` copied): one generated set split in two, with no file name in both."""
    folder, other = Path(folder), Path(other)
    other.mkdir(parents=True, exist_ok=True)
    if (folder / "labels.txt").is_file():
        shutil.copy2(folder / "labels.txt", other / "labels.txt")
    for js in sorted(folder.glob("*.json"))[-count:] if count > 0 else []:
        image = folder / str(json.loads(js.read_text(encoding="utf-8")).get("imagePath") or "")
        os.replace(image, other / image.name)
        os.replace(js, other / js.name)
    return other


def hide_labels(truth: str | Path, pool: str | Path) -> list[Path]:
    """``pool`` gets the images of ``truth`` without their JSONs (hard links where possible); returns them."""
    truth, pool = Path(truth), Path(pool)
    pool.mkdir(parents=True, exist_ok=True)
    out = []
    for image in sorted(p for p in truth.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        target = pool / image.name
        if not target.exists():
            try:
                os.link(image, target)
            except OSError:
                shutil.copy2(image, target)
        out.append(target)
    return out


@dataclass
class Correction:
    """What correcting the pre-annotations cost: per image the share of pixels the pre-annotation
    already had right (``unchanged``), and over all of them (pixel-weighted); ``defect_*`` the same
    over the pixels that are a defect in the proposal or in the truth (background left out)."""

    images: list[str]
    unchanged: list[float]
    pixels: int
    agreed: int
    defect_pixels: int = 0
    defect_agreed: int = 0

    @property
    def unchanged_share(self) -> float:
        return self.agreed / self.pixels if self.pixels else float("nan")

    @property
    def defect_unchanged_share(self) -> float:
        return self.defect_agreed / self.defect_pixels if self.defect_pixels else float("nan")


def correct(images: Sequence[str], folder: str | Path, truth: str | Path, classes: Sequence[str]) -> Correction:
    """Stand in for the person: compare each pre-annotation in ``folder`` with the truth, then save the truth.

    Args:
        images: file names (in ``folder``) of the pre-annotated images.
        folder: where the images and their pre-annotation JSONs (``<stem>.json``) are.
        truth: the folder of truth JSONs, one per image stem.
        classes: class names in id order (background first).
    """
    from .data.labelme import labelme_to_mask

    folder, truth = Path(folder), Path(truth)
    ids = class_ids(classes)
    result = Correction([], [], 0, 0)
    for name in images:
        stem = Path(name).stem
        json_path, truth_json = folder / f"{stem}.json", truth / f"{stem}.json"
        if not truth_json.is_file():
            raise UnetDeployError(f"{quote(truth_json)}: no truth for {name}; the pool and its truth must match")
        _, proposed = labelme_to_mask(json_path, ids)  # what the person sees in labelme
        _, wanted = labelme_to_mask(truth_json, ids)
        scored = wanted != IGNORE_ID
        agreed = int(((proposed == wanted) & scored).sum())
        defect = scored & ((proposed > 0) | (wanted > 0))
        result.defect_pixels += int(defect.sum())
        result.defect_agreed += int(((proposed == wanted) & defect).sum())
        result.images.append(name)
        result.unchanged.append(agreed / max(int(scored.sum()), 1))
        result.pixels += int(scored.sum())
        result.agreed += agreed
        doc = json.loads(truth_json.read_text(encoding="utf-8"))
        doc["imagePath"] = name
        atomic_write_text(json_path, json.dumps(doc, indent=1) + "\n")  # the person's save replaces the proposal
    return result


def merge_labelme_folders(sources: Sequence[str | Path], out: str | Path) -> Path:
    """Copy the labelme JSONs of ``sources`` with their images (and the first ``labels.txt``) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for src in map(Path, sources):
        if (src / "labels.txt").is_file() and not (out / "labels.txt").exists():
            shutil.copy2(src / "labels.txt", out / "labels.txt")
        for js in sorted(src.glob("*.json")):
            if js.name.startswith("selection"):
                continue
            doc = json.loads(js.read_text(encoding="utf-8"))
            image = src / str(doc.get("imagePath") or "")
            if not image.is_file():
                raise UnetDeployError(f"{quote(js)}: its image {quote(doc.get('imagePath'))} is not beside it")
            shutil.copy2(image, out / image.name)
            shutil.copy2(js, out / js.name)
    return out


def scores(models: Sequence[str | Path], data: str | Path, small: int = 1024,
           report: str | Path | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """mIoU, per-class IoU and the recall of defects under ``small`` pixels of each model on ``data``
    (a labelme folder or dataset), by `unet-deploy eval` (``unet_deploy.eval``); with ``report``,
    its eval.json/md/html are written there."""
    from . import metrics
    from .eval import evaluate, load_data, write_reports

    loaded = load_data(data)
    try:
        evaluation = evaluate(loaded, list(models), device="cpu")
        if report is not None:
            write_reports(evaluation, report)
    finally:
        loaded.close()
    out = []
    for source in evaluation.sources:
        entry = source.to_dict(evaluation.classes)
        found = truth = 0
        for c in range(1, len(evaluation.classes)):
            counts = metrics.defect_counts(source.defects, c, bucket=(0, small))
            found, truth = found + counts["found"], truth + counts["truth"]
        out.append({"model": entry["model"], "miou": entry["miou"],
                    "iou": {k: v["iou"] for k, v in entry["classes"].items()},
                    "small_defect_recall": found / truth if truth else float("nan"), "small_defects": truth})  # fmt: skip
    return out


def unchanged_summary(c: Correction) -> str:
    """One line: how much of the pre-annotations the correction left as it was."""
    per = np.asarray(c.unchanged)
    return (f"{100 * c.unchanged_share:.1f}% of the pre-labelled pixels unchanged by the correction "
            f"(per image {100 * per.min():.1f}-{100 * per.max():.1f}%, {len(per)} images; "
            f"{100 * c.defect_unchanged_share:.1f}% of the pixels that are a defect in either)")  # fmt: skip
