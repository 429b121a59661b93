"""Segmentation metrics, one definition for training, the accuracy gate, the demo and the benchmarks.

A confusion matrix counts pixels (row: ground truth, column: prediction); ground-truth ids
``>= num_classes`` (the ignore value 255 among them) are skipped. IoU and Dice of a class are
computed from it; **a class that is absent from both ground truth and prediction has no
IoU (NaN) and is left out of the mean**, as in VOC and mmsegmentation. Values are fractions
in [0, 1]; multiply by 100 for points. numpy only; torch tensors are accepted by ``confusion``.

``compare_masks`` (``MaskComparison`` image by image) is the one comparison of two sets of
masks (a candidate against a reference: pixel agreement, the worst image, both mIoUs against
ground truth and the drop), in percent and mIoU points as the accuracy gate, int8's accuracy
control and the benchmarks report them.

in [0, 1]; multiply by 100 for points. numpy (and OpenCV's connected components for defects);
torch tensors are accepted by ``confusion``.

Defects (``image_defects``, ``defect_table``, ``score_sweep``; `unet-deploy eval`) are defined in
the comment above ``SIZE_BUCKETS``: truth components found at >= half their pixels, predicted
regions that are false alarms at < half, per size bucket, and as ``--min-score`` rises.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

IGNORE_INDEX = 255


def confusion(truth: Any, pred: Any, num_classes: int, to_numpy: bool = True) -> Any:
    """``num_classes x num_classes`` int64 pixel counts of ``truth`` against ``pred`` (same shape).

    Works on numpy arrays and on torch tensors (counted on their device and returned as numpy,
    or, with ``to_numpy=False``, as a tensor on that device: no wait for the GPU per batch).
    """
    if hasattr(truth, "device") and hasattr(truth, "long"):  # a torch tensor: count where it lives
        import torch

        valid = truth < num_classes
        index = truth[valid].long() * num_classes + pred[valid].long()
        counts = torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
        return counts.cpu().numpy() if to_numpy else counts
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    valid = truth < num_classes
    index = truth[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU of each class; NaN for a class absent from truth and prediction."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def dice_per_class(conf: np.ndarray) -> np.ndarray:
    """Dice (F1) of each class; NaN for a class absent from truth and prediction."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """Mean IoU over the classes present in truth or prediction (NaN when no pixel was counted)."""
    iou = iou_per_class(conf)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")


def pixel_accuracy(conf: np.ndarray) -> float:
    """Share of counted pixels whose class is right (NaN when none was counted)."""
    conf = np.asarray(conf)
    total = conf.sum()
    return float(np.trace(conf) / total) if total else float("nan")


def summary(conf: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """``miou``, ``iou_<class>`` and ``dice_<class>`` (fractions; NaN for absent classes)."""
    out = {"miou": mean_iou(conf)}
    out.update({f"iou_{c}": float(v) for c, v in zip(classes, iou_per_class(conf))})
    out.update({f"dice_{c}": float(v) for c, v in zip(classes, dice_per_class(conf))})
    return out


@dataclass(frozen=True)
class MaskAgreement:
    """How a candidate's masks compare with a reference's: percentages, and mIoU in points (x100)."""

    images: int
    agreement: float  # % of all pixels (every image's pixels count once) whose class equals the reference's
    per_image: tuple[float, ...]  # % agreement of each image, in the order given
    worst_agreement: float  # the lowest of per_image
    worst_image: str  # its name
    miou_reference: float | None  # mIoU points of the reference against the truth (None: no truth for some image)
    miou: float | None  # mIoU points of the candidate against the truth
    miou_drop: float | None  # miou_reference - miou


class MaskComparison:
    """Compare masks image by image (nothing kept but counts), then ``result()``.

    Args:
        num_classes: the class count for mIoU against ground truth (None: agreement only).
    """

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes
        self.same = self.total = 0
        self.per_image: list[tuple[float, str]] = []
        k = num_classes or 0
        self.conf_reference = np.zeros((k, k), np.int64)
        self.conf_candidate = np.zeros((k, k), np.int64)
        self.with_truth = num_classes is not None

    def add(self, reference: np.ndarray, candidate: np.ndarray, truth: np.ndarray | None = None, name: str = "") -> None:
        """Count one image: its reference and candidate class maps (same shape) and its truth, if any."""
        reference, candidate = np.asarray(reference), np.asarray(candidate)
        if reference.shape != candidate.shape:
            raise ValueError(f"reference {reference.shape} and candidate {candidate.shape} masks differ in shape")
        agree = int(np.count_nonzero(reference == candidate))
        self.same, self.total = self.same + agree, self.total + reference.size
        self.per_image.append((100.0 * agree / reference.size, name or str(len(self.per_image))))
        if truth is None:
            self.with_truth = False
        elif self.with_truth:
            self.conf_reference += confusion(truth, reference, self.num_classes)  # type: ignore[arg-type]
            self.conf_candidate += confusion(truth, candidate, self.num_classes)  # type: ignore[arg-type]

    def result(self) -> MaskAgreement:
        if not self.per_image:
            raise ValueError("no masks were compared")
        worst = min(self.per_image)
        m_ref = m_cand = drop = None
        if self.with_truth:
            m_ref, m_cand = 100.0 * mean_iou(self.conf_reference), 100.0 * mean_iou(self.conf_candidate)
            drop = m_ref - m_cand
        return MaskAgreement(len(self.per_image), 100.0 * self.same / self.total, tuple(p for p, _ in self.per_image),
                             worst[0], worst[1], m_ref, m_cand, drop)  # fmt: skip


def compare_masks(
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    truth: Sequence[np.ndarray | None] | None = None,
    num_classes: int | None = None,
    names: Sequence[str] | None = None,
) -> MaskAgreement:
    """Pixel agreement of ``candidate`` with ``reference`` masks, the worst image, and both mIoUs against ``truth``.

    Args:
        reference: class-id maps of the reference (e.g. fp32, the square letterbox).
        candidate: class-id maps of the candidate, the same images in the same order and shapes.
        truth: ground-truth class-id maps (ignore ids >= ``num_classes`` skipped); mIoU is
            measured only when every image has one and ``num_classes`` is given.
        num_classes: the class count for the confusion matrices.
        names: image names for ``worst_image`` (default: their index).
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference masks but {len(candidate)} candidate masks")
    comparison = MaskComparison(num_classes if truth is not None else None)
    for i, (ref, cand) in enumerate(zip(reference, candidate)):
        comparison.add(ref, cand, truth[i] if truth is not None else None, names[i] if names else str(i))
    return comparison.result()


def precision_per_class(conf: np.ndarray) -> np.ndarray:
    """Pixel precision of each class (right / predicted as it); NaN for a class absent from truth and prediction,
    0 for a class present in truth but never predicted."""
    conf = np.asarray(conf, np.float64)
    tp, pred, truth = np.diag(conf), conf.sum(0), conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pred > 0, tp / pred, np.where(truth > 0, 0.0, np.nan))


def recall_per_class(conf: np.ndarray) -> np.ndarray:
    """Pixel recall of each class (right / truth of it); NaN for a class absent from truth and prediction,
    0 for a class predicted but absent from truth."""
    conf = np.asarray(conf, np.float64)
    tp, pred, truth = np.diag(conf), conf.sum(0), conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(truth > 0, tp / truth, np.where(pred > 0, 0.0, np.nan))


# -- defects ----------------------------------------------------------------------------------------
#
# A ground-truth defect is an 8-connected component of one class > 0 in the truth mask (at the
# original size); it is FOUND when at least half of its pixels are predicted as its class (by
# regions that are kept). A predicted region (an 8-connected component of one class > 0 of the
# prediction, postprocess's region contract) is a FALSE ALARM when less than half of its pixels
# are truth of its class. Size buckets are of the defect's own area (truth: truth pixels,
# predicted: predicted pixels). ``--min-score s`` keeps the regions whose score is >= s.

#: name -> [low, high) area in original pixels
SIZE_BUCKETS: dict[str, tuple[int, float]] = {"<64": (0, 64), "64-1023": (64, 1024), ">=1024": (1024, float("inf"))}
#: the ``--min-score`` values of the precision/recall sweep
SCORE_SWEEP: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
RECALL_TARGET = 0.95


@dataclass
class Defects:
    """The defects of one image: ``truth_*`` per ground-truth defect, ``pred_*`` per predicted region
    (``pred_score`` NaN where unknown), ``pairs`` rows (truth index, predicted index, shared pixels)."""

    truth_class: np.ndarray
    truth_area: np.ndarray
    pred_class: np.ndarray
    pred_area: np.ndarray
    pred_hits: np.ndarray  # pixels of the region that are truth of its class
    pred_score: np.ndarray
    pairs: np.ndarray

    def kept(self, min_score: float = 0.0) -> np.ndarray:
        """Which predicted regions a ``min_score`` keeps (unknown scores are kept)."""
        return ~(self.pred_score < min_score)

    def found(self, min_score: float = 0.0) -> np.ndarray:
        """Which truth defects are found by the regions ``min_score`` keeps."""
        hits = np.zeros(len(self.truth_area), np.int64)
        if len(self.pairs):
            keep = self.kept(min_score)[self.pairs[:, 1]]
            np.add.at(hits, self.pairs[keep, 0], self.pairs[keep, 2])
        return 2 * hits >= self.truth_area

    def false_alarms(self, min_score: float = 0.0) -> np.ndarray:
        """Which predicted regions are kept by ``min_score`` and false alarms."""
        return self.kept(min_score) & (2 * self.pred_hits < self.pred_area)


def image_defects(truth: np.ndarray, pred: np.ndarray, num_classes: int, scores: dict[tuple[int, int, int], float]
                  | None = None, min_area: int = 0) -> Defects:  # fmt: skip
    """The ``Defects`` of one image: ``truth`` and ``pred`` HxW class ids of one size (truth ids
    ``>= num_classes``, 255 among them, are no defect).

    Args:
        truth, pred: class-id masks at the original size.
        num_classes: classes counted (ids 1 .. num_classes - 1 are defects).
        scores: ``{(class_id, x, y): score}`` of the regions that were kept, keyed by a pixel of
            each (``Region.contour[0]``); predicted components not in it were dropped (min_area,
            min_score) and count as not predicted. ``None``: every component of ``min_area`` or
            more is kept, its score unknown.
        min_area: smaller predicted components are dropped (when ``scores`` is None).
    """
    import cv2

    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    parts: dict[str, list] = {k: [] for k in ("tc", "ta", "pc", "pa", "ph", "ps", "pairs")}
    for c in range(1, num_classes):
        t = (truth == c).view(np.uint8)
        p = (pred == c).view(np.uint8)
        if not t.any() and not p.any():
            continue
        nt, lt, st, _ = cv2.connectedComponentsWithStats(t, connectivity=8)
        npred, lp, sp, _ = cv2.connectedComponentsWithStats(p, connectivity=8)
        area_p = sp[1:, cv2.CC_STAT_AREA].astype(np.int64)
        score = np.full(npred - 1, np.nan)
        if scores is None:
            keep = area_p >= min_area
        else:
            keep = np.zeros(npred - 1, bool)
            for (cid, x, y), s in scores.items():
                if cid == c and lp[y, x] > 0:
                    keep[lp[y, x] - 1], score[lp[y, x] - 1] = True, np.nan if s is None else s
        both = (t & p).view(bool)
        pair, count = np.unique(lt[both].astype(np.int64) * npred + lp[both], return_counts=True)
        ti, pi = pair // npred - 1, pair % npred - 1
        hits = np.bincount(pi, weights=count, minlength=npred - 1).astype(np.int64)
        renumber = np.cumsum(keep) - 1 + sum(len(a) for a in parts["pc"])
        first_t = sum(len(a) for a in parts["tc"])
        on = keep[pi]
        parts["pairs"].append(np.stack([ti[on] + first_t, renumber[pi[on]], count[on]], 1))
        parts["tc"].append(np.full(nt - 1, c))
        parts["ta"].append(st[1:, cv2.CC_STAT_AREA].astype(np.int64))
        parts["pc"].append(np.full(int(keep.sum()), c))
        parts["pa"].append(area_p[keep])
        parts["ph"].append(hits[keep])
        parts["ps"].append(score[keep])
    cat = lambda k, dtype: np.concatenate(parts[k]).astype(dtype) if parts[k] else np.zeros(0, dtype)  # noqa: E731
    pairs = np.concatenate(parts["pairs"]) if parts["pairs"] else np.zeros((0, 3), np.int64)
    return Defects(cat("tc", np.int64), cat("ta", np.int64), cat("pc", np.int64), cat("pa", np.int64),
                   cat("ph", np.int64), cat("ps", np.float64), pairs.astype(np.int64))  # fmt: skip


def _ratio(num: float, den: float) -> float | None:
    return round(float(num / den), 6) if den else None


def defect_counts(defects: Sequence[Defects], c: int, min_score: float = 0.0,
                  bucket: tuple[int, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Counts of class ``c`` over images: ``truth``, ``found``, ``recall``, ``predicted``,
    ``false_alarms``, ``precision`` (None where undefined), optionally only defects whose area lies
    in ``bucket`` ``[low, high)``."""
    truth = found = predicted = alarms = 0
    for d in defects:
        inside_t = (d.truth_class == c) & _in(d.truth_area, bucket)
        inside_p = (d.pred_class == c) & _in(d.pred_area, bucket) & d.kept(min_score)
        truth += int(inside_t.sum())
        found += int((inside_t & d.found(min_score)).sum())
        predicted += int(inside_p.sum())
        alarms += int((inside_p & d.false_alarms(min_score)).sum())
    return {"truth": truth, "found": found, "recall": _ratio(found, truth), "predicted": predicted,
            "false_alarms": alarms, "precision": _ratio(predicted - alarms, predicted)}  # fmt: skip


def _in(area: np.ndarray, bucket: tuple[int, float] | None) -> np.ndarray:
    return np.ones(len(area), bool) if bucket is None else (area >= bucket[0]) & (area < bucket[1])


def defect_table(defects: Sequence[Defects], c: int, min_score: float = 0.0) -> dict[str, Any]:
    """``defect_counts`` of class ``c`` with ``by_size``: the same per ``SIZE_BUCKETS`` entry."""
    out = defect_counts(defects, c, min_score)
    out["by_size"] = {name: defect_counts(defects, c, min_score, b) for name, b in SIZE_BUCKETS.items()}
    return out


def score_sweep(defects: Sequence[Defects], c: int) -> list[dict[str, Any]]:
    """Defect precision and recall of class ``c`` at each ``--min-score`` of ``SCORE_SWEEP``."""
    rows = []
    for s in SCORE_SWEEP:
        counts = defect_counts(defects, c, s)
        rows.append({"min_score": s, "precision": counts["precision"], "recall": counts["recall"]})
    return rows


def score_for_recall(sweep: Sequence[dict[str, Any]], target: float = RECALL_TARGET) -> float | None:
    """The highest ``--min-score`` of a ``score_sweep`` whose recall is still >= ``target``: the
    setting that drops the most false alarms without missing more defects than allowed (None: no
    setting reaches it, or no truth defect)."""
    ok = [r["min_score"] for r in sweep if r["recall"] is not None and r["recall"] >= target]
    return max(ok) if ok else None
