"""The benchmark matrix, derived from the format registry: each format's backend at each precision on each device.

``unet_deploy.formats`` says what every format runs (its runtime backend, precisions, devices,
whether it needs torch); a newly registered format is benchmarked without editing this module.
Two cases are the bench's own references rather than formats: ``eager`` is the checkpoint
format's backend presented by its usual name (the checkpoint in PyTorch: the fp32 accuracy
reference), and ``seed`` is the seed article's pipeline on the same checkpoint (the baseline).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from .. import cpu, formats
from ..errors import UnetDeployError
from .machine import cuda_available, torch_module

if TYPE_CHECKING:
    from .source import ModelSource

DEVICES = ("cpu", "cuda")
CHECKPOINT = "checkpoint"  # the registry's format (and backend) of a training checkpoint
EAGER, SEED = "eager", "seed"  # the bench's names for the checkpoint in PyTorch and for the baseline


@dataclass(frozen=True)
class Case:
    """One row of the matrix: ``backend`` at ``precision`` on ``device``, running format ``fmt``.

    ``backend`` is ``eager``, ``seed`` or a registry backend name (``onnxruntime`` ...); ``fmt``
    is the registry format the case runs, derived from the backend when not given.
    """

    backend: str
    precision: str = "fp32"
    device: str = "cpu"
    fmt: str | None = None

    def __post_init__(self) -> None:
        if self.fmt is None:
            object.__setattr__(self, "fmt", format_of(self.backend).name)

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision} {self.device}"


def format_of(backend: str) -> formats.Format:
    """The registry format a bench backend name runs (``eager`` and ``seed`` run the checkpoint)."""
    return formats.get(CHECKPOINT if backend in (EAGER, SEED) else backend)


def bench_name(fmt: formats.Format) -> str:
    """How the bench names a format's backend: ``eager`` for the checkpoint, else the runtime's name."""
    return EAGER if fmt.name == CHECKPOINT else fmt.backend


def cases() -> list[Case]:
    """The whole matrix, in the order it runs: on each device the eager fp32 reference and the seed
    baseline first, then every registered format at each of its precisions, in registry order."""
    out: list[Case] = []
    for device in DEVICES:
        out += [Case(EAGER, "fp32", device), Case(SEED, "fp32", device)]
        for fmt in formats.FORMATS.values():
            if device in fmt.devices and fmt.backend_class:  # a Triton repository is benchmarked by serve_cpu.py
                out += [Case(bench_name(fmt), p, device, fmt.name) for p in fmt.precisions]
    return list(dict.fromkeys(out))


def backend_names() -> list[str]:
    """Every backend ``--backend`` accepts: ``eager``, ``seed`` and each registered format's backend."""
    return list(dict.fromkeys([EAGER, SEED] + [bench_name(f) for f in formats.FORMATS.values() if f.backend_class]))


def precisions() -> list[str]:
    """Every precision some registered format runs."""
    return list(dict.fromkeys(p for f in formats.FORMATS.values() for p in f.precisions))


def resolve_backend(name: str) -> str:
    """A ``--backend`` word as the bench names it: ``eager``/``seed`` or a registry name or alias."""
    if name in (EAGER, SEED):
        return name
    try:
        return bench_name(formats.get(name))
    except UnetDeployError:
        raise UnetDeployError(f"backend {name!r} is unknown; choose from {', '.join(backend_names())}") from None


def select_cases(
    backends: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
    matrix: Sequence[Case] | None = None,
) -> list[Case]:
    """The rows of ``matrix`` (default ``cases()``) matching the given backends, precisions and devices.

    ``None`` keeps all of that kind; backend names may be registry aliases (``ort``, ``ov``).
    """
    wanted = {resolve_backend(b) for b in backends} if backends else None
    return [case for case in (matrix if matrix is not None else cases())
            if (wanted is None or case.backend in wanted) and (not precisions or case.precision in precisions)
            and (not devices or case.device in devices)]  # fmt: skip


def skip_reason(case: Case, source: "ModelSource", explicit_precision: bool) -> str | None:
    """Why ``case`` cannot run here (``None``: it can), from the registry's facts and this machine's."""
    fmt = formats.get(case.fmt)
    if source.checkpoint is None and fmt.name != source.format:
        return f"needs the checkpoint (the input is an exported {source.backend} model)"
    if fmt.needs_torch and torch_module() is None:
        return "torch is not installed"
    if case.device == "cuda" and not cuda_available():
        return "no CUDA device"
    if case.device == "cuda" and fmt.backend_class is not None:
        why = fmt.load_backend().cuda_support()  # before anything is exported for it
        if why:
            return why
    if source.checkpoint is not None and fmt.name != CHECKPOINT:
        if fmt.exporter is None:
            return f"export_model cannot make {fmt.name} yet"
        missing = [m for m in fmt.requires if importlib.util.find_spec(m) is None]
        if missing:
            return f"the {fmt.title} export needs {', '.join(missing)} (not installed)"
        if case.precision != "fp32" and "calib" in fmt.options:  # gated on the user's images, which bench has not
            return (f"{fmt.title} {case.precision} is exported against calibration/validation images: "
                    f"unet-export --format {fmt.name} --precision {case.precision} --calib/--val DATA, then bench that file")
    if not explicit_precision:
        if case.device == "cpu" and case.precision == "bf16" and not cpu.has_native_bf16():
            return "no native bf16 on this CPU (AVX512-BF16/AMX); --precision bf16 runs it emulated"
        if case.device == "cpu" and case.precision == "fp16":
            return "fp16 is for GPUs (emulated on this CPU); --precision fp16 runs it anyway"
        if case.device == "cuda" and case.precision == "bf16" and not torch_module().cuda.is_bf16_supported():
            return "this GPU has no bf16"
    return None
