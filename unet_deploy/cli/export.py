"""`unet-export` / `unet-deploy export`: a checkpoint to the registry's formats, each parity-checked before it is kept."""
from __future__ import annotations

from pathlib import Path

import click

from .. import formats
from ._command import CONTEXT, Command, echo_err


def _format_choices() -> str:
    return ", ".join([f.name for f in formats.exportable()] + ["all"])


def _precisions() -> str:
    rows = formats.exportable()
    known = "|".join(dict.fromkeys(p for f in rows for p in f.precisions))
    per_format = "; ".join(f"{f.name} {'|'.join(f.precisions)}" for f in rows)
    return (f"{known}|auto ({per_format}). auto (openvino, onnx): int8 if it passes the accuracy gate, "
            "else bf16 where this CPU has it natively, else fp32; the choice and why in one line.")


def _epilog() -> str:
    lines = "; ".join(f"{f.name} ({f.suffixes[0]}: {f.note})" for f in formats.exportable())
    return f"Formats: {lines}."


class _ExportCommand(Command):
    """Reads the registry when help is shown, so a format registered later is listed too."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.epilog = _epilog()
        super().format_epilog(ctx, formatter)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        helps = {"formats_": f"{_format_choices()}; repeat or comma-separate for several.", "precision": _precisions()}
        for param in self.params:
            if param.name in helps:
                param.help = helps[param.name]  # type: ignore[attr-defined]
        super().format_options(ctx, formatter)


@click.command(cls=_ExportCommand, context_settings=dict(CONTEXT))
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--format", "-f", "formats_", multiple=True, default=("torchscript",), show_default=True,
              help="Formats; repeat or comma-separate for several.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder [default: beside the checkpoint].")
@click.option("--img-size", nargs=2, type=int, metavar="H W",
              help="Input size in the metadata (multiples of 16) [default: the checkpoint's].")
@click.option("--letterbox", type=click.Choice(["top-left", "center", "rect"]),
              help="Pad mode written into the artefact [default: rect for a model trained with the square top-left "
                   "letterbox (measured: 99.98% of its pixels), else the checkpoint's].")
@click.option("--dynamic/--static", default=True, show_default=True,
              help="Dynamic H/W (multiples of 16) or fixed at --img-size; the batch is always dynamic.")
@click.option("--precision", default="fp32", show_default=True, help="Precision of the export.")
@click.option("--opset", type=int, help="ONNX opset [default: 18].")
@click.option("--device", default="cpu", show_default=True, help="Device to export on (an aoti package runs there).")
@click.option("--classes", help="Class names a,b,c (a seed unet.pth has none; must match the class count).")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Reload each artefact with its runtime backend and compare it with the eager model (kept only if it agrees).")
@click.option("--portable", is_flag=True, help="aoti: AVX2 (x86-64-v3) kernels instead of host-tuned ones.")
@click.option("--calib", type=click.Path(path_type=Path), metavar="DATA",
              help="int8 (openvino, onnx): dataset whose training images calibrate (a few dozen are used).")
@click.option("--val", type=click.Path(path_type=Path), metavar="DATA",
              help="bf16/int8: validation images for the accuracy gate [default: held back from --calib].")
@click.option("--int8-isa", type=click.Choice(["auto", "vnni", "avx2"]), default="auto", show_default=True,
              help="CPU kind int8 is for: avx2 (no VNNI: int8 sums saturate) gets 7-bit weights in every layer; "
                   "auto: this CPU.")
@click.option("--min-agreement", type=float, help="Accuracy gate: least pixel agreement with fp32, % [default: 99.0].")
@click.option("--max-miou-drop", type=float, help="Accuracy gate: most mIoU lost against fp32, points [default: 1.0].")
def command(checkpoint: Path, formats_: tuple[str, ...], out_dir: Path | None, img_size: tuple[int, int] | None,
            letterbox: str | None, dynamic: bool, precision: str, opset: int | None, device: str, classes: str | None, check: bool,
            portable: bool, calib: Path | None, val: Path | None, int8_isa: str, min_agreement: float | None,
            max_miou_drop: float | None) -> None:  # fmt: skip
    """Export CHECKPOINT (a unet-train checkpoint or a seed unet.pth) for deployment.

    Writes <stem>.torchscript.pt / <stem>.onnx / <stem>.pt2 / <stem>.xml plus the <stem>.json
    sidecar, each with the model's metadata (classes, input size, letterbox, normalisation)
    inside. Every artefact is loaded with the runtime backend that runs it and checked against
    the eager model before it is kept. TorchScript is deprecated upstream: it stays for
    libtorch programs, aoti (AOTInductor) is its successor.

    \b
    Examples:
      unet-export runs/a/best.pt --format torchscript          # libtorch: torch::jit::load
      unet-export runs/a/best.pt --format all --out deploy/
      unet-export unet.pth --classes background,scratch,spot --img-size 256 256 -f onnx
      unet-export runs/a/best.pt -f aoti --portable            # AVX2 package for other CPUs
      unet-export runs/a/best.pt -f onnx --precision fp16      # for ONNX Runtime CUDA
      unet-export runs/a/best.pt -f openvino --precision int8 --calib data/voc   # Intel CPUs, gated
      unet-export runs/a/best.pt -f onnx --precision auto --calib data/voc       # int8 QDQ if it passes
    """
    from ..export import export_model

    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    results = export_model(checkpoint, formats_, out_dir, img_size, dynamic, precision, opset, device, names, check,
                           portable, calib=calib, val=val, min_agreement=min_agreement, max_miou_drop=max_miou_drop,
                           log=echo_err, int8_isa=int8_isa, letterbox=letterbox)  # fmt: skip
    for path in results.values():
        click.echo(str(path))
