"""The ONNX Runtime backend: CUDA execution provider when present, else the CPU; no torch needed."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UnetDeployError
from ..formats import onnx as onnx_format
from ..formats._common import first_line
from .base import Backend, choose_device, parse_device

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


class OnnxRuntimeBackend(Backend):
    """An ``.onnx`` model in an ``onnxruntime.InferenceSession``.

    ``device="auto"`` asks for the CUDA provider when ``onnxruntime.get_available_providers()``
    lists it (the ``onnxruntime-gpu`` package) and reports what the session really got: a CUDA
    provider that fails to load (missing CUDA/cuDNN libraries) falls back to the CPU.
    ``providers`` overrides the choice (any ONNX Runtime provider list); ``threads`` sets
    intra-op threads (default: ONNX Runtime's, one per physical core). The graph runs at the
    precision it was exported at (``precision`` may only name that one).
    """

    name = "onnxruntime"

    @classmethod
    def cuda_support(cls) -> str | None:
        import onnxruntime as ort

        return None if CUDA_EP in ort.get_available_providers() else f"onnxruntime has no {CUDA_EP} (install onnxruntime-gpu)"

    def __init__(
        self,
        path: Path,
        device: str = "auto",
        threads: int | None = None,
        precision: str | None = None,
        providers: Sequence[Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(path, device, threads, precision)
        import onnxruntime as ort

        if not self.path.is_file():
            raise UnetDeployError(f"{self.path}: model file not found")
        available = ort.get_available_providers()
        if providers is None:
            wanted, self.device_note = choose_device(
                device, CUDA_EP in available, f"onnxruntime has no {CUDA_EP}, onnxruntime-gpu adds it", self.path,
            )  # fmt: skip
            index = parse_device(device)[1]
            providers = [(CUDA_EP, {"device_id": index}), CPU_EP] if wanted == "cuda" else [CPU_EP]
        else:
            wanted, self.device_note = ("cuda" if _provider_name(providers[0]) == CUDA_EP else "cpu"), "providers given"
        self.session = _session(ort, self.path, providers, threads)
        active = self.session.get_providers()
        self.device = "cuda" if active and active[0] == CUDA_EP else "cpu"
        if wanted == "cuda" and self.device != "cuda":
            if parse_device(device)[0] == "cuda":
                raise UnetDeployError(
                    f"{self.path}: the CUDA provider failed to start (see the onnxruntime log: CUDA/cuDNN "
                    "libraries missing?); fix the CUDA install or use --device cpu"
                )
            self.device_note = "the CUDA provider failed to start, see the onnxruntime log"
        self._read_signature()
        self.precision = self.exported_precision()
        if precision is not None and precision != self.precision:
            self.refuse_precision(precision, (self.precision,))

    def _read_signature(self) -> None:
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        shape = list(inp.shape)
        if len(shape) != 4:
            raise UnetDeployError(f"{self.path}: input {inp.name!r} has shape {shape}, not N x C x H x W")
        if isinstance(shape[0], int) and shape[0] > 0:
            self.fixed_batch = shape[0]
        if all(isinstance(v, int) and v > 0 for v in shape[2:]):
            self.input_hw = (shape[2], shape[3])
        oshape = list(out.shape)
        if len(oshape) == 4 and isinstance(oshape[1], int) and oshape[1] > 0:
            self.num_outputs = oshape[1]
        self.meta = onnx_format.read_meta(self.session, self.path)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        (logits,) = self.session.run([self.output_name], {self.input_name: x})
        return logits.astype(np.float32, copy=False)


def _provider_name(provider: Any) -> str:
    return provider[0] if isinstance(provider, (tuple, list)) else str(provider)


def _session(ort: Any, path: Path, providers: Sequence[Any], threads: int | None) -> Any:
    """An InferenceSession with every graph optimisation on and quiet logging."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no warning per unused initializer
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as e:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
        raise UnetDeployError(f"{path}: not a loadable ONNX model ({first_line(e)}); re-export it with unet-export") from None
