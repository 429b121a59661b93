"""The OpenVINO backend of ``Segmenter``: runs an IR (``.xml`` + ``.bin``) on the CPU at its exported (or asked) precision.

The IR carries its ModelMeta in ``rt_info["unet_deploy"]`` (``formats.openvino.read_meta``;
the Segmenter falls back to the ``<stem>.json`` sidecar); ``meta.extra["precision"]`` says how
it was exported (``fp32``, ``bf16`` or ``int8``) and :func:`compile_config` turns that into
OpenVINO's CPU settings. The export's accuracy gate runs the staged IR through this backend,
so it measures exactly what users run. Imports only numpy and openvino (the ``[openvino]`` extra).
"""
from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .. import cpu
from ..errors import UnetDeployError
from ..formats._common import first_line
from ..formats.openvino import PRECISIONS, check_weights, read_meta, require_openvino
from .base import Backend, parse_device, sidecar_meta

MAX_SHAPES = 8  # compiled input shapes kept per model (rect letterbox: one per frame aspect)


def available() -> bool:
    """True when the ``openvino`` package is installed (``pip install unet-deploy[openvino]``)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


@functools.lru_cache(maxsize=1)
def core():
    """One shared ``openvino.Core`` (it caches device plugins; creating it costs ~50 ms)."""
    return require_openvino().Core()


def cpu_name() -> str:
    """The CPU's marketing name as OpenVINO reads it (``"unknown CPU"`` without openvino)."""
    return str(core().get_property("CPU", "FULL_DEVICE_NAME")) if available() else "unknown CPU"


def compile_config(precision: str, threads: int | None = None) -> dict[str, Any]:
    """OpenVINO CPU settings for a model exported at ``precision``.

    Latency hint (one image at a time, all cores on it). ``fp32`` pins f32 inference (on AMX
    CPUs OpenVINO would otherwise pick bf16 by itself); ``bf16`` asks for bf16 where the CPU
    has it (elsewhere it stays f32, see :func:`effective_precision`); ``int8`` runs the layers
    NNCF left unquantized at bf16 where the CPU has it natively, else f32 (OpenVINO's own
    default, stated so that ``unet_deploy.cpu``, and its ISA cap, decides).
    """
    if precision not in PRECISIONS:
        raise UnetDeployError(f"precision {precision!r} must be one of {PRECISIONS}")
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if precision == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    else:  # bf16, int8
        config["INFERENCE_PRECISION_HINT"] = "bf16" if cpu.has_native_bf16() else "f32"
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def effective_precision(precision: str) -> str:
    """What actually runs for an export at ``precision`` on this CPU (bf16 without hardware -> fp32)."""
    return "fp32" if precision == "bf16" and not cpu.has_native_bf16() else precision


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


class OpenVINOBackend(Backend):
    """An OpenVINO IR on the CPU: float32 NCHW batches from ``preprocess`` in, float32 logits out.

    ``threads`` caps OpenVINO's CPU threads (default: one per physical core). ``precision``
    ``None`` runs the IR as exported (``meta.extra["precision"]``; bf16 falls back to fp32
    without AVX512-BF16/AMX); ``"fp32"``/``"bf16"`` set the inference precision hint of an
    fp32/bf16 IR (bf16 only where the CPU computes it natively); an int8 IR runs int8.
    ``self.precision`` is what runs, ``device_note`` says both. Height and width are compiled
    static (the batch stays dynamic) for the model's input size; another size compiles once
    more on first use.
    """

    name = "openvino"

    def __init__(
        self, path: Path, device: str = "auto", threads: int | None = None, precision: str | None = None, **options: Any
    ) -> None:
        super().__init__(path, device, threads, precision)
        path = self.path
        if parse_device(device)[0] == "cuda":
            raise UnetDeployError(f"{path}: the OpenVINO backend runs on the CPU only; use --device cpu (or auto)")
        if not path.is_file() or not path.with_suffix(".bin").is_file():
            raise UnetDeployError(f"{path}: OpenVINO IR not found (it needs {path.stem}.xml and {path.stem}.bin)")
        try:
            self.model = core().read_model(str(path))
        except RuntimeError as e:
            raise UnetDeployError(f"{path}: not a readable OpenVINO IR ({first_line(e)}); re-export it") from None
        check_weights(self.model, path)
        self.meta = read_meta(self.model, path) or sidecar_meta(path)
        self.exported = self.exported_precision()
        self.compiled_as = self._compiled_as(precision)
        self.precision = effective_precision(self.compiled_as)
        ran = "" if self.precision == self.compiled_as else f", runs {self.precision}: no native bf16 here"
        self.device_note = f"OpenVINO {self.compiled_as}{ran} on {cpu_name()}"
        out = self.model.outputs[0].get_partial_shape()
        if out.rank.is_static and out[1].is_static:
            self.num_outputs = out[1].get_length()
        inp = self.model.inputs[0].get_partial_shape()
        if inp.rank.is_static and inp.rank.get_length() == 4 and inp[1].is_static:
            self.in_channels = inp[1].get_length()
        # One compiled model per input (H, W), shared by all threads (least recently used dropped past
        # MAX_SHAPES); one InferRequest per thread and shape, since a request is not thread-safe.
        self._compiled: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()
        if self.meta is not None:
            try:
                self._request(tuple(self.meta.input_size))
            except RuntimeError as e:  # weights that do not fit the graph (a .bin of another model, zeros)
                raise UnetDeployError(f"{path}: OpenVINO cannot compile this IR ({first_line(e)}); its .bin may "
                                      "not belong to its .xml: export the model again") from None

    def _request(self, hw: tuple[int, int]) -> Any:
        """This thread's infer request for input height and width ``hw`` (compiled on first use)."""
        with self._lock:
            compiled = self._compiled.get(hw)
            if compiled is None:
                compiled = self._compiled[hw] = compile_model(self.model, self.compiled_as, self.threads, hw)
                while len(self._compiled) > MAX_SHAPES:
                    self._compiled.popitem(last=False)
            self._compiled.move_to_end(hw)
        requests = self._local.__dict__.setdefault("requests", {})
        if requests.get(hw, (None,))[0] is not compiled:
            requests[hw] = (compiled, compiled.create_infer_request())
        return requests[hw][1]

    def _compiled_as(self, asked: str | None) -> str:
        """The precision to compile for: as exported, or the asked one where this IR and CPU can run it."""
        if asked is None or asked == self.exported:
            return self.exported
        runs = ("int8",) if self.exported == "int8" else ("fp32", "bf16")
        if asked not in runs:
            self.refuse_precision(asked, runs)
        if asked == "bf16" and not cpu.has_native_bf16():
            raise UnetDeployError(
                f"{self.path}: bf16 was asked for but this CPU has no native bf16 (AVX512-BF16/AMX); "
                "leave precision out to run fp32"
            )
        return asked

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(N, C, H, W)`` -> float32 logits ``(N, K, H, W)``."""
        try:
            request = self._request((int(batch.shape[2]), int(batch.shape[3])))
            request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        except RuntimeError as e:  # OpenVINO's errors on an IR that disagrees with its .bin or its input
            raise UnetDeployError(f"{self.path}: OpenVINO cannot run a {'x'.join(map(str, batch.shape))} input "
                                  f"({first_line(e)}); check the model's metadata, or re-export it") from None
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
