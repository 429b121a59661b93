"""AOTInductor export (the successor of TorchScript): ``torch.export`` + ``aoti_compile_and_package`` -> ``.pt2``.

The package holds compiled kernels for one device (the export ``--device``) with dynamic
batch and H/W (multiples of 16), and ModelMeta under the AOTI metadata key ``unet_deploy``
(``get_metadata()`` in Python, ``AOTIModelPackageLoader::get_metadata()`` in C++).
CPU kernels are tuned for the exporting host (``-march=native``) unless ``portable``:
then they use AVX2 vectors and the ``x86-64-v3`` baseline (any x86-64 CPU since ~2015).
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from ..errors import UnetDeployError
from ..meta import ONNX_METADATA_KEY, ModelMeta
from . import ExportOptions, Runner, dynamic_shapes

TITLE = "AOTInductor"
# The key of ModelMeta in the package's metadata (the same word as the ONNX metadata key).
METADATA_KEY = ONNX_METADATA_KEY
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


def export(model: Any, example: Any, path: Path, meta: ModelMeta, opts: ExportOptions) -> None:
    """``torch.export`` the model on ``opts.device`` and compile it into the package ``path`` (``.pt2``)."""
    import torch

    configs = {"aot_inductor.metadata": {METADATA_KEY: meta.to_json()}, **isa_configs(opts.portable, opts.device)}
    program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes(opts.dynamic))
    torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)


def load(path: Path, device: str) -> tuple[Runner, ModelMeta]:
    """``aoti_load_package`` and the ModelMeta stored in the package's metadata."""
    import torch

    index = torch.device(device).index or 0
    compiled = torch._inductor.aoti_load_package(str(path), device_index=index if device.startswith("cuda") else -1)
    text = compiled.get_metadata().get(METADATA_KEY)
    if text is None:
        raise UnetDeployError(f"{path}: no {METADATA_KEY!r} in the AOTInductor package metadata")
    return compiled, ModelMeta.from_json(text, f"{path} (AOTI metadata)")
