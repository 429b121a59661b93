"""Export a UNet checkpoint to TorchScript, ONNX, AOTInductor (and OpenVINO), metadata inside, parity checked.

The ``unet-export`` command. One table, ``EXPORT_FORMATS``, says what each format is (CLI
name, file suffix, whether torch is needed to run it, CPU/GPU, precisions and options); the
argument checks, the exporter and the benchmarks read it. A new format is one row plus a module with
``export(model, example, path, meta, opts)`` and ``load(path, device)``.

Every artefact is written under a temporary name beside its target, reloaded, compared
with the eager model (two input sizes x two batch sizes), and only then renamed: a failed
export leaves no file behind.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import click

from .errors import UnetDeployError
from .exporters import EXAMPLE_BATCH, ExportOptions, _echo
from .meta import DIVISOR, ModelMeta, check_size, sidecar_path

PRECISIONS = ("fp32", "fp16")
OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")  # bf16/int8 pass the accuracy gate (unet_deploy.accuracy)


@dataclass(frozen=True)
class ExportFormat:
    """One row of ``EXPORT_FORMATS``."""

    name: str  # for log lines: "TorchScript"
    arg: str  # --format value and key of export_model's result: "torchscript"
    suffix: str  # "<stem><suffix>"
    needs_torch: bool  # running the artefact needs torch (libtorch in C++)
    cpu: bool
    gpu: bool
    precisions: tuple[str, ...]
    options: frozenset[str]  # which of "dynamic", "opset", "portable" it honours
    module: str  # defines export(model, example, path, meta, opts) and load(path, device)
    requires: tuple[str, ...] = ("torch",)  # Python modules the export needs
    note: str = ""  # shown in --help

    def path(self, out_dir: Path, stem: str) -> Path:
        return out_dir / f"{stem}{self.suffix}"


EXPORT_FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat("TorchScript", "torchscript", ".torchscript.pt", True, True, True, PRECISIONS,
                 frozenset(), "unet_deploy.exporters.torchscript",
                 note="libtorch torch::jit::load; deprecated upstream, aoti is its successor"),
    ExportFormat("ONNX", "onnx", ".onnx", False, True, True, PRECISIONS,
                 frozenset({"dynamic", "opset"}), "unet_deploy.exporters.onnx", ("torch", "onnx", "onnxscript"),
                 note="ONNX Runtime CPU/CUDA, OpenCV DNN; needs no torch to run"),
    ExportFormat("AOTInductor", "aoti", ".pt2", True, True, True, PRECISIONS,
                 frozenset({"dynamic", "portable"}), "unet_deploy.exporters.aoti",
                 note="compiled package for one device; aoti_load_package / AOTIModelPackageLoader"),
    ExportFormat("OpenVINO", "openvino", ".xml", False, True, False, OPENVINO_PRECISIONS,
                 frozenset(), "unet_deploy.export_openvino", ("torch", "openvino", "nncf"),
                 note="OpenVINO IR (.xml/.bin) for Intel CPUs; bf16/int8 must pass the accuracy gate"),
)  # fmt: skip
# Parity tolerances: max |logit diff| relative to max(1, max |eager logit|), argmax agreement in %.
TOLERANCE = {"fp32": (1e-4, 99.99), "fp16": (1e-2, 99.5)}


def _quiet(message: str) -> None:
    pass


def get_format(arg: str) -> ExportFormat:
    """The row whose CLI name is ``arg``; a one-line error names the choices otherwise."""
    for fmt in EXPORT_FORMATS:
        if fmt.arg == arg:
            return fmt
    choices = ", ".join([f.arg for f in EXPORT_FORMATS] + ["all"])
    raise UnetDeployError(f"unknown export format {arg!r}; choose from {choices} (comma-separated for several)")


def _missing(fmt: ExportFormat) -> list[str]:
    return [m for m in fmt.requires if importlib.util.find_spec(m) is None]


def resolve_formats(formats: str | Iterable[str], precision: str | None = None) -> list[ExportFormat]:
    """Rows for ``"onnx"``, ``"onnx,aoti"``, ``["onnx", "aoti"]`` or ``"all"`` (the available ones
    that can export ``precision``, when given)."""
    names = [formats] if isinstance(formats, str) else list(formats)
    names = [n.strip().lower() for name in names for n in str(name).split(",") if n.strip()]
    if not names:
        raise UnetDeployError("no export format given; pass --format torchscript, onnx, aoti or all")
    if "all" in names:
        return [f for f in EXPORT_FORMATS if not _missing(f) and (precision is None or precision in f.precisions)]
    rows = list(dict.fromkeys(get_format(n) for n in names))
    for fmt in rows:
        if _missing(fmt):
            raise UnetDeployError(
                f"--format {fmt.arg} needs {', '.join(_missing(fmt))}, which is not installed: "
                "pip install 'unet-deploy[torch]'"
            )
    return rows


def _check_options(rows: list[ExportFormat], opts: ExportOptions) -> None:
    """One-line errors for options that no chosen format can honour."""
    known = tuple(dict.fromkeys(p for f in EXPORT_FORMATS for p in f.precisions))
    if opts.precision not in known:
        raise UnetDeployError(f"--precision {opts.precision!r} is not one of {'|'.join(known)}")
    for fmt in rows:
        if opts.precision not in fmt.precisions:
            raise UnetDeployError(f"--format {fmt.arg} cannot export {opts.precision}; use {'|'.join(fmt.precisions)}")
    asked = {"opset": opts.opset is not None, "portable": opts.portable, "dynamic": not opts.dynamic}
    for option, given in asked.items():
        if given and not any(option in f.options for f in rows):
            shown = "--static" if option == "dynamic" else f"--{option}"
            users = ", ".join(f.arg for f in EXPORT_FORMATS if option in f.options)
            raise UnetDeployError(f"{shown} applies to --format {users} only, not {', '.join(f.arg for f in rows)}")
    if opts.opset is not None and any(f.arg == "onnx" for f in rows):
        from .exporters.onnx import check_opset

        check_opset(opts.opset)


def _check_device(device: str, rows: list[ExportFormat]) -> str:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UnetDeployError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnetDeployError(f"--device {device}: torch has no CUDA here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UnetDeployError(f"--device {device}: export supports cpu and cuda")
    for fmt in rows:
        if not (fmt.gpu if dev.type == "cuda" else fmt.cpu):
            raise UnetDeployError(f"--format {fmt.arg} cannot be exported for {dev.type}")
    return str(dev)


def _source(checkpoint_or_model: Any, classes: Sequence[str] | None) -> tuple[Any, ModelMeta, str, Path | None]:
    """(model in eval mode on CPU, meta, file stem, checkpoint path or None)."""
    from .checkpoint import load_checkpoint

    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        path = Path(checkpoint_or_model)
        model, meta = load_checkpoint(path, "cpu", classes)
        return model, meta, path.stem, path
    model, meta = checkpoint_or_model if isinstance(checkpoint_or_model, tuple) else (checkpoint_or_model, None)
    if meta is None:
        n = int(model.out.out_channels)
        names = list(classes) if classes else [f"class_{i}" for i in range(n)]
        meta = ModelMeta(classes=names, arch={"base_channels": model.base_channels, "upsample": model.upsample,
                                              "in_channels": model.in_channels})  # fmt: skip
        meta.check_num_outputs(n, "the model")
    elif classes:
        if len(classes) != meta.num_classes:
            raise UnetDeployError(f"the model has {meta.num_classes} classes {meta.classes}, not {len(classes)}")
        meta = replace(meta, classes=list(classes))
    return copy.deepcopy(model).cpu().eval(), meta, "model", None  # the caller's model stays as it was


def _half_precision(model: Any) -> Any:
    """A copy of ``model`` that runs in fp16 but takes float32 images and returns float32 logits."""
    import torch

    class HalfPrecision(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.model = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x.half()).float()

    return HalfPrecision(copy.deepcopy(model).half()).eval()


def _check_inputs(meta: ModelMeta, dynamic: bool, device: str) -> list[Any]:
    """Parity inputs: preprocessed-looking tensors at two sizes (one if static) x batch 1 and 3."""
    import torch

    h, w = meta.input_size
    sizes = [(h, w), (h + DIVISOR, w + 2 * DIVISOR)] if dynamic else [(h, w)]
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor(meta.mean).view(1, -1, 1, 1)
    std = torch.tensor(meta.std).view(1, -1, 1, 1)
    inputs = []
    for size in sizes:
        for batch in (1, 3):
            pixels = torch.randint(0, 256, (batch, meta.in_channels, *size), generator=g).float()
            inputs.append(((pixels / meta.scale - mean) / std).to(device))
    return inputs


def parity(reference: list[Any], run: Any, inputs: list[Any], precision: str) -> tuple[bool, str]:
    """Compare ``run`` with the eager ``reference`` logits; return (within tolerance, one-line summary)."""
    import torch

    atol, min_agree = TOLERANCE[precision]
    labels = (lambda t: (t[:, 0] > 0) if t.shape[1] == 1 else t.argmax(1))  # noqa: E731 - one-logit head: > 0
    worst, agree, total = 0.0, 0, 0
    with torch.inference_mode():
        for x, ref in zip(inputs, reference):
            got = run(x).float().cpu()
            scale = max(1.0, float(ref.abs().max()))
            worst = max(worst, float((got - ref).abs().max()) / scale)
            agree += int((labels(got) == labels(ref)).sum())
            total += ref.shape[0] * ref.shape[2] * ref.shape[3]
    pct = 100.0 * agree / total
    shapes = ", ".join("x".join(map(str, x.shape)) for x in inputs)
    line = (f"max |logit diff| {worst:.1e} (allowed {atol:g}), argmax agreement {pct:.4f}% "
            f"(min {min_agree}%) at {shapes}")  # fmt: skip
    return worst <= atol and pct >= min_agree, line


def _size(path: Path) -> str:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return f"{sum(p.stat().st_size for p in files) / 1e6:.1f} MB"


def _export_one(fmt: ExportFormat, model: Any, meta: ModelMeta, target: Path, opts: ExportOptions,
                check: tuple[list[Any], list[Any]] | None) -> Path:  # fmt: skip
    """Export into a staging folder beside ``target``, check it, then move its files into place."""
    import torch

    module = importlib.import_module(fmt.module)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".export", dir=target.parent))
    try:
        staged = staging / target.name  # same name: exporters may insist on a suffix (.pt2)
        t0 = time.perf_counter()
        example = torch.zeros(EXAMPLE_BATCH, meta.in_channels, *meta.input_size, device=opts.device)
        with torch.no_grad():
            module.export(model, example, staged, meta, opts)
        opts.log(f"{fmt.name}: exported in {time.perf_counter() - t0:.1f} s ({_size(staged)})")
        if check is not None:
            t0 = time.perf_counter()
            run, loaded_meta = module.load(staged, opts.device)
            if loaded_meta != meta:
                raise UnetDeployError(f"{target}: the metadata read back differs from the exported one; report a bug")
            ok, line = parity(check[1], run, check[0], opts.precision)
            del run
            if not ok:
                raise UnetDeployError(f"{target}: {fmt.name} output differs from the eager model ({line}); "
                                      "nothing was written, report this with the checkpoint")  # fmt: skip
            opts.log(f"{fmt.name}: parity ok in {time.perf_counter() - t0:.1f} s, {line}")
        else:
            opts.log(f"{fmt.name}: parity check skipped (--no-check)")
        extras = sorted(p for p in staging.iterdir() if p != staged)  # e.g. ONNX external .data
        for p in extras + [staged]:
            os.replace(p, target.parent / p.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def export_model(
    checkpoint_or_model: Any,
    formats: str | Iterable[str] = "torchscript",
    out_dir: str | Path | None = None,
    img_size: int | Sequence[int] | None = None,
    dynamic: bool = True,
    precision: str = "fp32",
    opset: int | None = None,
    device: str = "cpu",
    classes: Sequence[str] | None = None,
    check: bool = True,
    portable: bool = False,
    verbose: bool = True,
    calib: str | Path | None = None,
    val: str | Path | None = None,
    min_agreement: float | None = None,
    max_miou_drop: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Export a checkpoint (ours or a seed ``unet.pth``), a ``UNet`` or ``(UNet, ModelMeta)`` to ``formats``.

    Writes ``<stem>.torchscript.pt``, ``<stem>.onnx``, ``<stem>.pt2`` (as asked) and the
    ``<stem>.json`` sidecar into ``out_dir`` (default: beside the checkpoint). ``img_size``
    (H, W multiples of 16) sets the metadata's input size and the export example;
    ``dynamic=False`` fixes H and W there. With ``check`` each artefact is reloaded and
    compared with the eager model before it is kept. ``openvino`` at bf16/int8 also needs
    ``calib`` (int8) and ``val`` for its accuracy gate (``unet_deploy.export_openvino``). Progress goes to stderr, one line per
    stage (``log`` replaces that, ``verbose=False`` silences it). Returns ``{format: path}``.
    """
    t_start = time.perf_counter()
    rows = resolve_formats(formats, precision)
    opts = ExportOptions(dynamic, precision, opset, device, portable, log or (_echo if verbose else _quiet))
    _check_options(rows, opts)
    size = check_size(img_size, "--img-size") if img_size is not None else None
    opts.device = _check_device(device, rows)
    model, meta, stem, source = _source(checkpoint_or_model, classes)
    if any(f.arg == "aoti" for f in rows):
        from .exporters.aoti import isa_configs

        isa_configs(portable, opts.device)  # fail before loading anything slow
    extra = {**meta.extra, "precision": precision}
    if not dynamic:
        extra["dynamic"] = False
    meta = replace(meta, input_size=size or meta.input_size, extra=extra)
    out = Path(out_dir) if out_dir is not None else (source.parent if source else Path.cwd())
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from .model import count_parameters

    model = model.to(opts.device).eval()
    exported = _half_precision(model) if precision == "fp16" else model
    h, w = meta.input_size
    opts.log(
        f"PyTorch: starting from {source or type(model).__name__} with torch {torch.__version__}: UNet base "
        f"{meta.arch['base_channels']} ({count_parameters(model) / 1e6:.2f} M parameters), {meta.num_classes} classes "
        f"{meta.classes}, input BCHW ?x{meta.in_channels}x{h}x{w}"
        f"{' (N, H, W dynamic, H and W multiples of 16)' if dynamic else ' (H, W fixed; N dynamic)'}, "
        f"{precision}, on {opts.device}"
    )
    checking = None
    if check:
        inputs = _check_inputs(meta, dynamic, opts.device)
        with torch.inference_mode():
            checking = (inputs, [model(x).float().cpu() for x in inputs])
    results: dict[str, Path] = {}
    for fmt in rows:
        if fmt.arg == "torchscript":
            opts.log("TorchScript: deprecated upstream; it stays for libtorch users, --format aoti is its successor")
        if fmt.arg == "openvino":  # its own staging, fp32 parity, NNCF int8 and accuracy gate; writes its sidecar
            results[fmt.arg] = _export_openvino(model, meta, out, stem, opts, check, calib, val, min_agreement, max_miou_drop)
            continue
        results[fmt.arg] = _export_one(fmt, exported, meta, fmt.path(out, stem), opts, checking)
        meta.save(sidecar_path(results[fmt.arg]))
    written = [str(p) for p in results.values()] + [str(sidecar_path(results[rows[0].arg]))]
    opts.log(f"Export complete in {time.perf_counter() - t_start:.1f} s: {', '.join(written)}")
    return results


def _export_openvino(model: Any, meta: ModelMeta, out: Path, stem: str, opts: ExportOptions, check: bool,
                     calib: Any, val: Any, min_agreement: float | None, max_miou_drop: float | None) -> Path:  # fmt: skip
    from . import accuracy
    from .export_openvino import export_openvino, ir_path

    return export_openvino(
        model, meta, ir_path(out, stem, opts.precision), precision=opts.precision, calib=calib, val=val,
        min_agreement=accuracy.DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement,
        max_miou_drop=accuracy.DEFAULT_MAX_MIOU_DROP if max_miou_drop is None else max_miou_drop,
        check=check, log=opts.log,
    )  # fmt: skip


def _format_help() -> str:
    return "; ".join(f"{f.arg} ({f.suffix}: {f.note})" for f in EXPORT_FORMATS)


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=f"Formats: {_format_help()}.")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--format", "-f", "formats", multiple=True, default=("torchscript",), show_default=True,
              help="torchscript, onnx, aoti, openvino, all; repeat or comma-separate for several.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder [default: beside the checkpoint].")
@click.option("--img-size", nargs=2, type=int, metavar="H W",
              help="Input size in the metadata (multiples of 16) [default: the checkpoint's].")
@click.option("--dynamic/--static", default=True, show_default=True,
              help="Dynamic H/W (multiples of 16) or fixed at --img-size; the batch is always dynamic.")
@click.option("--precision", default="fp32", show_default=True,
              help="fp32; fp16 for GPU deployment; bf16 or int8 for --format openvino (accuracy-gated).")
@click.option("--opset", type=int, help="ONNX opset [default: 18].")
@click.option("--device", default="cpu", show_default=True, help="Device to export on (an aoti package runs there).")
@click.option("--classes", help="Class names a,b,c (a seed unet.pth has none; must match the class count).")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Reload each artefact and compare it with the eager model (kept only if it agrees).")
@click.option("--portable", is_flag=True, help="aoti: AVX2 (x86-64-v3) kernels instead of host-tuned ones.")
@click.option("--calib", type=click.Path(path_type=Path), metavar="DATA",
              help="openvino int8: dataset whose training images calibrate (a few dozen are used).")
@click.option("--val", type=click.Path(path_type=Path), metavar="DATA",
              help="openvino bf16/int8: validation images for the accuracy gate [default: held back from --calib].")
@click.option("--min-agreement", type=float, help="Accuracy gate: least pixel agreement with fp32, % [default: 99.0].")
@click.option("--max-miou-drop", type=float, help="Accuracy gate: most mIoU lost against fp32, points [default: 1.0].")
def command(checkpoint: Path, formats: tuple[str, ...], out_dir: Path | None, img_size: tuple[int, int] | None,
            dynamic: bool, precision: str, opset: int | None, device: str, classes: str | None, check: bool,
            portable: bool, calib: Path | None, val: Path | None, min_agreement: float | None,
            max_miou_drop: float | None) -> None:  # fmt: skip
    """Export CHECKPOINT (a unet-train checkpoint or a seed unet.pth) for deployment.

    Writes <stem>.torchscript.pt / <stem>.onnx / <stem>.pt2 plus the <stem>.json sidecar,
    each with the model's metadata (classes, input size, letterbox, normalisation) inside.
    Every artefact is checked against the eager model before it is kept. TorchScript is
    deprecated upstream: it stays for libtorch programs, aoti (AOTInductor) is its successor.

    \b
    Examples:
      unet-export runs/a/best.pt --format torchscript          # libtorch: torch::jit::load
      unet-export runs/a/best.pt --format all --out deploy/
      unet-export unet.pth --classes background,scratch,spot --img-size 256 256 -f onnx
      unet-export runs/a/best.pt -f aoti --portable            # AVX2 package for other CPUs
      unet-export runs/a/best.pt -f onnx --precision fp16      # for ONNX Runtime CUDA
      unet-export runs/a/best.pt -f openvino --precision int8 --calib data/voc   # Intel CPUs, gated
    """
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    results = export_model(checkpoint, formats, out_dir, img_size, dynamic, precision, opset, device, names,
                           check, portable, calib=calib, val=val, min_agreement=min_agreement,
                           max_miou_drop=max_miou_drop)  # fmt: skip
    for path in results.values():
        click.echo(str(path))
