"""ONNX through ``torch.export`` (``dynamo=True``): the row, the export (one file, dynamic N/H/W), its metadata.

Input ``images`` (N, C, H, W float32), output ``logits``; H and W are symbolic multiples of
16. ModelMeta travels in ``metadata_props["unet_deploy"]``. The weights stay inside the
``.onnx`` file unless the protobuf limit (2 GB) forces an external ``.data`` file beside it.
The file passes ``onnx.checker`` with ``full_check`` (shape inference included).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UnetDeployError
from ..meta import ONNX_METADATA_KEY, ModelMeta
from . import Format
from ._common import INPUT_NAME, OUTPUT_NAME, ExportOptions

FORMAT = Format(
    name="onnx", title="ONNX", suffixes=(".onnx",), backend="onnxruntime",
    backend_class="unet_deploy.runtime.onnx_runtime:OnnxRuntimeBackend", exporter=__name__,
    precisions=("fp32", "fp16"), devices=("cpu", "cuda"), needs_torch=False, requires=("torch", "onnx", "onnxscript"),
    options=frozenset({"dynamic", "opset"}), aliases=("ort",),
    note="ONNX Runtime CPU/CUDA, OpenCV DNN; needs no torch to run",
)  # fmt: skip
# Opset 18 is the lowest the torch.export-based exporter writes (torch 2.13 keeps 18 when asked
# for 13 or 17); ONNX Runtime >= 1.14 and OpenCV >= 4.8 DNN read it.
DEFAULT_OPSET = 18
MIN_OPSET = DEFAULT_OPSET  # asked for less, torch.onnx.export(dynamo=True) still writes 18
# Protobuf cannot hold more than 2 GiB; leave room for the graph itself.
_INLINE_LIMIT = 1_800_000_000


def check_options(opts: ExportOptions, target: Path) -> None:
    """Fail on an unsupported ``--opset`` before anything slow runs."""
    check_opset(opts.opset)


def check_opset(opset: int | None) -> int:
    """The opset to export at: ``DEFAULT_OPSET`` or a supported one the user asked for."""
    if opset is None:
        return DEFAULT_OPSET
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UnetDeployError(
            f"--opset {opset} is not supported: the torch.export-based ONNX exporter writes opsets "
            f"{MIN_OPSET}..{newest}; leave --opset out for {DEFAULT_OPSET}"
        )
    return opset


def export(model: Any, example: Any, path: Path, meta: ModelMeta, opts: ExportOptions) -> None:
    """Export ``model`` with ``torch.onnx.export(dynamo=True)``, add the metadata, save and check."""
    import onnx
    import torch

    from ._torch import dynamic_shapes, reduced_precision

    model = reduced_precision(model, opts.precision)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    program = torch.onnx.export(
        model, (example,), dynamo=True, verbose=False, optimize=True,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        opset_version=check_opset(opts.opset), dynamic_shapes=dynamic_shapes(opts.dynamic),
    )  # fmt: skip
    program.model.metadata_props[ONNX_METADATA_KEY] = meta.to_json()
    program.model.producer_name = "unet-deploy"
    program.save(str(path), external_data=weights > _INLINE_LIMIT)
    onnx.checker.check_model(str(path), full_check=True)


def read_meta(session: Any, path: Path) -> ModelMeta | None:
    """The ModelMeta in an ONNX Runtime session's ``metadata_props`` (None when there is none)."""
    text = session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
    return ModelMeta.from_json(text, f"{path} (metadata_props {ONNX_METADATA_KEY!r})") if text else None
