"""The format registry: one ``Format`` row per model-file format, read by export, the runtime, bench and the CLI.

Each format has one owner module here (``torchscript``, ``onnx``, ``aoti``, ``openvino``,
``triton``, and ``pytorch`` for the ``checkpoint`` format) that states its row (``FORMAT``), writes it (``export(model,
example, path, meta, opts)``) and reads its metadata. A row names its runtime backend and its
exporter as strings; ``formats`` imports neither (``runtime.base.load_backend`` and
``export.load_exporter`` resolve them). Import-light: no torch, click, onnx or openvino at
import, so the lean runtime and ``--help`` can read the table. ``FORMATS`` is a read-only
table built from the modules below: a new format is one module plus one entry in ``_MODULES``.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from ..errors import UnetDeployError, did_you_mean
from . import aoti, onnx, openvino, pytorch, torchscript, triton
from .spec import Format

_MODULES = (torchscript, onnx, aoti, openvino, triton, pytorch)  # display order
FORMATS: Mapping[str, Format] = MappingProxyType({m.FORMAT.name: m.FORMAT for m in _MODULES})

__all__ = ["FORMATS", "TRUST_CODE_ENV", "Format", "check_trust", "exportable", "for_path", "get", "names", "sidecar_path",
           "strip_suffix", "suffixes"]


def names(formats: list[Format] | None = None) -> list[str]:
    return [f.name for f in (FORMATS.values() if formats is None else formats)]


def get(name: str) -> Format:
    """The row for a format name, backend name or alias; one line with the closest name otherwise."""
    key = str(name).strip().lower()
    for fmt in FORMATS.values():
        if key in (fmt.name, fmt.backend, *fmt.aliases):
            return fmt
    known = [n for f in FORMATS.values() for n in (f.name, f.backend, *f.aliases)]
    raise UnetDeployError(f"format {name!r} is unknown{did_you_mean(key, known)}; choose from {', '.join(FORMATS)}")


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
        if fmt is not found and fmt.sniff and path.is_file() and fmt.sniff(path):
            return fmt
    return found


def exportable() -> list[Format]:
    """The rows that export can write, in display order."""
    return [f for f in FORMATS.values() if f.exporter is not None]


def strip_suffix(name: str) -> str:
    """``model.torchscript.pt`` -> ``model``: the file name without its longest registry suffix
    (case-sensitive, as the C++ consumer strips it)."""
    found = max((s for s in suffixes() if name.endswith(s)), key=len, default="")
    return name[: len(name) - len(found)]


def sidecar_path(model_path: str | Path) -> Path:
    """``dir/model.onnx`` -> ``dir/model.json``: the ModelMeta sidecar beside a model file, named
    without its registry suffix (``.torchscript.pt``, ``.pt2``; ``model.int8.xml`` -> ``model.int8.json``)."""
    p = Path(model_path)
    return p.with_name(strip_suffix(p.name) + ".json")


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
