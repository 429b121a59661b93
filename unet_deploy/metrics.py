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
