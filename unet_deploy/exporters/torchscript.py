"""TorchScript export for libtorch (``torch::jit::load``): scripted, eval mode, no device baked in.

TorchScript is deprecated upstream (torch warns since 2.10) but is still what libtorch C++
programs load; AOTInductor (``--format aoti``) is its successor. ``torch.jit.script`` keeps
the batch and the input size free (any multiple of 16); the module is scripted from a CPU copy
so its weights load on any device with ``map_location``.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..meta import TORCHSCRIPT_EXTRA_FILE, ModelMeta
from . import ExportOptions, Runner, shown_once

TITLE = "TorchScript"


def device_constants(module: Any) -> list[str]:
    """Nodes of a scripted module's inlined graph that hold a device constant (should be none)."""
    found = []
    for node in module.inlined_graph.nodes():
        outputs = list(node.outputs())
        if node.kind() == "prim::Constant" and outputs and outputs[0].type().kind() == "DeviceObjType":
            found.append(str(node).strip())
    return found


def export(model: Any, example: Any, path: Path, meta: ModelMeta, opts: ExportOptions) -> None:
    """Script ``model`` (a CPU copy) and save it to ``path`` with ModelMeta in ``_extra_files``."""
    import torch

    cpu_model = copy.deepcopy(model).cpu().eval()
    with shown_once(TITLE, opts.log):
        scripted = torch.jit.script(cpu_model)
        baked = device_constants(scripted)
        if baked:  # a bug in the model code, not a user error
            raise RuntimeError(f"{TITLE}: the scripted graph holds device constants: {baked[:3]}")
        torch.jit.save(scripted, str(path), _extra_files={TORCHSCRIPT_EXTRA_FILE: meta.to_json()})


def load(path: Path, device: str) -> tuple[Runner, ModelMeta]:
    """``torch.jit.load`` with the metadata extra file, mapped onto ``device``."""
    import torch

    extra = {TORCHSCRIPT_EXTRA_FILE: ""}
    with shown_once(TITLE, lambda _: None):
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    meta = ModelMeta.from_json(extra[TORCHSCRIPT_EXTRA_FILE], f"{path} ({TORCHSCRIPT_EXTRA_FILE})")
    return module, meta
