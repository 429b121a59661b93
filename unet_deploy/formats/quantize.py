"""OpenVINO reduced precision: NNCF int8 calibration and the accuracy gate that bf16/int8 exports must pass.

Calibration images are letterboxed exactly as at run time (``preprocess``). The gate
(``unet_deploy.accuracy``) runs the staged IR through ``OpenVINOBackend``, as users run it,
against the eager fp32 model on validation images. bf16 on a CPU without native bf16
(``unet_deploy.cpu.has_native_bf16``) would silently run fp32 and pass for nothing: the gate
then measures torch's bf16 (``formats._torch.reduced_precision``, same rounding, emulated).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UnetDeployError
from ..meta import ModelMeta
from ._common import ExportOptions

CALIB_COUNT = 32  # "a few dozen" training images; NNCF's statistics settle well before that
VAL_COUNT = 32


def gate_data(opts: ExportOptions, target: Path) -> tuple[list[Path], list[Path]]:
    """``(calibration, validation)`` image paths for ``opts``; one-line errors for missing data or bad thresholds."""
    from .. import accuracy

    min_agree, max_drop = thresholds(opts)
    accuracy.check_thresholds(min_agree, max_drop)
    if opts.precision == "fp32":
        return [], []
    if opts.precision == "int8" and opts.calib is None:
        raise UnetDeployError(f"{target}: int8 needs calibration images: pass --calib DATA (a few dozen training images)")
    if opts.calib is None and opts.val is None:
        raise UnetDeployError(f"{target}: {opts.precision} must pass the accuracy gate: pass --val DATA (validation images)")
    calib, val = [], []
    if opts.calib is not None:
        calib, val = accuracy.split_dataset(opts.calib, hold_back=opts.val is None)
        if not calib:
            raise UnetDeployError(f"{opts.calib}: no training images left for calibration after the validation split")
        calib = accuracy.spread(calib, opts.calib_count)
    if opts.val is not None:
        val = accuracy.dataset_images(opts.val)
    return calib, val


def thresholds(opts: ExportOptions) -> tuple[float, float]:
    """(least agreement %, most mIoU drop in points): the options, else the gate's defaults."""
    from .. import accuracy

    agree = accuracy.DEFAULT_MIN_AGREEMENT if opts.min_agreement is None else opts.min_agreement
    drop = accuracy.DEFAULT_MAX_MIOU_DROP if opts.max_miou_drop is None else opts.max_miou_drop
    return agree, drop


def calibration_inputs(paths: list[Path], meta: ModelMeta) -> list[np.ndarray]:
    """Float32 ``(1, C, H, W)`` inputs letterboxed and normalised exactly as at run time."""
    from ..fileio import read_image
    from ..preprocess import preprocess

    return [preprocess(read_image(p), meta)[0][None] for p in paths]


def quantize(ov_model: Any, meta: ModelMeta, opts: ExportOptions) -> Any:
    """NNCF post-training int8 quantization (CPU target) calibrated on ``opts.calib``'s training images."""
    import logging

    import nncf

    paths, _ = gate_data(opts, Path(str(opts.calib)))
    t0 = time.perf_counter()
    inputs = calibration_inputs(paths, meta)
    nncf.set_log_level(logging.ERROR)
    quantized = nncf.quantize(ov_model, nncf.Dataset(inputs), subset_size=len(inputs),
                              target_device=nncf.TargetDevice.CPU)  # fmt: skip
    opts.log(f"OpenVINO int8: NNCF calibrated on {len(paths)} images of {opts.calib} in {time.perf_counter() - t0:.1f} s")
    return quantized


def gate(model: Any, path: Path, meta: ModelMeta, opts: ExportOptions) -> dict[str, Any]:
    """Measure the staged IR ``path`` against the eager fp32 ``model``; raise below the thresholds.

    Returns the gate's record for ``meta.extra["accuracy"]``.
    """
    import torch

    from .. import accuracy, cpu
    from ..runtime.openvino_backend import OpenVINOBackend
    from ._torch import reduced_precision

    _, val_paths = gate_data(opts, path)
    samples = accuracy.load_samples(val_paths, opts.val_count)
    min_agree, max_drop = thresholds(opts)
    t0 = time.perf_counter()

    def eager(net: Any):
        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return net(torch.from_numpy(x)).float().numpy()

        return run

    if opts.precision == "bf16" and not cpu.has_native_bf16():
        candidate, measured = eager(reduced_precision(model, "bf16")), "torch bf16 emulation (this CPU has no native bf16)"
    else:
        backend = OpenVINOBackend(path, device="cpu", threads=opts.threads)
        candidate, measured = backend.forward, f"openvino {backend.precision}"
    result = accuracy.evaluate(
        eager(model), candidate, samples, meta, precision=opts.precision,
        source=str(opts.val if opts.val is not None else opts.calib), min_agreement=min_agree, max_miou_drop=max_drop,
    )  # fmt: skip
    verdict = "passed" if result.passed else "REFUSED"
    opts.log(f"accuracy gate {verdict}: {result.line()} [{measured}] ({time.perf_counter() - t0:.1f} s)")
    accuracy.enforce(result, path)
    return {**result.to_dict(), "measured_with": measured}
