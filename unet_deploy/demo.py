"""`unet-deploy demo`: the whole pipeline on built-in synthetic data, ending in an HTML report.

synth (images + labelme JSON) -> labelme conversion -> short training on a labelled half ->
the labelling loop (``unet_deploy.labelling_loop``: select the most uncertain images of the
unlabelled half, pre-label them, "correct" them with the synthetic truth, retrain from the first
model; `unet-deploy eval` before and after in ``OUT/eval_loop/``) -> export to every format but
AOTInductor -> prediction on held-back images -> `unet-deploy eval` of OpenVINO fp32 and int8 side
by side on them (``OUT/eval/``) -> latency benchmark -> ``OUT/report.html``, opening with the eval summary.
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
# The loop: half of train_images is labelled, the other half is the unlabelled pool; `select` picks
# select_count of the pool, and the second round trains retrain_epochs from the first model at
# retrain_lr (the first round's 3e-3 undid half of what the first model knew for 3 epochs).
LOOP = {"select_count": 16, "retrain_epochs": 8, "retrain_lr": 1e-3}
TRAIN_OPTIONS = {"loss": "ce+dice", "class_weights": "auto", "dropout": 0.0, "lr": 3e-3}


def run_demo(out: str | Path = "demo_out", quick: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Run the pipeline into ``out`` and return the path of ``report.html``.

    ``quick`` shrinks everything (tests use it); the default settles in a few minutes on a
    2-core CPU. ``log`` gets one line per stage and the result (default: ``tqdm.write``).
    """
    from tqdm import tqdm

    from .data.labelme import convert_folder, labelme_to_mask, read_class_names
    from .data.synthetic import generate
    from .export import export_model, resolve_formats
    from .labelling_loop import hide_labels, merge_labelme_folders, scores, split_off
    from .runtime import Segmenter
    from .train import read_metrics_csv, train

    cfg = {**DEMO, **LOOP}
    if quick:
        cfg.update(train_images=12, holdout_images=2, size=(96, 96), img_size=64, base_channels=8,
                   epochs=1, batch_size=4, select_count=2, retrain_epochs=1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    say = log or tqdm.write

    def timed(name: str, fn, *args, **kwargs):
        """Run one stage: a line before and after it, its seconds into ``timings`` (and the CPU
        seconds it took, which a busy machine does not inflate)."""
        say(f"[demo] {name} ...")
        t, cpu = time.perf_counter(), _cpu_seconds()
        result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - t, 1)
        say(f"[demo] {name}: done in {timings[name]:.1f} s (CPU {_cpu_seconds() - cpu:.1f} s)")
        return result

    raw, truth_dir, holdout = out / "raw", out / "pool_truth", out / "holdout"
    timed("synthetic images + labelme JSON", generate, raw, cfg["train_images"], size=cfg["size"], seed=cfg["seed"])
    pool = hide_labels(split_off(raw, truth_dir, cfg["train_images"] // 2), out / "pool")  # truth kept aside
    timed("held-back images", generate, holdout, cfg["holdout_images"], size=cfg["size"], seed=cfg["seed"] + 1000)
    dataset = out / "dataset"
    timed("labelme -> VOC dataset", convert_folder, raw, dataset, labels_file=raw / "labels.txt")
    classes = read_class_names(dataset)
    train_args = dict(batch_size=cfg["batch_size"], img_size=cfg["img_size"], base_channels=cfg["base_channels"],
                      seed=cfg["seed"], overwrite=True, **TRAIN_OPTIONS)  # fmt: skip
    first = timed(f"training on the labelled half ({cfg['train_images'] - len(pool)} images)", train, dataset, out / "run1",
                  epochs=cfg["epochs"], **train_args)  # fmt: skip
    loop = timed("labelling loop: select, pre-label, correct", _select_and_correct, first, pool, truth_dir, out,
                 cfg["select_count"], classes)  # fmt: skip
    merge_labelme_folders([raw, out / "to_label"], out / "round2")
    timed("labelme -> VOC dataset (round 2)", convert_folder, out / "round2", out / "dataset2",
          labels_file=raw / "labels.txt")  # fmt: skip
    best = timed(f"retraining from the first model (+{len(loop['picks'])} corrected images)", train,
                 out / "dataset2", out / "run", epochs=cfg["retrain_epochs"], init=str(first),
                 **{**train_args, "lr": cfg["retrain_lr"]})  # fmt: skip
    before, after = timed("unet-deploy eval before / after", scores, [first, best], holdout, report=out / "eval_loop")
    loop.update(before=before, after=after)
    say(f"[demo] loop: held-back mIoU {before['miou']:.3f} -> {after['miou']:.3f}; {loop['saved']}")
    # AOTInductor is left out: its compile alone takes minutes on 2 cores (`unet-export --format aoti`)
    formats = [f.name for f in resolve_formats("all") if f.name != "aoti"]
    exported = timed(f"export ({', '.join(formats)})", export_model, best, formats, out_dir=out / "export")
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
    evaluated = timed("eval on held-back images (OpenVINO fp32 vs int8)", _evaluate, best, exported,
                      out / "dataset2", holdout, out, say)  # fmt: skip
    bench = timed("latency benchmark", _benchmark, best, out / "bench.json", quick)
    report = _write_report(out, rows, read_metrics_csv(out / "run" / "metrics.csv"), bench,
                           exported, seg, timings, evaluated, loop)
    for m in evaluated["models"]:  # eval.json's numbers: one definition (unet_deploy.metrics)
        per_class = ", ".join(f"{c} {_num(v['iou'])}" for c, v in m["classes"].items())
        say(f"[demo] held-back {Path(m['model']).name} ({m['precision']}): mIoU {_num(m['miou'])} ({per_class})")
    say(f"[demo] report: {report}")
    return report


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _select_and_correct(model: Path, pool: list[Path], truth: Path, out: Path, count: int,
                        classes: list[str]) -> dict:  # fmt: skip
    """`unet-deploy select` on the pool into ``out/to_label``, then the truth saved over each pre-annotation."""
    from .labelling_loop import correct, unchanged_summary
    from .runtime import Segmenter
    from .selection import select_to_folder

    picked = select_to_folder(Segmenter(model, device="cpu"), [str(pool[0].parent)], out / "to_label", count,
                              model=model, progress=False)  # fmt: skip
    fixed = correct([p.image for p in picked.picks], out / "to_label", truth, classes)
    return {"picks": [(p.image, p.candidate.uncertainty, u) for p, u in zip(picked.picks, fixed.unchanged)],
            "pool": len(picked.ranking), "saved": unchanged_summary(fixed), "unchanged": fixed.unchanged_share}


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

    # AOTInductor is left out (as from the export): its compile takes minutes on 2 cores.
    report = run_benchmark(checkpoint, backends=["seed", "eager", "torchscript", "onnxruntime", "openvino"],
                           runs=2 if quick else 10, warmup=1, batches=(1,),
                           budget_s=30 if quick else 150, json_path=json_path)
    return format_table(report)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _write_report(out: Path, rows, history, bench, exported, seg, timings, evaluated, loop) -> Path:
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
    parts += _loop_section(loop)
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


def _loop_section(loop: dict) -> list[str]:
    """The report's labelling loop: eval before and after the corrected images, the work saved, the picks."""
    esc = html.escape
    b, a = loop["before"], loop["after"]
    names = list(b["iou"])
    row = lambda label, s: (f"<tr><td style='text-align:left'>{esc(label)}</td><td>{s['miou']:.3f}</td>"  # noqa: E731
                            + "".join(f"<td>{(s['iou'][c] or 0):.3f}</td>" for c in names)
                            + f"<td>{s['small_defect_recall']:.3f} ({s['small_defects']})</td></tr>")  # fmt: skip
    parts = [
        "<h2>Labelling loop</h2>",
        f"<p>The first model (trained on the labelled half) ranked the {loop['pool']} unlabelled images by "
        f"uncertainty; the {len(loop['picks'])} most uncertain (near-duplicates passed over) were pre-labelled as "
        "labelme JSON, <i>corrected</i> with the synthetic ground truth, and the model retrained from the first "
        f"one. <b>{esc(loop['saved'])}</b>: the share of the pre-labels a person would not have had to touch. "
        "Selection: <a href='to_label/selection.md'>to_label/selection.md</a>; "
        "both models by <code>unet-deploy eval</code>: <a href='eval_loop/eval.html'>eval_loop/eval.html</a>.</p>",
        "<table><tr><th>held-back eval (unet-deploy eval)</th><th>mIoU</th>"
        + "".join(f"<th>IoU {esc(c)}</th>" for c in names) + "<th>recall, defects &lt; 1024 px</th></tr>",
        row("before (labelled half)", b), row("after (+ corrected picks, retrained from the first)", a), "</table>",
        "<table><tr><th>pick</th><th>image</th><th>uncertainty</th><th>pre-label pixels unchanged</th></tr>",
    ]  # fmt: skip
    parts += [f"<tr><td>{i + 1}</td><td>{esc(n)}</td><td>{u:.4f}</td><td>{100 * k:.1f}%</td></tr>"
              for i, (n, u, k) in enumerate(loop["picks"])]  # fmt: skip
    return parts + ["</table>"]
