"""The model ladder: how big a UNet this inspection problem needs, measured rung by rung on the CPU.

Rungs: the seed UNet at base 64, 32, 24, 16 and 8 (transposed-conv up-sampling, the seed's), and
base 16 and 8 with ``upsample=bilinear`` (no transposed convs). Every rung trains on the same synthetic
inspection images (``unet-deploy synth`` -> ``unet-deploy labelme``), twice:

- the same number of epochs for every rung (``--epochs``);
- the same CPU budget for every rung (``--budget-s`` CPU seconds: the epoch count that fits it,
  from the rung's own CPU seconds per epoch in the first training, so the LR schedule ends on time).

Each trained model goes through ``unet-deploy eval`` (the Python API) on held-back images the
training never saw: mIoU, defect recall by size, false alarms; the equal-epoch model also as its
OpenVINO int8 export (the deployed artefact). Speed: each rung's equal-epoch weights exported to
OpenVINO int8 and bf16 at the seed's 256x256 input, end to end on a 1080p frame (rounds interleaved
over rungs and precisions, medians), and the int8 model's frames/s in a ``Segmenter.stream`` of a
1080p video on this machine's cores. Then the same two trainings and evaluation (``--hires-rungs``)
on the hires tiled set: ``synth --preset hires`` defects on larger frames, trained on native-pixel
crops (``--tile-scale 1.0``) and evaluated tiled. Writes ``benchmarks/results/model_ladder.md/.json/.png``.

    python benchmarks/model_ladder.py                       # ~60 minutes on 2 cores
    python benchmarks/model_ladder.py --quick               # a few minutes: checks the script
Finished rungs are kept in ``--work`` (state.json), so a stopped run continues where it was.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from ladder_report import write_report  # noqa: E402
from stream_cpu import make_video, pipelined  # noqa: E402

RUNGS = {  # name: (base_channels, upsample)
    "b64": (64, "transpose"), "b32": (32, "transpose"), "b24": (24, "transpose"), "b16": (16, "transpose"),
    "b16-bilinear": (16, "bilinear"), "b8": (8, "transpose"), "b8-bilinear": (8, "bilinear"),
}  # fmt: skip
FRAME = (1920, 1080)
SMALL_DEFECTS = (4.0, 8.0)  # px across at the training size: areas below 64 px
DEPLOY = 256  # the seed's letterbox: speed is measured there whatever the training size


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/unet-ladder"), help="scratch folder (state.json resumes)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "model_ladder")
    p.add_argument("--rungs", default=",".join(RUNGS), help="comma-separated names of " + ", ".join(RUNGS))
    p.add_argument("--train-count", type=int, default=200, help="synthetic images, 20%% of them for validation")
    p.add_argument("--test-count", type=int, default=60, help="held-back synthetic images for eval")
    p.add_argument("--size", type=int, default=128, help="training image and network size")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=150.0, help="CPU seconds of training per rung, second training")
    p.add_argument("--max-epochs", type=int, default=60, help="cap of the budget training's epoch count")
    p.add_argument("--speed-rounds", type=int, default=5, help="interleaved rounds of the 1080p latency")
    p.add_argument("--speed-runs", type=int, default=10, help="frames per rung and precision per round")
    p.add_argument("--stream-frames", type=int, default=120)
    p.add_argument("--hires-frames", type=int, default=16, help="hires training frames (0: no hires ladder)")
    p.add_argument("--hires-test", type=int, default=8, help="held-back hires frames")
    p.add_argument("--hires-size", default="640x512", help="WxH of the hires frames (the preset's defects, 4-40 px)")
    p.add_argument("--hires-defects", default="4,10", help="min,max defects per hires frame")
    p.add_argument("--hires-epochs", type=int, default=None, help="the hires set's equal epochs [default: --epochs]")
    p.add_argument("--seed", type=int, default=0, help="training seed (weights, batches, augmentation); data stay the same")
    p.add_argument("--remeasure", action="store_true", help="time the speed again even where state.json has it")
    p.add_argument("--hires-rungs", default="b64,b32,b16,b8-bilinear", help="rungs trained on the hires tiles")
    p.add_argument("--quick", action="store_true", help="tiny everything: checks the script")
    args = p.parse_args(argv)
    if args.quick:
        args.train_count, args.test_count, args.epochs, args.budget_s = 24, 8, 1, 8.0
        args.speed_rounds, args.speed_runs, args.stream_frames, args.max_epochs = 1, 2, 8, 3
        args.rungs = args.hires_rungs = "b16,b8"
        args.hires_frames, args.hires_test, args.hires_size = min(args.hires_frames, 4), min(args.hires_test, 2), "256x192"
    args.hires_size = tuple(int(v) for v in args.hires_size.lower().split("x"))
    args.hires_defects = tuple(int(v) for v in args.hires_defects.split(","))
    for key in ("rungs", "hires_rungs"):
        names = [r.strip() for r in getattr(args, key).split(",") if r.strip()]
        unknown = [r for r in names if r not in RUNGS]
        if unknown:
            p.error(f"unknown rungs {unknown}; known: {', '.join(RUNGS)}")
        setattr(args, key, names)
    return args


class State:
    """``work/state.json``: what finished, so a stopped run continues."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, *keys: str) -> Any:
        d: Any = self.data
        for k in keys:
            d = d.get(k) if isinstance(d, dict) else None
        return d

    def put(self, value: Any, *keys: str) -> Any:
        d = self.data
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)
        return value


def make_data(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """The training VOC folder, the held-back labelme folder and a held-back one of small defects only."""
    from unet_deploy.data.labelme import convert_folder
    from unet_deploy.data.synthetic import generate

    size = (args.size, args.size)
    raw, voc, test, small = (args.work / f"{n}_{args.train_count}_{args.size}" for n in ("raw", "voc", "test", "small"))
    if not (voc / "class_names.txt").is_file():
        generate(raw, args.train_count, size, seed=0, progress=False)
        assert not convert_folder(raw, voc, progress=False).failed
    if not (test / "labels.txt").is_file():
        generate(test, args.test_count, size, seed=99, progress=False)  # another seed: images training never saw
    if not (small / "labels.txt").is_file():  # small defects only: the default mix holds few below 64 px
        generate(small, args.test_count, size, seed=98, progress=False, defect_size=SMALL_DEFECTS)
    return voc, test, small


def make_hires(args: argparse.Namespace) -> tuple[Path, Path]:
    """The hires tiled set: ``synth --preset hires`` defects (4-40 px across) on ``--hires-size`` frames
    (smaller than the preset's 2448x2048, for time); the training VOC folder and the held-back labelme one."""
    from unet_deploy.data.labelme import convert_folder
    from unet_deploy.data.synthetic import PRESETS, generate

    spec = PRESETS["hires"] | {"size": args.hires_size, "defects": args.hires_defects}
    tag = f"{args.hires_size[0]}x{args.hires_size[1]}"
    raw, voc, test = (args.work / f"hires_{n}_{args.hires_frames}_{tag}" for n in ("raw", "voc", "test"))
    if not (voc / "class_names.txt").is_file():
        generate(raw, args.hires_frames, seed=0, progress=False, **spec)
        assert not convert_folder(raw, voc, progress=False).failed
    if not (test / "labels.txt").is_file():
        generate(test, args.hires_test, seed=99, progress=False, **spec)
    return voc, test


def train_rung(args: argparse.Namespace, voc: Path, name: str, epochs: int, tag: str, **options: Any) -> dict[str, Any]:
    """Train one rung; its best checkpoint, wall and CPU seconds (dataloading in-process: workers=0)."""
    from unet_deploy.train import read_metrics_csv, train

    base, upsample = RUNGS[name]
    run = args.work / f"run_{name}_{tag}"
    wall0, cpu0 = time.perf_counter(), time.process_time()
    best = train(voc, run, epochs=epochs, base_channels=base, upsample=upsample, img_size=args.size, batch_size=8,
                 dropout=0.0, workers=0, device="cpu", progress=False, overwrite=True, seed=args.seed, **options)  # fmt: skip
    cpu = time.process_time() - cpu0
    rows = read_metrics_csv(run / "metrics.csv")
    return {"checkpoint": str(best), "epochs": epochs, "wall_s": time.perf_counter() - wall0, "cpu_s": cpu,
            "cpu_s_per_epoch": cpu / epochs, "best_val_miou": max(float(r["miou"]) for r in rows)}  # fmt: skip


def evaluate_models(test: Path, models: list[str]) -> list[dict[str, Any]]:
    """``unet-deploy eval`` of ``models`` on the held-back images: mIoU, recall by size, false alarms."""
    from unet_deploy.eval.data import load_data
    from unet_deploy.eval.run import evaluate

    report = evaluate(load_data(test), models, device="cpu").to_dict()
    out = []
    for m in report["models"]:
        defects = [c["defects"] for c in m["classes"].values()]
        total = lambda key, size=None: sum((d["by_size"][size] if size else d)[key] for d in defects)  # noqa: E731
        by_size = {s: _ratio(total("found", s), total("truth", s)) for s in defects[0]["by_size"]}
        out.append({"model": m["model"], "precision": m["precision"], "miou": m["miou"],
                    "recall": _ratio(total("found"), total("truth")), "recall_by_size": by_size,
                    "truth_by_size": {s: total("truth", s) for s in by_size},
                    "false_alarms": total("false_alarms"), "images": report["images"]})  # fmt: skip
    return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def export(ckpt: str, voc: Path, precision: str, out: Path, size: int | None) -> str:
    """OpenVINO export of ``ckpt`` at ``size`` (None: the training size); int8 calibrated on the training set."""
    from unet_deploy.export import export_model

    out.mkdir(parents=True, exist_ok=True)
    paths = export_model(ckpt, "openvino", out_dir=out, img_size=size, precision=precision, verbose=False,
                         calib=voc, val=voc)  # fmt: skip
    return str(paths["openvino"])


def architecture(name: str, classes: int) -> dict[str, Any]:
    """Parameters and GFLOP per frame (square 256 and a 1080p frame's rect 144x256) of a rung."""
    from unet_deploy.bench.machine import model_gflops
    from unet_deploy.meta import ModelMeta
    from unet_deploy.model import UNet, count_parameters

    base, upsample = RUNGS[name]
    meta = ModelMeta(classes=[str(i) for i in range(classes)], input_size=(DEPLOY, DEPLOY),
                     arch={"base_channels": base, "upsample": upsample})  # fmt: skip
    return {"base_channels": base, "upsample": upsample, "params": count_parameters(UNet(classes, 3, base, upsample)),
            "gflop_square": model_gflops(meta, (DEPLOY, DEPLOY)), "gflop_rect": model_gflops(meta, (144, DEPLOY))}  # fmt: skip


def speed(args: argparse.Namespace, models: dict[tuple[str, str], str]) -> dict[str, Any]:
    """End to end on a 1080p frame, rounds interleaved over every (rung, precision): stage medians."""
    from unet_deploy import Segmenter
    from unet_deploy.data.synthetic import sample

    frames = [sample(7, i, FRAME).image for i in range(4)]
    segs = {key: Segmenter(path, device="cpu") for key, path in models.items()}
    samples: dict[tuple[str, str], dict[str, list[float]]] = {k: {} for k in segs}
    for seg in segs.values():  # warm-up: compiled shapes, thread pools
        for f in frames:
            seg(f)
    for r in range(args.speed_rounds):
        for key, seg in segs.items():
            for i in range(args.speed_runs):
                t0 = time.perf_counter()
                res = seg(frames[i % len(frames)])
                row = samples[key]
                row.setdefault("end_to_end", []).append((time.perf_counter() - t0) * 1000)
                for stage, ms in res.timings.items():
                    row.setdefault(stage, []).append(ms)
        log(f"speed round {r + 1}/{args.speed_rounds}")
    out = {f"{n} {p}": {k: statistics.median(v) for k, v in s.items()} | {"backend": segs[(n, p)].describe()}
           for (n, p), s in samples.items()}  # fmt: skip
    return out


def stream_fps(args: argparse.Namespace, models: dict[str, str]) -> dict[str, Any]:
    """Frames/s of ``Segmenter.stream`` over a 1080p MJPG video, per int8 rung (after one warm-up pass)."""
    from unet_deploy import Segmenter

    video = make_video(args.work / f"stream_{args.stream_frames}.avi", args.stream_frames, FRAME)
    out = {}
    for name, path in models.items():
        seg = Segmenter(path, device="cpu")
        pipelined(seg, video)
        fps, share = pipelined(seg, video)
        out[name] = {"fps": fps, "stage_share": share}
        log(f"stream {name}: {fps:.1f} frames/s")
    return out


def climb(args: argparse.Namespace, state: State, key: str, rungs: list[str], voc: Path, test: Path,
          small: Path | None, epochs: int, **options: Any) -> None:
    """Train every rung on ``voc`` for the same epochs, then for the same CPU budget; evaluate both checkpoints
    and the equal-epoch int8 IR on ``test`` (and the small-defect set ``small``). Results in ``state[key]``."""
    tag = "" if key == "rungs" else f"{key}_"
    for name in rungs:  # 1: the same epochs for every rung
        if not state.get(key, name, "epochs"):
            log(f"training {tag}{name}: {epochs} epochs")
            state.put(train_rung(args, voc, name, epochs, f"{tag}epochs", **options), key, name, "epochs")
    for name in rungs:  # 2: the same CPU budget for every rung
        if not state.get(key, name, "budget"):
            per_epoch = state.get(key, name, "epochs", "cpu_s_per_epoch")
            fit = max(1, min(args.max_epochs, int(args.budget_s // per_epoch)))
            log(f"training {tag}{name}: {fit} epochs in the {args.budget_s:.0f} s CPU budget")
            state.put(train_rung(args, voc, name, fit, f"{tag}budget", **options), key, name, "budget")
    for name in rungs:  # 3: eval on held-back images: checkpoints, and the deployed int8 IR
        if not state.get(key, name, "eval"):
            log(f"exporting and evaluating {tag}{name}")
            ckpts = [state.get(key, name, t, "checkpoint") for t in ("epochs", "budget")]
            int8 = export(ckpts[0], voc, "int8", args.work / f"ir_{tag}{name}_{args.size}", None)
            rows = evaluate_models(test, [*ckpts, int8])
            for row, on_small in zip(rows, evaluate_models(small, [*ckpts, int8]) if small else []):
                row["small_set"] = {k: on_small[k] for k in ("recall", "false_alarms", "miou")}
                row["small_set"]["defects"] = sum(on_small["truth_by_size"].values())
            state.put(dict(zip(("epochs", "budget", "epochs_int8"), rows)), key, name, "eval")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    state = State(args.work / "state.json")
    state.put({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "args")
    from unet_deploy.bench.machine import hardware_info

    state.put(hardware_info(), "machine")
    voc, test, small = make_data(args)
    classes = len((voc / "class_names.txt").read_text().split())
    for name in args.rungs:
        state.get("rungs", name, "arch") or state.put(architecture(name, classes), "rungs", name, "arch")
    climb(args, state, "rungs", args.rungs, voc, test, small, args.epochs)
    models: dict[tuple[str, str], str] = {}
    for name in args.rungs:  # 4: speed at the seed's input size, the equal-epoch weights
        for precision in ("int8", "bf16"):
            path = state.get("rungs", name, "ir", precision)
            if not path or not Path(path).is_file():
                ckpt = state.get("rungs", name, "epochs", "checkpoint")
                path = state.put(export(ckpt, voc, precision, args.work / f"ir_{name}_{DEPLOY}", DEPLOY),
                                 "rungs", name, "ir", precision)  # fmt: skip
            models[(name, precision)] = path
    if args.remeasure or not state.get("stream"):
        load_before = os.getloadavg()
        state.put(speed(args, models), "speed")
        state.put(stream_fps(args, {n: p for (n, prec), p in models.items() if prec == "int8"}), "stream")
        state.put([load_before, os.getloadavg()], "load")
    if args.hires_frames:  # the same ladder on native-pixel tiles of larger frames, evaluated tiled
        hvoc, htest = make_hires(args)
        climb(args, state, "hires", args.hires_rungs, hvoc, htest, None, args.hires_epochs or args.epochs, tile_scale=1.0)
    state.data["rungs"] = {n: state.data["rungs"][n] for n in RUNGS if n in state.data["rungs"]}  # ladder order
    write_report(state.data, args.out, " ".join(["python", "benchmarks/model_ladder.py", *(argv or sys.argv[1:])]))
    log(f"wrote {args.out}.md/.json/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
