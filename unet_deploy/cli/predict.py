"""`unet-predict` / `unet-deploy predict`: segment images into masks, overlays and report.json (``unet_deploy.predict``)."""
from __future__ import annotations

import json
import sys

import click

from ..errors import UnetDeployError
from ._command import command as _command


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise UnetDeployError(f"--img-size {text!r} is not N or HxW (e.g. 256 or 256x384)") from None
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


@_command("predict")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", "-o", "out", required=True, help="Output folder.")
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
@click.option("--tile-scale", type=float, default=None, metavar="S",
              help="Tile the image at scale S (1.0 = native pixels) instead of letterboxing it [default: the model's].")
@click.option("--overlap", type=float, default=None, metavar="O", help="Tile overlap, a fraction of a tile [default: 0.25].")
@click.option("--no-tile", is_flag=True, help="Letterbox the whole image even if the model was trained on tiles.")
@click.option("--letterbox", "pad", type=click.Choice(["top-left", "center", "rect"]), default=None,
              help="Override the model's letterbox pad (rect: pad only to the next multiple of 16).")
def command(
    model: str, sources: tuple[str, ...], out: str, device: str, backend: str, min_area: int, batch_size: int,
    json_lines: bool, overlays: bool, classes: str | None, img_size: str | None, threads: int | None,
    tile_scale: float | None, overlap: float | None, no_tile: bool, pad: str | None,
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
      unet-predict model.onnx big_frames/ --out pred --tile-scale 1.0       # small defects, native pixels
    """
    from tqdm import tqdm

    from ..predict import collect_images, predict_to_folder
    from ..runtime import Segmenter

    images = collect_images(sources)
    size = _parse_size(img_size)
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    if no_tile and tile_scale is not None:
        raise UnetDeployError("--no-tile and --tile-scale contradict each other; pass one of them")
    if overlap is not None and tile_scale is None:
        raise UnetDeployError("--overlap applies to tiles: pass --tile-scale S with it")
    tiling: dict[str, float] | bool | None = False if no_tile else None
    if tile_scale is not None:
        tiling = {"scale": tile_scale, "overlap": 0.25 if overlap is None else overlap}
    seg = Segmenter(model, device=device, backend=backend, classes=names, input_size=size,
                    min_area=min_area, threads=threads, tiling=tiling, tile_batch=batch_size,
                    letterbox=pad)  # fmt: skip
    info = sys.stderr if json_lines else sys.stdout
    click.echo(f"{seg.describe()}, {len(images)} image(s)", file=info)
    print_json = (lambda record: tqdm.write(json.dumps(record), file=sys.stdout)) if json_lines else None
    summary = predict_to_folder(seg, images, out, batch_size=batch_size, overlays=overlays, model=model,
                                on_record=print_json)
    click.echo(f"{summary.done} of {summary.images} image(s) -> {summary.out}/ (masks, overlays, report.json)"
               + (f"; {summary.failed} failed, see report.json" if summary.failed else ""), file=info)  # fmt: skip
    if summary.failed:
        click.get_current_context().exit(1)
