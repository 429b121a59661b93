"""Scoring deployed models (or mask PNGs made by anything) against DATA's ground truth, into eval.json.

Every source is measured the same way, with the definitions of ``unet_deploy.metrics``: one
confusion matrix over the whole set (IoU, Dice, precision, recall, mIoU, pixel accuracy), the
defects of every image (found, false alarms, by size), the ``--min-score`` sweep from the
regions' scores, and per-image numbers. A model runs through ``Segmenter`` exactly as
`unet-predict` runs it; ``--masks`` reads the masks (and, when the folder is `unet-predict`'s,
the region scores of its report.json).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .. import metrics
from ..data.palette import read_mask
from ..errors import UnetDeployError
from ..fileio import read_image
from .data import EvalData, Sample, match_classes

WORST_KEPT = 6  # images per source kept for the report's pictures


@dataclass
class ImageScore:
    """One image of one source: its numbers, and (for the worst images) its prediction in eval ids."""

    stem: str
    file: str
    miou: float
    found: int
    missed: int
    false_alarms: int
    ms: float | None
    pred: np.ndarray | None = field(default=None, repr=False)


@dataclass
class SourceScore:
    """Everything measured of one model (or masks folder) over DATA."""

    model: str
    backend: str
    precision: str | None
    device: str | None
    conf: np.ndarray
    defects: list[metrics.Defects] = field(default_factory=list)
    images: list[ImageScore] = field(default_factory=list)

    def worst(self, n: int = WORST_KEPT) -> list[ImageScore]:
        """The ``n`` worst images: lowest mIoU first, then most misses and false alarms."""
        key = lambda s: (1.0 if np.isnan(s.miou) else s.miou, -(s.missed + s.false_alarms), s.stem)  # noqa: E731
        return sorted(self.images, key=key)[:n]

    def _keep_worst(self) -> None:
        keep = {id(s) for s in self.worst()}
        for s in self.images:
            if id(s) not in keep:
                s.pred = None

    def to_dict(self, classes: Sequence[str]) -> dict[str, Any]:
        """This source's entry of eval.json (fractions; None where undefined)."""
        conf = self.conf
        iou, dice = metrics.iou_per_class(conf), metrics.dice_per_class(conf)
        prec, rec = metrics.precision_per_class(conf), metrics.recall_per_class(conf)
        per_class, for_recall, sweeps = {}, {}, {}
        for c, name in enumerate(classes):
            if c == 0:
                continue
            per_class[name] = {"iou": _num(iou[c]), "dice": _num(dice[c]), "precision": _num(prec[c]),
                               "recall": _num(rec[c]), "defects": metrics.defect_table(self.defects, c)}  # fmt: skip
            if self.scored:
                sweeps[name] = metrics.score_sweep(self.defects, c)
                for_recall[name] = metrics.score_for_recall(sweeps[name])
            else:
                for_recall[name] = None
        ms = [s.ms for s in self.images if s.ms is not None]
        return {
            "model": self.model, "backend": self.backend, "precision": self.precision, "device": self.device,
            "miou": _num(metrics.mean_iou(conf)), "pixel_accuracy": _num(metrics.pixel_accuracy(conf)),
            "ms_per_image": round(float(np.mean(ms)), 3) if ms else None,
            "classes": per_class, "score_for_recall_95": for_recall, "score_sweep": sweeps,
            "confusion": conf.tolist(),
            "per_image": [{"file": s.file, "miou": _num(s.miou), "found": s.found, "missed": s.missed,
                           "false_alarms": s.false_alarms, "ms": s.ms} for s in self.images],
        }  # fmt: skip

    @property
    def scored(self) -> bool:
        """Whether the regions carried scores (a model, or `unet-predict`'s report.json beside masks)."""
        return any((~np.isnan(d.pred_score)).any() for d in self.defects)


@dataclass
class Evaluation:
    """The result of `unet-deploy eval`: DATA, the eval classes, one ``SourceScore`` per model, problems."""

    data: EvalData
    classes: list[str]
    sources: list[SourceScore]
    notes: list[str]
    problems: list[str]

    def to_dict(self) -> dict[str, Any]:
        """eval.json (names other programs read: see README)."""
        stems = {s.stem for src in self.sources for s in src.images}
        return {"dataset": self.data.source, "images": len(stems), "classes": list(self.classes),
                "models": [s.to_dict(self.classes) for s in self.sources],
                "notes": list(self.notes), "problems": list(self.problems)}  # fmt: skip


def _num(v: float) -> float | None:
    return None if v is None or np.isnan(v) else round(float(v), 6)


Predicted = tuple[Sample, "np.ndarray | None", "dict | None", "float | None", "str | None"]


def evaluate(
    data: EvalData,
    models: Sequence[str | Path] = (),
    masks: str | Path | None = None,
    batch_size: int = 8,
    progress: Callable[[str], None] | None = None,
    **segmenter_options: Any,
) -> Evaluation:
    """Score ``models`` (files the runtime runs) or the ``masks`` folder on ``data``.

    Args:
        data: ``eval.data.load_data(DATA)``.
        models: model files, each run by ``Segmenter(model, **segmenter_options)``.
        masks: instead of models, a folder of class-id PNGs (``<stem>.png`` or ``masks/<stem>.png``)
            in DATA's class ids.
        batch_size: images per inference call.
        progress: called with one line per source when it starts.
        segmenter_options: ``device``, ``tiling``, ``letterbox``, ``min_area``, ``min_score`` ...
    """
    if bool(models) == (masks is not None):
        raise UnetDeployError("pass MODEL file(s) or --masks FOLDER (one of them)")
    classes = list(data.classes)
    notes: list[str] = []
    problems = list(data.problems)
    runs: list[tuple[Any, np.ndarray]] = []
    if masks is not None:
        runs.append((Path(masks), np.arange(256, dtype=np.uint8)))
    else:
        from ..runtime import Segmenter

        for m in models:
            seg = Segmenter(m, **segmenter_options)
            lut, more = match_classes(data.classes, seg.classes, str(m), classes)
            notes += more
            runs.append((seg, lut))
    k = len(classes)
    sources = []
    for source, lut in runs:
        if isinstance(source, Path):
            score = SourceScore(str(source), "masks", None, None, np.zeros((k, k), np.int64))
            predicted = _masks(data, source, k)
        else:
            score = SourceScore(str(source.model_path), source.backend, source.precision, source.device,
                                np.zeros((k, k), np.int64))  # fmt: skip
            predicted = _predictions(data, source, batch_size)
        if progress:
            progress(f"[eval] {score.model}: {score.backend}" + (f" {score.precision} on {score.device}" if score.device else ""))
        for sample, pred, scores, ms, error in predicted:
            try:
                if error is not None:
                    raise UnetDeployError(error)
                assert pred is not None
                truth = data.read_truth(sample, pred.shape[:2])
            except UnetDeployError as e:
                line = " ".join(e.message.split())
                if line not in problems:
                    problems.append(line)
                continue
            _score_image(score, sample, truth, lut[pred], scores, ms, k, lut, segmenter_options.get("min_area", 0))
        sources.append(score)
    return Evaluation(data, classes, sources, notes, problems)


def _score_image(score: SourceScore, sample: Sample, truth: np.ndarray, pred: np.ndarray, scores: dict | None,
                 ms: float | None, k: int, lut: np.ndarray, min_area: int) -> None:  # fmt: skip
    """Add one image to ``score``; ``scores`` (regions kept, keyed (class, x, y)) or, without them,
    ``min_area`` decides which predicted components count."""
    conf = metrics.confusion(truth, pred, k)
    score.conf += conf
    keyed = None if scores is None else {(int(lut[c]), x, y): s for (c, x, y), s in scores.items()}
    d = metrics.image_defects(truth, pred, k, keyed, min_area)
    score.defects.append(d)
    found = int(d.found().sum())
    score.images.append(ImageScore(sample.stem, sample.file, metrics.mean_iou(conf), found,
                                   len(d.truth_area) - found, int(d.false_alarms().sum()),
                                   None if ms is None else round(ms, 3), pred))  # fmt: skip
    if len(score.images) > 2 * WORST_KEPT:
        score._keep_worst()


def _predictions(data: EvalData, seg: Any, batch_size: int) -> Iterator[Predicted]:
    """(sample, mask, region scores keyed (class, x, y), ms, error) per sample, as `unet-predict` segments it."""
    samples = data.samples
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        for sample, r in zip(chunk, seg.predict_batch([s.image for s in chunk], batch_size=batch_size)):
            if r.error is not None:
                yield sample, None, None, None, r.error
                continue
            scores = {(r_.class_id, int(r_.contour[0][0]), int(r_.contour[0][1])): r_.score for r_ in r.regions}
            yield sample, r.mask, scores, float(sum(r.timings.values())), None


def _masks(data: EvalData, folder: Path, k: int) -> Iterator[Predicted]:
    """(sample, mask, scores, None, error) per sample from ``folder`` (`unet-predict`'s output or plain PNGs)."""
    if not folder.is_dir():
        raise UnetDeployError(f"--masks {folder}: no such folder; pass the folder of class-id mask PNGs")
    where = folder / "masks" if (folder / "masks").is_dir() else folder
    reported = _report_scores(folder)
    for sample in data.samples:
        path = where / f"{sample.stem}.png"
        if not path.is_file():
            yield sample, None, None, None, (f"{path}: no predicted mask for {sample.image.name}; "
                                             f"predict DATA's images into {folder} (unet-predict ... --out {folder})")
            continue
        try:
            pred = read_mask(path)
            image_hw = read_image(sample.image).shape[:2]
            if pred.shape != image_hw:
                raise UnetDeployError(f"{path}: mask is {pred.shape[1]}x{pred.shape[0]} but {sample.image.name} is "
                                      f"{image_hw[1]}x{image_hw[0]}; predict masks at the original image size")  # fmt: skip
            if pred.max(initial=0) >= k:
                raise UnetDeployError(f"{path}: class id {int(pred.max())} but DATA has {k} classes; "
                                      f"write masks in DATA's class ids")  # fmt: skip
        except UnetDeployError as e:
            yield sample, None, None, None, e.message
            continue
        yield sample, pred, reported.get(sample.stem), None, None


def _report_scores(folder: Path) -> dict[str, dict]:
    """Region scores of `unet-predict`'s report.json in ``folder``, per mask stem (empty without one)."""
    path = folder / "report.json"
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        out = {}
        for rec in report.get("images", []):
            if "mask" in rec and "regions" in rec:
                out[Path(rec["mask"]).stem] = {
                    (int(g["class_id"]), int(g["contour"][0][0]), int(g["contour"][0][1])): g.get("score")
                    for g in rec["regions"] if g.get("contour")
                }  # fmt: skip
        return out
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise UnetDeployError(f"{path}: not unet-predict's report ({e}); remove it or re-run unet-predict") from None
