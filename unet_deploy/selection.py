"""Which unlabelled images to label next: the model's most uncertain ones, near-duplicates left out.

The library half of `unet-deploy select` (the command is ``unet_deploy.cli.select``)::

    seg = Segmenter("runs/a/best.pt")
    summary = select_to_folder(seg, ["pool/"], "to_label", count=20)   # summary.picks, summary.ranking

Ranking: every candidate gets ``Result.uncertainty`` (mean normalised entropy of the class
probabilities, ``postprocess.uncertainty``); candidates are taken most uncertain first, and one
is passed over as a near-duplicate when its thumbnail (grey, ``THUMB`` x ``THUMB`` pixels,
area-averaged, values 0..1) differs from an already chosen one's by less than
``min_distance`` in mean absolute difference: a still camera's next frame or a re-shot part adds
little that the chosen one does not. Images with a labelme JSON of their stem beside them are
labelled already and left out. The chosen ones are copied into the output folder (video frames
written as PNG) with their pre-annotations (``data.prelabel``), and ``selection.json`` /
``selection.md`` give the ranking with the reason for each pick.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import cv2
import numpy as np

from .errors import UnetDeployError
from .fileio import atomic_write_text, quote, write_image
from .predict import collect_images, output_stems, prelabel, write_labels_txt

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Result, Segmenter

THUMB = 16
MIN_DISTANCE = 0.015  # mean |difference| of two 16x16 thumbnails, 0..1: consecutive video frames ~0.01, distinct parts >= 0.02


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The near-duplicate fingerprint of an image as OpenCV reads it: grey, ``THUMB`` x ``THUMB``, 0..1."""
    from .postprocess import to_bgr8

    grey = cv2.cvtColor(to_bgr8(image), cv2.COLOR_BGR2GRAY)
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


@dataclass
class Candidate:
    """One unlabelled image (or video frame) as ranked: where it is, its uncertainty, its thumbnail."""

    file: str
    uncertainty: float
    thumb: np.ndarray = field(repr=False)
    frame: int | None = None  # video sources: the frame index

    @property
    def name(self) -> str:
        return self.file if self.frame is None else f"{self.file}#frame={self.frame}"


@dataclass
class Pick:
    """A chosen candidate: its rank among the picks, the reason, and what was written for it."""

    candidate: Candidate
    rank: int
    reason: str
    image: str = ""  # file name inside the output folder
    labelme: str = ""  # its pre-annotation (or the existing JSON that was kept)
    kept: bool = False


def rank(candidates: Sequence[Candidate], count: int, min_distance: float = MIN_DISTANCE,
         random_seed: int | None = None) -> tuple[list[Pick], list[dict[str, Any]]]:  # fmt: skip
    """Choose up to ``count`` candidates, most uncertain first, none within ``min_distance`` of a chosen one.

    Args:
        candidates: the unlabelled images with uncertainty and thumbnail.
        count: how many to choose.
        min_distance: the near-duplicate threshold (mean absolute thumbnail difference, 0..1).
        random_seed: take the candidates in a random order instead (the baseline benchmarks compare with).

    Returns the picks and one record per passed-over near-duplicate (file, uncertainty, the pick it
    resembles, the distance).
    """
    order = sorted(range(len(candidates)), key=lambda i: (-candidates[i].uncertainty, i))
    if random_seed is not None:
        np.random.default_rng(random_seed).shuffle(order)
    picks: list[Pick] = []
    skipped: list[dict[str, Any]] = []
    for position, i in enumerate(order):
        if len(picks) == count:
            break
        c = candidates[i]
        distances = [float(np.abs(c.thumb - p.candidate.thumb).mean()) for p in picks]
        nearest = int(np.argmin(distances)) if distances else -1
        if distances and distances[nearest] < min_distance:
            skipped.append({"file": c.name, "uncertainty": round(c.uncertainty, 6),
                            "near": picks[nearest].candidate.name, "distance": round(distances[nearest], 4)})  # fmt: skip
            continue
        reason = f"uncertainty {c.uncertainty:.4f}, #{position + 1} of {len(candidates)} " + \
            ("by uncertainty" if random_seed is None else f"in a random order (seed {random_seed})")
        reason += (f"; differs from every earlier pick by >= {distances[nearest]:.3f} (near-duplicate under "
                   f"{min_distance:g})" if distances else "; the most uncertain image")  # fmt: skip
        picks.append(Pick(c, len(picks) + 1, reason))
    return picks, skipped


@dataclass
class SelectSummary:
    """What ``select_to_folder`` did: the picks, every candidate ranked, near-duplicates passed over,
    images left out as already labelled, failures (file, one line), and the report files."""

    out: Path
    picks: list[Pick]
    ranking: list[Candidate]
    near_duplicates: list[dict[str, Any]]
    labelled: list[str]
    failed: list[tuple[str, str]]
    report: Path
    seconds: dict[str, float] = field(default_factory=dict)  # "rank": predict + rank all, "write": the picks


def _labelled(path: Path) -> bool:
    return path.with_suffix(".json").is_file()


def _image_candidates(seg: "Segmenter", images: Sequence[Path], batch_size: int, progress: Any
                      ) -> Iterator[tuple[Candidate | None, "Result"]]:  # fmt: skip
    for path, result in zip(images, seg.predict_iter(images, batch_size)):
        progress.update(1)
        if not result.ok or result.uncertainty is None:
            yield None, result
            continue
        yield Candidate(str(path), float(result.uncertainty), thumbnail(result.image)), result


def _frame_candidates(seg: "Segmenter", source: str, every: int, max_frames: int | None, progress: Any
                      ) -> Iterator[tuple[Candidate | None, "Result"]]:  # fmt: skip
    with seg.stream(source, every=every, max_frames=max_frames) as stream:
        for result in stream:
            progress.update(1)
            if not result.ok or result.uncertainty is None:
                yield None, result
                continue
            yield Candidate(source, float(result.uncertainty), thumbnail(result.image), result.frame), result
        if stream.end is not None and stream.end.broken:
            raise UnetDeployError(f"{source}: {stream.end.message}; no selection written")


def _read_frames(source: str, wanted: set[int]) -> dict[int, np.ndarray]:
    """The frames of a video file with these indices (frame 0 first), decoded in one pass."""
    from .stream_source import open_capture

    capture, frames, index = open_capture(source), {}, 0
    try:
        while len(frames) < len(wanted) and capture.grab():
            if index in wanted:
                ok, frame = capture.retrieve()
                if ok:
                    frames[index] = frame
            index += 1
    finally:
        capture.release()
    return frames


def select_to_folder(
    seg: "Segmenter",
    sources: Sequence[str],
    out: str | Path,
    count: int,
    *,
    min_distance: float = MIN_DISTANCE,
    every: int = 1,
    max_frames: int | None = None,
    shapes: str = "polygon",
    batch_size: int = 8,
    model: str | Path | None = None,
    progress: bool | None = None,
    random_seed: int | None = None,
) -> SelectSummary:
    """Rank the unlabelled images of ``sources`` by ``seg``'s uncertainty; copy the ``count`` most
    informative into ``out`` with labelme pre-annotations; write ``selection.json`` and ``selection.md``.

    Args:
        seg: the current model.
        sources: image files, folders and globs (``predict.collect_images``), or one video file.
        out: the folder to label in (labelme opens it as it is); existing JSONs there are kept.
        count: how many images to choose.
        min_distance: near-duplicate threshold (see the module docstring).
        every, max_frames: video sources: every Nth frame, at most this many.
        shapes: ``"polygon"`` or ``"mask"`` pre-annotations.
        batch_size: images per inference call.
        model: the model's path, for the report.
        progress: tqdm's bar (``None``: only on a terminal).
        random_seed: pick in a random order instead of by uncertainty (``rank``'s baseline).
    """
    from tqdm import tqdm

    from .data.outputs import check_output_folder
    from .stream_source import is_live, is_stream_source

    if count < 1:
        raise UnetDeployError(f"--count {count}: choose at least 1 image")
    if not 0 <= min_distance <= 1:
        raise UnetDeployError(f"--min-distance {min_distance}: a mean grey difference, between 0 and 1")
    video = next((s for s in sources if is_stream_source(s)), None)
    if video is not None and (len(sources) > 1 or is_live(video)):
        raise UnetDeployError(f"{quote(video)}: select takes one video file (or images); record a camera to a file first")
    if video is not None and not Path(video).is_file():
        raise UnetDeployError(f"{quote(video)}: no such video file")
    out = Path(out)
    images = [] if video else collect_images(sources)
    labelled = [str(p) for p in images if _labelled(p)]
    images = [p for p in images if not _labelled(p)]
    check_output_folder(out, [], [out / "selection.json", out / "selection.md"])
    disable = None if progress is None else not progress
    t0 = time.perf_counter()
    candidates: list[Candidate] = []
    failed: list[tuple[str, str]] = []
    with tqdm(total=max_frames if video else len(images), unit="img", desc="select", disable=disable,
              file=sys.stderr) as bar:  # fmt: skip
        found = _frame_candidates(seg, video, every, max_frames, bar) if video else \
            _image_candidates(seg, images, batch_size, bar)  # fmt: skip
        for candidate, result in found:
            if candidate is None:
                failed.append((result.file, result.error or "no uncertainty (tiled prediction)"))
                tqdm.write(f"error: {failed[-1][1]}", file=sys.stderr)
            else:
                candidates.append(candidate)
    if not candidates:
        raise UnetDeployError(f"{', '.join(map(quote, sources))}: no unlabelled image could be ranked"
                              + (f" ({len(labelled)} labelled already)" if labelled else ""))  # fmt: skip
    picks, skipped = rank(candidates, count, min_distance, random_seed)
    t1 = time.perf_counter()
    _write_picks(seg, picks, out, shapes, video)
    seconds = {"rank": t1 - t0, "write": time.perf_counter() - t1}
    ranking = sorted(candidates, key=lambda c: -c.uncertainty)
    report = _write_report(out, picks, ranking, skipped, labelled, failed, count, min_distance, model, sources)
    return SelectSummary(out, picks, ranking, skipped, labelled, failed, report, seconds)


def _write_picks(seg: "Segmenter", picks: list[Pick], out: Path, shapes: str, video: str | None) -> None:
    """Copy (or, for video frames, write) each pick into ``out`` and pre-annotate it there."""
    from tqdm import tqdm

    write_labels_txt(out, seg.classes)
    if video:
        frames = _read_frames(video, {p.candidate.frame for p in picks})  # type: ignore[misc]
        stem = Path(video).stem
        names = [f"{stem}_frame{p.candidate.frame:06d}.png" for p in picks]
    else:
        paths = [Path(p.candidate.file) for p in picks]
        names = [f"{s}{q.suffix}" for s, q in zip(output_stems(paths), paths)]
    for pick, name in zip(picks, names):
        target = out / name
        if target.exists():
            tqdm.write(f"{quote(target)}: exists, kept (not replaced by {pick.candidate.name})", file=sys.stderr)
        elif video:
            frame = frames.get(pick.candidate.frame)  # type: ignore[arg-type]
            if frame is None:
                raise UnetDeployError(f"{quote(video)}: frame {pick.candidate.frame} could not be read again")
            write_image(target, frame)
        else:
            shutil.copy2(pick.candidate.file, target)
        result = seg(target)
        pick.image = name
        entry = prelabel(target.with_suffix(".json"), target, result, shapes, out)
        pick.labelme = entry.get("labelme") or entry["labelme_kept"]
        pick.kept = "labelme_kept" in entry


def _write_report(out: Path, picks: list[Pick], ranking: list[Candidate], skipped: list[dict], labelled: list[str],
                  failed: list[tuple[str, str]], count: int, min_distance: float, model: Any,
                  sources: Sequence[str]) -> Path:  # fmt: skip
    rule = (f"most uncertain first (mean normalised entropy of the class probabilities); a candidate whose "
            f"{THUMB}x{THUMB} grey thumbnail differs from an earlier pick's by less than {min_distance:g} "
            f"(mean absolute difference, 0..1) is a near-duplicate and passed over")  # fmt: skip
    doc = {
        "model": str(model), "sources": list(sources), "count": count, "rule": rule,
        "picks": [{"rank": p.rank, "file": p.candidate.name, "image": p.image, "labelme": p.labelme,
                   "labelme_kept": p.kept, "uncertainty": round(p.candidate.uncertainty, 6), "reason": p.reason}
                  for p in picks],
        "near_duplicates": skipped,
        "ranking": [{"file": c.name, "uncertainty": round(c.uncertainty, 6)} for c in ranking],
        "labelled": labelled,
        "failed": [{"file": f, "error": e} for f, e in failed],
    }  # fmt: skip
    path = atomic_write_text(out / "selection.json", json.dumps(doc, indent=1) + "\n")
    lines = [f"# Selection: {len(picks)} of {len(ranking)} unlabelled image(s) to label", "", f"Rule: {rule}.", "",
             "| rank | image | uncertainty | reason |", "|---:|---|---:|---|"]  # fmt: skip
    lines += [f"| {p.rank} | {p.image} | {p.candidate.uncertainty:.4f} | {p.reason} |" for p in picks]
    if skipped:
        lines += ["", f"Near-duplicates passed over: {len(skipped)}", ""]
        lines += [f"- {s['file']} ({s['uncertainty']:.4f}): {s['distance']} from {s['near']}" for s in skipped]
    if labelled:
        lines += ["", f"Left out as labelled already (a JSON beside them): {len(labelled)}"]
    if failed:
        lines += ["", "Could not be ranked:", ""] + [f"- {f}: {e}" for f, e in failed]
    atomic_write_text(out / "selection.md", "\n".join(lines) + "\n")
    return path
