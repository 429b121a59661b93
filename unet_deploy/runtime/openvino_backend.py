"""The OpenVINO backend of ``Segmenter``: runs an IR (``.xml`` + ``.bin``) on the CPU at its exported precision.

The IR carries its ModelMeta in ``rt_info["unet_deploy"]`` (the Segmenter falls back to the
``<stem>.json`` sidecar); ``meta.extra["precision"]`` says how it was exported (``fp32``, ``bf16`` or
``int8``) and :func:`compile_config` turns that into OpenVINO's CPU settings. The export's
accuracy gate compiles the candidate with the same function, so the gate measures exactly
what this backend runs. Imports only numpy and openvino (the ``[openvino]`` extra); the
torch bf16 helpers at the end import torch lazily.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UnetDeployError
from ..meta import ONNX_METADATA_KEY, ModelMeta
from .base import Backend, parse_device, sidecar_meta

RT_INFO_KEY = ONNX_METADATA_KEY  # "unet_deploy", the same key as in the ONNX metadata_props
PRECISIONS = ("fp32", "bf16", "int8")


def available() -> bool:
    """True when the ``openvino`` package is installed (``pip install unet-deploy[openvino]``)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def require_openvino() -> Any:
    """The ``openvino`` module, or a one-line error saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise UnetDeployError(
            "OpenVINO is not installed; run `pip install unet-deploy[openvino]` to use .xml models"
        ) from None
    return openvino


@functools.lru_cache(maxsize=1)
def core():
    """One shared ``openvino.Core`` (it caches device plugins; creating it costs ~50 ms)."""
    return require_openvino().Core()


@functools.lru_cache(maxsize=1)
def cpu_bf16_native() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX), as OpenVINO reports it.

    Without openvino the Linux ``/proc/cpuinfo`` flags answer. On other CPUs bf16 is
    emulated and slower than fp32, so every bf16 path here falls back to fp32 there.
    """
    if available():
        return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_name() -> str:
    """The CPU's marketing name as OpenVINO reads it (``"unknown CPU"`` without openvino)."""
    return str(core().get_property("CPU", "FULL_DEVICE_NAME")) if available() else "unknown CPU"


def compile_config(precision: str, threads: int | None = None) -> dict[str, Any]:
    """OpenVINO CPU settings for a model exported at ``precision``.

    Latency hint (one image at a time, all cores on it). ``fp32`` pins f32 inference (on AMX
    CPUs OpenVINO would otherwise pick bf16 by itself); ``bf16`` asks for bf16 where the CPU
    has it (elsewhere it stays f32, see :func:`effective_precision`); ``int8`` leaves the
    layers NNCF did not quantize at OpenVINO's default precision for this CPU.
    """
    if precision not in PRECISIONS:
        raise UnetDeployError(f"precision {precision!r} must be one of {PRECISIONS}")
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if precision == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    elif precision == "bf16":
        config["INFERENCE_PRECISION_HINT"] = "bf16" if cpu_bf16_native() else "f32"
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def effective_precision(precision: str) -> str:
    """What actually runs for an export at ``precision`` on this CPU (bf16 without hardware -> fp32)."""
    return "fp32" if precision == "bf16" and not cpu_bf16_native() else precision


def compile_model(model: Any, precision: str, threads: int | None = None, input_size: tuple[int, int] | None = None):
    """Compile an ``openvino.Model`` for the CPU as this backend runs it.

    ``input_size`` (H, W) fixes height and width (the batch stays dynamic): every runtime
    input is letterboxed to the model's input size, and static spatial shapes let the CPU
    plugin pick faster kernels (~20% at 256x256 on AVX2). The model itself is not modified.
    """
    ov = require_openvino()
    if input_size is not None:
        model = model.clone()
        channels = model.inputs[0].get_partial_shape()[1]
        model.reshape({0: ov.PartialShape([ov.Dimension(), channels, *input_size])})
    return core().compile_model(model, "CPU", compile_config(precision, threads))


def read_meta(model: Any, path: str | Path) -> ModelMeta | None:
    """ModelMeta of an IR from its ``rt_info["unet_deploy"]``, or None (the Segmenter then tries the sidecar)."""
    if model.has_rt_info(RT_INFO_KEY):
        return ModelMeta.from_json(model.get_rt_info(RT_INFO_KEY).astype(str), f"{path} (rt_info {RT_INFO_KEY!r})")
    return None


class OpenVINOBackend(Backend):
    """An OpenVINO IR on the CPU: float32 NCHW batches from ``preprocess`` in, float32 logits out.

    ``threads`` caps OpenVINO's CPU threads (default: one per physical core). ``precision``
    is what the IR was exported for (``meta.extra["precision"]``), ``effective_precision``
    what this CPU runs (bf16 falls back to fp32 without AVX512-BF16/AMX); ``device_note``
    says both. Height and width are compiled static (the batch stays dynamic) for the
    model's input size; another size compiles once more on first use.
    """

    name = "openvino"

    def __init__(self, path: Path, device: str = "auto", threads: int | None = None, **options: Any) -> None:
        super().__init__(path, device, threads)
        path = self.path
        if parse_device(device)[0] == "cuda":
            raise UnetDeployError(f"{path}: the OpenVINO backend runs on the CPU only; use --device cpu (or auto)")
        if not path.is_file() or not path.with_suffix(".bin").is_file():
            raise UnetDeployError(f"{path}: OpenVINO IR not found (it needs {path.stem}.xml and {path.stem}.bin)")
        try:
            self.model = core().read_model(str(path))
        except RuntimeError as e:
            first = (str(e).strip().splitlines() or ["unreadable"])[0][:200]
            raise UnetDeployError(f"{path}: not a readable OpenVINO IR ({first}); re-export it") from None
        self.meta = read_meta(self.model, path) or sidecar_meta(path)
        self.threads = threads
        self.precision = str(self.meta.extra.get("precision", "fp32")) if self.meta else "fp32"
        self.effective_precision = effective_precision(self.precision)
        ran = "" if self.effective_precision == self.precision else f", runs {self.effective_precision}: no native bf16 here"
        self.device_note = f"OpenVINO {self.precision}{ran} on {cpu_name()}"
        out = self.model.outputs[0].get_partial_shape()
        if out.rank.is_static and out[1].is_static:
            self.num_outputs = out[1].get_length()
        self._requests: dict[tuple[int, int], Any] = {}
        if self.meta is not None:
            self._request(tuple(self.meta.input_size))

    def _request(self, hw: tuple[int, int]) -> Any:
        """The infer request compiled for input height and width ``hw`` (compiled on first use)."""
        if hw not in self._requests:
            compiled = compile_model(self.model, self.precision, self.threads, hw)
            self._requests[hw] = compiled.create_infer_request()
        return self._requests[hw]

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(N, C, H, W)`` -> float32 logits ``(N, K, H, W)``."""
        request = self._request((int(batch.shape[2]), int(batch.shape[3])))
        request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)


# -- bf16 for the torch backends (checkpoint eager path, AOTInductor) ------------------------


def torch_bf16(model: Any) -> Any:
    """Wrap a float32 torch UNet so that it computes in bf16 and keeps float32 in and out.

    The weights are cast to bfloat16 and channels_last (oneDNN's fast layout for bf16
    convolutions on AMX/AVX512-BF16); inputs are cast on the way in, logits back to
    float32 on the way out (``model`` itself is left as it is), so the wrapped module is a drop-in replacement for eager
    inference and for ``torch.export`` (AOTInductor). Use it only when
    :func:`cpu_bf16_native` is true: elsewhere bf16 is emulated and several times slower.
    """
    import copy

    import torch

    class _Bf16(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            return self.inner(x).float()

    inner = copy.deepcopy(model).to(torch.bfloat16).to(memory_format=torch.channels_last).eval()
    return _Bf16(inner).eval()
