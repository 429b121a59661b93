"""`unet-predict` / `unet-deploy predict`: segment images into masks, overlays and report.json (``unet_deploy.predict``)."""
from __future__ import annotations

import json
import sys
from typing import IO, Any, Callable

import click

from ..errors import UnetDeployError
from ._command import command as _command
from ._command import tiling_choice


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
@click.option("--min-score", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Drop regions whose score (mean probability of their class over their pixels) is lower.")
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
@click.option("--every", default=None, type=click.IntRange(1), metavar="N",
              help="Video sources: process every Nth frame (0, N, 2N, ...) [default: 1].")
@click.option("--max-frames", default=None, type=click.IntRange(1), help="Video sources: stop after this many processed frames.")
@click.option("--save-video", default=None, metavar="OUT.mp4", help="Video sources: write the overlays as a video (.mp4, .avi, .mkv).")
@click.option("--drop-frames", is_flag=True,
              help="Video sources: when the pipeline is full, drop the oldest frame instead of waiting (live cameras).")
@click.option("--letterbox", "pad", type=click.Choice(["top-left", "center", "rect"]), default=None,
              help="Override the model's letterbox pad (rect: pad only to the next multiple of 16).")
@click.option("--trust-code", is_flag=True,
              help="Load a model file that runs code when loaded (.pt2: native code). Only for files you made.")
@click.option("--labelme", "labelme", is_flag=True,
              help="Also write OUT/labelme/<stem>.json pre-annotations that labelme opens (existing ones are kept).")
@click.option("--labelme-shapes", type=click.Choice(["polygon", "mask"]), default="polygon", show_default=True,
              help="With --labelme: polygons (holes as _background_ polygons) or lossless labelme mask shapes.")
def command(
    model: str, sources: tuple[str, ...], out: str, device: str, backend: str, min_area: int, min_score: float,
    batch_size: int,
    json_lines: bool, overlays: bool, classes: str | None, img_size: str | None, threads: int | None,
    tile_scale: float | None, overlap: float | None, no_tile: bool, every: int | None, max_frames: int | None,
    save_video: str | None, drop_frames: bool, pad: str | None, trust_code: bool, labelme: bool, labelme_shapes: str,
) -> None:  # fmt: skip
    """Segment images with MODEL; write masks, overlays and report.json to --out.

    MODEL is an exported .onnx, .torchscript.pt or .pt2, or a checkpoint .pt. SOURCE is any
    number of image files, folders (their images) and quoted globs ('data/**/*.png'), or one
    video source: a video file (.mp4, .avi, .mkv), a camera index (0, camera:0) or an rtsp://
    or http:// URL, decoded, segmented and reported in a pipeline.

    \b
    Writes:
      OUT/masks/<stem>.png     palette PNG, pixel = class id, original size
      OUT/overlays/<stem>.jpg  classes filled, region contours in green
      OUT/report.json          per image: size, regions (class, area, bbox, contour, score), timings
      OUT/report.jsonl         video: one line per processed frame (frame, timestamp_ms, time,
                               size, regions, timings), flushed as it goes
      OUT/labelme/<stem>.json  with --labelme: labelme 5.x pre-annotation (imagePath relative to
                               it, one shape per region, score in its description; holes are
                               _background_ polygons drawn after their region), and labels.txt

    An image that cannot be read is reported (one line) and skipped; the exit code is then 1.
    A video ends with one line: exit 0 at its end (or --max-frames), 1 when it broke (truncated
    file, camera lost; the frames before are written) or cannot be opened.

    \b
    Examples:
      unet-predict runs/a/model.onnx parts/ --out pred
      unet-predict model.onnx 'line3/**/*.png' one.jpg --out pred --min-area 50 --device cpu
      unet-predict model.torchscript.pt parts/ --out pred --batch-size 16 --json > regions.jsonl
      unet-predict model.onnx big_frames/ --out pred --tile-scale 1.0       # small defects, native pixels
      unet-predict model.onnx line3.mp4 --out pred --every 3 --save-video pred/overlay.mp4
      unet-predict model.xml camera:0 --out pred --drop-frames --max-frames 1000
      unet-predict model.onnx new_parts/ --out pred --labelme   # then: labelme pred/labelme
      unet-deploy labelme pred/labelme data/ --allow-outside-images   # the images stay in new_parts/
    """
    from tqdm import tqdm

    from ..predict import collect_images, predict_to_folder
    from ..runtime import Segmenter
    from ..stream_source import is_stream_source

    streams = [s for s in sources if is_stream_source(s)]
    if streams and len(sources) > 1:
        raise UnetDeployError(f"{streams[0]}: a video source is predicted on its own; pass it as the only SOURCE")
    if not streams:
        given = [o for o, v in (("--every", every), ("--max-frames", max_frames), ("--save-video", save_video),
                                ("--drop-frames", drop_frames)) if v]  # fmt: skip
        if given:
            raise UnetDeployError(f"{given[0]} applies to a video source (file, camera index or URL), not to images")
    if streams and labelme:
        raise UnetDeployError(f"{streams[0]}: --labelme annotates image files; pick frames of a video with "
                              "`unet-deploy select MODEL VIDEO --count N --out DIR`")
    images = [] if streams else collect_images(sources)
    size = _parse_size(img_size)
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    tiling = tiling_choice(tile_scale, overlap, no_tile)
    seg = Segmenter(model, device=device, backend=backend, classes=names, input_size=size,
                    min_area=min_area, min_score=min_score, threads=threads, tiling=tiling, tile_batch=batch_size,
                    letterbox=pad, trust_code=trust_code)  # fmt: skip
    info = sys.stderr if json_lines else sys.stdout
    print_json = (lambda record: tqdm.write(json.dumps(record), file=sys.stdout)) if json_lines else None
    if streams:
        _stream(seg, streams[0], out, every or 1, max_frames, drop_frames, save_video, print_json, info)
        return
    click.echo(f"{seg.describe()}, {len(images)} image(s)", file=info)
    summary = predict_to_folder(seg, images, out, batch_size=batch_size, overlays=overlays, model=model,
                                on_record=print_json, labelme=labelme_shapes if labelme else None)
    wrote = "masks, overlays, report.json" + (", labelme/" if labelme else "")
    click.echo(f"{summary.done} of {summary.images} image(s) -> {summary.out}/ ({wrote})"
               + (f"; {summary.failed} failed, see report.json" if summary.failed else ""), file=info)  # fmt: skip
    if summary.failed:
        click.get_current_context().exit(1)


def _stream(seg: Any, source: str, out: str, every: int, max_frames: int | None, drop_frames: bool,
            save_video: str | None, on_record: Callable[[dict], None] | None, info: IO[str]) -> None:  # fmt: skip
    """The video half of the command: one line at the end; exit 1 when the stream broke or frames failed."""
    import os

    from ..predict import predict_stream_to_folder

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own decoder chatter: our line says it
    click.echo(f"{seg.describe()}, video {source}", file=info)
    s = predict_stream_to_folder(seg, source, out, every=every, max_frames=max_frames, drop_frames=drop_frames,
                                 save_video=save_video, on_record=on_record)  # fmt: skip
    dropped = f", {s.dropped} dropped" if s.dropped else ""
    failed = f", {s.failed} failed" if s.failed else ""
    line = f"{s.end.message}; {s.frames} frame(s){failed}{dropped} -> {s.report}"
    if s.end.broken or s.failed:
        click.echo(f"Error: {line}", err=True)
        click.get_current_context().exit(1)
    click.echo(line, file=info)
