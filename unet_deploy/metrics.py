"""Segmentation metrics, one definition for training, the accuracy gate, the demo and the benchmarks.

A confusion matrix counts pixels (row: ground truth, column: prediction); ground-truth ids
``>= num_classes`` (the ignore value 255 among them) are skipped. IoU and Dice of a class are
computed from it; **a class that is absent from both ground truth and prediction has no
IoU (NaN) and is left out of the mean**, as in VOC and mmsegmentation. Values are fractions
in [0, 1]; multiply by 100 for points. numpy only; torch tensors are accepted by ``confusion``.
"""
from __future__ import annotations

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
