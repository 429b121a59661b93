"""A run's per-epoch record: ``metrics.csv`` (write and read) and ``curves.png`` (loss and mIoU, drawn with OpenCV)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def write_metrics_csv(path: Path, history: Sequence[dict[str, Any]]) -> Path:
    """Write one row per epoch (epoch, train_loss, val_loss, miou, iou_*, dice_*, lr, seconds) atomically."""
    from ..fileio import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and k in ("lr", "seconds") else
                             f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as dicts of numbers (``nan`` for classes absent from validation)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Draw train/val loss and val mIoU per epoch with OpenCV (no matplotlib) and write ``path``."""
    import cv2

    from ..fileio import write_image

    panel_w, panel_h, margin = 480, 320, 48
    canvas = np.full((panel_h, 2 * panel_w, 3), 255, np.uint8)
    epochs = [r["epoch"] for r in history]
    series = [
        ("loss", None, [("train", [r["train_loss"] for r in history], (200, 90, 30)),
                        ("val", [r["val_loss"] for r in history], (30, 30, 220))]),
        ("val mIoU", (0.0, 1.0), [("mIoU", [r["miou"] for r in history], (40, 150, 40))]),
    ]
    font = cv2.FONT_HERSHEY_SIMPLEX
    for p, (title, fixed, lines) in enumerate(series):
        x0, x1, y0, y1 = p * panel_w + margin, (p + 1) * panel_w - 16, 28, panel_h - margin
        values = np.array([v for _, vs, _ in lines for v in vs], np.float64)
        values = values[np.isfinite(values)]
        lo, hi = fixed or ((float(values.min()), float(values.max())) if values.size else (0.0, 1.0))
        lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-9 else (lo, hi)
        e0, e1 = min(epochs), max(max(epochs), min(epochs) + 1)
        fx = lambda e: int(round(x0 + (e - e0) / (e1 - e0) * (x1 - x0)))  # noqa: E731
        fy = lambda v: int(round(y1 - (v - lo) / (hi - lo) * (y1 - y0)))  # noqa: E731
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (0, 0, 0), 1)
        cv2.putText(canvas, title, (x0, 20), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        for v, y in ((hi, y0 + 4), (lo, y1)):
            cv2.putText(canvas, f"{v:.3g}", (p * panel_w + 2, y), font, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
        for e in (e0, e1):
            cv2.putText(canvas, str(e), (fx(e) - 6, y1 + 16), font, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
        cv2.putText(canvas, "epoch", ((x0 + x1) // 2 - 20, y1 + 34), font, 0.42, (60, 60, 60), 1, cv2.LINE_AA)
        for k, (name, vs, color) in enumerate(lines):
            pts = np.array([(fx(e), fy(v)) for e, v in zip(epochs, vs) if math.isfinite(v)], np.int32)
            if len(pts) > 1:
                cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], False, color, 2, cv2.LINE_AA)
            for pt in pts:
                cv2.circle(canvas, tuple(int(c) for c in pt), 3, color, -1, cv2.LINE_AA)
            cv2.putText(canvas, name, (x1 - 70, y0 + 20 + 18 * k), font, 0.45, color, 1, cv2.LINE_AA)
    return write_image(path, canvas)
