"""Host pre- and post-processing of a 1080p frame, path by path, beside a base-8 int8 network end to end (issue 29).

Once the network is small (UNet base 8 run by OpenVINO int8), the host stages around it dominate
a 1080p frame. This measures, side by side in one run and interleaved (every repetition times
every path once, so drift hits all alike), medians over many repetitions of:

* resize paths from the 1920x1080 BGR frame to the network's 256x144 (``rect`` letterbox), each
  with its byte equality against Pillow's ``resize(BICUBIC, reducing_gap=3)`` of the same frame
  (the seed's resize, computed here directly): max abs difference and share of equal bytes, on
  synthetic frames and on real photos of ``../shared/data/labelme``. Paths that are not Pillow's
  also get the share of original-size mask pixels the model classes alike (their "agreement");
* the rest of ``preprocess`` (padding, colour order, normalisation) and the whole of it;
* each postprocess step on the model's logits for the frame (argmax, mapping back to 1080p, class
  boxes, region scores, regions, uncertainty), and on logits drawn from the frame's true defects
  (a region-heavy case), with the alternatives for mapping back and their equality;
* a whole ``Segmenter`` on the int8 model: its ``Result.timings`` per stage and the wall time, at the
  default threads and at ``threads=1``, and the share of pre+post in end to end.

Writes ``benchmarks/results/prepost_paths.md`` and ``.json``; the machine (``lscpu``: model and ISA
flags) and the load average are on the page.

    python benchmarks/prepost_paths.py                         # ~2 min on 2 cores
    python benchmarks/prepost_paths.py --quick --out /tmp/pp.md   # seconds, to check the script

The model: UNet base 8 trained ``--epochs`` on synthetic 480x270 frames (``unet_deploy.train``),
exported to OpenVINO int8 (``unet_deploy.export``, gated on the same frames); kept in ``--work``
(default ``runs/prepost_paths``, git-ignored) and reused when there.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from cpu_fast_path import log, write_voc  # noqa: E402
from run_gpu import frames, latency  # noqa: E402

from unet_deploy import cpu, postprocess, preprocess  # noqa: E402
from unet_deploy.fileio import atomic_write_text  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "prepost_paths.md"
CACHE = ROOT / "runs" / "prepost_paths"
LABELME = ROOT.parent / "shared" / "data" / "labelme"
FRAME = (1920, 1080)  # W, H
OTHER_FRAMES = [(1922, 1082), (2000, 1126)]  # W, H: even frames halved too, at scales that are not 3.75
TARGET_SHARE = 10.0  # issue 29: pre+post <= 10% of end to end


def photos() -> list[tuple[str, np.ndarray]]:
    """The real photos of the labelme reference projects (read-only), where they are."""
    paths = sorted(LABELME.glob("*/*.jpg")) if LABELME.is_dir() else []
    return [(f"{p.parent.name}/{p.name}", cv2.imread(str(p), cv2.IMREAD_COLOR)) for p in paths]


def lscpu() -> dict[str, str]:
    """``lscpu``'s model name and flags (empty where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k: fields.get(k, "").strip() for k in ("Model name", "CPU(s)", "Flags")}


# ----------------------------------------------------------------------------- the model
def build_model(work: Path, epochs: int, quick: bool) -> Path:
    """OpenVINO int8 IR of a base-8 UNet trained on synthetic frames (reused when ``work`` has it)."""
    from unet_deploy.data.synthetic import CLASSES
    from unet_deploy.export import export_model
    from unet_deploy.train import train

    xml = work / "ov" / "best.int8.xml"
    if xml.is_file():
        log(f"reusing {xml}")
        return xml
    count = 8 if quick else 48
    data = write_voc(work / "train", seed=0, count=count, size=(480, 270))
    (data / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    t0 = time.perf_counter()
    best = train(data, work / "run", epochs=epochs, img_size=256, base_channels=8, batch_size=8, lr=3e-3,
                 val_split=0.1, loss="ce+dice", class_weights="auto", pad="top-left", overwrite=True)  # fmt: skip
    log(f"trained {best} ({epochs} epochs) in {time.perf_counter() - t0:.0f} s")
    paths = export_model(best, "openvino", out_dir=work / "ov", precision="int8", calib=data, val=data,
                         verbose=False)  # fmt: skip
    return paths["openvino"]


# ----------------------------------------------------------------------------- resize paths
def pillow(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The reference: Pillow's own call on the whole frame (the frame is copied into PIL first)."""
    return np.asarray(Image.fromarray(image).resize(hw[::-1], Image.BICUBIC, reducing_gap=3.0))


_POOL = ThreadPoolExecutor(1)  # the second band's thread of the paths below (the caller takes the first)


def _two(work: Callable[[int, int], np.ndarray], a: int, b: int, c: int) -> list[np.ndarray]:
    other = _POOL.submit(work, b, c)
    return [work(a, b), other.result()]


def overlap_bands(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The other band split: two bands of OUTPUT rows, each one PIL call on the (halved) input rows it
    needs plus the filter's support, with a ``box`` placing its rows. One handoff instead of two,
    but a band's filter positions are recomputed from its own box: equal only where that arithmetic
    is exact (it is for 1080p -> 144 rows: 3.75 input rows per output row)."""
    (nh, nw), (h, w) = hw, image.shape[:2]
    half = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)  # PIL's reduce(2) for 1080p
    hh, scale = h / 2, (h / 2) / nh
    reach = int(np.ceil(2 * scale)) + 1  # bicubic support (2) times the scale, plus rounding

    def band(o0: int, o1: int) -> np.ndarray:
        y0, y1 = o0 * scale, o1 * scale
        r0, r1 = max(0, int(y0) - reach), min(half.shape[0], int(np.ceil(y1)) + reach)
        part = Image.fromarray(half[r0:r1])
        return np.asarray(part.resize((nw, o1 - o0), Image.BICUBIC, box=(0.0, y0 - r0, w / 2, min(y1, hh) - r0)))

    return np.concatenate(_two(band, 0, nh // 2, nh))


def planes(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Channel by channel in PIL's 8-bit gray mode (the colour order comes free); BGR order returned."""
    (nh, nw), (h, w) = hw, image.shape[:2]
    half = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(half[:, :, c])).resize((nw, nh), Image.BICUBIC,
                                                                                   box=(0.0, 0.0, w / 2, h / 2)))
           for c in range(3)]  # fmt: skip
    return np.dstack(out)


def rgb_first(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Colour converted on the whole frame before resizing (a full-frame copy); BGR order returned."""
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return preprocess.resize_image(rgb, hw)[:, :, ::-1]


def copy_first(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """One full-frame copy first (``np.ascontiguousarray`` of a strided frame, ``frame.copy()``)."""
    return preprocess.resize_image(image.copy(), hw)


def cv2_area(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Not Pillow's: OpenCV's area filter straight to the network size."""
    return cv2.resize(image, hw[::-1], interpolation=cv2.INTER_AREA)


def cv2_halve_cubic(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Not Pillow's: the exact halving, then OpenCV's bicubic (no antialiasing: it samples, it does not average)."""
    (nh, nw), (h, w) = hw, image.shape[:2]
    half = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return cv2.resize(half, (nw, nh), interpolation=cv2.INTER_CUBIC)


RESIZES: list[tuple[str, str, Callable[[np.ndarray, tuple[int, int]], np.ndarray], bool]] = [
    # name, what, function, is it meant to be Pillow's bytes
    ("pillow", "Pillow's call on the frame (the reference; copies the frame into PIL)", pillow, True),
    ("copy_first", "one full-frame copy, then the package's resize (1 thread)", copy_first, True),
    ("rgb_first", "BGR->RGB of the whole frame, then the package's resize (1 thread)", rgb_first, True),
    ("planes", "halve in place, then PIL per channel in gray mode", planes, True),
    ("in_place_1t", "**the package, 1 thread**: OpenCV's exact 2x2 halving reads the frame in place, one PIL call",
     lambda im, hw: preprocess.resize_image(im, hw, threads=1), True),
    ("overlap_bands_2t", "2 bands of output rows on overlapping input rows, one PIL call each", overlap_bands, True),
    ("bands_2t", "**the package, 2 threads**: rows halved + horizontal pass in 2 row bands, vertical pass in 2 "
     "column bands", lambda im, hw: preprocess.resize_image(im, hw, threads=2), True),
    ("cv2_area", "OpenCV INTER_AREA straight to size (not Pillow's)", cv2_area, False),
    ("cv2_halve_cubic", "exact halving, then OpenCV INTER_CUBIC (not Pillow's)", cv2_halve_cubic, False),
]  # fmt: skip


HALVING_ONLY = ("planes", "overlap_bands_2t", "cv2_halve_cubic")  # written for an even frame whose reduce is 2x2


def equality(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    diff = np.abs(out.astype(np.int16) - ref.astype(np.int16))
    return {"max_abs": int(diff.max()), "equal_pct": float((diff == 0).mean() * 100.0)}


def worst(rows: list[dict[str, float]]) -> dict[str, float]:
    return {"max_abs": max(r["max_abs"] for r in rows), "equal_pct": min(r["equal_pct"] for r in rows)}


def timed(paths: dict[str, Callable[[], Any]], reps: int) -> dict[str, dict[str, float]]:
    """Median/p90 ms of each path, interleaved: every repetition runs every path once."""
    for fn in paths.values():  # warm-up (pools, caches)
        fn(), fn()
    samples: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(reps):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1000.0)
    return {k: {"p50": float(np.median(v)), "p90": float(np.percentile(v, 90))} for k, v in samples.items()}


# ----------------------------------------------------------------------------- postprocess paths
def truth_logits(mask: np.ndarray, t: preprocess.LetterboxTransform, classes: int) -> np.ndarray:
    """(K, h, w) logits whose argmax is the frame's true mask letterboxed to the network: the region-heavy case."""
    boxed, _ = preprocess.letterbox(mask, t.dst_hw, "top-left", 0, interpolation=cv2.INTER_NEAREST_EXACT)
    boxed = boxed[: t.dst_hw[0], : t.dst_hw[1]]
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 0.5, (classes, *boxed.shape)).astype(np.float32)
    for c in range(classes):
        logits[c][boxed == c] += 4.0
    return logits


def map_back_repeat(class_map: np.ndarray, t: preprocess.LetterboxTransform) -> np.ndarray:
    """Mapping back as runs: each network row gathered once and repeated (``np.repeat``) down its run."""
    rows, cols = preprocess.network_indices(t)
    first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    counts = np.diff(np.r_[first, len(rows)])
    return np.repeat(np.take(class_map[rows[first]], cols, axis=1), counts, axis=0)


def remap_maps(t: preprocess.LetterboxTransform) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap``'s fixed-point maps of ``unletterbox_mask``'s rule (made once per frame size)."""
    rows, cols = preprocess.network_indices(t)
    return cv2.convertMaps(np.broadcast_to(cols.astype(np.float32), t.src_hw).copy(),
                           np.broadcast_to(rows.astype(np.float32)[:, None], t.src_hw).copy(), cv2.CV_16SC2)


def map_back_remap(class_map: np.ndarray, t: preprocess.LetterboxTransform,
                   maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:  # fmt: skip
    """Mapping back with ``cv2.remap`` (nearest) on maps made once per frame size."""
    return cv2.remap(class_map, maps[0], maps[1], cv2.INTER_NEAREST)


def map_back_nearest(class_map: np.ndarray, t: preprocess.LetterboxTransform) -> np.ndarray:
    """Mapping back with OpenCV's INTER_NEAREST_EXACT (the same rule, in OpenCV's fixed point) on the image area."""
    (top, left), (nh, nw) = t.offset, t.new_hw
    area = np.ascontiguousarray(class_map[top : top + nh, left : left + nw])
    return cv2.resize(area, t.src_hw[::-1], interpolation=cv2.INTER_NEAREST_EXACT)


ODD_SIZES = [(1081, 1921), (1079, 1917), (2048, 2448), (7, 3000), (3000, 7)]  # (H, W)
MAP_BACKS = ("map_back_repeat", "map_back_remap", "map_back_nearest_exact")  # alternatives to unletterbox_mask


def post_steps(logits: np.ndarray, t: preprocess.LetterboxTransform,
               classes: list[str]) -> dict[str, Callable[[], Any]]:  # fmt: skip
    """Each step of ``runtime.result.finish`` alone, on precomputed inputs, and the alternatives to mapping back."""
    class_map = postprocess.argmax(logits)
    mask = postprocess.to_original(class_map, t)
    boxes = postprocess.class_boxes(class_map, t)
    conf = postprocess.top_probability(logits, class_map)
    maps = remap_maps(t)
    return {
        "argmax": lambda: postprocess.argmax(logits),
        "map_back": lambda: postprocess.to_original(class_map, t),
        "map_back_repeat": lambda: map_back_repeat(class_map, t),
        "map_back_remap": lambda: map_back_remap(class_map, t, maps),
        "map_back_nearest_exact": lambda: map_back_nearest(class_map, t),
        "class_boxes": lambda: postprocess.class_boxes(class_map, t),
        "top_probability": lambda: postprocess.top_probability(logits, class_map),
        "find_regions": lambda: postprocess.find_regions(mask, classes, 0, boxes, conf, t),
        "uncertainty": lambda: postprocess.uncertainty(logits, t),
    }


# ----------------------------------------------------------------------------- end to end
def end_to_end(xml: Path, frame: np.ndarray, reps: int, threads: int | None) -> dict[str, Any]:
    """``Segmenter`` on ``frame``, as ``run_gpu.latency`` times it: medians of ``Result.timings`` and of the wall time."""
    from unet_deploy.runtime import Segmenter

    seg = Segmenter(xml, device="cpu", threads=threads)
    p50 = {k: v["p50"] for k, v in latency(None, seg, frame, reps).items()}
    share = (p50["preprocess"] + p50["postprocess"]) / p50["end_to_end"] * 100.0
    return {"threads": threads, "host_threads": seg._backend.compute_threads(), "p50_ms": p50,
            "prepost_share_pct": share, "regions": len(seg(frame).regions), "describe": seg.describe()}  # fmt: skip


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few repetitions, tiny training: checks the script")
    p.add_argument("--reps", type=int, default=300, help="repetitions per path (default 300)")
    p.add_argument("--epochs", type=int, default=6, help="training epochs of the base-8 model")
    p.add_argument("--work", type=Path, default=CACHE, help="where the model is trained and kept")
    p.add_argument("--out", type=Path, default=RESULT)
    args = p.parse_args(argv)
    reps = 20 if args.quick else args.reps
    load_start = os.getloadavg()
    xml = build_model(args.work, 1 if args.quick else args.epochs, args.quick)
    from unet_deploy.meta import ModelMeta
    from unet_deploy.runtime import Segmenter

    seg = Segmenter(xml, device="cpu")
    meta: ModelMeta = seg.meta
    frame, *others = frames(4 if not args.quick else 2)
    hw = preprocess.letterbox_geometry(frame.shape[:2], meta.input_size, meta.pad).new_hw
    log(f"model {xml.name}: {seg.describe()}; frame {FRAME[0]}x{FRAME[1]} -> {hw[1]}x{hw[0]}")

    # byte equality against Pillow, and the mask agreement of the paths that are not Pillow's
    from unet_deploy.data.synthetic import sample

    images = [(f"synthetic {i}", im) for i, im in enumerate([frame, *others])] + photos()
    images += [(f"synthetic {w}x{h}", sample(200, 0, (w, h)).image) for w, h in OTHER_FRAMES]
    eq: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in RESIZES}
    agree: dict[str, list[float]] = {name: [] for name, _, _, exact in RESIZES if not exact}
    for label, im in images:
        t = preprocess.letterbox_geometry(im.shape[:2], meta.input_size, meta.pad)
        ref = pillow(im, t.new_hw)
        ref_mask = _mask(seg, im, ref, t)
        for name, _, fn, exact in RESIZES:
            if name in HALVING_ONLY and (im.shape[0] % 2 or im.shape[1] % 2 or
                                                           int(im.shape[0] / t.new_hw[0] / 3) != 2):  # fmt: skip
                continue  # written for the 1080p case (an even frame halved)
            out = fn(im, t.new_hw)
            eq[name].append({"image": label, **equality(out, ref)})
            if not exact:
                agree[name].append(float((_mask(seg, im, out, t) == ref_mask).mean() * 100.0))

    pre_paths = {name: (lambda fn=fn: fn(frame, hw)) for name, _, fn, _ in RESIZES}
    boxed = preprocess.resize_image(frame, hw)
    pre_paths["rest: pad + colour + normalise"] = lambda: _rest(boxed, meta)
    pre_paths["preprocess(), 1 thread"] = lambda: preprocess.preprocess(frame, meta, threads=1)
    pre_paths["preprocess(), 2 threads"] = lambda: preprocess.preprocess(frame, meta, threads=2)
    pre_paths["1080p frame copy alone"] = lambda: frame.copy()
    log(f"timing {len(pre_paths)} preprocess paths x {reps}")
    pre = timed(pre_paths, reps)

    x, t = preprocess.preprocess(frame, meta)
    logits = seg.infer(x[None])[0]

    cases = {"model": logits, "drawn defects": truth_logits(sample(100, 0, FRAME).mask, t, meta.num_outputs)}
    post: dict[str, Any] = {}
    for case, lg in cases.items():
        steps = post_steps(lg, t, meta.classes)
        ref_mask = steps["map_back"]()
        post[case] = {
            "times": timed(steps, reps),
            "regions": len(steps["find_regions"]()),
        }  # fmt: skip
    # the mapping-back alternatives against unletterbox_mask on every image size here and a few odd ones
    rng, sizes = np.random.default_rng(0), [im.shape[:2] for _, im in images] + ODD_SIZES
    map_equal = {k: 0 for k in MAP_BACKS}
    for src_hw in sizes:
        tt = preprocess.letterbox_geometry(src_hw, meta.input_size, meta.pad)
        cm = rng.integers(0, meta.num_classes, tt.dst_hw, dtype=np.uint8)
        ref_mask = preprocess.unletterbox_mask(cm, tt)
        outs = {"map_back_repeat": map_back_repeat(cm, tt), "map_back_remap": map_back_remap(cm, tt, remap_maps(tt)),
                "map_back_nearest_exact": map_back_nearest(cm, tt)}  # fmt: skip
        for k, out in outs.items():
            map_equal[k] += int(np.array_equal(out, ref_mask))
    log("end to end")
    e2e = [end_to_end(xml, frame, reps, None), end_to_end(xml, frame, reps, 1)]
    from unet_deploy.bench.machine import model_gflops

    doc = {
        "machine": {"cpu": cpu.features().summary(), "lscpu": lscpu(), "load_start": load_start,
                    "load_end": os.getloadavg()},
        "model": {"file": str(xml.name), "describe": seg.describe(), "gflop": model_gflops(meta, hw),
                  "input_hw": list(x.shape[1:]), "frame": list(FRAME)},
        "reps": reps, "resize_equality": eq, "mask_agreement_pct": agree, "preprocess_ms": pre,
        "postprocess": post, "map_back_equal": {"sizes": len(sizes), "equal": map_equal}, "end_to_end": e2e,
        "command": " ".join(["python benchmarks/prepost_paths.py", *(sys.argv[1:] if argv is None else argv)]),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(doc, indent=1) + "\n")
    text = report(doc)
    atomic_write_text(args.out, text)
    print(text)
    return 0


def _mask(seg: Any, image: np.ndarray, resized: np.ndarray, t: preprocess.LetterboxTransform) -> np.ndarray:
    """The model's original-size mask from an already resized image (the rest of preprocess as the package does it)."""
    x = _rest(resized, seg.meta)
    return postprocess.to_original(postprocess.argmax(seg.infer(x[None])[0]), t)


def _rest(resized: np.ndarray, meta: Any) -> np.ndarray:
    """preprocess() after the resize: pad to the network size, colour order, normalisation."""
    t = preprocess.letterbox_geometry(resized.shape[:2], meta.input_size, meta.pad)
    boxed, _ = preprocess.letterbox(resized, t.dst_hw, meta.pad, meta.letterbox.get("fill", 0))
    return preprocess.normalize(preprocess.to_model_color(boxed, meta.color), meta)


def report(doc: dict[str, Any]) -> str:
    """The Markdown page."""
    m, pre, eq = doc["model"], doc["preprocess_ms"], doc["resize_equality"]
    lines = [
        "# Pre- and post-processing paths on a 1080p frame (issue 29)",
        "",
        f"Machine: {doc['machine']['lscpu'].get('Model name', '?')} ({doc['machine']['cpu']}). "
        f"Load average (1/5/15 min) at start {_load(doc['machine']['load_start'])}, "
        f"at end {_load(doc['machine']['load_end'])}.",
        "",
        f"Model: {m['describe']}; {m['gflop']:.2f} GFLOP per frame at {m['input_hw'][0]}x{m['input_hw'][1]} "
        f"(the network input of a {m['frame'][0]}x{m['frame'][1]} frame, rect letterbox).",
        "",
        f"Medians over {doc['reps']} repetitions, paths interleaved. Equality: against Pillow's "
        "`Image.resize((256, 144), BICUBIC, reducing_gap=3.0)` of the same image, worst over "
        f"{len(eq['pillow'])} images (4 synthetic 1080p frames, the labelme photos, synthetic "
        f"{' and '.join(f'{w}x{h}' for w, h in OTHER_FRAMES)} frames; the paths written for an even frame halved "
        "by PIL's reduce only on those). Mask agreement: share of original-size mask pixels the model classes as it "
        "does from Pillow's bytes (worst image).",
        "",
        "## Preprocess",
        "",
        "| path | what | median ms | p90 ms | max abs diff | equal bytes % | mask agreement % |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, what, _, exact in RESIZES:
        e = worst(eq[name])
        ag = doc["mask_agreement_pct"].get(name)
        agree = f"{min(ag):.2f}" if ag else "= Pillow's" if e["max_abs"] == 0 else "-"
        lines.append(f"| {name} | {what} | {pre[name]['p50']:.2f} | {pre[name]['p90']:.2f} | {e['max_abs']} | "
                     f"{e['equal_pct']:.2f} | {agree} |")  # fmt: skip
    for name in ("rest: pad + colour + normalise", "preprocess(), 1 thread", "preprocess(), 2 threads",
                 "1080p frame copy alone"):  # fmt: skip
        lines.append(f"| {name} | | {pre[name]['p50']:.2f} | {pre[name]['p90']:.2f} | | | |")
    lines += ["", "## Postprocess steps (`runtime.result.finish`)", ""]
    cases = list(doc["postprocess"])
    lines += ["| step | " + " | ".join(f"{c} ms" for c in cases) + " |", "|---|" + "---|" * len(cases)]
    for step in doc["postprocess"][cases[0]]["times"]:
        ms = [doc["postprocess"][c]["times"][step]["p50"] for c in cases]
        lines.append(f"| {step} | " + " | ".join(f"{v:.3f}" for v in ms) + " |")
    lines.append("| regions found | " + " | ".join(str(doc["postprocess"][c]["regions"]) for c in cases) + " |")
    me = doc["map_back_equal"]
    lines += ["", f"Mapping back alternatives, masks equal to `unletterbox_mask`'s on {me['sizes']} frame sizes (the "
              f"images above and {', '.join('x'.join(map(str, s[::-1])) for s in ODD_SIZES)}): "
              + ", ".join(f"{k} {v} of {me['sizes']}" for k, v in me["equal"].items()) + ".", ""]
    lines += ["## End to end (`Segmenter`, `Result.timings`)", "",
              "| threads | host threads | preprocess ms | inference ms | postprocess ms | end to end ms | pre+post % |",
              "|---|---|---|---|---|---|---|"]
    for r in doc["end_to_end"]:
        p = r["p50_ms"]
        ms = " | ".join(f"{p[k]:.2f}" for k in ("preprocess", "inference", "postprocess", "end_to_end"))
        lines.append(f"| {r['threads'] or 'default'} | {r['host_threads']} | {ms} | {r['prepost_share_pct']:.1f} |")
    best = min(doc["end_to_end"], key=lambda r: r["prepost_share_pct"])
    inf = best["p50_ms"]["inference"]
    budget = inf * TARGET_SHARE / (100.0 - TARGET_SHARE)
    prepost = best["p50_ms"]["preprocess"] + best["p50_ms"]["postprocess"]
    lines += [
        "",
        f"Target: pre+post <= {TARGET_SHARE:.0f}% of end to end. Best row (threads {best['threads'] or 'default'}): "
        f"with inference at {inf:.2f} ms that leaves "
        f"{budget:.2f} ms for pre+post together; measured {prepost:.2f} ms "
        f"({best['prepost_share_pct']:.1f}%): **{'met' if best['prepost_share_pct'] <= TARGET_SHARE else 'not met'}**.",
        "",
        f"CPU flags (lscpu): `{doc['machine']['lscpu'].get('Flags', '?')}`",
        "",
        f"Command: `{doc['command']}`.",
        "",
    ]
    return "\n".join(lines)


def _load(avg: Any) -> str:
    return " / ".join(f"{v:.2f}" for v in avg)


if __name__ == "__main__":
    sys.exit(main())
