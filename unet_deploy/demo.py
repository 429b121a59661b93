"""`unet-deploy demo`: the whole pipeline on built-in synthetic data, ending in an HTML report.

synth (images + labelme JSON) -> labelme conversion -> short training -> export to every
format -> prediction on held-back images -> `unet-deploy eval` of OpenVINO fp32 and int8 side by
side on them (``OUT/eval/``) -> latency benchmark -> ``OUT/report.html``, opening with the eval summary.
"""
from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np


# Small enough for a short CPU run, big enough to learn the defects: on 2 quiet cores training
# takes ~165 s (20 epochs of ~8 s), the whole demo ~4.7 min, held-back mIoU 0.87. Defects cover
# ~3% of the pixels: Dice + class weights, and less dropout than the seed's 0.3, learn them.
DEMO = {"train_images": 96, "holdout_images": 8, "size": (256, 256), "img_size": 128,
        "base_channels": 16, "epochs": 20, "batch_size": 8, "seed": 0}
TRAIN_OPTIONS = {"loss": "ce+dice", "class_weights": "auto", "dropout": 0.0, "lr": 3e-3}


def run_demo(out: str | Path = "demo_out", quick: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Run the pipeline into ``out`` and return the path of ``report.html``.

    ``quick`` shrinks everything (tests use it); the default settles in a few minutes on a
    2-core CPU. ``log`` gets one line per stage and the result (default: ``tqdm.write``).
    """
    from tqdm import tqdm

    from .data.labelme import convert_folder, labelme_to_mask, read_class_names
    from .data.synthetic import generate
    from .export import export_model
    from .runtime import Segmenter
    from .train import read_metrics_csv, train

    cfg = dict(DEMO)
    if quick:
        cfg.update(train_images=12, holdout_images=2, size=(96, 96), img_size=64, base_channels=8,
                   epochs=1, batch_size=4)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    say = log or tqdm.write

    def timed(name: str, fn, *args, **kwargs):
        """Run one stage: a line before and after it, its seconds into ``timings``."""
        say(f"[demo] {name} ...")
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - t, 1)
        say(f"[demo] {name}: done in {time.perf_counter() - t:.1f} s")
        return result

    raw, holdout = out / "raw", out / "holdout"
    timed("synthetic images + labelme JSON", generate, raw, cfg["train_images"], size=cfg["size"], seed=cfg["seed"])
    timed("held-back images", generate, holdout, cfg["holdout_images"], size=cfg["size"], seed=cfg["seed"] + 1000)
    dataset = out / "dataset"
    timed("labelme -> VOC dataset", convert_folder, raw, dataset, labels_file=raw / "labels.txt")
    classes = read_class_names(dataset)
    best = timed("training", train, dataset, out / "run", epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                 img_size=cfg["img_size"], base_channels=cfg["base_channels"], seed=cfg["seed"],
                 overwrite=True, **TRAIN_OPTIONS)
    exported = timed("export (every format)", export_model, best, "all", out_dir=out / "export")
    onnx_path = exported["onnx"]

    seg = Segmenter(onnx_path, device="auto")
    images = sorted(holdout.glob("*.json"))
    rows = []
    predict_dir = out / "predict"

    def predict_all():
        from .postprocess import overlay
        from .fileio import write_image

        for js in images:
            image, truth = labelme_to_mask(js, {c: i for i, c in enumerate(classes)})
            res = seg(image)
            stem = js.stem
            write_image(predict_dir / "overlays" / f"{stem}.jpg", res.overlay())
            write_image(predict_dir / "truth" / f"{stem}.jpg", overlay(image, np.where(truth == 255, 0, truth).astype(np.uint8)))
            rows.append({"stem": stem, "regions": len(res.regions), "timings": res.timings})

    timed("prediction on held-back images (ONNX Runtime)", predict_all)
    evaluated = timed("eval on held-back images (OpenVINO fp32 vs int8)", _evaluate, best, exported, dataset,
                      holdout, out, say)  # fmt: skip
    bench = timed("latency benchmark", _benchmark, best, out / "bench.json", quick)
    report = _write_report(out, rows, read_metrics_csv(out / "run" / "metrics.csv"), bench,
                           exported, seg, timings, evaluated)
    for m in evaluated["models"]:  # eval.json's numbers: one definition (unet_deploy.metrics)
        per_class = ", ".join(f"{c} {_num(v['iou'])}" for c, v in m["classes"].items())
        say(f"[demo] held-back {Path(m['model']).name} ({m['precision']}): mIoU {_num(m['miou'])} ({per_class})")
    say(f"[demo] report: {report}")
    return report


def _evaluate(checkpoint: Path, exported: dict, dataset: Path, holdout: Path, out: Path,
              say: Callable[[str], None]) -> dict:  # fmt: skip
    """`unet-deploy eval` of the OpenVINO fp32 export and its int8 quantization (calibrated and gated on
    the training set) on the held-back labelme folder; eval.json's document. Without OpenVINO: ONNX only."""
    from .errors import UnetDeployError
    from .eval import evaluate, load_data, write_reports
    from .export import export_model

    models = [exported.get("openvino") or exported["onnx"]]
    if "openvino" in exported:
        try:
            models += [export_model(checkpoint, "openvino", out_dir=out / "export", precision="int8", calib=dataset,
                                    val=dataset, verbose=False)["openvino"]]  # fmt: skip
        except UnetDeployError as e:  # the gate refused int8: say so, evaluate fp32 alone
            say(f"[demo] int8: {e.message}")
    data = load_data(holdout)
    try:
        result = evaluate(data, models, device="cpu")
        write_reports(result, out / "eval")
    finally:
        data.close()
    return result.to_dict()


def _benchmark(checkpoint: Path, json_path: Path, quick: bool) -> str:
    from .bench import format_table, run_benchmark

    # AOTInductor is left out: its compile (minutes on 2 cores) was already shown by the export.
    report = run_benchmark(checkpoint, backends=["seed", "eager", "torchscript", "onnxruntime", "openvino"],
                           runs=2 if quick else 10, warmup=1, batches=(1,),
                           budget_s=30 if quick else 150, json_path=json_path)
    return format_table(report)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _write_report(out: Path, rows, history, bench, exported, seg, timings, evaluated) -> Path:
    from .eval.report import STYLE, summary_html
    from .fileio import atomic_write_text

    esc = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'><title>unet-deploy demo</title>", STYLE,
        "<style>img{max-width:320px}</style>",
        "<h1>unet-deploy demo</h1>",
        summary_html(evaluated, "How good is the exported model? unet-deploy eval on the held-back images"),
        "<p>All tables, the precision/recall curve, the confusion matrices and the worst images: "
        "<a href='eval/eval.html'>eval/eval.html</a> (eval.json, eval.md beside it).</p>",
        f"<p>Model: {esc(str(exported.get('onnx')))} on {esc(seg.backend)} / {esc(seg.device)}.</p>",
        "<h2>Held-back images: ground truth | prediction</h2><table><tr><th>image</th><th>ground truth</th>"
        "<th>prediction</th><th>regions</th><th>ms (pre / infer / post)</th></tr>",
    ]
    for r in rows:
        t = r["timings"]
        parts.append(
            f"<tr><td>{esc(r['stem'])}</td><td><img src='predict/truth/{esc(r['stem'])}.jpg'></td>"
            f"<td><img src='predict/overlays/{esc(r['stem'])}.jpg'></td><td>{r['regions']}</td>"
            f"<td>{t['preprocess']:.1f} / {t['inference']:.1f} / {t['postprocess']:.1f}</td></tr>"
        )
    parts.append("</table>")
    if history:
        keys = [k for k in ("epoch", "train_loss", "val_loss", "miou") if k in history[0]]
        parts.append("<h2>Training</h2><img src='run/curves.png' style='max-width:640px'><table><tr>")
        parts.append("".join(f"<th>{k}</th>" for k in keys) + "</tr>")
        for h in history:
            parts.append("<tr>" + "".join(f"<td>{h[k]:.4g}</td>" for k in keys) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Latency (unet-bench)</h2><pre>" + esc(bench) + "</pre>")
    parts.append("<h2>Pipeline stages (s)</h2><pre>" + esc(json.dumps(timings, indent=1)) + "</pre>")
    return atomic_write_text(out / "report.html", "\n".join(parts))
