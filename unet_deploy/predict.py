"""Prediction into a folder: collect images (files, folders, globs), name outputs, write masks, overlays and report.json;
or a video stream into report.jsonl (``predict_stream_to_folder``).

The library half of `unet-predict` (the command is ``unet_deploy.cli.predict``)::

    seg = Segmenter("model.onnx")
    summary = predict_to_folder(seg, collect_images(["parts/"]), "pred")   # summary.failed, summary.report
    summary = predict_stream_to_folder(seg, "line3.mp4", "pred", every=3)  # summary.end.broken
"""
from __future__ import annotations

import glob
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .errors import UnetDeployError
from .fileio import IMAGE_SUFFIXES, atomic_write_text, check_not_inputs, fit_stem, quote, temporary_name, write_image

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
    """``<stem>`` per input for ``masks/<stem>.png``; a repeated stem gets ``_1``, ``_2``, ...; a stem too
    long for a file name with those suffixes is cut (``fileio.fit_stem``)."""
    seen: set[str] = set()
    stems = []
    for p in paths:
        base = fit_stem(p.stem)
        stem, k = base, 0
        while stem in seen:
            k += 1
            stem = f"{base}_{k}"
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
    labelme: str | None = None,
) -> PredictSummary:
    """Segment ``images`` with ``seg``; write ``out/masks/<stem>.png``, ``out/overlays/<stem>.jpg``, ``out/report.json``.

    Masks are palette PNGs (pixel = class id, original size); stems come from ``output_stems``.
    Each report entry names its files relative to ``out``: ``"mask"`` and, with overlays,
    ``"overlay"``. The folders are checked writable (and a killed run's temporaries removed)
    before the first image.
    An image that cannot be read is recorded in the report (and its one-line error written
    through tqdm to stderr); the others are still written. ``on_record`` receives each image's
    report entry as it is done (the CLI prints them as JSON lines). ``progress`` as tqdm's
    ``disable`` inverse (``None``: only on a terminal). ``labelme`` (``"polygon"`` or ``"mask"``)
    also writes pre-annotations ``out/labelme/<stem>.json`` (``unet_deploy.data.prelabel``) and
    ``out/labelme/labels.txt``; an existing JSON is kept (one line, entry ``"labelme_kept"``).
    """
    from tqdm import tqdm

    from .data.outputs import check_output_folder
    from .data.palette import save_palette_png

    out_dir = Path(out)
    folders = [out_dir / "masks"] + ([out_dir / "overlays"] if overlays else [])
    stems = output_stems(images)
    planned = [out_dir / "report.json"] + [out_dir / "masks" / f"{s}.png" for s in stems]
    planned += [out_dir / "overlays" / f"{s}.jpg" for s in stems] if overlays else []
    planned += [out_dir / "labelme" / f"{s}.json" for s in stems] if labelme else []
    check_not_inputs(planned, images, "--out folder")
    folders += [out_dir / "labelme"] if labelme else []
    check_output_folder(out_dir, folders, [out_dir / "report.json"])
    if labelme:
        write_labels_txt(out_dir / "labelme", seg.classes)
    reports, failed = [], 0
    disable = None if progress is None else not progress
    with tqdm(total=len(images), unit="img", desc="predict", disable=disable, file=sys.stderr) as bar:
        for path, stem, result in zip(images, stems, seg.predict_iter(images, batch_size)):
            record = result.to_dict()
            if result.ok:
                save_palette_png(out_dir / "masks" / f"{stem}.png", result.mask)
                record["mask"] = f"masks/{stem}.png"
                if overlays:
                    write_image(out_dir / "overlays" / f"{stem}.jpg", result.overlay())
                    record["overlay"] = f"overlays/{stem}.jpg"
                if labelme:
                    record.update(prelabel(out_dir / "labelme" / f"{stem}.json", path, result, labelme, out_dir))
            else:
                failed += 1
                tqdm.write(f"error: {' '.join(str(result.error).split())}", file=sys.stderr)
            if on_record is not None:
                on_record(record)
            reports.append(record)
            bar.update(1)
    report = {"model": str(model), "backend": seg.backend, "device": seg.device, "letterbox": seg.letterbox,
              "images": reports}
    path = atomic_write_text(out_dir / "report.json", json.dumps(report) + "\n")
    return PredictSummary(out_dir, len(images), failed, path)


def write_labels_txt(folder: Path, classes: Sequence[str]) -> None:
    """labelme's ``labels.txt`` for the model's classes in ``folder``, unless one is there already."""
    from .data.prelabel import labels_txt

    if not (folder / "labels.txt").exists():
        atomic_write_text(folder / "labels.txt", labels_txt(classes))


def prelabel(json_path: Path, image: Path, result: Any, kind: str, root: Path) -> dict[str, str]:
    """Write one image's labelme pre-annotation; the report entry's ``labelme`` (or ``labelme_kept``
    with one line on stderr when a JSON is already there), relative to ``root``."""
    from tqdm import tqdm

    from .data.prelabel import kept_line, write_prelabel

    rel = json_path.relative_to(root).as_posix()
    if write_prelabel(json_path, image, result.mask, result.regions, kind) is None:
        tqdm.write(kept_line(json_path), file=sys.stderr)
        return {"labelme_kept": rel}
    return {"labelme": rel}


# ---------------------------------------------------------------------------- streams

VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


@dataclass
class StreamSummary:
    """What ``predict_stream_to_folder`` wrote: frames processed, failed and dropped, how the
    stream ended (``end.broken``: truncated file, camera lost), ``report.jsonl`` and the video if asked."""

    out: Path
    frames: int
    failed: int
    dropped: int
    end: Any
    report: Path
    video: Path | None


def predict_stream_to_folder(
    seg: "Segmenter",
    source: str | int,
    out: str | Path,
    *,
    every: int = 1,
    max_frames: int | None = None,
    drop_frames: bool = False,
    save_video: str | Path | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    progress: bool | None = None,
) -> StreamSummary:
    """Segment a video file, camera or URL (``Segmenter.stream``) into ``out/report.jsonl``.

    One JSON line per processed frame (``FrameResult.to_dict()``: frame, timestamp_ms, time,
    size, regions, timings), written and flushed as each frame is done, so a killed run keeps
    every line it finished. ``save_video`` writes the overlays as a video (``.mp4``: mp4v,
    ``.avi``/``.mkv``: MJPG) under a temporary name moved onto ``save_video`` when the stream
    ends, so a killed run never leaves an unreadable file under the final name; its folder is
    made. Neither the report nor the video may be the source itself. A stream that ends or
    breaks returns normally; ``end`` says which.
    """
    from tqdm import tqdm

    from .data.outputs import check_output_folder

    out_dir = Path(out)
    report = out_dir / "report.jsonl"
    video = Path(save_video) if save_video else None
    if video is not None and video.suffix.lower() not in VIDEO_FOURCC:
        raise UnetDeployError(f"{quote(video)}: --save-video takes {', '.join(VIDEO_FOURCC)}; choose one of these suffixes")
    check_not_inputs([report] + ([video] if video else []), [source] if Path(str(source)).is_file() else [],
                     "--out folder or --save-video name")  # fmt: skip
    check_output_folder(out_dir, [video.parent] if video else [], [report] + ([video] if video else []))
    stream = seg.stream(source, every=every, max_frames=max_frames, drop_frames=drop_frames)
    staged = temporary_name(video, keep_suffix=True) if video is not None else None
    writer, frames, failed = None, 0, 0
    disable = None if progress is None else not progress
    try:
        with open(report, "w", encoding="utf-8") as lines, stream, \
                tqdm(total=max_frames, unit="frame", desc="stream", disable=disable, file=sys.stderr) as bar:  # fmt: skip
            for result in stream:
                record = result.to_dict()
                lines.write(json.dumps(record) + "\n")
                lines.flush()  # one write per complete line: a kill -9 keeps whole lines only
                frames += 1
                if not result.ok:
                    failed += 1
                    tqdm.write(f"error: {' '.join(str(result.error).split())}", file=sys.stderr)
                elif staged is not None:
                    writer = writer or _video_writer(staged, stream.fps, every, result.size, video)
                    writer.write(result.overlay())
                if on_record is not None:
                    on_record(record)
                bar.update(1)
    finally:
        if writer is not None:
            writer.release()  # the container is complete now: only then does it take the final name
            os.replace(staged, video)
        elif staged is not None and staged.exists():
            staged.unlink()
    return StreamSummary(out_dir, frames, failed, stream.dropped, stream.end, report, video)


def _video_writer(path: Path, fps: float | None, every: int, size: tuple[int, int], final: Path) -> Any:
    """An opened ``cv2.VideoWriter`` for ``path`` (the temporary of ``final``) at the kept frames' rate
    (10/s when the source has none)."""
    import cv2

    fourcc = VIDEO_FOURCC[path.suffix.lower()]
    rate = fps / every if fps else 10.0
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), rate, (size[1], size[0]))
    if not writer.isOpened():
        other = "an .avi name" if fourcc != "MJPG" else "an .mp4 name"
        raise UnetDeployError(f"{quote(final)}: OpenCV cannot write this video ({fourcc}); try {other}")
    return writer
