"""OpenVINO IR (``.xml`` + ``.bin``) at fp32, bf16 or int8: the row, the export, its metadata.

1. ``openvino.convert_model`` from the torch model: dynamic batch, height and width, input
   ``images`` and output ``logits`` as in the ONNX export. fp32 is parity-checked by the
   exporter through ``OpenVINOBackend``, like every format.
2. ``int8``: NNCF post-training quantization (``formats.quantize``: the recipe, the target
   ISA's overflow fix; ``precision_gate``: calibration and the accuracy-control fallback).
   ``bf16``: the weights stay fp32 and the backend asks OpenVINO for bf16 inference on CPUs
   that have it (AMX / AVX512-BF16).
3. ``bf16``/``int8`` must pass the accuracy gate (``precision_gate.gate``, run by the exporter:
   the staged IR through ``OpenVINOBackend`` against the eager fp32 model on validation images)
   or the export is refused and nothing is written.
4. ``<stem>.xml`` (``<stem>.bf16.xml``, ``<stem>.int8.xml`` for reduced precisions, each with
   its own sidecar) with ModelMeta in ``rt_info["unet_deploy"]``; ``meta.extra`` holds
   ``precision`` and the gate's ``accuracy``.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import UnetDeployError
from ..fileio import file_digest
from ..meta import METADATA_KEY, ModelMeta
from ._common import INPUT_NAME, OUTPUT_NAME, TORCH_JIT_DEPRECATED, ExportOptions, GateRequest, without
from .quantize import Int8Graph
from .spec import Format

FORMAT = Format(
    name="openvino", title="OpenVINO", suffixes=(".xml",), backend="openvino",
    backend_class="unet_deploy.runtime.openvino_backend:OpenVINOBackend", exporter=f"{__name__}:write",
    precisions=("fp32", "bf16", "int8"), devices=("cpu",), needs_torch=False, requires=("torch", "openvino", "nncf"),
    options=frozenset({"calib"}), aliases=("ov",), named_precisions=("bf16", "int8"),
    note="OpenVINO IR (.xml/.bin) for Intel CPUs; bf16/int8 must pass the accuracy gate",
)  # fmt: skip
RT_INFO_KEY = METADATA_KEY  # "unet_deploy", the same key as in the ONNX metadata_props
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
    if model.has_rt_info(METADATA_KEY):
        return ModelMeta.from_json(model.get_rt_info(METADATA_KEY).astype(str), f"{path} (rt_info {METADATA_KEY!r})")
    return None


def ir_path(out_dir: str | Path, stem: str, precision: str = "fp32") -> Path:
    """Where the IR of ``stem`` at ``precision`` goes: ``model.xml``, ``model.bf16.xml``, ``model.int8.xml``."""
    if precision not in PRECISIONS:
        raise UnetDeployError(f"--precision {precision!r} is not one of {'|'.join(PRECISIONS)} for OpenVINO")
    return FORMAT.path(out_dir, stem, precision)


def convert(model: Any, meta: ModelMeta) -> Any:
    """An ``openvino.Model`` of a torch module in eval mode: shape ``[?, C, ?, ?]``, ``images`` -> ``logits``."""
    import torch

    ov = require_openvino()
    shape = ov.PartialShape([-1, meta.in_channels, -1, -1])
    example = torch.zeros(1, meta.in_channels, *meta.input_size)
    with warnings.catch_warnings(), without(TORCH_JIT_DEPRECATED), torch.inference_mode(False), torch.no_grad():
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


def write(model: Any, example: Any, path: Path, meta: ModelMeta,
           opts: ExportOptions) -> ModelMeta | Int8Graph | GateRequest:  # fmt: skip
    """Convert ``model`` (fp32 torch, eval) to the IR ``path``.

    fp32: writes it and returns the metadata. int8: returns the fp32 graph as an ``Int8Graph``
    for the exporter to calibrate and gate. bf16: writes it and returns a ``GateRequest``.
    """
    t0 = time.perf_counter()
    ov_model = convert(model, meta)
    opts.log(f"OpenVINO: converted in {time.perf_counter() - t0:.1f} s (openvino {require_openvino().__version__})")
    if opts.precision == "int8":
        return Int8Graph(ov_model, conv_names(ov_model), lambda m, mt: save(m, mt, path),
                         lambda compiled: lambda x: compiled(x)[0],
                         quantizers=lambda m: _count(m, "FakeQuantize"))  # fmt: skip
    save(ov_model, meta, path)
    if opts.precision == "fp32":
        return meta
    return GateRequest(lambda written: save(ov_model, written, path))


def _count(ov_model: Any, op_type: str) -> int:
    return sum(op.get_type_name() == op_type for op in ov_model.get_ordered_ops())


def conv_names(ov_model: Any) -> list[str]:
    """The convolutions' node names in graph order (the first sees the image, the last writes the logits)."""
    return [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == "Convolution"]
