"""ONNX through ``torch.export`` (``dynamo=True``): the row, the export (one file, dynamic N/H/W), its metadata.

Input ``images`` (N, C, H, W float32), output ``logits``; H and W are symbolic multiples of
16. ModelMeta travels in ``metadata_props["unet_deploy"]``. The weights stay inside the
``.onnx`` file unless the protobuf limit (2 GB) forces an external ``.data`` file beside it.
The file passes ``onnx.checker`` with ``full_check`` (shape inference included).

``int8`` (``model.int8.onnx``) is a QDQ graph (QuantizeLinear/DequantizeLinear around each
quantized op, per-channel weights) from ONNX Runtime's own ``quantize_static``, with the same
recipe (first conv fp32), gate and fallback (NNCF accuracy control) as OpenVINO
(``formats.quantize``, ``precision_gate``); ``reduce_range`` (7-bit weights) for AVX2-only targets. ORT's quantizer
won over NNCF's ONNX backend on speed in ONNX Runtime: 235 against 491 ms end to end on the
seed-size model (``benchmarks/results/cpu_fast_path.md``), at the same agreement. TensorRT
reads QDQ as explicit quantization.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UnetDeployError
from ..meta import METADATA_KEY, ModelMeta
from ._common import INPUT_NAME, OUTPUT_NAME, TORCH_ONNX_REGISTRY, TORCH_PYTREE, ExportOptions, muted_logger, without
from .quantize import Int8Graph, Int8Recipe, kept_fp32
from .spec import Format

FORMAT = Format(
    name="onnx", title="ONNX", suffixes=(".onnx",), backend="onnxruntime",
    backend_class="unet_deploy.runtime.onnx_runtime:OnnxRuntimeBackend", exporter=f"{__name__}:write",
    precisions=("fp32", "fp16", "int8"), devices=("cpu", "cuda"), needs_torch=False,
    requires=("torch", "onnx", "onnxscript"), options=frozenset({"dynamic", "opset", "calib"}), aliases=("ort",),
    note="ONNX Runtime CPU/CUDA, OpenCV DNN; needs no torch to run; int8 is gated QDQ", named_precisions=("int8",),
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


def write(model: Any, example: Any, path: Path, meta: ModelMeta, opts: ExportOptions) -> Int8Graph | None:
    """Export ``model`` with ``torch.onnx.export(dynamo=True)``, add the metadata, save and check.

    int8: returns the fp32 graph as an ``Int8Graph`` for the exporter to quantize and gate.
    """
    import onnx
    import torch

    from ._torch import dynamic_shapes, reduced_precision

    model = reduced_precision(model, "fp32" if opts.precision == "int8" else opts.precision)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with without(TORCH_PYTREE), muted_logger(TORCH_ONNX_REGISTRY):
        program = torch.onnx.export(
            model, (example,), dynamo=True, verbose=False, optimize=True,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=check_opset(opts.opset), dynamic_shapes=dynamic_shapes(opts.dynamic),
        )  # fmt: skip
    program.model.producer_name = "unet-deploy"
    if opts.precision == "int8":
        return _int8(program.model_proto, path)
    program.model.metadata_props[METADATA_KEY] = meta.to_json()
    program.save(str(path), external_data=weights > _INLINE_LIMIT)
    onnx.checker.check_model(str(path), full_check=True)
    return None


def _int8(proto: Any, path: Path) -> Int8Graph:
    """The fp32 ``proto`` described for int8: ORT's static QDQ first, saved (and checked) at ``path``."""
    import onnx

    def save(quantized: Any, written: ModelMeta) -> None:
        entries = [e for e in quantized.metadata_props if e.key != METADATA_KEY]
        del quantized.metadata_props[:]
        quantized.metadata_props.extend(entries)
        quantized.metadata_props.add(key=METADATA_KEY, value=written.to_json())
        onnx.save(quantized, str(path))
        onnx.checker.check_model(str(path), full_check=True)

    def predictor(quantized: Any):
        import onnxruntime as ort

        session = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {INPUT_NAME: x})[0]

    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    return Int8Graph(proto, convs, save, predictor, lambda x: {INPUT_NAME: x},
                     lambda m: sum(n.op_type == "QuantizeLinear" for n in m.graph.node),
                     first_pass=_ort_static, quantizer="onnxruntime.quantization.quantize_static")  # fmt: skip


def _ort_static(proto: Any, feeds: list[dict[str, Any]], recipe: Int8Recipe, isa: str) -> Any:
    """ONNX Runtime's static QDQ int8 (per-channel s8 weights, u8 activations) of ``proto`` calibrated on ``feeds``."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix="unet-ort-int8-") as tmp:
        src, pre, out = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(proto, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # shape inference + fusions, as ORT advises
        convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
        keep = kept_fp32(recipe, convs)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep,
                        reduce_range=isa == "avx2")  # fmt: skip
        return onnx.load(str(out))


def read_meta(session: Any, path: Path) -> ModelMeta | None:
    """The ModelMeta in an ONNX Runtime session's ``metadata_props`` (None when there is none)."""
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    return ModelMeta.from_json(text, f"{path} (metadata_props {METADATA_KEY!r})") if text else None
