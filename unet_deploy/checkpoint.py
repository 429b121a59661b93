"""Checkpoints: atomic save with ModelMeta, and loading of ours or of a bare seed ``unet.pth``."""
from __future__ import annotations

import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import UnetDeployError
from .fileio import atomic_path, quote
from .meta import FORMAT, ModelMeta
from .model import UNet


def build_model(meta: ModelMeta) -> UNet:
    """A fresh UNet shaped as ``meta.arch`` says, with ``meta.num_outputs`` logits."""
    arch = meta.arch
    return UNet(meta.num_outputs, arch["in_channels"], arch["base_channels"], arch["upsample"])


def _arch_of(state: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """``(arch, number of logit channels)`` of a seed-layout UNet state_dict, from its tensor shapes."""
    for key in ("c1.layer.0.weight", "out.weight"):
        if key not in state:
            raise UnetDeployError(f"state_dict has no {key!r}: it is not the seed's UNet")
        if not torch.is_tensor(state[key]) or state[key].dim() != 4:
            shape = list(state[key].shape) if torch.is_tensor(state[key]) else type(state[key]).__name__
            raise UnetDeployError(f"state_dict {key!r} is {shape}, not a 4-D conv weight: it is not the seed's UNet")
    first = state["c1.layer.0.weight"]
    arch = {
        "base_channels": int(first.shape[0]),
        "in_channels": int(first.shape[1]),
        "upsample": "transpose" if "u1.up.weight" in state else "bilinear",
    }
    return arch, int(state["out.weight"].shape[0])


def check_state_dict(state: dict[str, Any], meta: ModelMeta) -> None:
    """Raise one line naming the first missing, unexpected, non-tensor or wrongly shaped key
    against the UNet that ``meta`` describes (built on the meta device: no memory, no time)."""
    arch = meta.arch
    with torch.device("meta"):
        expected = UNet(meta.num_outputs, arch["in_channels"], arch["base_channels"], arch["upsample"]).state_dict()
    for key, want in expected.items():
        got = state.get(key)
        if got is None:
            raise UnetDeployError(f"state_dict has no {key!r} that the UNet of its metadata needs ({len(state)} keys)")
        if not torch.is_tensor(got):
            raise UnetDeployError(f"state_dict {key!r} is a {type(got).__name__}, not a tensor")
        if got.shape != want.shape:
            raise UnetDeployError(
                f"state_dict {key!r} has shape {list(got.shape)}, the UNet of its metadata needs {list(want.shape)}"
            )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise UnetDeployError(f"state_dict has unexpected key {quote(unexpected[0])} (and {len(unexpected) - 1} more)")


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: ModelMeta, **extra: Any) -> Path:
    """Write ``{"format", "meta", "state_dict", **extra}`` atomically (temp file, then rename).

    The stored ``meta.arch`` is the model's own (its weights' shapes), so the file always loads;
    a model whose logit count disagrees with ``meta``'s classes is refused in one line.
    ``extra`` holds training state such as ``epoch``, ``optimizer``, ``metrics``; it must be
    made of tensors and plain Python values so that ``weights_only`` loading can read it.
    """
    model = getattr(model, "module", model)  # unwrap DDP / DataParallel
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    try:
        arch, outputs = _arch_of(state)
        meta.check_num_outputs(outputs, "the model's weights")
        meta = replace(meta, arch=arch)
        check_state_dict(state, meta)
    except UnetDeployError as e:
        raise UnetDeployError(f"{quote(path)}: not saved, {e.message}") from None
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "meta": meta.to_dict(), "state_dict": state, **extra}, tmp)
    return Path(path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load the raw checkpoint dict safely (``weights_only=True``: a checkpoint never runs code)."""
    path = Path(path)
    if not path.is_file():
        raise UnetDeployError(f"{path}: file not found; pass a checkpoint (.pt) or a seed unet.pth")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:Unsupported global|GLOBAL)\W+([\w.]+)", str(e))
        if not found:
            raise UnetDeployError(f"{path}: not a readable checkpoint (corrupt or not made by torch.save)") from None
        raise UnetDeployError(
            f"{path}: refused to load, unpickling it would run code (it needs {found.group(1)}); "
            "only unet-deploy checkpoints and plain state_dicts load, re-save the weights "
            "with torch.save(model.state_dict(), path) from code you trust"
        ) from None
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "constants.pkl" in msg or "TorchScript" in msg:
            msg = "it is an exported TorchScript model, load it with unet_deploy.Segmenter instead"
        raise UnetDeployError(f"{path}: not a readable checkpoint ({msg[:200]})") from None
    except Exception as e:  # zip/EOF errors from truncated or foreign files
        raise UnetDeployError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})"[:300]) from None
    if not isinstance(obj, dict):
        raise UnetDeployError(f"{path}: holds a {type(obj).__name__}, not a checkpoint or state_dict")
    return obj


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def meta_from_state_dict(
    state: dict[str, torch.Tensor], classes: Sequence[str] | None = None, input_size: int | Sequence[int] = 256
) -> ModelMeta:
    """Infer the architecture of a bare seed state_dict from its tensor shapes."""
    arch, num_classes = _arch_of(state)
    names = list(classes) if classes else [f"class_{i}" for i in range(num_classes)]
    channels = arch["in_channels"]
    head = "sigmoid" if num_classes == 1 and len(names) == 2 else "softmax"
    meta = ModelMeta(
        classes=names, input_size=input_size, arch=arch, head=head,
        color="GRAY" if channels == 1 else "RGB", mean=[0.0] * channels, std=[1.0] * channels,
    )  # fmt: skip
    meta.check_num_outputs(num_classes, "the state_dict weights")
    return meta


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    classes: Sequence[str] | None = None,
) -> tuple[UNet, ModelMeta]:
    """Load our checkpoint or a bare seed state_dict; return ``(model in eval mode, meta)``.

    ``classes`` names the classes of a seed state_dict (default ``class_0..``); for our
    checkpoints it must agree with the stored count and then replaces the stored names.
    """
    path = Path(path)
    obj = read_checkpoint(path)
    source = quote(path)
    if "state_dict" in obj and "meta" in obj:
        if obj.get("format") != FORMAT:
            raise UnetDeployError(f"{source}: checkpoint format {quote(obj.get('format'))} is not {FORMAT}")
        meta = ModelMeta.from_dict(obj["meta"], source)
        state = obj["state_dict"]
        if not isinstance(state, dict):
            raise UnetDeployError(f"{source}: 'state_dict' is a {type(state).__name__}, not a dict of tensors")
        if classes:
            if len(classes) != meta.num_classes:
                raise UnetDeployError(
                    f"{source}: checkpoint has {meta.num_classes} classes but {len(classes)} were given "
                    f"({quote(','.join(map(str, classes)))}); pass {meta.num_classes} names"
                )
            try:
                meta = replace(meta, classes=list(classes))
            except UnetDeployError as e:
                raise UnetDeployError(f"{source}: the given {e.message}") from None
    elif _is_state_dict(obj):
        state = obj
        try:
            meta = meta_from_state_dict(state, classes)
        except UnetDeployError as e:
            raise UnetDeployError(f"{source}: {e.message}") from None
    else:
        keys = [quote(k) for k in list(obj)[:5]]
        raise UnetDeployError(f"{source}: neither a unet-deploy checkpoint nor a state_dict (keys: {keys})")
    try:
        check_state_dict(state, meta)
    except UnetDeployError as e:
        raise UnetDeployError(f"{source}: weights do not fit the UNet of its metadata: {e.message}") from None
    model = build_model(meta)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # shapes and keys are checked above: a dtype torch cannot copy
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UnetDeployError(f"{source}: weights do not load ({first[:200]})") from None
    return model.to(device).eval(), meta


HEAD_KEYS = ("out.weight", "out.bias")  # the head: one row per class (logit channel)


def transfer_weights(model: torch.nn.Module, state: dict[str, Any], old_classes: Sequence[str],
                     classes: Sequence[str]) -> str:  # fmt: skip
    """Start ``model`` (built for ``classes``) from ``state`` (trained on ``old_classes``); return one line.

    Every tensor of the same name and shape is copied. When the classes differ (new ones, or a new
    order), the head (``HEAD_KEYS``) is matched row by row by class name: a known class keeps its
    row wherever it now sits, a new class keeps the fresh initialisation ``model`` was built with.
    A sigmoid head (one channel) cannot be split into classes: it stays fresh.

    Args:
        model: the new model, freshly initialised.
        state: the state_dict to start from.
        old_classes: the class names ``state`` was trained on (background first).
        classes: the class names of ``model`` (background first).
    """
    own = model.state_dict()
    same = list(old_classes) == list(classes)
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and (same or k not in HEAD_KEYS)}
    old_index = {name: i for i, name in enumerate(old_classes)}
    old_index.setdefault(classes[0], 0)  # background is background, whatever it is called
    rows = [old_index.get(name) for name in classes]
    head_ok = not same and all(k in state and state[k].shape[0] == len(old_classes) and own[k].shape[0] == len(classes)
                  and state[k].shape[1:] == own[k].shape[1:] for k in HEAD_KEYS)  # fmt: skip
    if head_ok:
        for k in HEAD_KEYS:
            grown = own[k].clone()
            for new, old in enumerate(rows):
                if old is not None:
                    grown[new] = state[k][old]
            fitting[k] = grown
    model.load_state_dict(fitting, strict=False)
    fresh = sorted(set(own) - set(fitting))
    kept = [c for c, r in zip(classes, rows) if r is not None]
    added = [c for c, r in zip(classes, rows) if r is None]
    dropped = [c for c in old_classes if c not in classes and old_index[c] != 0]
    line = f"initialised {len(fitting)}/{len(own)} tensors"
    if head_ok:
        line += (f"; head {len(old_classes)} -> {len(classes)} classes: kept {', '.join(kept)}"
                 + (f"; new (fresh rows): {', '.join(added)}" if added else "")
                 + (f"; dropped: {', '.join(dropped)}" if dropped else ""))  # fmt: skip
    if fresh:
        line += f"; fresh: {', '.join(fresh)}"
    return line
