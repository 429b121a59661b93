"""`unet-deploy crop`: cut the regions of interest out of images (``unet_deploy.data.crop.crop_folder``)."""
from __future__ import annotations

from pathlib import Path

import click

from ._command import command as _command


def _threshold(ctx: click.Context, param: click.Parameter, value: str) -> int | str:
    if value.lower() == "otsu":
        return "otsu"
    try:
        level = int(value)
    except ValueError:
        raise click.BadParameter("pass a grey level 0-255 or 'otsu'") from None
    if not 0 <= level <= 255:
        raise click.BadParameter("pass a grey level 0-255 or 'otsu'")
    return level


@_command("crop")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--threshold", default="127", show_default=True, callback=_threshold,
              help="Grey level (0-255) above which a pixel is object, or 'otsu'.")
@click.option("--min-area", type=float, default=1000.0, show_default=True, help="Smallest contour area kept (px).")
@click.option("--max-area", type=float, default=None, help="Largest contour area kept (px); default no limit.")
@click.option("--margin", type=click.IntRange(min=0), default=10, show_default=True,
              help="Pixels added around each bounding box.")
@click.option("--invert", is_flag=True, help="Objects are darker than the background.")
def command(src: Path, out: Path, threshold: int | str, min_area: float, max_area: float | None, margin: int,
            invert: bool) -> None:
    """Crop the regions of interest out of the images in SRC into OUT.

    Each image is thresholded in grey; every outer contour with an area within
    [--min-area, --max-area] is cropped by its bounding box plus --margin. The crop
    boxes are recorded in OUT/crops.json; labelme JSONs beside the images are
    cropped too, so OUT can go straight to `unet-deploy labelme`.

    \b
    Examples:
      unet-deploy crop raw/ crops/ --threshold 60 --min-area 5000 --margin 16
      unet-deploy crop raw/ crops/ --threshold otsu --invert
    """
    from ..data.crop import CROPS_FILE, crop_folder

    summary = crop_folder(src, out, threshold, min_area, max_area, margin, invert)
    for _, message in summary.failed:
        click.echo(f"error: {' '.join(message.split())}", err=True)
    sources = len({c["source"] for c in summary.crops})
    click.echo(f"{len(summary.crops)} crops from {sources} images, {len(summary.no_roi)} without a region, "
               f"{len(summary.failed)} failed -> {out / CROPS_FILE}")
    if summary.failed:
        raise SystemExit(1)
