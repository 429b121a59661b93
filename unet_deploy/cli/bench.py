"""`unet-bench` / `unet-deploy bench`: the click command around ``unet_deploy.bench.run_benchmark``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..bench import DEFAULT_BATCHES, DEFAULT_SOURCE_SIZE, backend_names, format_table, precisions, run_benchmark
from ..errors import UnetDeployError
from ..meta import DEFAULT_OVERLAP
from ._command import command as _command
from ._command import echo_err


class _ListedOption(click.Option):
    """An option whose help ends with the names ``names()`` gives when --help is shown (the registry's, then)."""

    def __init__(self, *args: Any, names: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._base_help, self._names = self.help, names

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = self._base_help.format(", ".join(self._names()))
        return super().get_help_record(ctx)


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@_command("bench")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--backend", "backends", multiple=True, metavar="NAME[,NAME]", cls=_ListedOption, names=backend_names,
              help="Backends to run (default all that apply): {} - eager is the checkpoint in PyTorch (the "
                   "accuracy reference), seed the seed article's pipeline on it (the baseline); the others are the "
                   "format registry's.")  # fmt: skip
@click.option("--precision", "precisions", multiple=True, metavar="P[,P]", cls=_ListedOption, names=precisions,
              help="{} (default: fp32 and what the device computes natively).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "all"]), default="auto", show_default=True,
              help="auto = cuda when there is one, else cpu; all = both.")
@click.option("--batch", "batches", multiple=True, metavar="N[,N]", help="Batch sizes for throughput [default: 1,4,16].")
@click.option("--runs", type=click.IntRange(1), default=20, show_default=True, help="Timed runs per case.")
@click.option("--warmup", type=click.IntRange(1), default=3, show_default=True, help="Warm-up runs (the first is timed as first call).")
@click.option("--img-size", type=int, nargs=2, default=None, metavar="H W",
              help="Network input size (checkpoint only; default: the model's).")
@click.option("--source-size", type=int, nargs=2, default=DEFAULT_SOURCE_SIZE, show_default=True, metavar="W H",
              help="Size of the source image, letterboxed every run.")
@click.option("--image", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="A real image as source (resized to --source-size) instead of the synthetic one.")
@click.option("--tile-scale", type=float, default=None, metavar="S",
              help="Also run each case tiled at this scale (1.0 = native pixels); default: the model's own tiling, if any.")
@click.option("--overlap", type=float, default=None, metavar="O",
              help=f"Tile overlap, a fraction of a tile (with --tile-scale) [default: {DEFAULT_OVERLAP}].")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads (default: the libraries' own).")
@click.option("--budget", type=float, default=120.0, show_default=True, help="Seconds per case at most (approximately).")
@click.option("--hw-limit", is_flag=True, help="Also measure matmul GFLOP/s and the model's GFLOPs: the hardware limit.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the full report as JSON.")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the table as Markdown.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def command(model: Path, backends: tuple[str, ...], precisions: tuple[str, ...], device: str, batches: tuple[str, ...],
            runs: int, warmup: int, img_size: tuple[int, int] | None, source_size: tuple[int, int], image: Path | None,
            tile_scale: float | None, overlap: float | None, threads: int | None, budget: float, hw_limit: bool, json_path: Path | None, md_path: Path | None, quiet: bool) -> None:  # fmt: skip
    """Benchmark MODEL (a checkpoint, or a model exported to any registered format) per backend and stage.

    For each backend and precision: preprocess, inference, postprocess and end-to-end latency
    (p50/p90/p99) on a full-size source image, images/s per batch size, first-result time
    (load + first call), peak memory and pixel agreement with the fp32 eager model; plus the
    seed article's own pipeline on the same weights, and the speed-up over it. A checkpoint is
    exported to every format needed into a temporary folder. With --tile-scale (or a model whose
    metadata says tiling) each case also runs tiled, beside its letterbox row: the tile count,
    ms per frame and ms per megapixel of the source frame for both modes.

    \b
    Examples:
      unet-bench runs/a/best.pt                              # every backend on this machine
      unet-bench model.onnx --runs 50 --json bench.json      # one exported model
      unet-bench best.pt --backend eager,onnxruntime --batch 1,8 --img-size 512 512
      unet-bench best.pt --device cuda --precision fp32,fp16 --markdown bench.md
      unet-bench best.pt --backend onnxruntime --tile-scale 1.0 --overlap 0.25 --source-size 4000 3000
    """
    try:
        sizes = tuple(int(b) for b in _split(batches)) or DEFAULT_BATCHES
    except ValueError:
        raise UnetDeployError(f"--batch {','.join(batches)} must be whole numbers such as 1,4,16") from None
    if overlap is not None and tile_scale is None:
        raise UnetDeployError(f"--overlap {overlap} needs --tile-scale S (the scale the tiles are cut at)")
    tiling = None if tile_scale is None else {"scale": tile_scale, "overlap": DEFAULT_OVERLAP if overlap is None else overlap}
    report = run_benchmark(
        model, backends=_split(backends) or None, precisions=_split(precisions) or None, device=device,
        runs=runs, warmup=warmup, batches=sizes, img_size=img_size, image=image, source_size=source_size,
        threads=threads, budget_s=budget, hw_limit=hw_limit, json_path=json_path, markdown_path=md_path,
        log=None if quiet else echo_err, tiling=tiling,
    )  # fmt: skip
    click.echo(format_table(report))
    for path in (json_path, md_path):
        if path:
            echo_err(f"wrote {path}")
