"""Export a UNet checkpoint to every format of the registry, metadata inside, parity-checked through the runtime.

``export_model(checkpoint, "onnx,aoti")``. Which formats exist, their suffixes, precisions,
devices and options are ``unet_deploy.formats``' table; each format's module writes its file
(``write(model, example, path, meta, opts)``, named by the row's ``exporter``; bf16/int8 come
back as an ``Int8Graph``/``GateRequest`` that ``precision_gate`` quantizes and gates here).
Every artefact is written under its own name into a staging folder beside its target, loaded
with the runtime backend users run (numpy in, numpy out), compared with the eager model (two
input sizes x two batch sizes), and only then moved into place with its ``<stem>.json``
sidecar: a failed export leaves no file behind. Precisions without a parity tolerance here
(bf16, int8) are checked by the accuracy gate. No click: progress goes to ``log`` (stderr by default).
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import formats as registry
from .errors import UnetDeployError, did_you_mean
from .fileio import remove_stale_temporaries, temporary_name
from .formats import Format, sidecar_path
from .formats._common import EXAMPLE_BATCH, ExportOptions, GateRequest, quiet, stderr_log
from .formats.quantize import Int8Graph
from .meta import ModelMeta, check_size, deployed, letterbox_note, max_batch
from .parity import TOLERANCE, check_artefact, check_finite_weights, reference_logits
from .runtime.base import load_backend, resolve

# Options the CLI spells differently from ExportOptions' fields.
_SHOWN = {"dynamic": "--static", "calib": "--calib"}


def load_exporter(fmt: Format) -> Callable[..., Any]:
    """The function that writes ``fmt`` (the row's ``exporter``, imported now)."""
    if fmt.exporter is None:
        choices = ", ".join(registry.names(registry.exportable()))
        raise UnetDeployError(f"{fmt.name} is not an export format; choose from {choices}")
    return resolve(fmt.exporter)


def _missing(fmt: Format) -> list[str]:
    return [m for m in fmt.requires if importlib.util.find_spec(m) is None]


def resolve_formats(formats: str | Iterable[str], precision: str | None = None) -> list[Format]:
    """Rows for ``"onnx"``, ``"onnx,aoti"``, ``["onnx", "aoti"]`` or ``"all"`` (the installed exportable
    ones that can export ``precision``, when given)."""
    names = [formats] if isinstance(formats, str) else list(formats)
    names = [n.strip().lower() for name in names for n in str(name).split(",") if n.strip()]
    exportable = registry.exportable()
    choices = ", ".join([f.name for f in exportable] + ["all"])
    if not names:
        raise UnetDeployError(f"no export format given; pass --format {choices}")
    if "all" in names:  # the formats users run in-process (a Triton repository folder is asked for by name)
        return [f for f in exportable if f.backend_class and not _missing(f)
                and (precision is None or precision in f.precisions)]  # fmt: skip
    rows = []
    for name in names:
        fmt = next((f for f in exportable if name in (f.name, *f.aliases)), None)
        if fmt is None:
            close = did_you_mean(name, [n for f in exportable for n in (f.name, *f.aliases)] + ["all"])
            raise UnetDeployError(f"unknown export format {name!r}{close}; choose from {choices} (comma-separated for several)")
        if _missing(fmt):
            raise UnetDeployError(
                f"--format {fmt.name} needs {', '.join(_missing(fmt))}, which is not installed: "
                "pip install 'unet-deploy[torch]'"
            )
        rows.append(fmt)
    return list(dict.fromkeys(rows))


AUTO = "auto"  # --precision auto: int8 if it passes the gate, else bf16 where native, else fp32


def _check_options(rows: list[Format], opts: ExportOptions) -> None:
    """One-line errors for options that no chosen format can honour."""
    known = tuple(dict.fromkeys(p for f in rows for p in f.precisions))
    if opts.precision == AUTO:
        if any("int8" not in f.precisions for f in rows):
            users = "|".join(f.name for f in registry.exportable() if "int8" in f.precisions)
            raise UnetDeployError(f"--precision auto applies to --format {users} only; give a precision for the others")
    elif opts.precision not in known:
        close = did_you_mean(opts.precision, known)
        raise UnetDeployError(f"--precision {opts.precision!r} is not one of {'|'.join(known)}{close}")
    for fmt in rows:
        if opts.precision != AUTO and opts.precision not in fmt.precisions:
            raise UnetDeployError(f"--format {fmt.name} cannot export {opts.precision}; use {'|'.join(fmt.precisions)}")
    asked = {"opset": opts.opset is not None, "portable": opts.portable, "dynamic": not opts.dynamic,
             "calib": opts.calib is not None}  # fmt: skip
    for option, given in asked.items():
        if given and not any(option in f.options for f in rows):
            users = ", ".join(f.name for f in registry.exportable() if option in f.options)
            shown = _SHOWN.get(option, f"--{option}")
            raise UnetDeployError(f"{shown} applies to --format {users} only, not {', '.join(f.name for f in rows)}")


def export_letterbox(meta: ModelMeta, pad: str | None) -> dict:
    """The letterbox an export writes (``meta.deployed``: ``pad`` if given, else ``rect`` for a top-left model)."""
    return deployed(meta, pad).letterbox


def _check_device(device: str, rows: list[Format]) -> str:
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
        if dev.type not in fmt.devices:
            raise UnetDeployError(f"--format {fmt.name} cannot be exported for {dev.type}")
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


def _size(paths: list[Path]) -> str:
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return f"{sum(f.stat().st_size for f in files) / 1e6:.1f} MB"


def _stamp(meta: ModelMeta, opts: ExportOptions) -> ModelMeta:
    """``meta`` with what this export fixes: ``extra.precision`` (and ``extra.dynamic`` when static)."""
    extra = {**meta.extra, "precision": opts.precision}
    if not opts.dynamic:
        extra["dynamic"] = False
    return replace(meta, extra=extra)


def check_request(rows: list[Format], opts: ExportOptions, targets: dict[str, Path]) -> None:
    """Every one-line option error of an export, before anything slow: the table's, then each format's own."""
    from .data.outputs import check_output_folder
    from .precision_gate import gate_data

    _check_options(rows, opts)
    for fmt in rows:
        check = getattr(importlib.import_module(fmt.exporter.split(":")[0]), "check_options", None)
        if check is not None:
            check(opts, targets[fmt.name])
        if opts.precision not in TOLERANCE:  # bf16, int8, auto: the gate's data and thresholds
            gate_data(opts, targets[fmt.name])
        target = targets[fmt.name]  # its folder writable (not /proc, not under a file), its sidecar no folder
        check_output_folder(target.parent, files=[sidecar_path(target)] + ([] if fmt.folder else [target]))


def export_to(fmt: Format, model: Any, meta: ModelMeta, target: Path, opts: ExportOptions,
              cases: list[tuple[np.ndarray, np.ndarray]] | None = None, checked: bool = False) -> Path:  # fmt: skip
    """Export the eager fp32 ``model`` to ``target`` as ``fmt``: stage, check, then move it and its sidecar in place.

    ``cases`` are the parity inputs and eager logits (``reference_logits``; made here when
    ``opts.check`` and not given); ``checked``: the options were checked already
    (``check_request``). Errors name ``target``, never the staging folder.
    """
    import torch

    write = load_exporter(fmt)
    if not checked:
        check_request([fmt], opts, {fmt.name: target})
    check_finite_weights(model, target)
    meta = _stamp(meta, opts)
    checking = opts.check and opts.precision in TOLERANCE and fmt.backend_class is not None  # a folder's
    if checking and cases is None:  # exporter checks what it holds (the Triton repository's ONNX)
        cases = reference_logits(model, meta, opts.dynamic, opts.device)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent)  # staging folders a kill -9 of an earlier export left
    if target.is_dir() != fmt.folder and target.exists():
        kind = "a folder, not a file" if target.is_dir() else "a file, not a folder"
        raise UnetDeployError(f"{target}: is {kind}; remove it or choose another --out")
    staging = temporary_name(target, ".export")
    staging.mkdir()
    staged = staging / target.name  # same name: exporters may insist on a suffix (.pt2)
    try:
        t0 = time.perf_counter()
        example = torch.zeros(EXAMPLE_BATCH, meta.in_channels, *meta.input_size, device=opts.device)
        with torch.no_grad():
            written = _gated(fmt, model, write(model, example, staged, meta, opts), staged, meta, opts)
        files = sorted(staging.iterdir())
        opts.log(f"{fmt.title}: exported in {time.perf_counter() - t0:.1f} s ({_size(files)})")
        if checking:
            t0 = time.perf_counter()
            line = check_artefact(fmt, staged, target, written, opts, cases)  # type: ignore[arg-type]
            opts.log(f"{fmt.title}: parity ok in {time.perf_counter() - t0:.1f} s, {line}")
        elif opts.precision in TOLERANCE:
            opts.log(f"{fmt.title}: parity check skipped (--no-check)")
        written.save(staging / sidecar_path(staged).name)
        extras = sorted(p for p in staging.iterdir() if p != staged)  # sidecar, OpenVINO .bin, ONNX .data
        # the artefact last: a reader that finds it finds the rest; a failed move undoes the ones before
        _install([(p, target.parent / p.name) for p in extras] + [(staged, target)], target)
    except UnetDeployError as e:  # the same error (a GateRefused stays one), naming the target
        e.message = e.message.replace(str(staged), str(target))
        e.args = (e.message,)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _gated(fmt: Format, model: Any, written: Any, staged: Path, meta: ModelMeta, opts: ExportOptions) -> ModelMeta:
    """The metadata of what a format wrote; an ``Int8Graph`` is quantized and gated first, a ``GateRequest`` gated."""
    from . import precision_gate

    if isinstance(written, Int8Graph):
        return precision_gate.quantize_gated(model, written, staged, meta, opts, load_backend(fmt))
    if isinstance(written, GateRequest):
        record = precision_gate.gate(model, staged, meta, opts, load_backend(fmt))
        out = replace(meta, extra={**meta.extra, "accuracy": record})
        written.save(out)
        return out
    return written or meta


def _install(moves: list[tuple[Path, Path]], target: Path) -> None:
    """Move each staged file onto its place in order; if one move fails (an immutable or read-only
    file), the moves before it are undone from hard-link backups, so the old model stays whole and
    no new sidecar is left beside it. A one-line error names ``target``."""
    undo: list[tuple[Path, Path | None]] = []  # moves done: (place, hard-link backup of the old file)
    backup: Path | None = None
    current = target
    try:
        for src, dst in moves:
            backup, current = None, dst
            if dst.is_file() and not dst.is_symlink():
                backup = temporary_name(dst)  # a kill leaves a second name of the old file: removed later
                os.link(dst, backup)
            _replace(src, dst)
            undo.append((dst, backup))
            backup = None
    except OSError as e:
        for dst, old in [(None, backup)] + list(reversed(undo)):
            try:
                if dst is None:  # the move that failed left its place as it was
                    if old is not None:
                        old.unlink()
                elif old is not None:
                    os.replace(old, dst)
                elif dst.is_file():
                    dst.unlink()  # new beside the old model: gone again
            except OSError:
                pass
        where = f" ({current.name})" if current != target else ""
        raise UnetDeployError(f"{target}: cannot be replaced{where}: {e.strerror or e}; nothing was changed. "
                              "Check its permissions (chattr -i, read-only mount) or choose another --out") from None
    finally:
        for _, old in undo:
            if old is not None and old.exists():
                old.unlink()


def _replace(staged: Path, target: Path) -> None:
    """Move ``staged`` to ``target``; a folder already there is swapped out whole, then removed."""
    if not target.is_dir():
        os.replace(staged, target)
        return
    old = temporary_name(target, ".export")  # a kill -9 here leaves a staging name the next export removes
    os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)


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
    int8_isa: str | None = None,
    letterbox: str | None = None,
) -> dict[str, Path]:
    """Export a checkpoint (ours or a seed ``unet.pth``), a ``UNet`` or ``(UNet, ModelMeta)`` to ``formats``.

    Args:
        checkpoint_or_model: a checkpoint path, a ``UNet``, or ``(UNet, ModelMeta)``.
        formats: names of ``formats.exportable()`` (comma-separated or a list) or ``"all"``.
        out_dir: where the files go (default: beside the checkpoint).
        img_size: network input (H, W), multiples of 16 (default: the model's).
        dynamic: any batch and H x W multiple of 16; ``False`` fixes H and W (batch stays dynamic).
        precision: ``fp32``, ``fp16``, ``bf16``, ``int8`` or ``auto`` where the format has it.
        opset: ONNX opset (default 18). device: where to export (an AOTI package runs there).
        classes: class names (a seed ``unet.pth`` has none). check: the parity check.
        portable: AOTI CPU packages with AVX2 kernels. verbose / log: progress lines on stderr (or ``log``).
        calib / val: calibration / validation data of the int8 and bf16 accuracy gate.
        min_agreement / max_miou_drop: that gate's thresholds. int8_isa: ``auto``, ``vnni`` or ``avx2``.
        letterbox: the pad mode written (default ``meta.deployed``: rect for a top-left model).

    Writes ``<stem><suffix>`` per format (``Format.path``) and its ``<stem>.json`` sidecar; with
    ``check`` each artefact is loaded by its runtime backend and compared with the eager model before
    it is kept. ``precision="auto"`` (openvino, onnx) keeps int8 if it passes the gate, else bf16 where
    this CPU has it natively, else fp32, and logs why. Returns ``{format: path}``.
    """
    t_start = time.perf_counter()
    rows = resolve_formats(formats, precision)
    opts = ExportOptions(dynamic=dynamic, precision=precision, opset=opset, device=device, portable=portable,
                         log=log or (stderr_log if verbose else quiet), check=check, calib=Path(calib) if calib else None,
                         val=Path(val) if val else None, min_agreement=min_agreement, max_miou_drop=max_miou_drop,
                         int8_isa=int8_isa)  # fmt: skip
    _check_options(rows, opts)  # before loading the checkpoint; check_request below adds the formats' own
    size = check_size(img_size, "--img-size") if img_size is not None else None
    opts.device = _check_device(device, rows)
    model, meta, stem, source = _source(checkpoint_or_model, classes)
    # rect (the default for a top-left model) makes inputs of any multiple of 16: not for a static export
    meta = deployed(replace(meta, input_size=size or meta.input_size), letterbox or (None if dynamic else meta.pad))
    if meta.pad == "rect" and not dynamic:
        raise UnetDeployError("--static fixes the input's H and W but the rect letterbox makes any multiple of 16; "
                              "pass --letterbox top-left (or center) with --static, or leave --static out")
    max_batch(meta, source=str(source or "the model"), need=EXAMPLE_BATCH)  # the export's example at this size fits?
    note = letterbox_note(meta)
    out = Path(out_dir) if out_dir is not None else (source.parent if source else Path.cwd())
    targets = {fmt.name: fmt.path(out, stem, "fp32" if precision == AUTO else precision) for fmt in rows}
    check_request(rows, opts, targets)
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from .model import count_parameters

    model = model.to(opts.device).eval()
    h, w = meta.input_size
    opts.log(
        f"PyTorch: starting from {source or type(model).__name__} with torch {torch.__version__}: UNet base "
        f"{meta.arch['base_channels']} ({count_parameters(model) / 1e6:.2f} M parameters), {meta.num_classes} classes "
        f"{meta.classes}, input BCHW ?x{meta.in_channels}x{h}x{w}"
        f"{' (N, H, W dynamic, H and W multiples of 16)' if dynamic else ' (H, W fixed; N dynamic)'}, "
        f"{precision}, on {opts.device}" + (f"; {note}" if note else "")
    )
    cases = reference_logits(model, meta, dynamic, opts.device) if check and precision in (*TOLERANCE, AUTO) else None
    if precision == AUTO:
        results = {fmt.name: _export_auto(fmt, model, meta, out, stem, opts, cases) for fmt in rows}
    else:
        results = {fmt.name: export_to(fmt, model, meta, targets[fmt.name], opts, cases, checked=True) for fmt in rows}
    written = [str(p) for p in results.values()] + list(dict.fromkeys(str(sidecar_path(p)) for p in results.values()))
    opts.log(f"Export complete in {time.perf_counter() - t_start:.1f} s: {', '.join(written)}")
    return results



def export_openvino(
    model: Any,
    meta: ModelMeta,
    target: str | Path,
    *,
    precision: str = "fp32",
    calib: str | Path | None = None,
    val: str | Path | None = None,
    calib_count: int | None = None,
    val_count: int | None = None,
    min_agreement: float | None = None,
    max_miou_drop: float | None = None,
    threads: int | None = None,
    check: bool = True,
    int8_isa: str | None = None,
    int8: Any = None,
    log: Callable[[str], None] = stderr_log,
) -> Path:
    """Export a torch UNet (eval mode) and its ModelMeta to the OpenVINO IR ``target`` (an ``.xml`` path).

    The same path as ``export_model(..., "openvino")`` (``export_to``) with
    the gate's knobs: ``calib`` (training images, int8), ``val`` (validation images; default
    the held-back images of ``calib``), ``calib_count``/``val_count`` images, thresholds, and
    int8's ``int8_isa`` and recipe (``formats.quantize.Int8Recipe``).
    """
    from .formats import openvino
    from .formats.quantize import CALIB_COUNT, VAL_COUNT

    opts = ExportOptions(precision=precision, log=log, check=check, calib=Path(calib) if calib else None,
                         val=Path(val) if val else None, min_agreement=min_agreement, max_miou_drop=max_miou_drop,
                         threads=threads, calib_count=calib_count or CALIB_COUNT,
                         val_count=val_count or VAL_COUNT, int8_isa=int8_isa, int8=int8)  # fmt: skip
    return export_to(openvino.FORMAT, model, meta, Path(target), opts)


def _export_auto(fmt: Format, model: Any, meta: ModelMeta, out: Path, stem: str, opts: ExportOptions,
                 cases: list[tuple[np.ndarray, np.ndarray]] | None) -> Path:  # fmt: skip
    """``--precision auto`` for one format: int8 if it passes the gate, else native bf16, else fp32; one line why."""
    from . import cpu
    from .accuracy import GateRefused

    why: list[str] = []
    plan = ["int8"] if opts.calib is not None else []
    if opts.calib is None:
        why.append("no --calib for int8")
    if "bf16" in fmt.precisions and not cpu.has_native_bf16():
        why.append("no native bf16 on this CPU")
    elif "bf16" in fmt.precisions and opts.calib is None and opts.val is None:
        why.append("no --val for the bf16 gate")
    elif "bf16" in fmt.precisions:
        plan.append("bf16")
    for precision in plan + ["fp32"]:
        step = replace(opts, precision=precision)
        try:
            path = export_to(fmt, model, meta, fmt.path(out, stem, precision), step, cases)
        except GateRefused as e:
            r = e.result
            drop = "" if r.miou_drop is None else f", mIoU drop {r.miou_drop:.2f} (max {r.max_miou_drop:g})"
            why.append(f"{precision} refused by the gate: agreement {r.agreement:.2f}% (min {r.min_agreement:g}%){drop}")
            continue
        reason = "passed the accuracy gate" if precision != "fp32" else "the full-precision fallback"
        opts.log(f"{fmt.title} --precision auto: {precision} ({reason}{'; ' if why else ''}{'; '.join(why)})")
        return path
    raise AssertionError("fp32 export neither succeeded nor raised")  # pragma: no cover
