"""Prediction into a folder: collect images (files, folders, globs), name outputs, write masks, overlays and report.json.

The library half of `unet-predict` (the command is ``unet_deploy.cli.predict``)::

    seg = Segmenter("model.onnx")
    summary = predict_to_folder(seg, collect_images(["parts/"]), "pred")   # summary.failed, summary.report
"""
from __future__ import annotations

import glob
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .errors import UnetDeployError
from .fileio import IMAGE_SUFFIXES, atomic_write_text, quote, write_image

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Segmenter

_GLOB_CHARS = set("*?[")


def collect_images(sources: Iterable[str]) -> list[Path]:
    """Expand files, folders (their images, not recursive) and globs (``**`` recurses) into image paths.

    A file named explicitly is taken whatever its suffix; folders and globs yield files with an
    image suffix only. Order is kept, duplicates dropped. A source that matches nothing is an error.
    """
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        elif _GLOB_CHARS & set(source):
            matches = sorted(
                Path(p) for p in glob.glob(source, recursive=True)
                if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES
            )  # fmt: skip
        else:
            raise UnetDeployError(f"{quote(source)}: no such file or folder; pass image files, folders or quoted globs")
        if not matches:
            raise UnetDeployError(f"{quote(source)}: no images ({', '.join(IMAGE_SUFFIXES)}) found there")
        found.extend(matches)
    return list(dict.fromkeys(found))


def output_stems(paths: Sequence[Path]) -> list[str]:
    """``<stem>`` per input for ``masks/<stem>.png``; a repeated stem gets ``_1``, ``_2``, ..."""
    seen: set[str] = set()
    stems = []
    for p in paths:
        stem, k = p.stem, 0
        while stem in seen:
            k += 1
            stem = f"{p.stem}_{k}"
        seen.add(stem)
        stems.append(stem)
    return stems


@dataclass
class PredictSummary:
    """What ``predict_to_folder`` wrote: the folder, how many images it got and how many failed, report.json."""

    out: Path
    images: int
    failed: int
    report: Path

    @property
    def done(self) -> int:
        return self.images - self.failed


def predict_to_folder(
    seg: "Segmenter",
    images: Sequence[Path],
    out: str | Path,
    *,
    batch_size: int = 8,
    overlays: bool = True,
    model: str | Path | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    progress: bool | None = None,
) -> PredictSummary:
    """Segment ``images`` with ``seg``; write ``out/masks/<stem>.png``, ``out/overlays/<stem>.jpg``, ``out/report.json``.

    Masks are palette PNGs (pixel = class id, original size); stems come from ``output_stems``.
    Each report entry names its files relative to ``out``: ``"mask"`` and, with overlays,
    ``"overlay"``. The folders are checked writable (and a killed run's temporaries removed)
    before the first image.
    An image that cannot be read is recorded in the report (and its one-line error written
    through tqdm to stderr); the others are still written. ``on_record`` receives each image's
    report entry as it is done (the CLI prints them as JSON lines). ``progress`` as tqdm's
    ``disable`` inverse (``None``: only on a terminal).
    """
    from tqdm import tqdm

    from .data.outputs import check_output_folder
    from .data.palette import save_palette_png

    out_dir = Path(out)
    folders = [out_dir / "masks"] + ([out_dir / "overlays"] if overlays else [])
    check_output_folder(out_dir, folders, [out_dir / "report.json"])
    reports, failed = [], 0
    disable = None if progress is None else not progress
    with tqdm(total=len(images), unit="img", desc="predict", disable=disable, file=sys.stderr) as bar:
        for stem, result in zip(output_stems(images), seg.predict_iter(images, batch_size)):
            record = result.to_dict()
            if result.ok:
                save_palette_png(out_dir / "masks" / f"{stem}.png", result.mask)
                record["mask"] = f"masks/{stem}.png"
                if overlays:
                    write_image(out_dir / "overlays" / f"{stem}.jpg", result.overlay())
                    record["overlay"] = f"overlays/{stem}.jpg"
            else:
                failed += 1
                tqdm.write(f"error: {' '.join(str(result.error).split())}", file=sys.stderr)
            if on_record is not None:
                on_record(record)
            reports.append(record)
            bar.update(1)
    report = {"model": str(model), "backend": seg.backend, "device": seg.device, "images": reports}
    path = atomic_write_text(out_dir / "report.json", json.dumps(report) + "\n")
    return PredictSummary(out_dir, len(images), failed, path)
