"""The torch backends: TorchScript (``.torchscript.pt``), AOTInductor (``.pt2``) and our checkpoint (``.pt``).

torch is imported when one of them is chosen, never by ``import unet_deploy.runtime``.
``device="auto"`` takes CUDA when ``torch.cuda.is_available()``; ``cuda:N`` picks a GPU.
``precision="bf16"`` or ``"fp16"`` casts a checkpoint or an fp32 TorchScript model at load
time (``formats._torch.reduced_precision``); an AOTInductor package runs as it was compiled.
``device_pipeline`` offers the whole letterbox pipeline on the model's device
(``runtime.torch_pipeline``). ``threads`` calls ``torch.set_num_threads``: torch has one
intra-op pool per process, so it applies to the whole process (and only when given).
On CUDA, "fp32" convolutions follow torch's ``torch.backends.cudnn.allow_tf32`` (TF32 by
default); ``device_note`` says so.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import UnetDeployError
from ..formats import aoti as aoti_format
from ..formats import torchscript as torchscript_format
from ..formats._common import first_line
from .base import Backend, choose_device, parse_device

_NO_CUDA = "torch has no CUDA device (a CPU build of torch, or no GPU)"


@contextmanager
def _input_checks() -> Iterator[None]:
    """``AOTI_RUNTIME_CHECK_INPUTS=1`` while a package is loaded and first run, never around later calls.

    A loaded package reads the variable at its first run (not at load) and keeps the answer,
    so the backend makes that first run inside; other code in the process (a user's own
    ``aoti_load_package``) keeps its defaults.
    """
    previous = os.environ.get("AOTI_RUNTIME_CHECK_INPUTS")
    os.environ["AOTI_RUNTIME_CHECK_INPUTS"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("AOTI_RUNTIME_CHECK_INPUTS", None)
        else:
            os.environ["AOTI_RUNTIME_CHECK_INPUTS"] = previous


def _aoti_tempdirs() -> set[Path]:
    """The ``aotinductor_*`` folders torch's package loader extracts into the temp folder."""
    return {p for p in Path(tempfile.gettempdir()).glob("aotinductor_*") if p.is_dir() and not p.is_symlink()}


def _import_torch(path: Path, backend: str) -> Any:
    try:
        import torch
    except ImportError:
        raise UnetDeployError(
            f"{path}: the {backend} backend needs torch, which is not installed; "
            "pip install 'unet-deploy[torch]', or export the model to ONNX and run that"
        ) from None
    return torch


def cuda_device(torch: Any, device: str, path: Path | str = "") -> Any:
    """The ``torch.device`` of a ``cuda``/``cuda:N`` wish; an index this machine lacks is one line."""
    index = parse_device(device)[1]
    count = torch.cuda.device_count()
    if index >= count:
        where = f"{path}: " if path else ""
        raise UnetDeployError(f"{where}cuda:{index} was asked for but this machine has {count} CUDA device"
                              f"{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1}); use --device cuda:0")  # fmt: skip
    return torch.device("cuda", index)


class _TorchBackend(Backend):
    """Shared by the torch backends: device choice, threads, precision, numpy in / numpy out."""

    def __init__(
        self, path: Path, device: str = "auto", threads: int | None = None, precision: str | None = None, **options: Any
    ) -> None:
        super().__init__(path, device, threads, precision)
        if not self.path.is_file():
            raise UnetDeployError(f"{self.path}: model file not found")
        self.torch = torch = _import_torch(self.path, self.name)
        self.device, self.device_note = choose_device(device, torch.cuda.is_available(), _NO_CUDA, self.path)
        self.torch_device = cuda_device(torch, device, self.path) if self.device == "cuda" else torch.device("cpu")
        self.dtype = torch.float32
        if threads:
            torch.set_num_threads(int(threads))

    def compute_threads(self) -> int:
        """torch's intra-op pool size (process-wide: ``threads``, or what the caller set with
        ``torch.set_num_threads``)."""
        return int(self.torch.get_num_threads())

    def _run(self, x: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def cuda_support(cls) -> str | None:
        try:
            import torch
        except ImportError:
            return "torch is not installed"
        return None if torch.cuda.is_available() else _NO_CUDA

    def _cast(self, model: Any, asked: str | None) -> Any:
        """``model`` at the asked precision: as exported (``None``), or an fp32 model cast to bf16/fp16."""
        from ..formats._torch import reduced_precision

        exported = self.exported_precision()
        self.precision = exported if asked is None else asked
        if self.precision == exported:
            return model
        if exported != "fp32" or asked not in ("fp32", "bf16", "fp16"):
            self.refuse_precision(str(asked), (exported,) if exported != "fp32" else ("fp32", "bf16", "fp16"))
        return reduced_precision(model, self.precision)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.torch_device, self.dtype)
        with torch.inference_mode():
            y = self._run(x)
        return y.float().cpu().numpy()

    def device_pipeline(self, meta: Any) -> Any:
        """The letterbox-to-mask pipeline on this backend's device (CUDA graphs on CUDA)."""
        from .torch_pipeline import TorchPipeline

        return TorchPipeline(self._run, meta, self.torch_device, graphs=self.device == "cuda")

    def _tf32_note(self) -> None:
        """Say that "fp32" convolutions run as TF32 on CUDA when torch is set so."""
        if self.device == "cuda" and self.precision == "fp32" and self.torch.backends.cudnn.allow_tf32:
            note = "fp32 convolutions run as TF32 (torch.backends.cudnn.allow_tf32)"
            self.device_note = f"{self.device_note}; {note}" if self.device_note else note


class TorchScriptBackend(_TorchBackend):
    """A ``torch.jit.save`` archive; ModelMeta from its ``_extra_files["unet_deploy.json"]``."""

    name = "torchscript"

    def __init__(
        self, path: Path, device: str = "auto", threads: int | None = None, precision: str | None = None, **options: Any
    ) -> None:
        super().__init__(path, device, threads, precision)
        module, self.meta = torchscript_format.read(self.path, self.torch_device)
        params = list(module.parameters())
        if params and params[0].is_floating_point() and self.meta is None:
            self.dtype = params[0].dtype  # a foreign half-precision module takes half inputs
        self.module = self._cast(module, precision)
        self._tf32_note()

    def _run(self, x: Any) -> Any:
        return self.module(x)


class CheckpointBackend(_TorchBackend):
    """Our checkpoint (or a seed ``unet.pth``) in eager PyTorch, under ``torch.inference_mode``.

    fp32 unless ``precision`` asks for ``bf16`` (fast only where ``unet_deploy.cpu.has_native_bf16()``,
    or on a GPU) or ``fp16`` (for CUDA).
    """

    name = "checkpoint"
    source_model = True

    def __init__(
        self,
        path: Path,
        device: str = "auto",
        threads: int | None = None,
        precision: str | None = None,
        classes: list[str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(path, device, threads, precision)
        from ..checkpoint import load_checkpoint

        model, self.meta = load_checkpoint(self.path, self.torch_device, classes)
        self.num_outputs = self.meta.num_outputs
        self.model = self._cast(model, precision)
        self._tf32_note()

    def _run(self, x: Any) -> Any:
        return self.model(x)


class AOTIBackend(_TorchBackend):
    """An AOTInductor package (``.pt2``), compiled ahead of time for one device.

    ModelMeta comes from the package's AOTI metadata key ``unet_deploy`` or the sidecar JSON.
    Its batch limits come from the package metadata (``formats.aoti.BATCH_KEY``: ``min_batch``,
    written at export since Inductor compiles a dynamic batch for >= 2 although export allowed 1,
    or ``fixed_batch`` for a static one); smaller batches are padded with zeros. The package's own input checks are switched on for its
    first run, made here at load, so a wrong size is an error instead of an out-of-bounds read.
    """

    name = "aoti"

    def __init__(
        self, path: Path, device: str = "auto", threads: int | None = None, precision: str | None = None, **options: Any
    ) -> None:
        wish = parse_device(device)
        super().__init__(path, "cpu" if wish[0] == "auto" else device, threads, precision)
        torch = self.torch
        before = _aoti_tempdirs()
        index = self.torch_device.index if self.torch_device.type == "cuda" else -1
        try:
            with _input_checks():
                self.compiled = torch._inductor.aoti_load_package(str(self.path), device_index=index)
            metadata = self.compiled.get_metadata()
        except Exception as e:  # RuntimeError, or pybind errors for a file that is no package
            for left in _aoti_tempdirs() - before:  # what the failed load extracted: not left behind
                shutil.rmtree(left, ignore_errors=True)
            raise UnetDeployError(f"{self.path}: not a loadable AOTInductor package ({first_line(e)})") from None
        built_for = aoti_format.built_for(metadata)
        if wish[0] != "auto" and wish[0] != built_for:
            raise UnetDeployError(
                f"{self.path}: this package was compiled for {built_for}, not {wish[0]}; "
                f"run it with --device {built_for} or re-export it on the target device"
            )
        if built_for == "cuda" and wish[0] == "auto":
            if not torch.cuda.is_available():
                raise UnetDeployError(f"{self.path}: this package was compiled for CUDA but {_NO_CUDA}")
            self.device, self.torch_device = "cuda", cuda_device(torch, device, self.path)
        self.device_note = f"the package was compiled for {built_for}"
        self.meta = aoti_format.read_meta(metadata, self.path)
        self.min_batch, self.fixed_batch = aoti_format.batch_limits(metadata)  # the Segmenter re-batches to a fixed one
        self.precision = self.exported_precision()
        if precision is not None and precision != self.precision:
            self.refuse_precision(precision, (self.precision,))
        if self.meta is not None:
            self._first_run()

    def device_pipeline(self, meta: Any) -> Any:
        """As the other torch backends', without CUDA graphs: a compiled package runs its own kernels."""
        from .torch_pipeline import TorchPipeline

        return TorchPipeline(self._run, meta, self.torch_device, graphs=False)

    def _first_run(self) -> None:
        """One zero batch at the model's input size, inside the input checks (see the class docstring)."""
        torch, meta = self.torch, self.meta
        x = torch.zeros((self.min_batch, meta.arch["in_channels"], *meta.input_size), device=self.torch_device)
        try:
            with _input_checks(), torch.inference_mode():
                self._run(x)
        except RuntimeError as e:
            raise UnetDeployError(f"{self.path}: the package does not run at its own input size "
                                  f"{meta.input_size[0]}x{meta.input_size[1]} ({first_line(e)}); re-export it") from None  # fmt: skip

    def _run(self, x: Any) -> Any:
        n = x.shape[0]
        if n < self.min_batch:  # pad with zeros up to the least batch the package takes
            x = self.torch.cat([x, x.new_zeros((self.min_batch - n, *x.shape[1:]))])
        try:
            return self.compiled(x)[:n]
        except RuntimeError as e:
            raise UnetDeployError(f"{self.path}: the package refused a {'x'.join(map(str, x.shape))} input "
                                  f"({first_line(e)}); run it at the size it was exported for, or re-export with --dynamic") from None  # fmt: skip
