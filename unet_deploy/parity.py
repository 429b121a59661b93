"""The parity check of an export: the eager model's logits on preprocessed-looking inputs, and the
artefact's own runtime backend compared with them before a file is kept (``export.export_to``).

Also the NaN/inf refusal of weights (an export of broken weights would pass parity with NaN).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import UnetDeployError
from .formats import Format
from .formats._common import ExportOptions
from .meta import DIVISOR, ModelMeta, max_batch
from .runtime.base import load_backend

# Parity tolerances: max |logit diff| relative to max(1, max |eager logit|), argmax agreement in %.
TOLERANCE = {"fp32": (1e-4, 99.99), "fp16": (1e-2, 99.5)}


# The largest side the parity check of a dynamic export runs at (batch 3 at 2048 once took 6 GB).
PARITY_SIDE = 256


def reference_logits(model: Any, meta: ModelMeta, dynamic: bool, device: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Parity cases ``(input, eager fp32 logits)``: preprocessed-looking inputs at two sizes (one if
    static) x batch 1 and 3."""
    import torch

    h, w = meta.input_size
    if dynamic:  # any size runs the same graph: check at most PARITY_SIDE (memory stays bounded)
        h, w = min(h, PARITY_SIDE), min(w, PARITY_SIDE)
    sizes = [(h, w), (h + DIVISOR, w + 2 * DIVISOR)] if dynamic else [(h, w)]
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor(meta.mean).view(1, -1, 1, 1)
    std = torch.tensor(meta.std).view(1, -1, 1, 1)
    cases = []
    with torch.inference_mode():
        for size in sizes:
            for batch in sorted({1, min(3, max_batch(meta, size, "the parity check"))}):
                pixels = torch.randint(0, 256, (batch, meta.in_channels, *size), generator=g).float()
                x = (pixels / meta.scale - mean) / std
                cases.append((x.numpy(), model(x.to(device)).float().cpu().numpy()))
    return cases


def check_finite_weights(model: Any, target: str | Path) -> None:
    """Refuse a model whose parameters or buffers (BatchNorm statistics) hold NaN or inf: its export
    would pass parity and predict nonsense. The error names ``target`` and the first bad tensor."""
    import torch

    for kind, named in (("weight", model.named_parameters()), ("BatchNorm statistic", model.named_buffers())):
        for name, tensor in named:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise UnetDeployError(
                    f"{target}: {kind} {name!r} holds {bad} NaN/inf value(s) of {tensor.numel()}; the model is "
                    "broken (training diverged?): export an earlier checkpoint or retrain"
                )


def parity(cases: list[tuple[np.ndarray, np.ndarray]], run: Callable[[np.ndarray], np.ndarray],
           precision: str) -> tuple[bool, str]:  # fmt: skip
    """Compare ``run`` (numpy in, numpy out) with the eager logits; return (within tolerance, one-line summary)."""
    atol, min_agree = TOLERANCE[precision]
    labels = (lambda t: (t[:, 0] > 0) if t.shape[1] == 1 else t.argmax(1))  # noqa: E731 - one-logit head: > 0
    worst, agree, total = 0.0, 0, 0
    for x, ref in cases:
        got = np.asarray(run(x), dtype=np.float32)
        if got.shape != ref.shape:
            return False, f"output shape {list(got.shape)} instead of {list(ref.shape)}"
        if not (np.isfinite(got).all() and np.isfinite(ref).all()):
            return False, "NaN/inf logits (the exported model's or the eager model's)"
        scale = max(1.0, float(np.abs(ref).max()))
        worst = max(worst, float(np.abs(got - ref).max()) / scale)
        agree += int((labels(got) == labels(ref)).sum())
        total += ref.shape[0] * ref.shape[2] * ref.shape[3]
    pct = 100.0 * agree / total
    shapes = ", ".join("x".join(map(str, x.shape)) for x, _ in cases)
    line = (f"max |logit diff| {worst:.1e} (allowed {atol:g}), argmax agreement {pct:.4f}% "
            f"(min {min_agree}%) at {shapes}")  # fmt: skip
    return worst <= atol and pct >= min_agree, line


def check_artefact(fmt: Format, staged: Path, target: Path, written: ModelMeta, opts: ExportOptions,
                    cases: list[tuple[np.ndarray, np.ndarray]]) -> str:  # fmt: skip
    """Load ``staged`` with the runtime backend of ``fmt`` and compare it with the eager logits.

    It runs on the export's device where the backend can; a file that does not depend on the
    device (ONNX with a CPU-only ONNX Runtime, say) is checked on the CPU, in one line."""
    cls = load_backend(fmt)
    try:
        backend = cls(staged, device=opts.device)
    except UnetDeployError as e:
        if not opts.device.startswith("cuda"):
            raise
        try:
            backend = cls(staged, device="cpu")
        except UnetDeployError:
            raise e from None  # a package compiled for CUDA: the first error says why
        opts.log(f"{fmt.title}: checked on the CPU: {e.message.replace(str(staged), str(target))}")
    try:
        if backend.meta != written:
            raise UnetDeployError(f"{target}: the metadata read back differs from the exported one; report a bug")
        ok, line = parity(cases, backend.forward, opts.precision)
    finally:
        del backend
    if not ok:
        raise UnetDeployError(f"{target}: {fmt.title} output differs from the eager model ({line}); "
                              "nothing was written, report this with the checkpoint")  # fmt: skip
    return line
