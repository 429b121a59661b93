"""OpenVINO IR (``.xml`` + ``.bin``) at fp32, bf16 or int8: the row, the export, its metadata.

1. ``openvino.convert_model`` from the torch model: dynamic batch, height and width, input
   ``images`` and output ``logits`` as in the ONNX export. fp32 is parity-checked by the
   exporter through ``OpenVINOBackend``, like every format.
2. ``int8``: NNCF post-training quantization (``formats.quantize``: the recipe, the target
   ISA's overflow fix, the accuracy-control fallback). ``bf16``: the weights stay fp32 and the
   backend asks OpenVINO for bf16 inference on CPUs that have it (AMX / AVX512-BF16).
3. ``bf16``/``int8`` must pass the accuracy gate (``quantize.gate``: the staged IR through
   ``OpenVINOBackend`` against the eager fp32 model on validation images) or the export is
   refused and nothing is written.
4. ``<stem>.xml`` (``<stem>.bf16.xml``, ``<stem>.int8.xml`` for reduced precisions, each with
   its own sidecar) with ModelMeta in ``rt_info["unet_deploy"]``; ``meta.extra`` holds
   ``precision`` and the gate's ``accuracy``.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..errors import UnetDeployError
from ..fileio import file_digest
from ..meta import ONNX_METADATA_KEY, ModelMeta
from . import Format
from ._common import INPUT_NAME, OUTPUT_NAME, ExportOptions, stderr_log

FORMAT = Format(
    name="openvino", title="OpenVINO", suffixes=(".xml",), backend="openvino",
    backend_class="unet_deploy.runtime.openvino_backend:OpenVINOBackend", exporter=__name__,
    precisions=("fp32", "bf16", "int8"), devices=("cpu",), needs_torch=False, requires=("torch", "openvino", "nncf"),
    options=frozenset({"calib"}), aliases=("ov",), named_precisions=("bf16", "int8"),
    note="OpenVINO IR (.xml/.bin) for Intel CPUs; bf16/int8 must pass the accuracy gate",
)  # fmt: skip
RT_INFO_KEY = ONNX_METADATA_KEY  # "unet_deploy", the same key as in the ONNX metadata_props
# rt_info key of the .bin's digest (``fileio.file_digest``): an .xml and a .bin of two exports (a kill
# between their moves) are refused at load instead of running as a model nobody trained.
WEIGHTS_KEY = "unet_deploy_weights"
_PENDING = "blake2b:" + "0" * 64  # the digest's place in the .xml while the .bin is being written
PRECISIONS = FORMAT.precisions


def require_openvino() -> Any:
    """The ``openvino`` module, or a one-line error saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise UnetDeployError(
            "OpenVINO is not installed; run `pip install unet-deploy[openvino]` to use .xml models"
        ) from None
    return openvino


def read_meta(model: Any, path: str | Path) -> ModelMeta | None:
    """ModelMeta of an ``openvino.Model`` from its ``rt_info["unet_deploy"]``, or None."""
    if model.has_rt_info(RT_INFO_KEY):
        return ModelMeta.from_json(model.get_rt_info(RT_INFO_KEY).astype(str), f"{path} (rt_info {RT_INFO_KEY!r})")
    return None


def ir_path(out_dir: str | Path, stem: str, precision: str = "fp32") -> Path:
    """Where the IR of ``stem`` at ``precision`` goes: ``model.xml``, ``model.bf16.xml``, ``model.int8.xml``."""
    if precision not in PRECISIONS:
        raise UnetDeployError(f"--precision {precision!r} is not one of {'|'.join(PRECISIONS)} for OpenVINO")
    return FORMAT.path(out_dir, stem, precision)


def check_options(opts: ExportOptions, target: Path) -> None:
    """The gate's data and thresholds, checked before minutes of conversion."""
    from . import quantize

    quantize.gate_data(opts, target)


def convert(model: Any, meta: ModelMeta) -> Any:
    """An ``openvino.Model`` of a torch module in eval mode: shape ``[?, C, ?, ?]``, ``images`` -> ``logits``."""
    import torch

    ov = require_openvino()
    shape = ov.PartialShape([-1, meta.in_channels, -1, -1])
    example = torch.zeros(1, meta.in_channels, *meta.input_size)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # The UNet's input-size check is Python control flow that tracing warns about; it does
        # not enter the graph (the model accepts any multiple of 16). Tracing without torch's
        # re-run check halves the conversion time; the parity check or the gate compares anyway.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
        ov_model = ov.convert_model(traced, example_input=example, input=[shape])
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    return ov_model


def save(ov_model: Any, meta: ModelMeta, path: Path) -> None:
    """Write ``path`` (.xml + .bin) with ``meta`` in its rt_info, weights as they are (no fp16 compression),
    and the .bin's digest in the .xml (``WEIGHTS_KEY``, same length as its placeholder: nothing else moves)."""
    ov_model.set_rt_info(meta.to_json(), RT_INFO_KEY)
    ov_model.set_rt_info(_PENDING, WEIGHTS_KEY)
    require_openvino().save_model(ov_model, str(path), compress_to_fp16=False)
    xml = path.read_bytes()
    if xml.count(_PENDING.encode()) != 1:
        raise UnetDeployError(f"{path}: the weights digest placeholder is not in the written .xml once; report a bug")
    path.write_bytes(xml.replace(_PENDING.encode(), file_digest(path.with_suffix(".bin")).encode()))


def check_weights(ov_model: Any, path: Path) -> None:
    """Raise when the .bin beside ``path`` is not the one its .xml was written with (``WEIGHTS_KEY``;
    IRs written before it carry no digest and pass)."""
    if not ov_model.has_rt_info(WEIGHTS_KEY):
        return
    want = ov_model.get_rt_info(WEIGHTS_KEY).astype(str)
    weights = path.with_suffix(".bin")
    if file_digest(weights) != want:
        raise UnetDeployError(
            f"{path}: {weights.name} is not the weights this .xml was exported with (files of two exports, "
            "e.g. a kill between their moves); export the model again"
        )


def export(model: Any, example: Any, path: Path, meta: ModelMeta, opts: ExportOptions) -> ModelMeta:
    """Convert ``model`` (fp32 torch, eval) to the IR ``path``; int8 is calibrated, bf16/int8 gated.

    Returns the metadata written (with the gate's ``accuracy`` for bf16/int8).
    """
    from ..runtime.openvino_backend import OpenVINOBackend
    from . import quantize

    t0 = time.perf_counter()
    ov_model = convert(model, meta)
    opts.log(f"OpenVINO: converted in {time.perf_counter() - t0:.1f} s (openvino {require_openvino().__version__})")
    if opts.precision == "int8":
        graph = quantize.Int8Graph(ov_model, conv_names(ov_model), lambda m, mt: save(m, mt, path),
                                   lambda compiled: lambda x: compiled(x)[0],
                                   quantizers=lambda m: _count(m, "FakeQuantize"))  # fmt: skip
        return quantize.quantize_gated(model, graph, path, meta, opts, OpenVINOBackend)
    save(ov_model, meta, path)
    if opts.precision == "fp32":
        return meta
    accuracy = quantize.gate(model, path, meta, opts, OpenVINOBackend)
    out_meta = replace(meta, extra={**meta.extra, "accuracy": accuracy})
    save(ov_model, out_meta, path)
    return out_meta


def _count(ov_model: Any, op_type: str) -> int:
    return sum(op.get_type_name() == op_type for op in ov_model.get_ordered_ops())


def conv_names(ov_model: Any) -> list[str]:
    """The convolutions' node names in graph order (the first sees the image, the last writes the logits)."""
    return [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == "Convolution"]


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

    The same path as ``export_model(..., "openvino")`` (``unet_deploy.export.export_to``) with
    the gate's knobs: ``calib`` (training images, int8), ``val`` (validation images; default
    the held-back images of ``calib``), ``calib_count``/``val_count`` images, thresholds, and
    int8's ``int8_isa`` and recipe (``quantize.Int8Recipe``).
    """
    from ..export import export_to
    from .quantize import CALIB_COUNT, VAL_COUNT

    opts = ExportOptions(precision=precision, log=log, check=check, calib=Path(calib) if calib else None,
                         val=Path(val) if val else None, min_agreement=min_agreement, max_miou_drop=max_miou_drop,
                         threads=threads, calib_count=calib_count or CALIB_COUNT,
                         val_count=val_count or VAL_COUNT, int8_isa=int8_isa, int8=int8)  # fmt: skip
    return export_to(FORMAT, model, meta, Path(target), opts)
