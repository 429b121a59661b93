"""Inspect parts on a line: segment each image, pass or fail it by defect area per class, log the verdicts.

Embeds the lean runtime (``unet_deploy.Segmenter``): an exported ``.onnx`` model runs on a
machine without torch, on the GPU when onnxruntime-gpu is installed.

    # check every image under a folder once, one CSV row per part
    python examples/inspect_folder.py model.onnx parts/ --max-area scratch=200 --max-area spot=50 \
        --csv inspection.csv --save-failed failed/

    # watch a folder the camera writes into; stop with Ctrl-C
    python examples/inspect_folder.py model.onnx /mnt/camera --watch --max-area scratch=200

A part FAILS when the total area (in original pixels) of one class's regions exceeds that
class's ``--max-area`` (classes not listed take ``--default-max-area``, 0: any region fails);
regions under ``--min-area`` are noise and ignored. Exit code: 0 when every part passed,
else 1 (a part failed, an image could not be read, or an argument was wrong).
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

from unet_deploy import Segmenter, UnetDeployError
from unet_deploy.fileio import IMAGE_SUFFIXES, write_image

log = logging.getLogger("inspect")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="exported model: .onnx, .torchscript.pt, .pt2 or checkpoint .pt")
    p.add_argument("folder", type=Path, help="folder of part images (searched recursively)")
    p.add_argument("--max-area", action="append", default=[], metavar="CLASS=PIXELS",
                   help="largest total defect area allowed for CLASS (repeat per class)")
    p.add_argument("--default-max-area", type=int, default=0, help="limit for classes not listed (default 0)")
    p.add_argument("--min-area", type=int, default=10, help="ignore regions smaller than this (default 10)")
    p.add_argument("--csv", type=Path, help="append one row per part to this CSV file")
    p.add_argument("--save-failed", type=Path, metavar="DIR", help="write overlays of failed parts here")
    p.add_argument("--watch", action="store_true", help="keep watching the folder for new images")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between folder scans when watching")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=4)
    return p.parse_args(argv)


def parse_limits(items: list[str], classes: list[str]) -> dict[str, int]:
    """``["scratch=200", ...]`` -> {"scratch": 200}; class names must exist in the model."""
    limits = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise SystemExit(f"--max-area {item!r}: write CLASS=PIXELS, e.g. scratch=200")
        if name not in classes[1:]:
            raise SystemExit(f"--max-area {item!r}: the model's defect classes are {classes[1:]}")
        limits[name] = int(value)
    return limits


def scan(folder: Path) -> list[Path]:
    """Every image under ``folder``, sorted."""
    found = []
    for root, _, files in os.walk(folder):
        found.extend(Path(root) / f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found)


def watch(folder: Path, interval: float) -> Iterator[list[Path]]:
    """Yield batches of new images; a file is new once its size stopped changing (fully written)."""
    seen: set[Path] = set()
    sizes: dict[Path, int] = {}
    while True:
        ready = []
        for path in scan(folder):
            if path in seen:
                continue
            try:
                size = path.stat().st_size
            except OSError:  # moved away meanwhile
                continue
            if sizes.get(path) == size and size > 0:
                ready.append(path)
                seen.add(path)
            sizes[path] = size
        if ready:
            yield ready
        time.sleep(interval)


class Inspector:
    """Judges parts and records the verdicts (log line, CSV row, overlay of failures)."""

    def __init__(self, seg: Segmenter, limits: dict[str, int], default_limit: int, folder: Path,
                 csv_path: Path | None, failed_dir: Path | None) -> None:  # fmt: skip
        self.seg, self.folder, self.failed_dir = seg, folder, failed_dir
        self.defects = seg.classes[1:]
        self.limits = {c: limits.get(c, default_limit) for c in self.defects}
        self.counts = {"PASS": 0, "FAIL": 0, "ERROR": 0}
        self.csv_file = self.writer = None
        if csv_path:
            new = not csv_path.exists() or csv_path.stat().st_size == 0
            self.csv_file = csv_path.open("a", newline="", encoding="utf-8")
            self.writer = csv.writer(self.csv_file)
            if new:
                self.writer.writerow(["time", "file", "verdict", *self.defects, "ms", "detail"])

    def inspect(self, paths: Iterable[Path], batch_size: int) -> None:
        for result in self.seg.predict_iter(paths, batch_size):
            path = Path(result.file)
            name = path.relative_to(self.folder).as_posix() if path.is_relative_to(self.folder) else str(path)
            if not result.ok:
                self._record(name, "ERROR", {}, 0.0, result.error)
                continue
            areas = result.class_areas()
            over = [f"{c} {areas[c]} > {self.limits[c]}" for c in self.defects if areas.get(c, 0) > self.limits[c]]
            verdict = "FAIL" if over else "PASS"
            if over and self.failed_dir:
                write_image(self.failed_dir / f"{path.stem}.jpg", result.overlay())
            self._record(name, verdict, areas, sum(result.timings.values()), "; ".join(over))

    def _record(self, name: str, verdict: str, areas: dict[str, int], ms: float, detail: str) -> None:
        self.counts[verdict] += 1
        shown = " ".join(f"{c}={areas.get(c, 0)}" for c in self.defects)
        (log.warning if verdict != "PASS" else log.info)("%s %s %s %.1f ms %s", name, verdict, shown, ms, detail)
        if self.writer:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            self.writer.writerow([stamp, name, verdict, *(areas.get(c, 0) for c in self.defects), f"{ms:.1f}", detail])
            self.csv_file.flush()  # a crash or Ctrl-C keeps every row written so far

    def close(self) -> None:
        if self.csv_file:
            self.csv_file.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    if not args.folder.is_dir():
        raise SystemExit(f"{args.folder}: not a folder")
    try:
        seg = Segmenter(args.model, device=args.device, min_area=args.min_area)
    except UnetDeployError as e:
        raise SystemExit(f"error: {e.message}") from None
    log.info("%s; defect classes %s", seg.describe(), seg.classes[1:])
    inspector = Inspector(seg, parse_limits(args.max_area, seg.classes), args.default_max_area,
                          args.folder, args.csv, args.save_failed)  # fmt: skip
    try:
        if args.watch:
            log.info("watching %s (Ctrl-C to stop)", args.folder)
            for batch in watch(args.folder, args.interval):
                inspector.inspect(batch, args.batch_size)
        else:
            inspector.inspect(scan(args.folder), args.batch_size)
    except KeyboardInterrupt:
        pass
    finally:
        inspector.close()
    c = inspector.counts
    log.info("%d passed, %d failed, %d unreadable", c["PASS"], c["FAIL"], c["ERROR"])
    return 0 if c["FAIL"] == c["ERROR"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
