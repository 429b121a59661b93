"""The torch backends: TorchScript (``.torchscript.pt``), AOTInductor (``.pt2``) and our checkpoint (``.pt``).

torch is imported when one of them is chosen, never by ``import unet_deploy.runtime``.
``device="auto"`` takes CUDA when ``torch.cuda.is_available()``. ``precision="bf16"`` or
``"fp16"`` casts a checkpoint or an fp32 TorchScript model at load time
(``formats._torch.reduced_precision``); an AOTInductor package runs as it was compiled.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
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
    """``AOTI_RUNTIME_CHECK_INPUTS=1`` for the package calls inside only.

    A loaded package reads the variable at its first run (not at load) and keeps the answer,
    so the first call must see it; other code in the process (a user's own
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
        index = parse_device(device)[1]
        self.torch_device = torch.device(f"cuda:{index}" if self.device == "cuda" else "cpu")
        self.dtype = torch.float32
        if threads:
            torch.set_num_threads(int(threads))

    def _run(self, x: Any) -> Any:
        raise NotImplementedError

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

    def _run(self, x: Any) -> Any:
        return self.module(x)


class CheckpointBackend(_TorchBackend):
    """Our checkpoint (or a seed ``unet.pth``) in eager PyTorch, under ``torch.inference_mode``.

    fp32 unless ``precision`` asks for ``bf16`` (fast only where ``unet_deploy.cpu.has_native_bf16()``,
    or on a GPU) or ``fp16`` (for CUDA).
    """

    name = "checkpoint"

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

    def _run(self, x: Any) -> Any:
        return self.model(x)


class AOTIBackend(_TorchBackend):
    """An AOTInductor package (``.pt2``), compiled ahead of time for one device.

    ModelMeta comes from the package's AOTI metadata key ``unet_deploy`` or the sidecar JSON.
    A package compiled for a fixed batch size runs batches of exactly that size (the runtime
    pads the last one): input checks (``AOTI_RUNTIME_CHECK_INPUTS``) are switched on so that a
    wrong size is an error instead of a silent out-of-bounds read, and the expected size is
    learnt from that error once.
    """

    name = "aoti"
    _FIXED = re.compile(r"unmatched dim value at (\d+), expected: (\d+), but got: (\d+)")
    # Inductor specialises a dynamic batch to >= 2 (0/1 specialisation) although export allowed 1.
    _TOO_SMALL = re.compile(r"dim value is too small at 0, expected it to be >= (\d+)")
    min_batch = 1

    def __init__(
        self, path: Path, device: str = "auto", threads: int | None = None, precision: str | None = None, **options: Any
    ) -> None:
        wish = parse_device(device)
        super().__init__(path, "cpu" if wish[0] == "auto" else device, threads, precision)
        torch = self.torch
        before = _aoti_tempdirs()
        try:
            with _input_checks():
                self.compiled = torch._inductor.aoti_load_package(str(self.path))
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
            self.device, self.torch_device = "cuda", torch.device("cuda", wish[1])
        self.device_note = f"the package was compiled for {built_for}"
        self.meta = aoti_format.read_meta(metadata, self.path)
        self.precision = self.exported_precision()
        if precision is not None and precision != self.precision:
            self.refuse_precision(precision, (self.precision,))
        self._lock = threading.RLock()

    def _run(self, x: Any) -> Any:
        # One call at a time: the batch sizes are learnt while running and the input checks are
        # switched on through the environment around each call.
        with self._lock:
            return self._run_locked(x)

    def _run_locked(self, x: Any) -> Any:
        size = self.fixed_batch
        if size is not None and x.shape[0] != size:
            return self._run_fixed(x, size)
        n = x.shape[0]
        if n < self.min_batch:  # pad with zeros up to the least batch the package takes
            x = self.torch.cat([x, x.new_zeros((self.min_batch - n, *x.shape[1:]))])
        try:
            with _input_checks():
                return self.compiled(x)[:n]
        except RuntimeError as e:
            small = self._TOO_SMALL.search(str(e))
            if small and self.min_batch == 1:
                self.min_batch = int(small.group(1))  # learnt once
                return self._run_locked(x)
            found = self._FIXED.search(str(e))
            if not found:
                raise
            dim, expected, got = (int(v) for v in found.groups())
            if dim == 0 and size is None:
                self.fixed_batch = expected  # learnt once; the Segmenter re-batches from now on
                return self._run_locked(x)
            what = "batch size" if dim == 0 else "input channels" if dim == 1 else "input size"
            raise UnetDeployError(
                f"{self.path}: the package fixes {what} (dim {dim}) at {expected}, got {got}; "
                "run it with the size it was exported for, or re-export with --dynamic"
            ) from None

    def _run_fixed(self, x: Any, size: int) -> Any:
        chunks = []
        for start in range(0, x.shape[0], size):
            part = x[start : start + size]
            n = part.shape[0]
            if n < size:
                part = self.torch.cat([part, part.new_zeros((size - n, *part.shape[1:]))])
            chunks.append(self._run_locked(part)[:n])
        return self.torch.cat(chunks)
