"""The page and the picture of ``tiling_quality.py``: recall table, training table, PNG, Markdown."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import cv2
import numpy as np

from unet_deploy import metrics
from unet_deploy.cpu import features

RESULTS = Path(__file__).resolve().parent / "results"
BUCKETS = ((0, 8), (8, 16), (16, 24), (24, 48))  # size across, px


def recall_rows(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    for lo, hi in BUCKETS:
        row = [f"< {hi} px" if lo == 0 else f"[{lo}, {hi}) px"]
        for r in results.values():
            hits = [f for a, f in r["found"] if lo <= a < hi]
            row.append(f"{100 * np.mean(hits):.1f}% ({sum(hits)}/{len(hits)})" if hits else "-")
        rows.append(row)
    row = ["all under 24 px"]
    for r in results.values():
        hits = [f for a, f in r["found"] if a < 24]
        row.append(f"{100 * np.mean(hits):.1f}% ({sum(hits)}/{len(hits)})")
    rows.append(row)
    return rows


def picture(image: np.ndarray, mask: np.ndarray, letterbox: np.ndarray, tiled: np.ndarray, path: Path) -> None:
    """Letterbox | tiled overlays of one frame (reduced), then both at native pixels around the smallest defects."""
    from PIL import Image

    from unet_deploy.postprocess import overlay

    gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)  # colours for classes only
    a, b = overlay(gray, letterbox, thickness=0, alpha=0.7), overlay(gray, tiled, thickness=0, alpha=0.7)
    h, w = image.shape[:2]
    # native-pixel window (360 px) around the defect of smallest area that lies away from the border
    n, _, stats, centroids = cv2.connectedComponentsWithStats((mask > 0).view(np.uint8))
    cy, cx = h // 2, w // 2
    for i in np.argsort(stats[1:, cv2.CC_STAT_AREA]) + 1 if n > 1 else []:
        x, y = centroids[i]
        if 200 < x < w - 200 and 200 < y < h - 200:
            cx, cy = int(x), int(y)
            break
    s = 360
    y0, x0 = min(max(cy - s // 2, 0), h - s), min(max(cx - s // 2, 0), w - s)
    for width in (720, 600, 480):  # a palette PNG under 300 kB, for the repository
        small = [cv2.resize(v, (width, round(h * width / w)), interpolation=cv2.INTER_AREA) for v in (a, b)]
        zoom = [cv2.resize(v[y0 : y0 + s, x0 : x0 + s], (width, width), interpolation=cv2.INTER_NEAREST)
                for v in (a, b)]
        for img, text in zip(small, ["letterbox 256 (whole frame)", "tiles 1.0x (blended)"]):
            cv2.putText(img, text, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
        for img in zoom:
            cv2.putText(img, f"native pixels x{width / s:.1f} at ({x0},{y0})", (10, 30), cv2.FONT_HERSHEY_SIMPLEX,
                        0.7, (255, 255, 255), 2, cv2.LINE_AA)
        sheet = np.vstack([np.hstack(small), np.hstack(zoom)])
        sheet[:, width - 1 : width + 1] = 255
        rgb = Image.fromarray(np.ascontiguousarray(sheet[:, :, ::-1]))
        for colours in (128, 64, 32):
            rgb.quantize(colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(path, optimize=True)
            if path.stat().st_size < 300_000:
                return


def write_page(args, runs, results, latency, memory, classes, load_start, started, megapixels, n_frames) -> None:
    from tabulate import tabulate

    iou = {n: metrics.iou_per_class(r["conf"]) for n, r in results.items()}
    iou_rows = [[c, *(f"{100 * iou[n][i]:.1f}" for n in results)] for i, c in enumerate(classes)]
    iou_rows.append(["mIoU", *(f"{100 * metrics.mean_iou(r['conf']):.1f}" for r in results.values())])
    train_rows = [[n, metas_line(args, n), i + 1, r.get("start", "fresh"), f"{r.get('lr', args.lr):g}", r["steps"],
                   r["samples"], f"{r['seconds']:.0f}", f"{r['final_loss']:.3f}", r["load"]]
                  for n, cycles in runs.items() for i, r in enumerate(cycles)]
    minutes = {n: sum(r["seconds"] for r in cycles) / 60 for n, cycles in runs.items()}
    trained = "".join(f"\n- cycle {i + 1}: `{r.get('command', '?')}`" for i, r in enumerate(runs["tiles"]))
    load_end = os.getloadavg()
    under = {n: [f for a, f in r["found"] if a < 24] for n, r in results.items()}
    text = f"""# Tiling quality: letterboxed whole frames vs native-pixel tiles

`{command_line()}` ({started}; the same code makes the data, trains, exports and measures).
Training, cycle by cycle:{trained}

Machine: {features().summary()}; torch/runtime threads {args.threads}. Load average
(1, 5, 15 min) {', '.join(f'{v:.2f}' for v in load_start)} at the start and
{', '.join(f'{v:.2f}' for v in load_end)} at the end. {"The two models trained at the same time, one process each, so both saw the same machine and load" if all(r.get("parallel") for c in runs.values() for r in c) else "The two models trained one after the other: the load may have differed between them"}.

**Data.** `unet-deploy synth --preset hires --count {args.frames} --seed {args.seed}`: 2448x2048
frames, 15-35 defects each (scratch, spot, dent), 4-40 px across, log-uniform; converted with
`unet-deploy labelme`. The last {args.test} frames are held back ({n_frames} frames,
{megapixels:.2f} MP each), the others train.

**Training.** The same UNet (base_channels {args.base_channels}, Dropout2d {args.dropout:g} instead of the
seed's 0.3: with 8 channels the seed's rate kept both models from learning spots and dents at all
in an earlier run), cross-entropy + soft Dice, Adam (peak lr in the table) with a cosine decay over the
wall time, batch {args.batch_size}, {runs['tiles'][-1]['precision']}, the same augmentations,
**{minutes['tiles']:.0f} minutes each** ({len(runs['tiles'])} cycle(s): a later cycle starts from the earlier one's
weights with a fresh optimizer and a new cosine decay, a warm restart):
- *letterbox*: whole frames letterboxed into {args.letterbox_size}x{args.letterbox_size}
  (`SegmentationDataset`; one network pixel covers {2448 / args.letterbox_size:.1f} frame pixels);
- *tiles*: {args.tile_size}x{args.tile_size} crops at scale {args.scale:g} (`TileDataset`: half of the
  crops on a defect: a class drawn uniformly among those present, then one of its defects
  uniformly, whatever its size), inference with
  overlap {args.overlap:g} and Gaussian blending (`tiling.tiled_class_map`). Scale 1.0 because the
  smallest defects are 4 px: at 0.5 they would be 2 px, below what a 3x3-conv UNet resolves well.
  {args.tile_size}-px tiles (not 256) so that a step costs a quarter, giving the tile model more
  optimizer steps in the same time; the letterbox's input is fixed by the task.

{tabulate(train_rows, ["mode", "input", "cycle", "start", "peak lr", "steps", "samples", "seconds", "loss (last 50)",
                                 "1-min load at start / end"], tablefmt="github")}

## Per-class IoU on the held-back frames (%, at the original 2448x2048)

{tabulate(iou_rows, ["class", *results], tablefmt="github")}

## Defect recall by size (found: at least half of its pixels predicted as its class)

Size across = `2 * max(distance transform) - 1` of the defect's pixels (a stroke's width, a
spot's diameter, a dent's short axis).

{tabulate(recall_rows(results), ["size across", *results], tablefmt="github")}

Acceptance asks that tiles at native scale find at least 90% of the defects under 24 px and
that the letterbox finds far fewer: tiles {100 * np.mean(under['tiles']):.1f}%, letterbox
{100 * np.mean(under['letterbox']):.1f}% **({'met' if np.mean(under['tiles']) >= 0.9 else 'not met'} for tiles
here)**, after {minutes['tiles']:.0f} minutes of CPU training each.

## Latency per frame ({megapixels:.2f} MP, median over {n_frames} frames, {args.threads} thread(s))

Letterbox: `Segmenter(model)(image)` (letterbox, one inference, argmax, mapping back). Tiles:
`tiled_class_map(image, seg.meta, seg.infer, ...)` with `tile_batch` 8, tiling read from the
artefact's metadata.

{tabulate(latency, ["mode", "backend", "network inputs", "ms / frame", "ms / MP"], tablefmt="github")}

## An 8000x6000 frame in bounded memory

`Segmenter(tiles model)(image)` on one {memory["hw"][1]}x{memory["hw"][0]} frame (held-back frames side by
side), {memory["backend"]}, tiling from the artefact: {memory["tiles"]} tiles of {args.tile_size} px, {memory["regions"]}
regions, {memory["seconds"]:.1f} s. **Peak extra resident memory {memory["extra"] / 2**20:.0f} MiB**
(`unet_deploy.bench.measure.PeakRSS`: the kernel's high-water mark `VmHWM`, reset just before the call, minus the RSS then: the mask,
the regions, the tiler's strip and ONNX Runtime's buffers; the input frame, 144 MB, was already
there). Acceptance: under 1.5 GB. The tiler holds a {len(classes)} x {args.tile_size} x 8000 float32 strip
({len(classes) * args.tile_size * 8000 * 4 / 2**20:.0f} MiB), never {len(classes)} full-size logit planes
({len(classes) * 48e6 * 4 / 2**30:.2f} GiB).

## Picture

`tiling_quality.png`, the first held-back frame: top, letterbox (left) and tiled (right)
predictions over the frame (shown in grey, so that colour means a predicted class), reduced;
bottom, the same at native pixels (enlarged) around the smallest defect away from the border.
Class colours as `unet_deploy.postprocess.colorize`.
"""
    (RESULTS / "tiling_quality.md").write_text(text)


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in ["benchmarks/tiling_quality.py", *sys.argv[1:]])


def metas_line(args, name: str) -> str:
    if name == "letterbox":
        return f"{args.letterbox_size}x{args.letterbox_size} letterbox"
    return f"{args.tile_size}x{args.tile_size} crops, scale {args.scale:g}"
