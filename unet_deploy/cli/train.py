"""`unet-train` / `unet-deploy train`: the click command around ``unet_deploy.train.train``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..meta import PAD_MODES, UPSAMPLE_MODES
from ..train.options import DEFAULT_EPOCHS, LOSSES, PRESETS  # light: torch loads when training starts
from ._command import command as _command


@_command("train", context_settings={"show_default": True})
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Run folder for metrics.csv, best.pt, last.pt, samples/ (default with --resume: its folder).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help=f"Total epochs; a resumed run continues up to it.  [default: {DEFAULT_EPOCHS}, or the resumed run's]")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=8)
@click.option("--lr", type=float, default=1e-3, help="Adam learning rate (warm-up over 3% of the steps, then cosine decay to 1%).")
@click.option("--img-size", type=int, default=256, help="Square network input (multiple of 16); images are letterboxed.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None, show_default=False,
              help="A measured rung of the model ladder: seed (the tutorial's UNet, the default), balanced "
                   "(base 16), fast (base 8, bilinear); see the README's model table.")
@click.option("--base-channels", type=int, default=None, show_default=False,
              help="UNet width [default: the preset's, else 64 = the seed's network].")
@click.option("--upsample", type=click.Choice(UPSAMPLE_MODES), default=None, show_default=False,
              help="[default: the preset's, else transpose = the seed's]")
@click.option("--pad", type=click.Choice(PAD_MODES), default="top-left", help="Letterbox padding placement.")
@click.option("--tile-scale", type=float, default=None,
              help="Train for tiled inference: random --img-size crops of the images resized by this "
                   "(1.0 = native pixels), half of them placed on a defect of a class drawn uniformly; "
                   "validate whole images tiled; checkpoints and exports carry tiling {scale, overlap}.  "
                   "[default: letterbox whole images]")
@click.option("--overlap", type=float, default=0.25, help="Tile overlap (fraction of a tile) recorded with --tile-scale.")
@click.option("--val-split", type=float, default=0.2, help="Seeded fraction held out for validation (0: validate on train).")
@click.option("--val-data", type=click.Path(path_type=Path), default=None, help="A separate VOC-style validation folder.")
@click.option("--loss", type=click.Choice(LOSSES), default="ce", help="Cross-entropy (ignore 255), or plus soft Dice.")
@click.option("--class-weights", default=None, help="'auto' (inverse sqrt pixel frequency) or one weight per class: 1,4,4.")
@click.option("--augment/--no-augment", default=True, help="Flips, 90-degree turns, scale/shift, brightness/contrast.")
@click.option("--dropout", type=float, default=None,
              help="Dropout2d rate in the UNet blocks while training (no effect on weights or exports); "
                   "narrow UNets (--base-channels 8-16) need 0-0.1 to learn small or rare classes.  "
                   "[default: the seed's 0.3]")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: the local rank's GPU).")
@click.option("--amp/--no-amp", default=None,
              help="Mixed precision.  [default: on for CUDA and bf16-capable CPUs]")
@click.option("--amp-dtype", type=click.Choice(["auto", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto: bf16 where the device has it (CUDA since Ampere, AVX512-BF16/AMX CPUs), else fp16 + GradScaler on CUDA.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader workers.  [default: 0 when the dataset is cached in memory, else up to 4]")
@click.option("--seed", type=int, default=0)
@click.option("--deterministic/--no-deterministic", default=True, help="Same seed and data give the same metrics.")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue RUN/last.pt exactly; settings come from it (only --epochs --device --workers apply).")
@click.option("--init", type=click.Path(path_type=Path), default=None,
              help="Start from weights: a checkpoint or a seed unet.pth (architecture taken from it).")
@click.option("--overwrite", is_flag=True, help="Start a new run in an --out that already holds one.")
def command(data: Path, out: Path | None, **options: Any) -> None:
    """Train a UNet on a VOC-style dataset folder (what `unet-deploy labelme` writes).

    Each epoch writes a row of RUN/metrics.csv (losses, mIoU, per-class IoU and Dice, lr),
    RUN/best.pt (best val mIoU) and RUN/last.pt, a sample sheet RUN/samples/epoch_NNN.jpg
    (input | ground truth | prediction) and RUN/curves.png.

    \b
    Examples:
      unet-train data/voc --out runs/a --epochs 40 --base-channels 32
      unet-train data/voc --out runs/f --preset fast               # the ladder's fastest rung
      unet-train data/voc --out runs/b --loss ce+dice --class-weights auto --init unet.pth
      unet-train data/voc --resume runs/a/last.pt --epochs 60      # continue to 60 in total
      unet-train data/hires --out runs/t --tile-scale 1.0 --img-size 128 --dropout 0  # native-pixel tiles
      torchrun --nproc_per_node 2 -m unet_deploy.train data/voc --out runs/ddp
    """
    from ..train import train

    best = train(data, out, **options)
    click.echo(f"best checkpoint: {best}")


if __name__ == "__main__":
    command(prog_name="unet-train")
