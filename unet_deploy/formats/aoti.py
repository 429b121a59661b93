"""AOTInductor (the successor of TorchScript): the row, ``torch.export`` + ``aoti_compile_and_package`` -> ``.pt2``, its metadata.

The package holds compiled kernels for one device (the export ``--device``) with dynamic
batch and H/W (multiples of 16), and ModelMeta under the AOTI metadata key ``unet_deploy``
(``get_metadata()`` in Python, ``AOTIModelPackageLoader::get_metadata()`` in C++).
CPU kernels are tuned for the exporting host (``-march=native``) unless ``portable``:
then they use AVX2 vectors and the ``x86-64-v3`` baseline (any x86-64 CPU since ~2015).
"""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from ..errors import UnetDeployError
from ..meta import METADATA_KEY, ModelMeta
from ._common import TORCH_PYTREE, ExportOptions, without
from .spec import Format

FORMAT = Format(
    name="aoti", title="AOTInductor", suffixes=(".pt2",), backend="aoti",
    backend_class="unet_deploy.runtime.torch_backends:AOTIBackend", exporter=f"{__name__}:write",
    precisions=("fp32", "fp16"), devices=("cpu", "cuda"), needs_torch=True, requires=("torch",),
    options=frozenset({"dynamic", "portable"}), aliases=("pt2", "aotinductor"),
    note="compiled package for one device; aoti_load_package / AOTIModelPackageLoader",
    runs_code="native code (the compiled kernels in its shared library)",
)  # fmt: skip
# Inductor compiles a dynamic dimension for sizes >= 2 (its 0/1 specialisation), so a package
# exported with a dynamic batch refuses batch 1: the runtime pads to this (read from the metadata).
INDUCTOR_MIN_BATCH = 2
BATCH_KEY = "unet_deploy_batch"  # package metadata: {"min_batch": n} or {"fixed_batch": n}
# Inductor settings of --portable: AVX2 vector width (256 bit) and the matching -march.
PORTABLE_CONFIGS = {"cpp.simdlen": 256, "cpp.march": "x86-64-v3"}


def isa_configs(portable: bool, device: str) -> dict[str, Any]:
    """Inductor settings for the CPU instruction set: host-tuned by default, AVX2 with ``portable``."""
    if not portable:
        return {}
    if not device.startswith("cpu"):
        raise UnetDeployError(f"--portable is for CPU packages (it fixes the CPU instruction set), not --device {device}")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise UnetDeployError(f"--portable targets x86-64 AVX2; this machine is {platform.machine()}: leave it out")
    import torch

    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        raise UnetDeployError("--portable compiles AVX2 kernels but this CPU has no AVX2: leave it out")
    return dict(PORTABLE_CONFIGS)


def check_options(opts: ExportOptions, target: Path) -> None:
    """Fail on ``--portable`` where it cannot apply, before anything slow runs."""
    isa_configs(opts.portable, opts.device)


def write(model: Any, example: Any, path: Path, meta: ModelMeta, opts: ExportOptions) -> None:
    """``torch.export`` the model on ``opts.device`` and compile it into the package ``path`` (``.pt2``),
    with ``meta`` and its batch limits (``BATCH_KEY``) in the package metadata."""
    import torch

    from ._torch import dynamic_shapes, reduced_precision

    model = reduced_precision(model, opts.precision)
    limits = json.dumps({"min_batch": INDUCTOR_MIN_BATCH})
    configs = {"aot_inductor.metadata": {METADATA_KEY: meta.to_json(), BATCH_KEY: limits},
               **isa_configs(opts.portable, opts.device)}  # fmt: skip
    with without(TORCH_PYTREE):
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes(opts.dynamic))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)


def read_meta(metadata: dict[str, str], path: Path) -> ModelMeta | None:
    """The ModelMeta in a loaded package's ``get_metadata()`` (None when there is none)."""
    text = metadata.get(METADATA_KEY)
    return ModelMeta.from_json(text, f"{path} (AOTI metadata)") if text else None


def built_for(metadata: dict[str, str]) -> str:
    """``"cuda"`` or ``"cpu"``: the device a loaded package was compiled for."""
    return "cuda" if metadata.get("AOTI_DEVICE_KEY", "cpu").startswith("cuda") else "cpu"


def batch_limits(metadata: dict[str, str]) -> tuple[int, int | None]:
    """(least batch, fixed batch or None) of a loaded package, from its ``BATCH_KEY`` metadata
    (``{"min_batch": n}`` as our export writes it, or ``{"fixed_batch": n}`` for a static batch);
    without one, Inductor's rule for a dynamic batch. Kept out of ModelMeta, so the one sidecar of
    several exports stays the same for every format."""
    try:
        record = json.loads(metadata.get(BATCH_KEY) or "{}")
    except ValueError:
        record = {}
    record = record if isinstance(record, dict) else {}

    def count(v: Any) -> int | None:
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else None

    fixed = count(record.get("fixed_batch"))
    return (fixed, fixed) if fixed else (count(record.get("min_batch")) or INDUCTOR_MIN_BATCH, None)
