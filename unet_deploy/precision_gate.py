"""Reduced-precision exports under the accuracy gate: int8 calibration with its fallback, bf16/int8 measured.

The exporter (``unet_deploy.export``) runs this for every bf16 or int8 artefact a format
stages. int8: the format's graph (``formats.quantize.Int8Graph``) is calibrated on a few dozen
training images (``formats.quantize``'s recipe and ISA), saved, and gated. When the quantized
model misses the gate, ``nncf.quantize_with_accuracy_control`` keeps the most sensitive layers
in fp32 until the gate's own metric on (up to 8) calibration images keeps half of fp32's
headroom: min(agreement - its minimum, allowed mIoU drop - mIoU drop); then the gate measures
again on the validation images. ``gate``: the staged file through the runtime backend users
run (handed in by the exporter), against eager fp32, refused below the thresholds.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import accuracy, cpu, metrics
from .errors import UnetDeployError
from .formats._common import ExportOptions
from .formats._torch import reduced_precision
from .formats.quantize import CONTROL_COUNT, Int8Graph, Int8Recipe, calibration_inputs, nncf_kwargs, overflow_fix, target_isa
from .meta import ModelMeta


def gate_data(opts: ExportOptions, target: Path) -> tuple[list[Path], list[Path]]:
    """``(calibration, validation)`` image paths for ``opts``; one-line errors for missing data or bad thresholds."""
    min_agree, max_drop = thresholds(opts)
    accuracy.check_thresholds(min_agree, max_drop)
    target_isa(opts.int8_isa)
    if opts.precision in ("fp32", "auto"):  # auto: each precision it tries is checked then
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
    agree = accuracy.DEFAULT_MIN_AGREEMENT if opts.min_agreement is None else opts.min_agreement
    drop = accuracy.DEFAULT_MAX_MIOU_DROP if opts.max_miou_drop is None else opts.max_miou_drop
    return agree, drop


def quantize_gated(torch_model: Any, graph: Int8Graph, path: Path, meta: ModelMeta, opts: ExportOptions,
                   backend: type) -> ModelMeta:  # fmt: skip
    """Calibrate ``graph`` to int8, save it to ``path`` and gate it; fall back to accuracy control if it fails.

    Returns the metadata written (``extra.int8``: recipe, ISA, what stayed fp32; ``extra.accuracy``).
    """
    import nncf

    paths, _ = gate_data(opts, Path(str(opts.calib)))
    recipe, isa = opts.int8 or Int8Recipe(), target_isa(opts.int8_isa)
    t0 = time.perf_counter()
    inputs = [graph.feed(x) for x in calibration_inputs(paths, meta)]
    kwargs = nncf_kwargs(recipe, isa, graph.convs, len(inputs))
    nncf.set_log_level(logging.ERROR)
    advanced = kwargs.pop("advanced_quantization_parameters")
    if graph.first_pass is not None:
        quantized = graph.first_pass(graph.model, inputs, recipe, isa)
    else:
        quantized = nncf.quantize(graph.model, nncf.Dataset(inputs), advanced_parameters=advanced, **kwargs)
    record = {"isa": isa, "calibrated_on": cpu.features().summary(), "calib_images": len(paths), "quantizer": graph.quantizer,
              "overflow_fix": overflow_fix(recipe, isa) if graph.first_pass is None else
              ("reduce_range" if isa == "avx2" else "none"), "recipe": recipe.to_dict(), "accuracy_control": None,
              "quantizers": graph.quantizers(quantized)}  # fmt: skip
    opts.log(f"int8: {graph.quantizer} calibrated on {len(paths)} images of {opts.calib} for {isa} CPUs "
             f"(overflow fix: {record['overflow_fix']}) in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    stamped = _with(meta, int8=record)
    graph.save(quantized, stamped)
    result, measured = measure(torch_model, path, stamped, opts, backend)
    headroom = _headroom(opts)
    if not result.passed and recipe.accuracy_control and headroom <= 0:
        opts.log("int8: no accuracy control: the thresholds leave no headroom even for fp32")
    elif not result.passed and recipe.accuracy_control:
        opts.log(f"accuracy gate missed ({result.line()}); retrying with NNCF accuracy control")
        quantized, record["accuracy_control"] = _accuracy_controlled(torch_model, graph, paths, inputs, meta, opts,
                                                                     kwargs, advanced)  # fmt: skip
        record["accuracy_control"]["quantizers_before"] = record["quantizers"]
        record["quantizer"] = "nncf.quantize_with_accuracy_control"
        record["quantizers"] = graph.quantizers(quantized)
        stamped = _with(meta, int8=record)
        graph.save(quantized, stamped)
        result, measured = measure(torch_model, path, stamped, opts, backend)
    accuracy.enforce(result, path)
    out = _with(stamped, accuracy={**result.to_dict(), "measured_with": measured})
    graph.save(quantized, out)
    return out


def _accuracy_controlled(torch_model: Any, graph: Int8Graph, paths: list[Path], inputs: list[np.ndarray],
                         meta: ModelMeta, opts: ExportOptions, kwargs: dict[str, Any],
                         advanced: Any) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """``nncf.quantize_with_accuracy_control`` scored by the gate's metric on calibration images."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    samples = accuracy.load_samples(paths, CONTROL_COUNT, "calibration")
    reference = _eager(torch_model)
    refs = [accuracy.predict_class_map(reference, s.image, meta) for s in samples]
    with_masks = all(s.mask is not None for s in samples)
    min_agree, max_drop = thresholds(opts)

    def score(inference: Any, items: Any) -> tuple[float, list[float]]:
        """The gate's headroom: min(agreement - its minimum, mIoU drop allowed - mIoU drop), per-image agreement."""
        predict, items = graph.predictor(inference), list(items)
        got = [accuracy.predict_class_map(predict, samples[i].image, meta) for i in items]
        truth = [samples[i].mask for i in items] if with_masks else None
        c = metrics.compare_masks([refs[i] for i in items], got, truth, meta.num_classes)
        headroom = c.agreement - min_agree
        if c.miou_drop is not None:
            headroom = min(headroom, max_drop - c.miou_drop)
        return headroom, list(c.per_image)

    full = _headroom(opts, with_masks)
    t0 = time.perf_counter()
    quantized = nncf.quantize_with_accuracy_control(
        graph.model, nncf.Dataset(inputs), nncf.Dataset(list(range(len(samples)))), score, max_drop=full / 2,
        advanced_quantization_parameters=advanced,
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(max_num_iterations=len(graph.convs)),
        **kwargs,
    )  # fmt: skip
    info = {"metric": "gate headroom (agreement, mIoU drop)" if with_masks else "gate headroom (agreement)",
            "kept_headroom": full / 2, "images": len(samples), "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    opts.log(f"int8: accuracy control (half the gate's headroom kept on {len(samples)} calibration images) "
             f"in {info['seconds']} s")  # fmt: skip
    return quantized, info


def _headroom(opts: ExportOptions, with_masks: bool = True) -> float:
    """fp32's own headroom under the gate: min(100% - least agreement, most mIoU drop)."""
    min_agree, max_drop = thresholds(opts)
    return min(100.0 - min_agree, max_drop) if with_masks else 100.0 - min_agree


def _with(meta: ModelMeta, **extra: Any) -> ModelMeta:
    return replace(meta, extra={**meta.extra, **extra})


def _eager(net: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x)).float().numpy()

    return run


def measure(model: Any, path: Path, meta: ModelMeta, opts: ExportOptions, backend: type) -> tuple[Any, str]:
    """(the gate's ``GateResult``, what ran it) for the staged ``path`` (run by ``backend``) against the eager fp32 ``model``."""

    _, val_paths = gate_data(opts, path)
    samples = accuracy.load_samples(val_paths, opts.val_count)
    min_agree, max_drop = thresholds(opts)
    t0 = time.perf_counter()
    if opts.precision == "bf16" and not cpu.has_native_bf16():
        candidate, measured = _eager(reduced_precision(model, "bf16")), "torch bf16 emulation (this CPU has no native bf16)"
    else:
        runner = backend(path, device="cpu", threads=opts.threads)
        candidate, measured = runner.forward, f"{runner.name} {runner.precision}"
    result = accuracy.evaluate(
        _eager(model), candidate, samples, meta, precision=opts.precision,
        source=str(opts.val if opts.val is not None else opts.calib), min_agreement=min_agree, max_miou_drop=max_drop,
    )  # fmt: skip
    verdict = "passed" if result.passed else "REFUSED"
    opts.log(f"accuracy gate {verdict}: {result.line()} [{measured}] ({time.perf_counter() - t0:.1f} s)")
    return result, measured


def gate(model: Any, path: Path, meta: ModelMeta, opts: ExportOptions, backend: type) -> dict[str, Any]:
    """Measure the staged ``path``; raise below the thresholds. Returns the record for ``meta.extra["accuracy"]``."""
    result, measured = measure(model, path, meta, opts, backend)
    accuracy.enforce(result, path)
    return {**result.to_dict(), "measured_with": measured}
