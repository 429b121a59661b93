"""`unet-predict`: run a model on image files, folders or globs; write masks, overlays and one JSON report."""
from __future__ import annotations

import glob
import json
import sys
from pathlib import Path
from typing import Iterable, Sequence

import click

from .errors import UnetDeployError
from .fileio import IMAGE_SUFFIXES, atomic_write_text, write_image

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
            raise UnetDeployError(f"{source}: no such file or folder; pass image files, folders or quoted globs")
        if not matches:
            raise UnetDeployError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) found there")
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


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise UnetDeployError(f"--img-size {text!r} is not N or HxW (e.g. 256 or 256x384)") from None
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--backend", default="auto", show_default=True,
              help="auto (by file suffix), onnxruntime, torchscript, aoti or checkpoint.")
@click.option("--min-area", default=0, show_default=True, type=click.IntRange(0),
              help="Drop regions smaller than this (original pixels).")
@click.option("--batch-size", "-b", default=8, show_default=True, type=click.IntRange(1), help="Images per inference call.")
@click.option("--json", "json_lines", is_flag=True, help="Also print one JSON object per image on stdout.")
@click.option("--overlays/--no-overlays", default=True, show_default=True, help="Write overlays/<stem>.jpg.")
@click.option("--classes", default=None, help="Class names a,b,c for a model without metadata (or to rename).")
@click.option("--img-size", default=None, help="Network input N or HxW for a model without metadata.")
@click.option("--threads", default=None, type=click.IntRange(1), help="Inference threads (default: the backend's).")
def command(
    model: str, sources: tuple[str, ...], out: str, device: str, backend: str, min_area: int, batch_size: int,
    json_lines: bool, overlays: bool, classes: str | None, img_size: str | None, threads: int | None,
) -> None:  # fmt: skip
    """Segment images with MODEL; write masks, overlays and report.json to --out.

    MODEL is an exported .onnx, .torchscript.pt or .pt2, or a checkpoint .pt. SOURCE is any
    number of image files, folders (their images) and quoted globs ('data/**/*.png').

    \b
    Writes:
      OUT/masks/<stem>.png     palette PNG, pixel = class id, original size
      OUT/overlays/<stem>.jpg  classes filled, region contours in green
      OUT/report.json          per image: size, regions (class, area, bbox, contour), timings

    An image that cannot be read is reported (one line) and skipped; the exit code is then 1.

    \b
    Examples:
      unet-predict runs/a/model.onnx parts/ --out pred
      unet-predict model.onnx 'line3/**/*.png' one.jpg --out pred --min-area 50 --device cpu
      unet-predict model.torchscript.pt parts/ --out pred --batch-size 16 --json > regions.jsonl
    """
    from tqdm import tqdm

    from .data.palette import save_palette_png
    from .runtime import Segmenter

    images = collect_images(sources)
    size = _parse_size(img_size)
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    seg = Segmenter(model, device=device, backend=backend, classes=names, input_size=size,
                    min_area=min_area, threads=threads)  # fmt: skip
    info = sys.stderr if json_lines else sys.stdout
    click.echo(f"{seg.describe()}, {len(images)} image(s)", file=info)

    out_dir = Path(out)
    stems = output_stems(images)
    reports, failed = [], 0
    with tqdm(total=len(images), unit="img", desc="predict", disable=None, file=sys.stderr) as bar:
        for stem, result in zip(stems, seg.predict_iter(images, batch_size)):
            record = result.to_dict()
            if result.ok:
                save_palette_png(out_dir / "masks" / f"{stem}.png", result.mask)
                if overlays:
                    write_image(out_dir / "overlays" / f"{stem}.jpg", result.overlay())
            else:
                failed += 1
                tqdm.write(f"error: {result.error}", file=sys.stderr)
            if json_lines:
                tqdm.write(json.dumps(record), file=sys.stdout)
            reports.append(record)
            bar.update(1)
    report = {"model": str(model), "backend": seg.backend, "device": seg.device, "images": reports}
    atomic_write_text(out_dir / "report.json", json.dumps(report) + "\n")
    done = len(images) - failed
    click.echo(f"{done} of {len(images)} image(s) -> {out_dir}/ (masks, overlays, report.json)"
               + (f"; {failed} failed, see report.json" if failed else ""), file=info)  # fmt: skip
    if failed:
        click.get_current_context().exit(1)
