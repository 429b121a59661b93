"""What one model-file format is: the ``Format`` row each format module states and the registry collects.

A row NAMES its runtime backend and the function that writes it as ``"module:attr"`` strings;
the callers that may import them resolve the names (``runtime.base.load_backend``,
``export.load_exporter``), so ``formats`` imports neither.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Format:
    """What one model-file format is: its files, what it runs on, how it is exported and run."""

    name: str  # "torchscript" | "onnx" | "aoti" | "openvino" | "checkpoint"
    title: str  # "TorchScript", for log lines
    suffixes: tuple[str, ...]  # the first is the one export writes; the longest match wins on lookup
    backend: str  # the runtime backend's name, as ``seg.backend`` reports it
    backend_class: str | None  # "module:Class" of its runtime backend (None: none in-process)
    exporter: str | None  # "module:function" write(model, example, path, meta, opts) (None: not exportable)
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
    # path -> bool: a file with another format's suffix that really is this format (a
    # TorchScript archive saved as ``.pt``).
    sniff: Callable[[Path], bool] | None = None
    folder: bool = False  # the artefact is a folder (a Triton repository), replaced whole on re-export
    # Loading the file runs code it carries ("": it is data). Such a file is refused unless the
    # user trusts it (``formats.check_trust``): load code only from files you made.
    runs_code: str = ""

    def path(self, out_dir: str | Path, stem: str, precision: str = "fp32") -> Path:
        """Where export writes ``stem`` at ``precision``: ``out/model.onnx``, ``out/model.int8.xml``."""
        tag = f".{precision}" if precision in self.named_precisions else ""
        return Path(out_dir) / f"{stem}{tag}{self.suffixes[0]}"
