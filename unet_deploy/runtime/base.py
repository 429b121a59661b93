"""What every inference backend shares: the base class, the registry by file suffix, device choice.

A backend loads one model file and turns a float32 NCHW batch (the output of
``preprocess``) into float32 NCHW logits. It knows nothing of images or classes. A new
format is one row in ``BACKENDS`` and one small module; heavy imports (onnxruntime,
torch, openvino) happen inside the backend that needs them, so ``import
unet_deploy.runtime`` stays torch-free.
"""
from __future__ import annotations

import importlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import UnetDeployError
from ..meta import TORCHSCRIPT_EXTRA_FILE, ModelMeta


@dataclass(frozen=True)
class BackendSpec:
    """One row of the registry: the file suffixes a backend reads and where its class lives."""

    suffixes: tuple[str, ...]
    target: str  # "module:Class", imported only when chosen

    def load_class(self) -> type["Backend"]:
        module, attr = self.target.split(":")
        return getattr(importlib.import_module(module), attr)


# name -> spec. Longer suffixes win (".torchscript.pt" before ".pt").
BACKENDS: dict[str, BackendSpec] = {
    "onnxruntime": BackendSpec((".onnx",), "unet_deploy.runtime.onnx_runtime:OnnxRuntimeBackend"),
    "torchscript": BackendSpec((".torchscript.pt", ".torchscript"), "unet_deploy.runtime.torch_backends:TorchScriptBackend"),
    "aoti": BackendSpec((".pt2",), "unet_deploy.runtime.torch_backends:AOTIBackend"),
    "checkpoint": BackendSpec((".pt", ".pth"), "unet_deploy.runtime.torch_backends:CheckpointBackend"),
    "openvino": BackendSpec((".xml",), "unet_deploy.runtime.openvino_backend:OpenVINOBackend"),
}  # fmt: skip
ALIASES = {"onnx": "onnxruntime", "ort": "onnxruntime", "pt2": "aoti", "aotinductor": "aoti",
           "torch": "checkpoint", "pytorch": "checkpoint", "eager": "checkpoint", "jit": "torchscript",
           "ov": "openvino"}  # fmt: skip


class Backend:
    """Base of all backends: load ``path`` in ``__init__``, then ``forward(batch) -> logits``.

    After loading, ``device`` is ``"cuda"`` or ``"cpu"`` (what really runs), ``device_note``
    says why when a wish could not be met, ``meta`` is the ModelMeta found inside the file
    (or None), ``input_hw`` the fixed input (H, W) if the file fixes it, ``fixed_batch`` the
    one batch size the file accepts (None: any) and ``num_outputs`` its logit channels if known.
    """

    name: ClassVar[str] = "base"

    def __init__(self, path: Path, device: str = "auto", threads: int | None = None, **options) -> None:
        self.path = Path(path)
        self.device = "cpu"
        self.device_note = ""
        self.meta: ModelMeta | None = None
        self.input_hw: tuple[int, int] | None = None
        self.fixed_batch: int | None = None
        self.num_outputs: int | None = None

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(N, C, H, W)`` network input -> float32 ``(N, K, H, W)`` logits."""
        raise NotImplementedError


def backend_class(path: str | Path, backend: str = "auto") -> type[Backend]:
    """The backend class for ``path``: by name, or (``"auto"``) by the file's suffix.

    A ``.pt``/``.pth`` that is really a TorchScript archive goes to the TorchScript backend.
    """
    path = Path(path)
    name = ALIASES.get(backend.lower(), backend.lower())
    if name != "auto":
        if name not in BACKENDS:
            raise UnetDeployError(f"backend {backend!r} is unknown; use auto or one of {', '.join(BACKENDS)}")
        return BACKENDS[name].load_class()
    lower = path.name.lower()
    matches = [(len(s), n) for n, spec in BACKENDS.items() for s in spec.suffixes if lower.endswith(s)]
    if not matches:
        known = ", ".join(s for spec in BACKENDS.values() for s in spec.suffixes)
        raise UnetDeployError(f"{path}: unknown model type; pass one of {known} (or choose --backend)")
    name = max(matches)[1]
    if name == "checkpoint" and _is_torchscript_archive(path):
        name = "torchscript"
    return BACKENDS[name].load_class()


def _is_torchscript_archive(path: Path) -> bool:
    """True for a torch.jit.save zip (it holds ``code/`` and ``constants.pkl``), False for torch.save."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") or n.endswith(f"/extra/{TORCHSCRIPT_EXTRA_FILE}") for n in names)


def parse_device(device: str) -> tuple[str, int]:
    """``"auto" | "cpu" | "cuda" | "cuda:N"`` -> (kind, index); anything else is a user error."""
    text = str(device).strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return text, 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise UnetDeployError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")


def choose_device(device: str, cuda_available: bool, missing: str, path: Path | str = "") -> tuple[str, str]:
    """Pick ``"cuda"`` or ``"cpu"`` for a ``device`` wish; return it with a note saying why.

    ``auto`` takes CUDA when ``cuda_available`` and else the CPU (the note is ``missing``,
    e.g. "onnxruntime has no CUDAExecutionProvider"); ``cuda`` without CUDA is a user error.
    """
    kind, _ = parse_device(device)
    if kind == "cpu":
        return "cpu", "as asked"
    if cuda_available:
        return "cuda", "CUDA available" if kind == "auto" else "as asked"
    if kind == "cuda":
        where = f"{path}: " if path else ""
        raise UnetDeployError(f"{where}CUDA was asked for but {missing}; use --device cpu (or auto)")
    return "cpu", missing


def sidecar_meta(path: Path) -> ModelMeta | None:
    """The ``<stem>.json`` ModelMeta beside a model file, or None when there is none."""
    from ..meta import sidecar_path

    side = sidecar_path(path)
    return ModelMeta.load(side) if side.is_file() else None
