"""`unet-deploy labelme`: a labelme folder -> a VOC-style dataset (``unet_deploy.data.labelme.convert_folder``)."""
from __future__ import annotations

from pathlib import Path

import click

from ..fileio import quote
from ._command import command as _command


@_command("labelme")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="labelme labels.txt: __ignore__, _background_, then the classes (id = line - 1).")
@click.option("--classes", help="Comma-separated class names; background is id 0 and implicit.")
@click.option("--viz", is_flag=True, help="Also write SegmentationClassVisualization/<stem>.jpg overlays.")
@click.option("--skip-unknown", is_flag=True, help="Leave out shapes whose label is not a class (default: error).")
@click.option("--allow-outside-images", is_flag=True,
              help="Read an imagePath that leaves SRC (../, absolute paths); by default such a file fails.")
def command(src: Path, out: Path, labels_file: Path | None, classes: str | None, viz: bool,
            skip_unknown: bool, allow_outside_images: bool) -> None:
    """Convert a labelme folder (SRC) into a VOC-style dataset (OUT).

    OUT gets JPEGImages/, SegmentationClass/ (palette PNGs, pixel = class id, 255 =
    __ignore__) and class_names.txt. Without --labels or --classes, SRC/labels.txt
    is used if present, else every label found (sorted). Broken files are reported
    one per line and skipped; the exit code is then 1.

    \b
    Examples:
      unet-deploy labelme annotated/ dataset/ --labels annotated/labels.txt
      unet-deploy labelme annotated/ dataset/ --classes scratch,spot,dent --viz
    """
    from ..data.labelme import convert_folder

    summary = convert_folder(src, out, classes=classes, labels_file=labels_file, viz=viz,
                             skip_unknown=skip_unknown, allow_outside=allow_outside_images)
    for _, message in summary.failed:
        click.echo(f"error: {' '.join(message.split())}", err=True)
    for path in summary.not_labelme:
        click.echo(f"skipped: {quote(path)} is not a labelme file", err=True)
    extra = f", {summary.skipped_shapes} unknown-label shapes left out" if summary.skipped_shapes else ""
    click.echo(
        f"{len(summary.converted)} converted, {len(summary.failed)} failed{extra}; "
        f"{len(summary.class_names)} classes from {summary.labels_source} -> {out}"
    )
    if summary.failed:
        raise SystemExit(1)
