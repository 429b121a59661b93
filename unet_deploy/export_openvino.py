"""OpenVINO IR export at fp32, bf16 or int8 (NNCF post-training quantization), refused below the accuracy gate.

``export_openvino(model, meta, "out/model.xml", precision="int8", calib="data/voc")``:

1. ``openvino.convert_model`` from the torch model (or an ``.onnx`` file), dynamic batch, height
   and width, input ``images`` and output ``logits`` as in the ONNX export; fp32 parity is
   checked against torch (or ONNX Runtime) at two shapes.
2. ``int8``: ``nncf.quantize`` calibrated on a few dozen training images letterboxed exactly as
   at run time (``preprocess``). ``bf16``: the weights stay fp32 and the backend asks OpenVINO
   for bf16 inference on CPUs that have it (AMX / AVX512-BF16).
3. ``bf16``/``int8``: the accuracy gate (``unet_deploy.accuracy``) compares the candidate, compiled
   exactly as the backend compiles it, with fp32 on validation images; below the thresholds the
   export is refused and nothing is written.
4. ``<stem>.xml/.bin`` (``<stem>.bf16.xml``, ``<stem>.int8.xml`` for reduced precisions) with
   ModelMeta in ``rt_info["unet_deploy"]`` and in the ``.json`` sidecar; ``meta.extra`` holds
   ``precision`` and the gate's ``accuracy``. All files appear together or not at all.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import accuracy
from .errors import UnetDeployError
from .meta import ModelMeta, sidecar_path
from .runtime import openvino_backend as ovb

PRECISIONS = ovb.PRECISIONS
CALIB_COUNT = 32  # "a few dozen" training images; NNCF's statistics settle well before that
VAL_COUNT = 32
# fp32 conversion parity, as the other exports check it: max |logit diff| relative to the
# logit range, and argmax agreement.
FP32_ATOL = 1e-4
FP32_MIN_AGREEMENT = 99.99


def _echo(message: str) -> None:
    import click

    click.echo(message, err=True)


def ir_path(out_dir: str | Path, stem: str, precision: str = "fp32") -> Path:
    """Where the IR of ``stem`` at ``precision`` goes: ``model.xml``, ``model.bf16.xml``, ``model.int8.xml``.

    Reduced precisions get their own name (and sidecar) so that all three can sit beside
    each other and beside the fp32 ONNX/TorchScript exports that share ``model.json``.
    """
    if precision not in PRECISIONS:
        raise UnetDeployError(f"--precision {precision!r} is not one of {'|'.join(PRECISIONS)} for OpenVINO")
    suffix = ".xml" if precision == "fp32" else f".{precision}.xml"
    return Path(out_dir) / f"{stem}{suffix}"


def convert(model: Any, meta: ModelMeta) -> Any:
    """An ``openvino.Model`` of ``model`` (torch module in eval mode, or a path to an ``.onnx`` file).

    Shape ``[?, C, ?, ?]``; tensor names ``images`` -> ``logits``.
    """
    ov = ovb.require_openvino()
    shape = ov.PartialShape([-1, meta.in_channels, -1, -1])
    if isinstance(model, (str, Path)):
        ov_model = ov.convert_model(str(model), input=[shape])
    else:
        import torch

        example = torch.zeros(1, meta.in_channels, *meta.input_size)
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # The UNet's input-size check is Python control flow that tracing warns about;
            # it does not enter the graph (the exported model accepts any multiple of 16).
            # Tracing here without torch's re-run check halves the conversion time; the
            # fp32 parity check compares the result with the model anyway.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model.eval(), example, check_trace=False)
            ov_model = ov.convert_model(traced, example_input=example, input=[shape])
    ov_model.inputs[0].get_tensor().set_names({"images"})
    ov_model.outputs[0].get_tensor().set_names({"logits"})
    return ov_model


def _reference_logits(model: Any, x: np.ndarray) -> np.ndarray:
    """fp32 logits of the source model: torch eager, or ONNX Runtime for an ``.onnx`` file."""
    if isinstance(model, (str, Path)):
        import onnxruntime as ort

        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(x)).float().numpy()


def check_fp32(model: Any, ov_model: Any, meta: ModelMeta, target: Path) -> str:
    """Compare the converted fp32 IR with its source at two shapes and batch sizes; raise beyond tolerance."""
    compiled = ovb.compile_model(ov_model, "fp32")
    rng = np.random.default_rng(0)
    h, w = meta.input_size
    worst_diff, worst_agree = 0.0, 100.0
    for shape in ((1, meta.in_channels, h, w), (2, meta.in_channels, 64, 96)):
        x = rng.random(shape, dtype=np.float32)
        ref, got = _reference_logits(model, x), compiled(x)[0]
        scale = max(1.0, float(np.abs(ref).max()))
        worst_diff = max(worst_diff, float(np.abs(ref - got).max()) / scale)
        worst_agree = min(worst_agree, 100.0 * float(np.mean(np.argmax(ref, 1) == np.argmax(got, 1))))
    line = f"max |logit diff| {worst_diff:.1e} (of the logit range), argmax agreement {worst_agree:.3f}%"
    if worst_diff > FP32_ATOL or worst_agree < FP32_MIN_AGREEMENT:
        raise UnetDeployError(
            f"{target}: OpenVINO fp32 conversion differs from the source model ({line}; "
            f"allowed {FP32_ATOL:g} and {FP32_MIN_AGREEMENT}%); report this with the checkpoint"
        )
    return line


def calibration_inputs(paths: list[Path], meta: ModelMeta) -> list[np.ndarray]:
    """Float32 ``(1, C, H, W)`` inputs letterboxed and normalised exactly as at run time."""
    from .fileio import read_image
    from .preprocess import preprocess

    return [preprocess(read_image(p), meta)[0][None] for p in paths]


def quantize_int8(ov_model: Any, inputs: list[np.ndarray]) -> Any:
    """NNCF post-training int8 quantization (CPU target) of ``ov_model`` with ``inputs`` as calibration set."""
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    return nncf.quantize(
        ov_model,
        nncf.Dataset(inputs),
        subset_size=len(inputs),
        target_device=nncf.TargetDevice.CPU,
    )


def _gate_candidate(model: Any, ov_model: Any, precision: str, threads: int | None, meta: ModelMeta):
    """What the gate runs as the candidate, and how it measured it.

    The candidate is compiled as the backend compiles it. bf16 on a CPU without native bf16
    would silently run fp32 and pass for nothing: the gate then measures torch's bf16
    (same rounding of weights and activations, emulated) when the source is a torch model.
    """
    if precision == "bf16" and not ovb.cpu_bf16_native():
        if isinstance(model, (str, Path)):
            raise UnetDeployError(
                f"{model}: this CPU has no native bf16, so the bf16 gate needs the torch checkpoint "
                "to emulate it; export from the checkpoint, or on an AMX/AVX512-BF16 CPU"
            )
        import torch

        bf16 = ovb.torch_bf16(model)

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return bf16(torch.from_numpy(x)).numpy()

        return run, "torch bf16 emulation (this CPU has no native bf16)"
    compiled = ovb.compile_model(ov_model, precision, threads, meta.input_size)
    return (lambda x: compiled(x)[0]), f"openvino {ovb.effective_precision(precision)}"


def _save_ir(ov_model: Any, meta: ModelMeta, target: Path) -> None:
    """Write ``target`` (.xml + .bin) and its sidecar together: all three or none."""
    ov = ovb.require_openvino()
    ov_model.set_rt_info(meta.to_json(), ovb.RT_INFO_KEY)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.stem}.", dir=target.parent))
    try:
        xml = tmp / target.name
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        meta.save(tmp / sidecar_path(target).name)
        # .bin and sidecar first: a reader that finds the .xml finds the rest.
        os.replace(xml.with_suffix(".bin"), target.with_suffix(".bin"))
        os.replace(tmp / sidecar_path(target).name, sidecar_path(target))
        os.replace(xml, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_openvino(
    model: Any,
    meta: ModelMeta,
    target: str | Path,
    *,
    precision: str = "fp32",
    calib: str | Path | None = None,
    val: str | Path | None = None,
    calib_count: int = CALIB_COUNT,
    val_count: int = VAL_COUNT,
    min_agreement: float = accuracy.DEFAULT_MIN_AGREEMENT,
    max_miou_drop: float = accuracy.DEFAULT_MAX_MIOU_DROP,
    threads: int | None = None,
    check: bool = True,
    log: Callable[[str], None] = _echo,
) -> Path:
    """Export ``model`` (torch UNet in eval mode, or an ``.onnx`` path) to the OpenVINO IR ``target``.

    ``calib``: dataset folder whose training images calibrate int8 (required for int8).
    ``val``: validation folder for the gate; default the held-back images of ``calib``
    (``accuracy.split_dataset``: its val split, else every 5th image, not used to calibrate). bf16 and int8 must pass the gate (``min_agreement`` %,
    ``max_miou_drop`` points) or ``UnetDeployError`` is raised and no file is written.
    Returns the ``.xml`` path. One log line per stage with its time.
    """
    target = Path(target)
    if precision not in PRECISIONS:
        raise UnetDeployError(f"--precision {precision!r} is not one of {'|'.join(PRECISIONS)} for OpenVINO")
    if target.suffix != ".xml":
        raise UnetDeployError(f"{target}: an OpenVINO IR path must end in .xml")
    accuracy.check_thresholds(min_agreement, max_miou_drop)
    if precision == "int8" and calib is None:
        raise UnetDeployError(f"{target}: int8 needs calibration images: pass --calib DATA (a few dozen training images)")
    if precision != "fp32" and calib is None and val is None:
        raise UnetDeployError(f"{target}: {precision} must pass the accuracy gate: pass --val DATA (validation images)")
    # Read the data first: a wrong folder fails before minutes of conversion.
    calib_paths, val_paths = [], []
    if calib is not None:
        calib_paths, val_paths = accuracy.split_dataset(calib, hold_back=val is None)
        if not calib_paths:
            raise UnetDeployError(f"{calib}: no training images left for calibration after the validation split")
        calib_paths = accuracy.spread(calib_paths, calib_count)
    if val is not None:
        val_paths = accuracy.dataset_images(val)
    source = str(val if val is not None else calib)
    val_samples = accuracy.load_samples(val_paths, val_count) if precision != "fp32" else []

    t0 = time.perf_counter()
    ov_model = convert(model, meta)
    log(f"OpenVINO: converted in {time.perf_counter() - t0:.1f} s (openvino {ovb.require_openvino().__version__})")
    if check:
        t0 = time.perf_counter()
        log(f"OpenVINO: fp32 parity {check_fp32(model, ov_model, meta, target)} ({time.perf_counter() - t0:.1f} s)")

    out_model, extra = ov_model, {"precision": precision}
    if precision == "int8":
        t0 = time.perf_counter()
        out_model = quantize_int8(ov_model, calibration_inputs(calib_paths, meta))
        log(f"OpenVINO int8: NNCF calibrated on {len(calib_paths)} images of {calib} in {time.perf_counter() - t0:.1f} s")
    if precision != "fp32":
        t0 = time.perf_counter()
        reference = ovb.compile_model(ov_model, "fp32", threads, meta.input_size)
        candidate, measured = _gate_candidate(model, out_model, precision, threads, meta)
        result = accuracy.evaluate(
            lambda x: reference(x)[0], candidate, val_samples, meta, precision=precision,
            source=source, min_agreement=min_agreement, max_miou_drop=max_miou_drop,
        )  # fmt: skip
        verdict = "passed" if result.passed else "REFUSED"
        log(f"accuracy gate {verdict}: {result.line()} [{measured}] ({time.perf_counter() - t0:.1f} s)")
        accuracy.enforce(result, target)
        extra["accuracy"] = {**result.to_dict(), "measured_with": measured}

    t0 = time.perf_counter()
    out_meta = replace(meta, extra={**meta.extra, **extra})
    _save_ir(out_model, out_meta, target)
    size = target.stat().st_size + target.with_suffix(".bin").stat().st_size
    log(f"OpenVINO {precision}: wrote {target} ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return target

