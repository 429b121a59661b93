"""`unet-deploy synth`: synthetic inspection images with labelme JSON (``unet_deploy.data.synthetic.generate``)."""
from __future__ import annotations

from pathlib import Path

import click

from ._command import command as _command


@_command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", type=click.IntRange(min=1), default=200, show_default=True, help="Number of images.")
@click.option("--size", type=(int, int), default=(256, 256), show_default=True, metavar="W H",
              help="Image width and height.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same images.")
def command(out: Path, count: int, size: tuple[int, int], seed: int) -> None:
    """Write synthetic inspection images with scratch/spot/dent defects as labelme JSON into OUT.

    OUT gets synth_NNNN.jpg + synth_NNNN.json (labelme polygons) and labels.txt, ready
    for `unet-deploy labelme OUT DATASET`.

    \b
    Examples:
      unet-deploy synth data/raw --count 200 --size 256 256 --seed 0
      unet-deploy labelme data/raw data/voc
    """
    from ..data.synthetic import CLASSES, generate

    paths = generate(out, count, size, seed)
    click.echo(f"{len(paths)} images with labelme JSON ({', '.join(CLASSES[1:])}) -> {out}")
