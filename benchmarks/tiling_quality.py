"""What tiling buys: the same small UNet trained for the same wall time on letterboxed whole frames and on tiles.

On the high-resolution synthetic set (``unet-deploy synth --preset hires``: 2448x2048 frames,
defects 4-40 px across) one model is trained on whole frames letterboxed into 256x256
(``SegmentationDataset``) and one on native-pixel crops (``TileDataset``, ``tiling.scale`` 1.0:
the smallest defects are 4 px, and at 0.5 they would be 2 px), same architecture, loss, batch
size, optimizer and wall time. Both are exported to ONNX (and OpenVINO) and compared on
held-back frames at their original size: per-class IoU (``unet_deploy.metrics``), defect
recall by size bucket (a ground-truth defect, a connected component of one class, is found
when at least half of its pixels are predicted as its class; its size across is
``2 * max(distance transform) - 1``, the width of a stroke, the diameter of a spot) and
latency per megapixel, and the peak memory of one 8000x6000 frame through the tiled
``Segmenter``. Writes ``benchmarks/results/tiling_quality.md`` and one PNG.

    python benchmarks/tiling_quality.py --minutes 25 --parallel --threads 1 --openvino  # 2 cores, ~30 min
    python benchmarks/tiling_quality.py --reuse --openvino      # measure again what that run trained
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unet_deploy import metrics  # noqa: E402
from unet_deploy.data.synthetic import PRESETS, generate  # noqa: E402
from tiling_report import RESULTS, command_line, picture, write_page  # noqa: E402

MODES = ("letterbox", "tiles")
FOUND_FRACTION = 0.5


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/tiling_bench"), help="data, runs and exports")
    p.add_argument("--frames", type=int, default=44, help="hires frames in all")
    p.add_argument("--test", type=int, default=8, help="of them held back for the comparison")
    p.add_argument("--minutes", type=float, default=10.0, help="training wall time of each model")
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--letterbox-size", type=int, default=256)
    p.add_argument("--tile-size", type=int, default=128)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1, help="torch and runtime threads")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="Dropout2d rate while training (the seed's 0.3 stops a base-8 UNet from learning small classes)")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                   help="bf16 autocast training (auto: where the CPU has native bf16, as unet-train)")
    p.add_argument("--parallel", action="store_true",
                   help="train the two models at once, one process each (give each --threads 1 on 2 cores)")
    p.add_argument("--warm-start", action="store_true",
                   help="continue both models from WORK/<mode>.pt for another --minutes (a new cosine cycle)")
    p.add_argument("--reuse", action="store_true",
                   help="measure the models an earlier run left in --work (WORK/<mode>.pt) instead of training")
    p.add_argument("--openvino", action="store_true", help="also time OpenVINO")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args()


def make_data(args: argparse.Namespace) -> Path:
    from unet_deploy.data.labelme import convert_folder

    raw, voc = args.work / "hires_raw", args.work / "hires_voc"
    if not (voc / "class_names.txt").is_file():
        generate(raw, args.frames, seed=args.seed, **PRESETS["hires"])
        summary = convert_folder(raw, voc, progress=False)
        assert summary.ok, summary
    return voc


def train_for(dataset, meta, args: argparse.Namespace, log, state: dict | None = None) -> tuple[object, dict]:
    """Train a UNet of ``meta`` (fresh, or from ``state``) on ``dataset`` for ``args.minutes``: Adam, cosine LR
    over the wall time."""
    import torch

    from unet_deploy.checkpoint import build_model
    from unet_deploy.train.distributed import amp_dtype, autocast
    from unet_deploy.train.evaluate import segmentation_loss
    from unet_deploy.train.trainer import set_dropout

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    dtype = amp_dtype(cpu, {"auto": None, "on": True, "off": False}[args.amp])
    torch.manual_seed(args.seed)
    model = build_model(meta)
    if state is not None:
        model.load_state_dict(state)
    set_dropout(model, args.dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    budget = args.minutes * 60.0
    steps = epochs = seen = 0
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    losses: list[float] = []
    model.train()
    while time.perf_counter() - t0 < budget:
        dataset.set_epoch(epochs)
        order = torch.Generator().manual_seed(args.seed * 1000 + epochs)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, generator=order)
        for x, y in loader:
            done = (time.perf_counter() - t0) / budget
            if done >= 1:
                break
            for g in optimizer.param_groups:
                g["lr"] = args.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * done)))
            with autocast(cpu, dtype):
                logits = model(x)
            loss = segmentation_loss(logits, y, None, dice=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps, seen = steps + 1, seen + x.shape[0]
            losses.append(loss.item())
            if steps % 50 == 0:
                log(f"  step {steps}  loss {np.mean(losses[-50:]):.4f}  {time.perf_counter() - t0:.0f}s")
        epochs += 1
    model.eval()
    return model, {"steps": steps, "samples": seen, "seconds": time.perf_counter() - t0, "lr": args.lr,
                   "start": "warm" if state is not None else "fresh",
                   "precision": "bf16 autocast" if dtype is not None else "fp32",
                   "load": f"{load_before:.1f} / {os.getloadavg()[0]:.1f}",
                   "final_loss": float(np.mean(losses[-50:])) if losses else float("nan")}


def train_mode(name: str, args: argparse.Namespace, voc: Path, train_files: list[str]) -> list[dict]:
    """Train the ``name`` model ("letterbox" or "tiles") on ``train_files``, save ``WORK/<name>.pt``; return its
    training cycles (``--warm-start``: the earlier ones from ``WORK/<name>.run.json``, then this one)."""
    from unet_deploy.checkpoint import read_checkpoint, save_checkpoint
    from unet_deploy.data.classes import read_class_names
    from unet_deploy.data.dataset import SegmentationDataset, TileDataset
    from unet_deploy.meta import ModelMeta

    log = lambda m: print(f"[{name}] {m}", flush=True)  # noqa: E731
    ckpt, record = args.work / f"{name}.pt", args.work / f"{name}.run.json"
    cycles, state = [], None
    if args.warm_start:
        cycles, state = json.loads(record.read_text()), read_checkpoint(ckpt)["state_dict"]
        args = argparse.Namespace(**vars(args) | {"seed": args.seed + len(cycles)})  # new crops and draws
    classes, arch = read_class_names(voc), {"base_channels": args.base_channels}
    if name == "letterbox":
        meta = ModelMeta(classes=classes, input_size=args.letterbox_size, arch=arch)
        dataset = SegmentationDataset(voc, meta=meta, augment=True, files=train_files, seed=args.seed)
    else:
        meta = ModelMeta(classes=classes, input_size=args.tile_size, arch=arch,
                         tiling={"scale": args.scale, "overlap": args.overlap})
        dataset = TileDataset(voc, meta, augment=True, files=train_files, seed=args.seed)
    log(f"training ({len(dataset)} samples per epoch) for {args.minutes} min, {'from ' + str(ckpt) if state else 'fresh'}")
    model, run = train_for(dataset, meta, args, log, state)
    run |= {"command": command_line(), "parallel": args.parallel}
    save_checkpoint(ckpt, model, meta, config=vars(args) | {"work": str(args.work)})
    cycles.append(run)
    record.write_text(json.dumps(cycles))
    return cycles


def big_frame(frames, hw=(6000, 8000)) -> np.ndarray:
    """An ``hw`` frame made of held-back frames side by side (real defects, not a blank page)."""
    rows, cols = -(-hw[0] // frames[0][0].shape[0]), -(-hw[1] // frames[0][0].shape[1])
    tiles = [frames[(r * cols + c) % len(frames)][0] for r in range(rows) for c in range(cols)]
    grid = np.vstack([np.hstack(tiles[r * cols : (r + 1) * cols]) for r in range(rows)])
    return np.ascontiguousarray(grid[: hw[0], : hw[1]])


def defect_sizes(mask: np.ndarray, num_classes: int) -> list[tuple[int, np.ndarray, float]]:
    """(class, pixel mask, size across) of every ground-truth defect (8-connected component of one class)."""
    out = []
    for c in range(1, num_classes):
        n, labels, stats, _ = cv2.connectedComponentsWithStats((mask == c).view(np.uint8), connectivity=8)
        for i in range(1, n):
            x, y, w, h = stats[i, :4]
            sub = np.pad((labels[y : y + h, x : x + w] == i).view(np.uint8), 1)
            across = 2.0 * float(cv2.distanceTransform(sub, cv2.DIST_L2, 5).max()) - 1.0
            out.append((c, (slice(y, y + h), slice(x, x + w), labels[y : y + h, x : x + w] == i), across))
    return out


def evaluate(name: str, predict, frames, classes: list[str], log) -> dict:
    """Confusion, per-defect found flags by size and per-frame ms of ``predict(image) -> class map``."""
    k = len(classes)
    conf = np.zeros((k, k), np.int64)
    found: list[tuple[float, bool]] = []
    ms: list[float] = []
    for image, mask in frames:
        t = time.perf_counter()
        pred = predict(image)
        ms.append((time.perf_counter() - t) * 1000)
        conf += metrics.confusion(mask, pred, k)
        for c, (ys, xs, inside), across in defect_sizes(mask, k):
            found.append((across, float((pred[ys, xs][inside] == c).mean()) >= FOUND_FRACTION))
    log(f"  {name}: mIoU {metrics.mean_iou(conf):.3f}, found {sum(f for _, f in found)}/{len(found)}, "
        f"{np.median(ms):.0f} ms/frame")
    return {"conf": conf, "found": found, "ms": ms}


def main() -> None:
    args = parse_args()
    import torch

    from unet_deploy.bench.measure import PeakRSS, release_memory
    from unet_deploy.data.classes import read_class_names
    from unet_deploy.data.dataset import list_samples
    from unet_deploy.data.palette import read_mask
    from unet_deploy.export import export_model
    from unet_deploy.fileio import read_image
    from unet_deploy.runtime import Segmenter
    from unet_deploy.tiling import scaled_size, tile_grid, tiled_class_map

    torch.set_num_threads(args.threads)
    log = lambda m: print(m, flush=True)  # noqa: E731
    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M")
    missing = [str(p) for n in MODES for p in (args.work / f"{n}.pt", args.work / f"{n}.run.json") if not p.is_file()]
    if (args.reuse or args.warm_start) and missing:
        sys.exit(f"{missing[0]}: not found; --reuse and --warm-start need an earlier run in --work {args.work}")
    voc = make_data(args)
    classes = read_class_names(voc)
    stems = list_samples(voc)
    train_files, test_files = stems[: -args.test], stems[-args.test :]
    if args.reuse:
        runs = {n: json.loads((args.work / f"{n}.run.json").read_text()) for n in MODES}
        log(f"reusing {', '.join(str(args.work / f'{n}.pt') for n in MODES)} and their training records")
    elif args.parallel:  # one process per mode, side by side: the same wall time and the same load for both
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = {name: pool.submit(train_mode, name, args, voc, train_files) for name in MODES}
            runs = {name: job.result() for name, job in jobs.items()}
    else:
        runs = {name: train_mode(name, args, voc, train_files) for name in MODES}
    formats = "onnx,openvino" if args.openvino else "onnx"
    artefacts = {name: export_model(args.work / f"{name}.pt", formats, args.work / f"export_{name}", verbose=False)
                 for name in MODES}
    frames = [(read_image(next((voc / "JPEGImages").glob(f"{s}.*"))), read_mask(voc / "SegmentationClass" / f"{s}.png"))
              for s in test_files]
    megapixels = float(np.mean([f[0].shape[0] * f[0].shape[1] for f in frames])) / 1e6
    results, latency, maps = {}, [], {}
    for backend in ("onnx", "openvino") if args.openvino else ("onnx",):
        for name in ("letterbox", "tiles"):
            seg = Segmenter(artefacts[name][backend], threads=args.threads)
            if name == "tiles":
                t = seg.meta.tiling  # read back from the artefact's metadata
                predict = lambda img, seg=seg, t=t: tiled_class_map(img, seg.meta, seg.infer, t["scale"], t["overlap"])  # noqa: E731
                h, w = frames[0][0].shape[:2]
                ys, xs = tile_grid(scaled_size((h, w), t["scale"]), seg.meta.input_size, t["overlap"])
                tiles = len(ys) * len(xs)
            else:
                predict, tiles = (lambda img, seg=seg: seg(img).mask), 1
            log(f"evaluating {name} through {seg.backend}")
            r = evaluate(f"{name}/{seg.backend}", predict, frames, classes, log)
            if backend == "onnx":
                results[name] = r
                maps[name] = predict(frames[0][0])
            ms = float(np.median(r["ms"]))
            latency.append([name, seg.backend, tiles, f"{ms:.0f}", f"{ms / megapixels:.0f}"])
    seg = Segmenter(artefacts["tiles"]["onnx"], threads=args.threads)  # tiling from the artefact's metadata
    image = big_frame(frames)
    release_memory()
    with PeakRSS() as rss:  # exact: the kernel's high-water mark, reset at the start
        t0 = time.perf_counter()
        result = seg(image)
        seconds = time.perf_counter() - t0
    extra = rss.peak - rss.start
    ys, xs = tile_grid(scaled_size(image.shape[:2], seg.meta.tiling["scale"]), seg.meta.input_size,
                       seg.meta.tiling["overlap"])
    memory = {"hw": image.shape[:2], "extra": extra, "seconds": seconds, "tiles": len(ys) * len(xs),
              "regions": len(result.regions), "backend": seg.backend}
    log(f"8000x6000: peak extra {extra / 2**20:.0f} MiB, {seconds:.1f} s")
    png = RESULTS / "tiling_quality.png"
    picture(frames[0][0], frames[0][1], maps["letterbox"], maps["tiles"], png)
    write_page(args, runs, results, latency, memory, classes, load_start, started, megapixels, len(frames))
    log(f"-> {RESULTS / 'tiling_quality.md'}, {png} ({png.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
