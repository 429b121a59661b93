"""eval.json, eval.md and eval.html of an ``Evaluation`` (the HTML's plots by matplotlib, the field's standard).

matplotlib is imported here only, and only to draw: the runtime never needs it (extra ``report``).
eval.html is one file (pictures inlined): every model side by side, per-class and per-size
tables, the defect precision/recall curve over ``--min-score``, the confusion matrices, the class
legend, and the worst images first (image | truth | prediction | difference).
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from ..data.palette import voc_palette
from ..fileio import atomic_write_text, read_image
from ..metrics import SIZE_BUCKETS
from ..postprocess import overlay, to_bgr8
from .run import Evaluation, SourceScore

MISS_BGR, ALARM_BGR = (0, 0, 230), (230, 160, 0)  # difference picture: missed truth red, false alarm blue
THUMB = 300  # px, the long side of a picture in the worst-images table


def write_reports(evaluation: Evaluation, out: str | Path) -> dict[str, Path]:
    """Write ``out/eval.json``, ``out/eval.md`` and ``out/eval.html``; returns their paths.

    Args:
        evaluation: ``eval.run.evaluate``'s result.
        out: the folder (made if missing).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = evaluation.to_dict()
    paths = {"json": atomic_write_text(out / "eval.json", json.dumps(doc, indent=1) + "\n"),
             "md": atomic_write_text(out / "eval.md", markdown(doc))}  # fmt: skip
    paths["html"] = atomic_write_text(out / "eval.html", page(doc, evaluation))
    return paths


def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _short(model: str) -> str:
    return Path(model).name or str(model)


def summary_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The summary table (one row per model): header and rows of strings."""
    head = ["model", "backend", "precision", "device", "mIoU", "pixel acc.", "ms/image",
            "defects found", "false alarms", "min-score for recall 0.95"]  # fmt: skip
    rows = []
    for m in doc["models"]:
        truth = sum(c["defects"]["truth"] for c in m["classes"].values())
        found = sum(c["defects"]["found"] for c in m["classes"].values())
        alarms = sum(c["defects"]["false_alarms"] for c in m["classes"].values())
        s95 = ", ".join(f"{k} {_f(v, 2)}" for k, v in m["score_for_recall_95"].items())
        rows.append([_short(m["model"]), m["backend"], _f(m["precision"]), _f(m["device"]), _f(m["miou"]),
                     _f(m["pixel_accuracy"]), _f(m["ms_per_image"], 1), f"{found} / {truth}", str(alarms), s95])  # fmt: skip
    return head, rows


def class_rows(m: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per-class table of one model: pixel IoU/Dice/precision/recall and defect counts."""
    head = ["class", "IoU", "Dice", "precision", "recall", "defects", "found", "recall (defects)",
            "predicted", "false alarms", "precision (defects)", "min-score for recall 0.95"]  # fmt: skip
    rows = []
    for name, c in m["classes"].items():
        d = c["defects"]
        rows.append([name, _f(c["iou"]), _f(c["dice"]), _f(c["precision"]), _f(c["recall"]), str(d["truth"]),
                     str(d["found"]), _f(d["recall"]), str(d["predicted"]), str(d["false_alarms"]),
                     _f(d["precision"]), _f(m["score_for_recall_95"].get(name), 2)])  # fmt: skip
    return head, rows


def size_rows(m: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per-class, per-size defect table of one model (truth area buckets)."""
    head = ["class", "size (px)", "defects", "found", "recall", "predicted", "false alarms", "precision"]
    rows = []
    for name, c in m["classes"].items():
        for bucket in SIZE_BUCKETS:
            d = c["defects"]["by_size"][bucket]
            rows.append([name, bucket, str(d["truth"]), str(d["found"]), _f(d["recall"]), str(d["predicted"]),
                         str(d["false_alarms"]), _f(d["precision"])])  # fmt: skip
    return head, rows


def markdown(doc: dict[str, Any]) -> str:
    """eval.md: the summary, then per model its per-class and per-size tables."""
    from tabulate import tabulate

    parts = [f"# Evaluation on {doc['dataset']} ({doc['images']} images)", ""]
    parts += [tabulate(summary_rows(doc)[1], summary_rows(doc)[0], tablefmt="github", disable_numparse=True), ""]
    for m in doc["models"]:
        parts += [f"## {_short(m['model'])} ({m['backend']})", ""]
        for head, rows in (class_rows(m), size_rows(m)):
            parts += [tabulate(rows, head, tablefmt="github", disable_numparse=True), ""]
    for title, lines in (("Notes", doc.get("notes")), ("Problems (not scored)", doc.get("problems"))):
        if lines:
            parts += [f"## {title}", ""] + [f"- {ln}" for ln in lines] + [""]
    parts += ["Defect: an 8-connected truth component of one class; found when >= half its pixels are predicted "
              "as its class. False alarm: a predicted region < half of which is truth of its class.", ""]
    return "\n".join(parts)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = html.escape
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows]
    return "".join(out) + "</table>"


def legend(classes: Sequence[str]) -> str:
    """HTML: a colour swatch (VOC palette, as masks and overlays draw them) per class."""
    pal = voc_palette()
    items = [f"<span class='sw' style='background:rgb{tuple(int(v) for v in pal[i])}'></span>{html.escape(c)}"
             for i, c in enumerate(classes)]  # fmt: skip
    items += [f"<span class='sw' style='background:rgb{MISS_BGR[::-1]}'></span>missed (difference)",
              f"<span class='sw' style='background:rgb{ALARM_BGR[::-1]}'></span>false alarm (difference)"]
    return "<p class='legend'>" + " &nbsp; ".join(items) + "</p>"


STYLE = ("<style>body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
         "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
         "td:first-child{text-align:left}.sw{display:inline-block;width:14px;height:14px;border:1px solid #888;"
         "vertical-align:middle;margin-right:4px}img.plot{max-width:100%}.pics img{width:" + str(THUMB) + "px}"
         ".pics td{text-align:center}.pics img{image-rendering:pixelated}</style>")  # fmt: skip


def summary_html(doc: dict[str, Any], heading: str = "Evaluation") -> str:
    """The head of eval.html (also the demo report's opening): summary of every model, per-class tables, legend."""
    parts = [f"<h2>{html.escape(heading)}: {html.escape(str(doc['dataset']))} ({doc['images']} images)</h2>",
             legend(doc["classes"]), _table(*summary_rows(doc))]  # fmt: skip
    for m in doc["models"]:
        parts.append(f"<h3>{html.escape(_short(m['model']))} ({html.escape(m['backend'])}"
                     f"{' ' + html.escape(m['precision']) if m['precision'] else ''}): per class</h3>")
        parts.append(_table(*class_rows(m)))
    return "\n".join(parts)


def page(doc: dict[str, Any], evaluation: Evaluation | None = None) -> str:
    """eval.html: summary, per-size tables, plots, worst images, notes and problems."""
    esc = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>unet-deploy eval</title>", STYLE,
             "<h1>unet-deploy eval</h1>", summary_html(doc)]  # fmt: skip
    parts.append("<h2>Defects by size (truth area, original pixels)</h2>")
    for m in doc["models"]:
        parts += [f"<h3>{esc(_short(m['model']))}</h3>", _table(*size_rows(m))]
    pr = pr_curve_png(doc)
    if pr:
        parts += ["<h2>Defect precision / recall as --min-score rises (0.05 .. 0.95)</h2>", _img(pr, "plot")]
    parts += ["<h2>Confusion matrices (pixels; rows: truth, columns: prediction)</h2>", _img(confusion_png(doc), "plot")]
    if evaluation is not None:
        parts.append("<h2>Worst images first</h2>" + legend(doc["classes"]))
        for src in evaluation.sources:
            parts.append(f"<h3>{esc(_short(src.model))}</h3>" + worst_table(evaluation, src))
    for title, lines in (("Notes", doc.get("notes")), ("Problems (not scored)", doc.get("problems"))):
        if lines:
            parts.append(f"<h2>{title}</h2><ul>" + "".join(f"<li>{esc(ln)}</li>" for ln in lines) + "</ul>")
    parts.append("<p>Defect: an 8-connected truth component of one class, found when at least half of its pixels "
                 "are predicted as its class. False alarm: a predicted region less than half of which is truth of "
                 "its class. Region score: mean probability of its class over its pixels.</p>")
    return "\n".join(parts)


def _img(png: bytes, cls: str = "") -> str:
    return f"<img class='{cls}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _jpeg(image: np.ndarray) -> str:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return f"<img src='data:image/jpeg;base64,{base64.b64encode(buf.tobytes()).decode()}'>"


def _figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - the report extra is missing
        from ..errors import UnetDeployError

        raise UnetDeployError("eval.html draws its plots with matplotlib: pip install 'unet-deploy[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _class_color(i: int) -> tuple[float, ...]:
    return tuple(float(v) / 255 for v in voc_palette()[i])


def pr_curve_png(doc: dict[str, Any]) -> bytes | None:
    """One panel per model: defect precision (y) against recall (x) per class, one point per --min-score."""
    models = [m for m in doc["models"] if m.get("score_sweep")]
    if not models:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.2), squeeze=False, layout="constrained")
    for ax, m in zip(axes[0], models):
        for name, sweep in m["score_sweep"].items():
            pts = [(r["recall"], r["precision"], r["min_score"]) for r in sweep
                   if r["recall"] is not None and r["precision"] is not None]  # fmt: skip
            if not pts:
                continue
            color = _class_color(doc["classes"].index(name))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, color=color, label=name)
            for r, p, s in pts[::6]:
                ax.annotate(f"{s:.2f}", (r, p), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
            s95 = m["score_for_recall_95"].get(name)
            if s95 is not None:
                r, p = next((r, p) for r, p, s in pts if abs(s - s95) < 1e-9)
                ax.plot([r], [p], "*", ms=12, color=color)
        ax.axvline(0.95, color="#999", lw=0.8, ls="--")
        ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="defect recall", ylabel="defect precision",
               title=f"{_short(m['model'])} ({m['backend']})")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("numbers: --min-score; star: the highest --min-score keeping recall >= 0.95", fontsize=9)
    return _figure_png(fig)


def confusion_png(doc: dict[str, Any]) -> bytes:
    """One matrix per model, each row normalised to the truth's pixels (the counts written in it)."""
    plt = _pyplot()
    k = len(doc["classes"])
    fig, axes = plt.subplots(1, len(doc["models"]), figsize=(1.3 * k * len(doc["models"]) + 2, 1.1 * k + 1.5),
                             squeeze=False, layout="constrained")  # fmt: skip
    for ax, m in zip(axes[0], doc["models"]):
        conf = np.asarray(m["confusion"], np.float64)
        rows = conf / np.maximum(conf.sum(1, keepdims=True), 1)
        ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{rows[i, j]:.2f}\n{int(conf[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if rows[i, j] > 0.6 else "black")  # fmt: skip
        ax.set_xticks(range(k), doc["classes"], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), doc["classes"], fontsize=8)
        ax.set(xlabel="prediction", ylabel="truth", title=_short(m["model"]))
    return _figure_png(fig)


def difference(truth: np.ndarray, pred: np.ndarray, image: np.ndarray) -> np.ndarray:
    """BGR picture: the image dimmed, missed truth pixels in red, other wrongly predicted pixels in blue."""
    out = (to_bgr8(image).astype(np.float32) * 0.35 + 90).astype(np.uint8)
    valid = truth != 255
    out[valid & (pred > 0) & (pred != truth)] = ALARM_BGR
    out[valid & (truth > 0) & (pred != truth)] = MISS_BGR  # a missed pixel stays red even where another class was predicted
    return out


def _thumb(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    s = THUMB / max(h, w)
    if s >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def worst_table(evaluation: Evaluation, src: SourceScore) -> str:
    """The worst images of ``src``: image | truth | prediction | difference, with their numbers."""
    rows = ["<table class='pics'><tr><th>image</th><th>truth</th><th>prediction</th><th>difference</th></tr>"]
    by_stem = {s.stem: s for s in evaluation.data.samples}
    for s in src.worst():
        if s.pred is None:
            continue
        sample = by_stem[s.stem]
        image = read_image(sample.image)
        truth = evaluation.data.read_truth(sample, image.shape[:2])
        shown = np.where(truth == 255, 0, truth).astype(np.uint8)
        pics = [to_bgr8(image), overlay(image, shown, alpha=0.6, contour_color=None),
                overlay(image, s.pred, alpha=0.6, contour_color=None), difference(truth, s.pred, image)]
        rows.append("<tr>" + "".join(f"<td>{_jpeg(_thumb(p))}</td>" for p in pics) + "</tr>")
        rows.append(f"<tr><td colspan=4 style='text-align:left'>{html.escape(Path(s.file).name)}: mIoU {_f(s.miou)}, "
                    f"found {s.found}, missed {s.missed}, false alarms {s.false_alarms}</td></tr>")
    return "".join(rows) + "</table>"



