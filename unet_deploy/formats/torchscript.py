"""TorchScript for libtorch (``torch::jit::load``): the row, the export (scripted, eval, no device baked in), its metadata.

TorchScript is deprecated upstream (torch warns since 2.10) but is still what libtorch C++
programs load; AOTInductor (``aoti``) is its successor. ``torch.jit.script`` keeps the batch
and the input size free (any multiple of 16); the module is scripted from a CPU copy so its
weights load on any device with ``map_location``. ModelMeta travels in the ``_extra_files``
entry ``unet_deploy.json``.

Trust: an archive is in part code. Loading it runs no native code, but its TorchScript program
(any ops torch offers, file and network access through them included) runs on every call: load
only archives you made, like the ``weights_only`` promise for checkpoints.
"""
from __future__ import annotations

import copy
import zipfile
from pathlib import Path
from typing import Any

from ..errors import UnetDeployError
from ..meta import TORCHSCRIPT_EXTRA_FILE, ModelMeta
from ._common import TORCH_JIT_DEPRECATED, ExportOptions, first_line, shown_once, without
from .spec import Format


def is_archive(path: Path) -> bool:
    """True for a ``torch.jit.save`` zip (it holds ``constants.pkl``), False for ``torch.save`` files."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") or n.endswith(f"/extra/{TORCHSCRIPT_EXTRA_FILE}") for n in names)


FORMAT = Format(
    name="torchscript", title="TorchScript", suffixes=(".torchscript.pt", ".torchscript"), backend="torchscript",
    backend_class="unet_deploy.runtime.torch_backends:TorchScriptBackend", exporter=f"{__name__}:write",
    precisions=("fp32", "fp16"), devices=("cpu", "cuda"), needs_torch=True, requires=("torch",),
    options=frozenset(), aliases=("jit",), sniff=is_archive,
    note="libtorch torch::jit::load; deprecated upstream, aoti is its successor",
)  # fmt: skip


def device_constants(module: Any) -> list[str]:
    """Nodes of a scripted module's inlined graph that hold a device constant (should be none)."""
    found = []
    for node in module.inlined_graph.nodes():
        outputs = list(node.outputs())
        if node.kind() == "prim::Constant" and outputs and outputs[0].type().kind() == "DeviceObjType":
            found.append(str(node).strip())
    return found


def write(model: Any, example: Any, path: Path, meta: ModelMeta, opts: ExportOptions) -> None:
    """Script ``model`` (a CPU copy) and save it to ``path`` with ModelMeta in ``_extra_files``."""
    import torch

    opts.log("TorchScript: deprecated upstream; it stays for libtorch users, --format aoti is its successor")
    from ._torch import reduced_precision

    cpu_model = copy.deepcopy(reduced_precision(model, opts.precision)).cpu().eval()
    with shown_once(FORMAT.title, opts.log), without(TORCH_JIT_DEPRECATED):
        scripted = torch.jit.script(cpu_model)
        baked = device_constants(scripted)
        if baked:  # a bug in the model code, not a user error
            raise RuntimeError(f"TorchScript: the scripted graph holds device constants: {baked[:3]}")
        torch.jit.save(scripted, str(path), _extra_files={TORCHSCRIPT_EXTRA_FILE: meta.to_json()})


def read(path: Path, map_location: Any) -> tuple[Any, ModelMeta | None]:
    """``torch.jit.load`` onto ``map_location`` and the ModelMeta of its extra file (None if absent)."""
    import torch

    extra = {TORCHSCRIPT_EXTRA_FILE: ""}
    try:
        with shown_once(FORMAT.title, lambda _: None), without(TORCH_JIT_DEPRECATED):
            module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except RuntimeError as e:  # foreign or truncated archives
        raise UnetDeployError(f"{path}: not a loadable TorchScript model ({first_line(e)})") from None
    text = extra[TORCHSCRIPT_EXTRA_FILE]
    return module.eval(), (ModelMeta.from_json(text, f"{path} ({TORCHSCRIPT_EXTRA_FILE})") if text else None)
