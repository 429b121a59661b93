"""`unet-deploy synth`: synthetic inspection images with labelme JSON (``unet_deploy.data.synthetic.generate``)."""
from __future__ import annotations

from pathlib import Path

import click

from ..data.synthetic import PRESETS
from ._command import command as _command


@_command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", type=click.IntRange(min=1), default=200, show_default=True, help="Number of images.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="hires: 2448x2048 frames, 15-35 defects each, 4-40 px across (options given explicitly win).")
@click.option("--size", type=(int, int), default=None, metavar="W H",
              help="Image width and height.  [default: 256 256, or the preset's]")
@click.option("--defect-size", type=(float, float), default=None, metavar="MIN MAX",
              help="Defect size across in pixels (scratch width, spot diameter, dent short axis), log-uniform.  "
                   "[default: scaled with the image, or the preset's]")
@click.option("--defects", type=(int, int), default=None, metavar="MIN MAX",
              help="Defects per image.  [default: 0-5, or the preset's]")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same images.")
def command(out: Path, count: int, preset: str | None, size: tuple[int, int] | None,
            defect_size: tuple[float, float] | None, defects: tuple[int, int] | None, seed: int) -> None:
    """Write synthetic inspection images with scratch/spot/dent defects as labelme JSON into OUT.

    OUT gets synth_NNNN.jpg + synth_NNNN.json (labelme polygons) and labels.txt, ready
    for `unet-deploy labelme OUT DATASET`.

    \b
    Examples:
      unet-deploy synth data/raw --count 200 --size 256 256 --seed 0
      unet-deploy synth data/hires --count 40 --preset hires        # small defects, large frames
      unet-deploy synth data/big --size 4000 3000 --defect-size 4 40 --defects 20 40
      unet-deploy labelme data/raw data/voc
    """
    from ..data.synthetic import CLASSES, generate

    settings = dict(PRESETS[preset]) if preset else {"size": (256, 256)}
    given = {"size": size, "defect_size": defect_size, "defects": defects}
    settings.update({k: v for k, v in given.items() if v is not None})
    paths = generate(out, count, seed=seed, **settings)
    click.echo(f"{len(paths)} images with labelme JSON ({', '.join(CLASSES[1:])}) -> {out}")
