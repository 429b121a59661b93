"""`unet-deploy select`: the N most informative unlabelled images, copied with pre-annotations (``unet_deploy.selection``)."""
from __future__ import annotations

import click

from ..selection import MIN_DISTANCE
from ._command import command as _command


@_command("select")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("sources", nargs=-1, required=True)
@click.option("--count", "-n", required=True, type=click.IntRange(1), help="How many images to choose.")
@click.option("--out", "-o", "out", required=True, help="Folder to label in: the chosen images, their JSONs, selection.json/.md.")
@click.option("--min-distance", default=MIN_DISTANCE, show_default=True, type=click.FloatRange(0, 1),
              help="Near-duplicate threshold: mean absolute difference of 16x16 grey thumbnails (0..1).")
@click.option("--labelme-shapes", type=click.Choice(["polygon", "mask"]), default="polygon", show_default=True,
              help="Pre-annotations as polygons (holes as _background_ polygons) or lossless labelme mask shapes.")
@click.option("--every", default=1, show_default=True, type=click.IntRange(1), metavar="N",
              help="Video source: rank every Nth frame (0, N, 2N, ...).")
@click.option("--max-frames", default=None, type=click.IntRange(1), help="Video source: rank at most this many frames.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", "-b", default=8, show_default=True, type=click.IntRange(1), help="Images per inference call.")
def command(model: str, sources: tuple[str, ...], count: int, out: str, min_distance: float, labelme_shapes: str,
            every: int, max_frames: int | None, device: str, batch_size: int) -> None:  # fmt: skip
    """Choose the COUNT images of SOURCE the model is least sure about, to label them next.

    SOURCE is image files, folders and quoted globs (images with a labelme JSON of their name
    beside them count as labelled and are left out), or one video file (every Nth frame). Each
    image gets its uncertainty (mean normalised entropy of the class probabilities: 0 sure,
    1 coin toss); the most uncertain come first, and an image whose 16x16 grey thumbnail is
    within --min-distance of an already chosen one is passed over as a near-duplicate.

    \b
    Writes into OUT (open it in labelme, correct, save):
      <image> and <stem>.json   the chosen images (video frames as PNG) and their pre-annotations
      labels.txt                the model's classes in labelme's order
      selection.json / .md      the picks with the reason for each, the whole ranking,
                                the near-duplicates passed over
    Existing files in OUT are never replaced (one line each).

    \b
    Examples:
      unet-deploy select runs/a/best.pt pool/ --count 20 --out to_label
      unet-deploy select model.onnx line3.mp4 --every 15 --count 10 --out to_label
    """
    from ..runtime import Segmenter
    from ..selection import select_to_folder

    seg = Segmenter(model, device=device)
    click.echo(seg.describe(), err=True)
    s = select_to_folder(seg, list(sources), out, count, min_distance=min_distance, every=every,
                         max_frames=max_frames, shapes=labelme_shapes, batch_size=batch_size, model=model)  # fmt: skip
    extra = [f"{len(s.near_duplicates)} near-duplicate(s) passed over"] if s.near_duplicates else []
    extra += [f"{len(s.labelled)} labelled already"] if s.labelled else []
    extra += [f"{len(s.failed)} failed"] if s.failed else []
    click.echo(f"{len(s.picks)} of {len(s.ranking)} unlabelled image(s) -> {s.out}/ (selection.md)"
               + (f"; {', '.join(extra)}" if extra else ""))  # fmt: skip
    if s.failed:
        click.get_current_context().exit(1)
