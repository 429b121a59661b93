"""int8 for every format that has it (OpenVINO IR, ONNX QDQ): NNCF calibration, the recipe, the accuracy gate.

One path for both formats: ``nncf.quantize`` on the format's own graph (``openvino.Model`` or
``onnx.ModelProto``), calibrated on a few dozen training images letterboxed exactly as at run
time (``preprocess``). The recipe (``Int8Recipe``) is what measured best on this UNet
(``benchmarks/results/cpu_fast_path.md``): symmetric activations (``performance`` preset), the
first convolution kept in fp32 (its 3 input channels are not one-signed and carry the whole
image), statistics from 32 images. ``target_isa`` decides the overflow fix: CPUs without VNNI
multiply int8 pairs with ``VPMADDUBSW``, whose 16-bit sums saturate, so an IR for ``avx2``
gets 7-bit weights in every layer (NNCF ``OverflowFix.ENABLE``); for VNNI/AMX only the first
layer does (NNCF's default). Which ISA an artefact was calibrated for is recorded in
``meta.extra["int8"]``; the runtime warns when it runs on a CPU that saturates.

When the quantized model misses the gate, ``nncf.quantize_with_accuracy_control`` keeps the
most sensitive layers in fp32 until the gate's own metric on (up to 8) calibration images
keeps half of fp32's headroom: min(agreement - its minimum, allowed mIoU drop - mIoU drop);
then the gate measures again on the validation images. bf16 and int8 artefacts are gated
(``gate``): the staged file through the runtime backend users run, against eager fp32.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UnetDeployError
from ..meta import ModelMeta
from ._common import ExportOptions

CALIB_COUNT = 32  # "a few dozen" training images; 96 measured no better on this UNet
VAL_COUNT = 32
CONTROL_COUNT = 8  # calibration images the accuracy-control fallback scores candidates on
ISAS = ("auto", "vnni", "avx2")  # --int8-isa: the CPU kind the int8 artefact is for


@dataclass(frozen=True)
class Int8Recipe:
    """How int8 is calibrated; the defaults are the measured winner (``cpu_fast_path.md``)."""

    preset: str = "performance"  # or "mixed" (asymmetric activations)
    keep_fp32: tuple[str, ...] = ("first_conv",)  # "first_conv", "last_conv": layers left in fp32
    fast_bias_correction: bool = True
    overflow_fix: str | None = None  # None: from the target ISA; else "enable" | "first_layer_only" | "disable"
    accuracy_control: bool = True  # fall back to nncf.quantize_with_accuracy_control when the gate fails

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Int8Graph:
    """What a format hands to ``quantize_gated``: its fp32 graph and how to save, name and run one."""

    model: Any  # openvino.Model | onnx.ModelProto
    convs: list[str]  # convolution node names in graph order (NNCF names)
    save: Callable[[Any, ModelMeta], None]  # write the staged artefact with this metadata
    predictor: Callable[[Any], Callable[[np.ndarray], np.ndarray]]  # NNCF's inference object -> Predict
    feed: Callable[[np.ndarray], Any] = lambda x: x  # one calibration input as NNCF's engine takes it
    quantizers: Callable[[Any], int] = lambda m: -1  # quantize nodes in a graph (FakeQuantize, QuantizeLinear)
    # The first pass, (model, inputs, recipe, isa) -> quantized model, when not NNCF's PTQ (ONNX: ORT's quantize_static).
    first_pass: Callable[[Any, list[Any], "Int8Recipe", str], Any] | None = None
    quantizer: str = "nncf.quantize"


def target_isa(asked: str | None) -> str:
    """``"vnni"`` (VNNI or AMX: no saturation) or ``"avx2"`` for ``--int8-isa`` (``auto``: this CPU)."""
    from .. import cpu

    isa = (asked or "auto").strip().lower()
    if isa not in ISAS:
        raise UnetDeployError(f"--int8-isa {asked!r} is not one of {'|'.join(ISAS)}")
    if isa == "auto":
        return "avx2" if cpu.int8_isa() == "avx2" else "vnni"
    return isa


def overflow_fix(recipe: Int8Recipe, isa: str) -> str:
    """NNCF's overflow fix for ``isa``: 7-bit weights everywhere where int8 products saturate."""
    return recipe.overflow_fix or ("enable" if isa == "avx2" else "first_layer_only")


def gate_data(opts: ExportOptions, target: Path) -> tuple[list[Path], list[Path]]:
    """``(calibration, validation)`` image paths for ``opts``; one-line errors for missing data or bad thresholds."""
    from .. import accuracy

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
    from .. import accuracy

    agree = accuracy.DEFAULT_MIN_AGREEMENT if opts.min_agreement is None else opts.min_agreement
    drop = accuracy.DEFAULT_MAX_MIOU_DROP if opts.max_miou_drop is None else opts.max_miou_drop
    return agree, drop


def calibration_inputs(paths: list[Path], meta: ModelMeta) -> list[np.ndarray]:
    """Float32 ``(1, C, H, W)`` inputs letterboxed and normalised exactly as at run time."""
    from ..accuracy import check_varied
    from ..fileio import read_image
    from ..preprocess import preprocess

    images = [read_image(p) for p in paths]
    check_varied(images, paths[0].parent if paths else "", "calibration")
    return [preprocess(image, meta)[0][None] for image in images]


def kept_fp32(recipe: Int8Recipe, convs: list[str]) -> list[str]:
    """The convolution names ``recipe.keep_fp32`` leaves unquantized (``convs`` in graph order)."""
    return [convs[0]] * ("first_conv" in recipe.keep_fp32) + [convs[-1]] * ("last_conv" in recipe.keep_fp32)


def _nncf_kwargs(recipe: Int8Recipe, isa: str, convs: list[str], count: int) -> dict[str, Any]:
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    keep = kept_fp32(recipe, convs)
    return dict(
        preset=nncf.QuantizationPreset(recipe.preset), target_device=nncf.TargetDevice.CPU, subset_size=count,
        fast_bias_correction=recipe.fast_bias_correction,
        ignored_scope=nncf.IgnoredScope(names=keep) if keep else None,
        advanced_quantization_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix(recipe, isa))),
    )  # fmt: skip


def quantize_gated(torch_model: Any, graph: Int8Graph, path: Path, meta: ModelMeta, opts: ExportOptions,
                   backend: type) -> ModelMeta:  # fmt: skip
    """Calibrate ``graph`` to int8, save it to ``path`` and gate it; fall back to accuracy control if it fails.

    Returns the metadata written (``extra.int8``: recipe, ISA, what stayed fp32; ``extra.accuracy``).
    """
    import nncf

    from .. import accuracy, cpu

    paths, _ = gate_data(opts, Path(str(opts.calib)))
    recipe, isa = opts.int8 or Int8Recipe(), target_isa(opts.int8_isa)
    t0 = time.perf_counter()
    inputs = [graph.feed(x) for x in calibration_inputs(paths, meta)]
    kwargs = _nncf_kwargs(recipe, isa, graph.convs, len(inputs))
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

    from .. import accuracy

    samples = accuracy.load_samples(paths, CONTROL_COUNT, "calibration")
    reference = _eager(torch_model)
    refs = [accuracy.predict_class_map(reference, s.image, meta) for s in samples]
    with_masks = all(s.mask is not None for s in samples)
    min_agree, max_drop = thresholds(opts)
    miou_ref = _miou(samples, refs, meta) if with_masks else 0.0

    def score(inference: Any, items: Any) -> tuple[float, list[float]]:
        """The gate's headroom: min(agreement - its minimum, mIoU drop allowed - mIoU drop), per-image agreement."""
        predict, got = graph.predictor(inference), []
        for i in items:
            got.append(accuracy.predict_class_map(predict, samples[i].image, meta))
        per = [100.0 * float(np.mean(g == refs[i])) for i, g in enumerate(got)]
        agree = 100.0 * sum(int((g == r).sum()) for g, r in zip(got, refs)) / sum(r.size for r in refs)
        headroom = agree - min_agree
        if with_masks:
            headroom = min(headroom, max_drop - (miou_ref - _miou(samples, got, meta)))
        return headroom, per

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


def _miou(samples: list[Any], maps: list[np.ndarray], meta: ModelMeta) -> float:
    from .. import metrics

    conf = sum(metrics.confusion(s.mask, m, meta.num_classes) for s, m in zip(samples, maps))
    return 100.0 * metrics.mean_iou(conf)


def _with(meta: ModelMeta, **extra: Any) -> ModelMeta:
    from dataclasses import replace

    return replace(meta, extra={**meta.extra, **extra})


def _eager(net: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x)).float().numpy()

    return run


def measure(model: Any, path: Path, meta: ModelMeta, opts: ExportOptions, backend: type) -> tuple[Any, str]:
    """(the gate's ``GateResult``, what ran it) for the staged ``path`` (run by ``backend``) against the eager fp32 ``model``."""
    from .. import accuracy, cpu
    from ._torch import reduced_precision

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
    from .. import accuracy

    result, measured = measure(model, path, meta, opts, backend)
    accuracy.enforce(result, path)
    return {**result.to_dict(), "measured_with": measured}
