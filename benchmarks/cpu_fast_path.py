"""The CPU fast path, side by side in one run: seed pipeline, eager, ONNX Runtime and OpenVINO at fp32/bf16/int8.

Seed-size UNet (base 64) trained on the built-in synthetic data, one 1920x1080 synthetic frame,
end to end (letterbox + inference + argmax + mapping back + contours, as ``unet_deploy.bench.Runner``
times it; the seed row is ``bench``'s own seed pipeline): median latency per path, with the
square and the ``rect`` letterbox, speed-up over the seed pipeline, and the accuracy each path
keeps on held-back 1920x1080 synthetic images (pixel agreement with eager fp32 on the square
letterbox, mIoU against the ground truth and its drop). Every int8/bf16 export is the package's
own (``unet_deploy.export``: recipe, gate at its defaults, accuracy-control fallback); the int8
recipe variants and ONNX Runtime's own static quantizer are measured beside it, and an
AVX2-only CPU is emulated in a child process (``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``:
the AVX2 kernels, on this CPU's cores). Writes ``benchmarks/results/cpu_fast_path.md``
(``fast_path_report.py`` formats it).

    python benchmarks/cpu_fast_path.py                          # the recorded run, ~10 min on a quiet machine
    python benchmarks/cpu_fast_path.py --checkpoint runs/x/best.pt   # a given seed-size checkpoint
    python benchmarks/cpu_fast_path.py --quick --out /tmp/fp.md      # smoke run on a tiny model, ~2 min

Without ``--checkpoint`` it uses ``runs/cpu_fast_path/b64/best.pt``, training it first when it is
missing (``unet_deploy.train``, 5 epochs on 64x64 tiles of 120 synthetic 128x128 images, where defects
have about the pixel size they have in a 1080p frame letterboxed to 256; ~15-20 min on 2 quiet cores,
once: ``--train-only`` does just that step).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from unet_deploy import accuracy, bench, cpu, metrics  # noqa: E402
from unet_deploy.errors import UnetDeployError  # noqa: E402
from unet_deploy.meta import ModelMeta  # noqa: E402
from unet_deploy.runtime import openvino_backend as ovb  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "cpu_fast_path.md"
CACHE = ROOT / "runs" / "cpu_fast_path"  # /runs/ is git-ignored
MIN_AGREEMENT, MAX_DROP = 99.5, 0.5  # the acceptance's bar for int8/bf16 (the gate's defaults are 99.0 / 1.0)
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}  # oneDNN (OpenVINO, torch) and ATen kernels


@dataclass
class Settings:
    """Model, data and measurement sizes of one benchmark run."""

    base: int = 64
    img_size: int = 256
    train_size: int = 128  # synthetic training images are train_size x train_size ...
    train_tile: int = 64  # ... cut into tiles of this size (the network trains on tiles)
    train_images: int = 120
    train_epochs: int = 5
    calib: int = 32
    calib_more: int = 96  # the "more calibration images" variant
    val: int = 8
    frame: tuple[int, int] = (1920, 1080)  # W, H of the timed frame and the held-back images
    runs: int = 10
    warmup: int = 2


QUICK = Settings(base=8, img_size=64, train_size=64, train_tile=32, train_images=24, train_epochs=1, calib=8, calib_more=12, val=3,
                 frame=(480, 270), runs=3, warmup=1)  # fmt: skip


def log(msg: str, t0: list[float] = [time.perf_counter()]) -> None:  # noqa: B006 - start time, once
    print(f"[{time.perf_counter() - t0[0]:6.0f} s] {msg}", flush=True)


# ----------------------------------------------------------------------------- data and model
def write_voc(root: Path, seed: int, count: int, size: tuple[int, int], tile: int | None = None) -> Path:
    """``count`` synthetic images of ``size`` (W, H) with their masks as a VOC-style folder (PNG, lossless).

    ``tile`` cuts each image into ``tile`` x ``tile`` pieces (same pixel scale, 4x+ cheaper steps).
    """
    from unet_deploy.data.palette import save_palette_png
    from unet_deploy.data.synthetic import sample
    from unet_deploy.fileio import write_image

    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    w, h = size
    for i in range(count):
        s = sample(seed, i, size)
        t = tile or max(w, h)
        for y in range(0, h, t):
            for x in range(0, w, t):
                name = f"synth_{i:04d}" + (f"_{y}_{x}" if tile else "") + ".png"
                write_image(root / "JPEGImages" / name, s.image[y : y + t, x : x + t])
                save_palette_png(root / "SegmentationClass" / name, s.mask[y : y + t, x : x + t])
    return root


def checkpoint(args: argparse.Namespace, s: Settings, work: Path) -> tuple[Path, str]:
    """The checkpoint to measure and a sentence on where it comes from (trains one when needed)."""
    if args.checkpoint:
        return args.checkpoint, f"`{args.checkpoint}` (given)"
    run = (Path(args.work) if args.quick and args.work else CACHE) / f"b{s.base}"
    best, last = run / "best.pt", run / "last.pt"
    from unet_deploy.data.synthetic import CLASSES
    from unet_deploy.train import read_metrics_csv, train

    epochs_done = len(read_metrics_csv(run / "metrics.csv")) if (run / "metrics.csv").is_file() else 0
    if best.is_file() and epochs_done >= s.train_epochs:
        return best, f"`{best.relative_to(ROOT) if best.is_relative_to(ROOT) else best}` (trained by this script earlier)"

    data = write_voc(work / "train", 0, s.train_images, (s.train_size, s.train_size), tile=s.train_tile)
    (data / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    log(f"training base {s.base} on {s.train_tile}px tiles of {s.train_images} synthetic {s.train_size}px images, "
        f"{s.train_epochs} epochs")  # fmt: skip
    t0 = time.perf_counter()
    # Defects are rare (a few % of pixels): class weights and a Dice term make a short run learn them.
    resume = str(last) if last.is_file() else None  # an interrupted training continues (same data, same seed)
    best = train(data, run, epochs=s.train_epochs, img_size=s.train_tile, base_channels=s.base, batch_size=8,
                 lr=3e-3, val_split=0.1, loss="ce+dice", class_weights="auto", resume=resume,
                 overwrite=resume is None)  # fmt: skip
    return best, f"`{best.relative_to(ROOT) if best.is_relative_to(ROOT) else best}` (trained now, {time.perf_counter() - t0:.0f} s)"


# ----------------------------------------------------------------------------- exports
def quantize_nncf_onnx(onnx_path: Path, calib_inputs: list[np.ndarray]) -> Path:
    """NNCF's ONNX backend, the other QDQ quantizer, with the package's recipe (first conv fp32, no fallback)."""
    import logging

    import nncf
    import onnx

    from unet_deploy.formats.quantize import Int8Recipe, nncf_kwargs

    model = onnx.load(str(onnx_path))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    kwargs = nncf_kwargs(Int8Recipe(), "vnni", convs, len(calib_inputs))
    nncf.set_log_level(logging.ERROR)
    advanced = kwargs.pop("advanced_quantization_parameters")
    quantized = nncf.quantize(model, nncf.Dataset([{"images": x} for x in calib_inputs]), advanced_parameters=advanced,
                              **kwargs)  # fmt: skip
    out = onnx_path.with_name(onnx_path.stem + ".nncf-int8.onnx")
    onnx.save(quantized, str(out))
    return out


REUSE: dict[str, Any] = {}  # --reuse: exports of an earlier run in the same --work folder, by name


def timed_export(what: str, fn: Callable[[], Path], files: dict[str, Any]) -> None:
    """Run one export; ``files[what]`` gets its path, seconds, MB and metadata, or the one-line error.

    With ``--reuse`` an export recorded by an earlier run (``exports.json`` in ``--work``) whose file
    is still there is taken as it is, with the seconds that run measured.
    """
    from unet_deploy.runtime.base import sidecar_meta

    done = REUSE.get(what)
    if done is not None and (isinstance(done, str) or Path(done["path"]).is_file()):
        files[what] = done if isinstance(done, str) else {**done, "path": Path(done["path"]),
                                                          "meta": _artefact_meta(Path(done["path"]))}  # fmt: skip
        log(f"{what}: reused from the earlier run ({done if isinstance(done, str) else Path(done['path']).name})")
        return
    t0 = time.perf_counter()
    try:
        path = Path(fn())
    except (UnetDeployError, ImportError, RuntimeError) as e:
        files[what] = str(getattr(e, "message", e)).splitlines()[0][:400]
        log(f"{what}: {files[what]}")
        return
    size = sum(p.stat().st_size for p in (path, path.with_suffix(".bin")) if p.is_file()) / 1e6
    meta = _artefact_meta(path) or sidecar_meta(path)
    files[what] = {"path": path, "seconds": time.perf_counter() - t0, "mb": size, "meta": meta}
    log(f"{what}: {path.name} ({size:.1f} MB) in {files[what]['seconds']:.0f} s")


def _artefact_meta(path: Path) -> ModelMeta | None:
    """The metadata inside an IR or ONNX file, read by its runtime backend (not the sidecar, which
    ``model.int8.xml`` and ``model.int8.onnx`` would share)."""
    from unet_deploy.runtime.base import backend_class

    return backend_class(path)(path, device="cpu").meta if path.suffix in (".xml", ".onnx") else None


def variants(s: Settings) -> list[tuple[str, Any, int]]:
    """The int8 recipes measured side by side: (name, Int8Recipe, calibration images)."""
    from unet_deploy.formats.quantize import Int8Recipe

    plain = Int8Recipe(keep_fp32=(), accuracy_control=False)
    return [
        ("NNCF defaults (the earlier recipe)", plain, s.calib),
        ("preset MIXED", Int8Recipe(preset="mixed", keep_fp32=(), accuracy_control=False), s.calib),
        (f"{s.calib_more} calibration images", plain, s.calib_more),
        ("fast_bias_correction=False", Int8Recipe(keep_fp32=(), fast_bias_correction=False, accuracy_control=False), s.calib),
        ("first and last conv fp32", Int8Recipe(keep_fp32=("first_conv", "last_conv"), accuracy_control=False), s.calib),
        ("first conv fp32 (the default recipe, before any fallback)", Int8Recipe(accuracy_control=False), s.calib),
    ]


# ----------------------------------------------------------------------------- measuring
@dataclass
class Row:
    name: str
    precision: str
    pad: str = "top-left"
    status: str = "ok"
    stages: dict[str, float] | None = None
    agreement: float | None = None
    worst: float | None = None
    miou: float | None = None
    mb: float | None = None
    note: str = ""


def measure(row: Row, runner: Any, frame: np.ndarray, val: list[accuracy.Sample], s: Settings,
            reference: list[np.ndarray] | None, classes: int) -> list[np.ndarray]:  # fmt: skip
    """Fill ``row`` with median stage times on ``frame`` and accuracy on ``val``; return the val masks."""
    runner.prepare([frame] + [v.image for v in val])
    for _ in range(s.warmup):
        runner([frame])
    stages = [runner([frame])[0] for _ in range(s.runs)]
    row.stages = {k: float(np.median([st[k] for st in stages])) for k in bench.STAGES}
    masks = [runner([v.image])[1][0] for v in val]
    ref = reference if reference is not None else masks
    c = metrics.compare_masks(ref, masks, [v.mask for v in val], classes)
    row.miou, row.agreement, row.worst = c.miou, c.agreement, c.worst_agreement  # in percent and points
    return masks


def infer_ms(path: Path, shape: tuple[int, int], runs: int = 10) -> float:
    """Median inference ms of an IR on one zero-filled ``shape`` input (the variants' speed)."""
    backend = ovb.OpenVINOBackend(path, device="cpu")
    x = np.zeros((1, 3, *shape), np.float32)
    for _ in range(2):
        backend.forward(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.forward(x)
        times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(times))


def kernels(path: Path) -> str:
    """The convolution kernels OpenVINO picked for an IR here (e.g. ``brgconv_avx512_amx_i8`` x22)."""
    from collections import Counter

    compiled = ovb.OpenVINOBackend(path, device="cpu")
    compiled.forward(np.zeros((1, 3, 64, 64), np.float32))
    runtime = next(iter(compiled._compiled.values())).get_runtime_model()
    types = Counter(op.get_rt_info()["primitiveType"].astype(str) for op in runtime.get_ops()
                    if op.get_rt_info()["layerType"].astype(str) == "Convolution")  # fmt: skip
    return ", ".join(f"{k} x{v}" for k, v in types.most_common())


# ----------------------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="a trained seed-size checkpoint (default: train/cache one)")
    p.add_argument("--quick", action="store_true", help="tiny model and data: checks the script end to end")
    p.add_argument("--runs", type=int, help="timed runs per path (default 10)")
    p.add_argument("--val", type=int, help="held-back 1920x1080 images for the accuracy (default 8)")
    p.add_argument("--train-only", action="store_true", help="only train (or find) the checkpoint, then stop")
    p.add_argument("--no-avx2", action="store_true", help="skip the emulated AVX2-only section")
    p.add_argument("--reuse", action="store_true", help="take the exports an earlier run left in --work (time again only)")
    p.add_argument("--avx2-child", type=Path, help=argparse.SUPPRESS)  # internal: the AVX2 section's JSON out
    p.add_argument("--work", help="folder for data and exports (default: a temporary one)")
    p.add_argument("--out", type=Path, default=RESULT, help=f"Markdown result (default {RESULT.relative_to(ROOT)})")
    args = p.parse_args(argv)
    s = QUICK if args.quick else Settings()
    s.runs, s.val = args.runs or s.runs, args.val or s.val
    with tempfile.TemporaryDirectory(prefix="cpu_fast_path.") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.train_only:
            log(f"checkpoint: {checkpoint(args, s, work)[1]}")
            return 0
        if args.avx2_child:
            from fast_path_avx2 import avx2_child

            return avx2_child(args, s, work)
        return run(args, s, work)


def _data(s: Settings, work: Path, meta: ModelMeta) -> tuple[Path, Path, list[accuracy.Sample], np.ndarray]:
    w, h = s.frame
    calib_dir = work / "calib"  # training distribution (seed 0); the child process reuses the parent's
    if not (calib_dir / "JPEGImages").is_dir():
        write_voc(calib_dir, seed=0, count=s.calib_more, size=(w, h))
    val_dir = work / "val"  # held back: another seed
    if not (val_dir / "JPEGImages").is_dir():
        write_voc(val_dir, seed=1, count=s.val, size=(w, h))
    val = accuracy.load_samples(accuracy.dataset_images(val_dir))
    return calib_dir, val_dir, val, bench.source_image(w, h, seed=2)


def run(args: argparse.Namespace, s: Settings, work: Path) -> int:
    import json
    import subprocess

    from fast_path_report import report

    from unet_deploy.checkpoint import load_checkpoint
    from unet_deploy.export import export_model
    from unet_deploy.export import export_openvino
    from unet_deploy.formats.openvino import ir_path
    from unet_deploy.formats.quantize import calibration_inputs
    from unet_deploy.runtime import Segmenter
    from unet_deploy.runtime.onnx_runtime import OnnxRuntimeBackend

    ckpt, origin = checkpoint(args, s, work)
    start = time.perf_counter()
    model, meta = load_checkpoint(ckpt)
    meta.input_size = (s.img_size, s.img_size)
    log(f"model {origin}: base {meta.arch['base_channels']}, classes {meta.classes}, input {s.img_size}")
    calib_dir, val_dir, val, frame = _data(s, work, meta)
    bar = dict(min_agreement=MIN_AGREEMENT, max_miou_drop=MAX_DROP)  # the acceptance's bar, stricter than the defaults
    gate_lines: list[str] = []

    def keep(line: str) -> None:
        gate_lines.append(line)
        log(line)

    def ov(prec: str, out: Path, **kw: Any) -> Path:
        return export_openvino(model, meta, ir_path(out, "model", prec), precision=prec, val=val_dir, val_count=s.val,
                               calib=calib_dir if prec == "int8" else None, check=prec == "fp32", log=keep,
                               **{**bar, **kw})  # fmt: skip

    files: dict[str, Any] = {}
    record = work / "exports.json"
    if args.reuse and record.is_file():
        REUSE.update(json.loads(record.read_text()))
        gate_lines.extend(f"(earlier run) {line}" for line in REUSE.pop("_lines", []))
    timed_export("onnx fp32", lambda: export_model(ckpt, "onnx", work / "onnx", img_size=meta.input_size, verbose=False)["onnx"], files)
    timed_export("onnx int8 (the package's)", lambda: export_model(ckpt, "onnx", work / "onnx", img_size=meta.input_size,
                 precision="int8", calib=calib_dir, val=val_dir, log=keep, **bar)["onnx"], files)  # fmt: skip
    if isinstance(files["onnx fp32"], dict):
        inputs = calibration_inputs(accuracy.spread(accuracy.dataset_images(calib_dir), s.calib), meta)
        timed_export("onnx int8 (NNCF ONNX)", lambda: quantize_nncf_onnx(files["onnx fp32"]["path"], inputs), files)
    for prec in ("fp32", "bf16", "int8"):
        timed_export(f"openvino {prec}", lambda prec=prec: ov(prec, work / "ov"), files)
    variant_rows = []
    for i, (name, recipe, count) in enumerate(variants(s)):
        key = f"variant {i}"
        timed_export(key, lambda r=recipe, c=count, i=i: ov("int8", work / f"var{i}", int8=r, calib_count=c,
                                                          min_agreement=0.0, max_miou_drop=100.0), files)  # fmt: skip
        f = files[key]
        if isinstance(f, dict):
            acc = f["meta"].extra["accuracy"]
            variant_rows.append({"name": name, "agreement": acc["agreement"], "worst": acc["worst_agreement"],
                                 "drop": acc["miou_drop"], "export_s": f["seconds"], "calib": count,
                                 "ms": infer_ms(f["path"], (s.img_size, s.img_size)),
                                 "ms_rect": infer_ms(f["path"], _rect_hw(meta, s))})  # fmt: skip
        else:
            variant_rows.append({"name": name, "error": f})

    record.write_text(json.dumps({"_lines": gate_lines, **{k: v if isinstance(v, str) else {
        "path": str(v["path"]), "seconds": v["seconds"], "mb": v["mb"]} for k, v in files.items()}}))  # fmt: skip

    def backend_runner(cls: type, key: str, pad: str) -> Callable[[], Any]:  # the Segmenter users run on that file
        return lambda: bench.Runner(Segmenter(files[key]["path"], device="cpu", backend=cls.name, letterbox=pad))

    def eager(precision: str, pad: str) -> Callable[[], Any]:
        return lambda: bench.Runner(Segmenter(ckpt, device="cpu", input_size=meta.input_size, precision=precision,
                                              letterbox=pad))  # fmt: skip

    native = cpu.has_native_bf16()
    plan: list[tuple[Row, Callable[[], Any], str | None]] = [
        (Row("eager fp32 (reference)", "fp32"), eager("fp32", "top-left"), None),
        (Row("seed pipeline (PIL letterbox, eager fp32)", "fp32"), lambda: bench.SeedRunner(model, meta, "cpu"), None),
    ]
    for pad in ("top-left", "rect"):
        plan += [
            (Row("eager fp32", "fp32", pad), eager("fp32", pad), None),
            (Row("eager bf16 (Segmenter precision=bf16)", "bf16", pad), eager("bf16", pad), None),
            (Row("ONNX Runtime fp32", "fp32", pad), backend_runner(OnnxRuntimeBackend, "onnx fp32", pad), "onnx fp32"),
            (Row("ONNX Runtime int8 (the package's: ORT quantize_static)", "int8", pad),
             backend_runner(OnnxRuntimeBackend, "onnx int8 (the package's)", pad), "onnx int8 (the package's)"),
            (Row("ONNX Runtime int8 (NNCF's ONNX backend, same recipe)", "int8", pad),
             backend_runner(OnnxRuntimeBackend, "onnx int8 (NNCF ONNX)", pad), "onnx int8 (NNCF ONNX)"),
            (Row("OpenVINO fp32", "fp32", pad), backend_runner(ovb.OpenVINOBackend, "openvino fp32", pad), "openvino fp32"),
            (Row("OpenVINO bf16", "bf16", pad), backend_runner(ovb.OpenVINOBackend, "openvino bf16", pad), "openvino bf16"),
            (Row("OpenVINO int8 (the package's)", "int8", pad), backend_runner(ovb.OpenVINOBackend, "openvino int8", pad),
             "openvino int8"),
        ]  # fmt: skip
    plan = [item for item in plan if not (item[0].name == "eager fp32" and item[0].pad == "top-left")]  # = reference
    rows, reference = [], None
    for row, make, key in plan:
        rows.append(row)
        if key is not None and not isinstance(files.get(key), dict):
            row.status = f"not exported: {files.get(key, 'skipped')}"
            continue
        if row.precision == "bf16" and row.name.startswith("eager") and not native:
            row.status = "skipped: this CPU has no native bf16 (emulated bf16 is slower than fp32)"
            continue
        t0 = time.perf_counter()
        row.mb = files[key]["mb"] if key else None
        masks = measure(row, make(), frame, val, s, reference, meta.num_classes)
        reference = reference if reference is not None else masks
        log(f"{row.name} [{row.pad}]: {row.stages['end_to_end']:.0f} ms, agreement {row.agreement:.2f}% "
            f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    int8_kernels = kernels(files["openvino int8"]["path"]) if isinstance(files.get("openvino int8"), dict) else ""
    avx2 = None
    if not args.no_avx2 and isinstance(files.get("openvino int8"), dict):
        out = work / "avx2.json"
        cmd = [sys.executable, __file__, "--avx2-child", str(out), "--checkpoint", str(ckpt), "--work", str(work),
               "--runs", str(s.runs), "--val", str(s.val)] + ["--quick"] * args.quick + ["--reuse"] * args.reuse  # fmt: skip
        log("AVX2-only section: a child process with " + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items()))
        subprocess.run(cmd, env={**os.environ, **AVX2_ENV}, check=True)
        avx2 = json.loads(out.read_text())
    text = report(rows=rows, files=files, variants=variant_rows, avx2=avx2, gate_lines=gate_lines, s=s, meta=meta,
                  origin=origin, kernels=int8_kernels, seconds=time.perf_counter() - start,
                  command="python benchmarks/cpu_fast_path.py" + (" --quick" if args.quick else ""))  # fmt: skip
    from unet_deploy.fileio import atomic_write_text

    atomic_write_text(args.out, text)
    log(f"wrote {args.out}")
    print(text)
    return 0


def _rect_hw(meta: ModelMeta, s: Settings) -> tuple[int, int]:
    from unet_deploy.preprocess import letterbox_geometry

    t = letterbox_geometry((s.frame[1], s.frame[0]), meta.input_size, "rect")
    return t.dst_hw


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
