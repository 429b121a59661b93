"""What every inference backend shares: the base class, the backend choice (from the format registry), device choice.

A backend loads one model file and turns a float32 NCHW batch (the output of
``preprocess``) into float32 NCHW logits. It knows nothing of images or classes. Which
backend reads which file is ``unet_deploy.formats``' table; heavy imports (onnxruntime,
torch, openvino) happen inside the backend that needs them, so ``import
unet_deploy.runtime`` stays torch-free.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from .. import formats
from ..errors import UnetDeployError
from ..meta import ModelMeta


class Backend:
    """Base of all backends: load ``path`` in ``__init__``, then ``forward(batch) -> logits``.

    ``precision=None`` runs the file as exported; ``"fp32"``, ``"fp16"``, ``"bf16"`` ask for
    another where the backend can run it (one-line error where it cannot). After loading,
    ``device`` is ``"cuda"`` or ``"cpu"`` (what really runs), ``precision`` what computes,
    ``device_note`` says why when a wish could not be met, ``meta`` is the ModelMeta found
    inside the file (or None), ``input_hw`` the fixed input (H, W) if the file fixes it,
    ``fixed_batch`` the one batch size the file accepts (None: any) and ``num_outputs`` its
    logit channels if known.
    """

    name: ClassVar[str] = "base"

    def __init__(
        self, path: Path, device: str = "auto", threads: int | None = None, precision: str | None = None, **options
    ) -> None:
        self.path = Path(path)
        self.device = "cpu"
        self.device_note = ""
        self.precision = "fp32"
        self.meta: ModelMeta | None = None
        self.input_hw: tuple[int, int] | None = None
        self.fixed_batch: int | None = None
        self.num_outputs: int | None = None

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(N, C, H, W)`` network input -> float32 ``(N, K, H, W)`` logits."""
        raise NotImplementedError

    @classmethod
    def cuda_support(cls) -> str | None:
        """Why this backend cannot run on CUDA here (None: it can), asked before any model is loaded."""
        return f"the {cls.name} backend runs on the CPU only"

    def exported_precision(self) -> str:
        """The precision the file was exported at (``meta.extra["precision"]``, fp32 when unsaid)."""
        return str(self.meta.extra.get("precision", "fp32")) if self.meta else "fp32"

    def refuse_precision(self, asked: str, runs: tuple[str, ...]) -> None:
        """Raise the one-line error for a ``precision`` this backend cannot run (``runs``: what it can)."""
        raise UnetDeployError(
            f"{self.path}: the {self.name} backend cannot run this model at {asked}; it runs {'|'.join(runs)} "
            f"(re-export with --precision {asked} where the format has it, or leave precision out)"
        )


def backend_class(path: str | Path, backend: str = "auto") -> type[Backend]:
    """The backend class for ``path``: by name (format, backend or alias), or (``"auto"``) by the file.

    The format registry decides: the longest suffix wins, and a ``.pt`` that is really a
    TorchScript archive goes to the TorchScript backend.
    """
    if backend.strip().lower() != "auto":
        try:
            fmt = formats.get(backend)
        except UnetDeployError:
            choices = ", ".join(dict.fromkeys(f.backend for f in formats.FORMATS.values() if f.backend_class))
            raise UnetDeployError(f"backend {backend!r} is unknown; use auto or one of {choices}") from None
        return fmt.load_backend()
    return formats.for_path(path).load_backend()


def backend_names() -> list[str]:
    """The backends ``Segmenter(backend=...)`` offers, from the registry (``auto`` first)."""
    return ["auto", *dict.fromkeys(f.backend for f in formats.FORMATS.values() if f.backend_class)]


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
