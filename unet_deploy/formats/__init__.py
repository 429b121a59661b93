"""The format registry: one ``Format`` row per model-file format, read by export, the runtime, bench and the CLI.

Each format has one owner module here (``torchscript``, ``onnx``, ``aoti``, ``openvino``,
``checkpoint``) that states its row (``FORMAT``), writes it (``export(model, example, path,
meta, opts)``) and reads its metadata; its runtime backend class lives in
``unet_deploy.runtime``. Import-light: no torch, click, onnx or openvino at import, so the
lean runtime and ``--help`` can read the table. A new format is one module plus
``register(FORMAT)``; tests add a fake one the same way.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import UnetDeployError

if TYPE_CHECKING:  # pragma: no cover
    from ..runtime.base import Backend


@dataclass(frozen=True)
class Format:
    """What one model-file format is: its files, what it runs on, how it is exported and run."""

    name: str  # "torchscript" | "onnx" | "aoti" | "openvino" | "checkpoint"
    title: str  # "TorchScript", for log lines
    suffixes: tuple[str, ...]  # the first is the one export writes; the longest match wins on lookup
    backend: str  # the runtime backend's name, as ``seg.backend`` reports it
    backend_class: str | None  # "module:Class", imported only when chosen
    exporter: str | None  # module with export(model, example, path, meta, opts) (None: not exportable)
    precisions: tuple[str, ...]
    devices: tuple[str, ...]
    needs_torch: bool  # running the artefact needs torch (libtorch in C++)
    requires: tuple[str, ...]  # Python modules the export needs
    options: frozenset[str]  # export options it honours: "dynamic", "opset", "portable", "calib"
    aliases: tuple[str, ...] = ()
    note: str = ""  # one line for --help
    # Precisions written under their own name, ``<stem>.<precision><suffix>`` (OpenVINO's
    # ``model.int8.xml``), so that several can sit beside each other with their own sidecar.
    named_precisions: tuple[str, ...] = ()
    # "module:function(path) -> bool": a file with another format's suffix that really is this
    # format (a TorchScript archive saved as ``.pt``).
    sniff: str | None = None
    folder: bool = False  # the artefact is a folder (a Triton repository), replaced whole on re-export
    # Loading the file runs code it carries ("" : it is data). Such a file is refused unless the
    # user trusts it (``check_trust``): load code only from files you made.
    runs_code: str = ""

    def load_backend(self) -> type["Backend"]:
        """The runtime backend class (imported now)."""
        if self.backend_class is None:
            raise UnetDeployError(f"the {self.name} format has no runtime backend; export the model to another format")
        return _attr(self.backend_class)

    def load_exporter(self):
        """The module that exports this format (imported now)."""
        if self.exporter is None:
            raise UnetDeployError(f"{self.name} is not an export format; choose from {', '.join(names(exportable()))}")
        return importlib.import_module(self.exporter)

    def path(self, out_dir: str | Path, stem: str, precision: str = "fp32") -> Path:
        """Where export writes ``stem`` at ``precision``: ``out/model.onnx``, ``out/model.int8.xml``."""
        tag = f".{precision}" if precision in self.named_precisions else ""
        return Path(out_dir) / f"{stem}{tag}{self.suffixes[0]}"


def _attr(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


FORMATS: dict[str, Format] = {}  # in display order


def register(fmt: Format) -> None:
    """Add ``fmt`` (replacing a row of the same name)."""
    FORMATS[fmt.name] = fmt


def unregister(name: str) -> None:
    """Remove the row ``name`` (tests remove the fake format they added)."""
    FORMATS.pop(name, None)


def names(formats: list[Format] | None = None) -> list[str]:
    return [f.name for f in (FORMATS.values() if formats is None else formats)]


def get(name: str) -> Format:
    """The row for a format name, backend name or alias; a one-line error names the choices otherwise."""
    key = str(name).strip().lower()
    for fmt in FORMATS.values():
        if key in (fmt.name, fmt.backend, *fmt.aliases):
            return fmt
    raise UnetDeployError(f"format {name!r} is unknown; choose from {', '.join(FORMATS)}")


def suffixes() -> list[str]:
    """Every suffix the registry knows, in display order."""
    return [s for fmt in FORMATS.values() for s in fmt.suffixes]


def for_path(path: str | Path) -> Format:
    """The row for a model file by its suffix (longest match, any case); a TorchScript zip saved as
    ``.pt`` is torchscript (the formats' ``sniff``)."""
    path = Path(path)
    lower = path.name.lower()
    matches = [(len(s), fmt.name) for fmt in FORMATS.values() for s in fmt.suffixes if lower.endswith(s)]
    if not matches:
        raise UnetDeployError(f"{path}: unknown model type; pass one of {', '.join(suffixes())} (or choose --backend)")
    found = FORMATS[max(matches)[1]]
    for fmt in FORMATS.values():
        if fmt is not found and fmt.sniff and path.is_file() and _sniffer(fmt)(path):
            return fmt
    return found


def _sniffer(fmt: Format) -> Callable[[Path], bool]:
    return _attr(fmt.sniff)  # type: ignore[arg-type]


def exportable() -> list[Format]:
    """The rows that export can write, in display order."""
    return [f for f in FORMATS.values() if f.exporter is not None]


def strip_suffix(name: str) -> str:
    """``model.torchscript.pt`` -> ``model``: the file name without its longest registry suffix
    (case-sensitive, as the C++ consumer strips it)."""
    found = max((s for s in suffixes() if name.endswith(s)), key=len, default="")
    return name[: len(name) - len(found)]


# Set to 1 to trust every model file that runs code when loaded (``check_trust``).
TRUST_CODE_ENV = "UNET_DEPLOY_TRUST_CODE"


def trusted_by_env() -> bool:
    """``UNET_DEPLOY_TRUST_CODE`` is set to 1/true/yes."""
    return os.environ.get(TRUST_CODE_ENV, "").strip().lower() in ("1", "true", "yes")


def check_trust(fmt: Format, path: str | Path, trust_code: bool = False) -> None:
    """Refuse to load ``path`` as ``fmt`` when loading it runs code it carries and nobody said it may.

    Args:
        fmt: the format the file is loaded as (``for_path`` or the forced backend's row).
        path: the model file, named in the error.
        trust_code: the caller's opt-in (``Segmenter(trust_code=True)``, ``--trust-code``);
            ``UNET_DEPLOY_TRUST_CODE=1`` opts in for the whole process.
    """
    if not fmt.runs_code or trust_code or trusted_by_env():
        return
    raise UnetDeployError(
        f"{path}: loading this {fmt.title} file runs {fmt.runs_code}; load it only if you made it: "
        f"pass --trust-code (Segmenter(..., trust_code=True)) or set {TRUST_CODE_ENV}=1, or run the .onnx instead"
    )


def _register_builtin() -> None:
    from . import aoti, checkpoint, onnx, openvino, torchscript, triton

    for module in (torchscript, onnx, aoti, openvino, triton, checkpoint):
        register(module.FORMAT)


_register_builtin()
