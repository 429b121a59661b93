"""`unet-deploy eval`: score deployed models (or mask PNGs) on labelled images into eval.json/md/html (``unet_deploy.eval``)."""
from __future__ import annotations

import click

from ..errors import UnetDeployError
from ._command import command as _command
from ._command import echo_err, tiling_choice


@_command("eval")
@click.argument("paths", nargs=-1, required=True, metavar="[MODEL ...] DATA")
@click.option("--out", "-o", "out", required=True, help="Output folder (eval.json, eval.md, eval.html).")
@click.option("--masks", default=None, metavar="FOLDER",
              help="Score these class-id mask PNGs (<stem>.png, or unet-predict's OUT) instead of a model.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--min-area", default=0, show_default=True, type=click.IntRange(0),
              help="Drop predicted regions smaller than this (original pixels).")
@click.option("--min-score", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Drop predicted regions whose score (mean probability of their class) is lower.")
@click.option("--batch-size", "-b", default=8, show_default=True, type=click.IntRange(1), help="Images per inference call.")
@click.option("--tile-scale", type=float, default=None, metavar="S",
              help="Tile the image at scale S (1.0 = native pixels) instead of letterboxing it [default: the model's].")
@click.option("--overlap", type=float, default=None, metavar="O", help="Tile overlap, a fraction of a tile [default: 0.25].")
@click.option("--no-tile", is_flag=True, help="Letterbox the whole image even if the model was trained on tiles.")
@click.option("--letterbox", "pad", type=click.Choice(["top-left", "center", "rect"]), default=None,
              help="Override the model's letterbox pad (rect: pad only to the next multiple of 16).")
def command(paths: tuple[str, ...], out: str, masks: str | None, device: str, min_area: int, min_score: float,
            batch_size: int, tile_scale: float | None, overlap: float | None, no_tile: bool, pad: str | None) -> None:  # fmt: skip
    """Score MODEL(s) on the labelled images of DATA; write eval.json, eval.md and eval.html to --out.

    MODEL is any file unet-predict runs (checkpoint, TorchScript, ONNX, ONNX int8, AOTI, OpenVINO);
    several are scored on the same images side by side. DATA is a dataset from `unet-deploy
    labelme` (JPEGImages/, SegmentationClass/, class_names.txt) or a labelme folder (converted on
    the fly). Classes are matched by name. --masks FOLDER scores masks made by anything else (the
    C++ unet_infer, a Triton client): PNG class ids in DATA's ids.

    \b
    Measures (unet_deploy.metrics, the definitions training and the export gate use):
      pixels   confusion matrix, per class IoU, Dice, precision, recall; mIoU; pixel accuracy
      defects  truth defect = 8-connected truth component, found when >= half its pixels are
               predicted as its class; a predicted region < half truth of its class = false alarm;
               per class and per size (<64, 64-1023, >=1024 px); precision/recall as --min-score
               sweeps 0.05..0.95, and the highest --min-score keeping defect recall >= 0.95

    An image that cannot be scored (no mask, unreadable mask, mask of another size) is one line on
    stderr; the others are scored and the exit code is 1.

    \b
    Examples:
      unet-deploy eval runs/a/model.onnx data/voc --out eval_a
      unet-deploy eval model.xml model_int8.xml labelled/ --out eval_ov --device cpu
      unet-deploy eval data/voc --masks cpp_out/ --out eval_cpp
    """
    from ..eval import evaluate, load_data, write_reports

    *models, data_path = paths
    if masks is None and not models:
        raise UnetDeployError("pass MODEL file(s) before DATA, or --masks FOLDER")
    if masks is not None and models:
        raise UnetDeployError(f"--masks scores a folder of masks; drop the model(s) {', '.join(models)} or --masks")
    tiling = tiling_choice(tile_scale, overlap, no_tile)
    data = load_data(data_path)
    try:
        result = evaluate(data, models, masks, batch_size=batch_size, progress=echo_err, device=device,
                          min_area=min_area, min_score=min_score, tiling=tiling, tile_batch=batch_size,
                          letterbox=pad)  # fmt: skip
        written = write_reports(result, out)
    finally:
        data.close()
    for note in result.notes:
        echo_err(f"Note: {note}")
    for m in result.to_dict()["models"]:
        click.echo(f"{m['model']}: mIoU {m['miou'] if m['miou'] is None else round(m['miou'], 4)}, "
                   f"{len(m['per_image'])} image(s)")  # fmt: skip
    click.echo(f"-> {written['json']}, {written['md'].name}, {written['html'].name}")
    if result.problems:
        for line in result.problems:
            click.echo(f"Error: {line}", err=True)
        click.get_current_context().exit(1)
