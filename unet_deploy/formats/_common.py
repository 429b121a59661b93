"""What every exporter shares: the options of one export run, the graph's tensor names, warnings shown once.

Nothing here imports torch; ``_torch`` holds the torch helpers.
"""
from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

# Tensor names of every exported graph (ONNX and OpenVINO input/output names; the runtime reads them).
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# Example batch for torch.export: 0 and 1 are specialised by the tracer, 2 keeps the batch symbolic.
EXAMPLE_BATCH = 2


def stderr_log(message: str) -> None:
    """The default ``log``: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


def quiet(message: str) -> None:
    """A ``log`` that drops every line."""


@dataclass
class ExportOptions:
    """What one ``export_model`` call asked for, handed to each format's ``export``.

    ``calib``/``val``/``min_agreement``/``max_miou_drop`` are the accuracy gate's inputs for
    reduced precisions that need one (OpenVINO bf16/int8, ONNX int8); ``check`` says whether
    to run it; ``int8_isa``/``int8`` say how int8 is calibrated (``formats.quantize``,
    ``precision_gate``).
    """

    dynamic: bool = True
    precision: str = "fp32"
    opset: int | None = None
    device: str = "cpu"
    portable: bool = False
    log: Callable[[str], None] = field(default=stderr_log)
    check: bool = True
    calib: Path | None = None
    val: Path | None = None
    min_agreement: float | None = None
    max_miou_drop: float | None = None
    threads: int | None = None
    calib_count: int = 32  # images that calibrate int8
    val_count: int = 32  # validation images the gate measures
    int8_isa: str | None = None  # "auto" | "vnni" | "avx2": the CPU kind an int8 artefact is for
    int8: Any = None  # formats.quantize.Int8Recipe (None: the measured default)


@contextmanager
def shown_once(title: str, log: Callable[[str], None]) -> Iterator[None]:
    """Collect the warnings raised inside, log each distinct one once, then hand them on to Python.

    Torch repeats some warnings per submodule (``torch.jit.script`` warns ~40 times for one
    UNet); the user sees each once in the export log, and Python's own filters still decide
    what reaches stderr and the test runner, so nothing is silenced.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen: dict[tuple[type, str], Any] = {}
    for w in caught:
        seen.setdefault((w.category, str(w.message)), w)
    for (category, message), w in seen.items():
        count = sum(1 for c in caught if (c.category, str(c.message)) == (category, message))
        times = f" (x{count})" if count > 1 else ""
        log(f"{title}: {category.__name__}: {message}{times}")
        warnings.warn_explicit(w.message, category, w.filename, w.lineno)


@dataclass
class GateRequest:
    """What a format's ``export`` returns for a staged artefact the exporter must gate before keeping it.

    ``save(meta)`` rewrites the staged artefact with ``meta`` (the gate's record added).
    """

    save: Callable[[Any], None]


# Foreign warnings that are not the user's business, dropped only around the calls that raise them:
# torch's own pytree deprecation inside torch.export (torch.onnx.export(dynamo=True), AOTInductor),
# and TorchScript's deprecation, which the export states in its own line (--format aoti is its successor).
TORCH_PYTREE = (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated")
TORCH_JIT_DEPRECATED = (DeprecationWarning, r"`torch\.jit\.\w+` is deprecated")


# torch.onnx's op registry logs a WARNING per torchvision op when torchvision is absent; no UNet op is one.
TORCH_ONNX_REGISTRY = "torch.onnx._internal.exporter._registration"


@contextmanager
def muted_logger(name: str) -> Iterator[None]:
    """Raise the logger ``name`` to ERROR inside (its warnings are torch's bookkeeping, not the user's business)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextmanager
def without(*foreign: tuple[type[Warning], str]) -> Iterator[None]:
    """Drop the named ``(category, message regex)`` warnings raised inside; every other warning passes as usual."""
    with warnings.catch_warnings():
        for category, message in foreign:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text (for one-line ``UnetDeployError`` messages)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]
