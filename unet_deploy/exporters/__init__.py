"""Pieces every exporter shares: the options of one export run, dynamic shapes, and the loaded-artefact type.

One module per format (``torchscript``, ``onnx``, ``aoti``) holds ``export(model, example,
path, meta, opts)`` that writes the artefact to ``path`` and ``load(path, device)`` that
reads it back as ``(run, meta)`` for the parity check. ``unet_deploy.export.EXPORT_FORMATS``
names them; nothing here imports torch at module level.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..meta import DIVISOR, MIN_SIZE

# Tensor names of every exported graph (ONNX input/output names; the runtime reads them).
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# Example batch for torch.export: 0 and 1 are specialised by the tracer, 2 keeps the batch symbolic.
EXAMPLE_BATCH = 2


def _echo(message: str) -> None:
    import click

    click.echo(message, err=True)


@dataclass
class ExportOptions:
    """What one ``export_model`` call asked for, handed to each format's ``export``."""

    dynamic: bool = True
    precision: str = "fp32"
    opset: int | None = None
    device: str = "cpu"
    portable: bool = False
    log: Callable[[str], None] = field(default=_echo)


# A loaded artefact: float32 NCHW tensor in (on the export device), float32 logits tensor out.
Runner = Callable[[Any], Any]


def dynamic_shapes(dynamic: bool) -> tuple[dict[int, Any]]:
    """``torch.export`` dynamic shapes of the single input: batch always, H and W as multiples of 16.

    ``dynamic=False`` fixes height and width at the example's size; the batch stays dynamic.
    """
    from torch.export import Dim

    batch = Dim("batch", min=1)
    if not dynamic:
        return ({0: batch},)
    height = Dim("height_16", min=MIN_SIZE // DIVISOR)
    width = Dim("width_16", min=MIN_SIZE // DIVISOR)
    return ({0: batch, 2: DIVISOR * height, 3: DIVISOR * width},)


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
