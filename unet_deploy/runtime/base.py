"""What every inference backend shares: the base class, the backend choice (from the format registry), device choice.

A backend loads one model file and turns a float32 NCHW batch (the output of
``preprocess``) into float32 NCHW logits. It knows nothing of images or classes. Which
backend reads which file is ``unet_deploy.formats``' table; heavy imports (onnxruntime,
torch, openvino) happen inside the backend that needs them, so ``import
unet_deploy.runtime`` stays torch-free.
"""
from __future__ import annotations

import abc
import importlib
import inspect
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .. import cpu, formats
from ..errors import UnetDeployError, did_you_mean, look_up
from ..formats import Format, sidecar_path
from ..meta import ModelMeta

# Options ``Segmenter`` hands every backend (ONNX Runtime's providers; the class names a model
# without metadata needs); a backend that has no use for them ignores them.
SHARED_OPTIONS = ("providers", "classes")


class Backend(abc.ABC):
    """Base of all backends: load ``path`` in ``__init__``, then ``forward(batch) -> logits``.

    ``precision=None`` runs the file as exported; ``"fp32"``, ``"fp16"``, ``"bf16"`` ask for
    another where the backend can run it (one-line error where it cannot). After loading,
    ``device`` is ``"cuda"`` or ``"cpu"`` (what really runs), ``precision`` what computes,
    ``device_note`` says why when a wish could not be met, ``meta`` is the ModelMeta found
    inside the file (or None), ``input_hw`` the fixed input (H, W) if the file fixes it,
    ``fixed_batch`` the one batch size the file accepts (None: any), ``num_outputs`` its
    logit channels and ``in_channels`` its input channels if known. An option the backend's
    ``__init__`` does not take is a one-line error naming the closest one it does (the
    ``SHARED_OPTIONS`` excepted).
    """

    name: ClassVar[str] = "base"
    # A training checkpoint: it runs with the letterbox its exports write (``meta.deployed``), so that a
    # checkpoint and its exports give one answer.
    source_model: ClassVar[bool] = False

    def __new__(cls, *args: Any, **options: Any) -> "Backend":
        _check_options(cls, options)
        return super().__new__(cls)

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
        self.in_channels: int | None = None  # the network's input channels, where the file fixes them
        self.threads = threads

    def compute_threads(self) -> int:
        """The CPU threads this backend computes with: ``threads`` where given, else one per core (ONNX
        Runtime's and OpenVINO's default). The host stages around it (the resize) use as many."""
        return int(self.threads) if self.threads else cpu.features().cores

    @abc.abstractmethod
    def forward(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(N, C, H, W)`` network input -> float32 ``(N, K, H, W)`` logits."""

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
            f"{self.path}: the {self.name} backend cannot run this model at {asked}{did_you_mean(asked, runs)}; "
            f"it runs {'|'.join(runs)} "
            f"(re-export with --precision {asked} where the format has it, or leave precision out)"
        )


def _check_options(cls: type, options: dict[str, Any]) -> None:
    """Raise for a keyword ``cls.__init__`` does not take (the ``SHARED_OPTIONS`` pass)."""
    params = inspect.signature(cls.__init__).parameters.values()
    takes = [p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in options:
        if key not in takes and key not in SHARED_OPTIONS:
            raise UnetDeployError(f"the {cls.name} backend has no option {key!r}{did_you_mean(key, takes)}; "
                                  f"it takes {', '.join(takes)}")  # fmt: skip


def resolve(target: str) -> Any:
    """The object a registry row names as ``"module:attr"`` (imported now)."""
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def load_backend(fmt: Format) -> type[Backend]:
    """The runtime backend class of the format ``fmt`` (imported now)."""
    if fmt.backend_class is None:
        raise UnetDeployError(f"the {fmt.name} format has no runtime backend; export the model to another format")
    return resolve(fmt.backend_class)


def backend_format(path: str | Path, backend: str = "auto") -> Format:
    """The format row ``path`` is loaded as: by backend name (format, backend or alias), or (``"auto"``) by the file.

    The format registry decides: the longest suffix wins, and a ``.pt`` that is really a
    TorchScript archive goes to the TorchScript backend.
    """
    if backend.strip().lower() != "auto":
        try:
            return formats.get(backend)
        except UnetDeployError:
            look_up(backend.strip().lower(), backend_names(), "backend")
            raise  # pragma: no cover - look_up raised for a name the registry does not know
    return formats.for_path(path)


def backend_class(path: str | Path, backend: str = "auto") -> type[Backend]:
    """The backend class for ``path`` (``backend_format``'s row)."""
    return load_backend(backend_format(path, backend))


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


def file_meta(backend: Backend) -> ModelMeta | None:
    """The ModelMeta inside the backend's file, else its ``<stem>.json`` sidecar (None: neither).

    A sidecar that disagrees with the file's own metadata (a stale one, or files of two exports) is
    not used, and a ``RuntimeWarning`` says so, naming the first field that differs. A checkpoint's
    name-sake sidecar is its exports' (``best.onnx`` beside ``best.pt``): not compared.
    """
    side = sidecar_meta(backend.path) if backend.meta is None else None
    if backend.meta is None:
        return side
    if backend.source_model:  # a checkpoint carries its own; ``best.json`` beside ``best.pt`` is its exports'
        return backend.meta
    from ..formats import sidecar_path

    path = sidecar_path(backend.path)
    if path.is_file():
        try:
            other = ModelMeta.load(path).to_dict()
        except UnetDeployError as e:
            other = {"(readable)": e.message}
        own = backend.meta.to_dict()
        differ = [k for k in dict.fromkeys([*own, *other]) if own.get(k) != other.get(k)]
        if differ:
            warnings.warn(f"{path}: disagrees with the metadata inside {backend.path.name} ({differ[0]}); the file's "
                          "own is used: delete or rewrite the sidecar (re-export)", RuntimeWarning, stacklevel=3)
    return backend.meta


def sidecar_meta(path: Path) -> ModelMeta | None:
    """The ``<stem>.json`` ModelMeta beside a model file, or None when there is none."""
    side = sidecar_path(path)
    return ModelMeta.load(side) if side.is_file() else None
